/* The op table's Python face: each op of csrc/ops/ops.h is diffice._C.<name>(backend, ...), bound by ONE entry of
 * BOUND_OPS below and run by one function (run_op): it parses the arguments by the entry's list (every failure a
 * TypeError/ValueError naming the op and the argument, expected vs got), works out the output shapes, allocates the
 * outputs, calls the op with the GIL released and turns a failed status into the matching exception.
 *
 * How to bind a new op: add one X(...) entry to BOUND_OPS and rebuild; diffice._C.<name> then exists.
 *   X(name, "label", outputs, "docstring",
 *     ARGS(...),     the Python arguments after the backend, in order, by kind:
 *                      TENSOR(n, ndim_min, ndim_max)  float32 C-contiguous finite array; OPTIONAL(...) also None
 *                      INOUT(n, ndim_min, ndim_max)   as TENSOR, writable: the op updates it in place
 *                      INOUT_NONFINITE(n, ndim_min, ndim_max)  as INOUT, NaN and infinity allowed (the op finds them)
 *                      TENSOR_NONFINITE(n, ndim_min, ndim_max) as TENSOR, NaN and infinity allowed (the optimizer ops:
 *                                      no extra pass over a whole model's buffers; the trainer checks the norm)
 *                      INT(n, min, max)  INT64(n, min, max)  FLOAT(n) (a double)  BOOL(n)
 *                      PAIR(n, min, max) an (h, w) pair of ints
 *                      SHAPE(n, ndim)  a shape of positive ints
 *                      FLOATS(n, i) DOUBLES(n, i) INTS(n, i) INT64S(n, i)  a host vector of float32, float64, C int,
 *                                      int64 with one entry per row of arg i (before or after it): numbers are
 *                                      rounded to a float type; the int kinds take integers only, none wrapping
 *                      KIND(n, "a|b")  a name -> its index; the label is then a format ("%s_backward")
 *                      TENSORS(n, ndim_min, ndim_max) a list of arrays     OBJECT(n) anything (read by SHAPES)
 *     SHAPES(...),   statements giving each output j its shape: LIKE(j, i) (arg i's shape), DIMS(j, d0, d1, ...)
 *                    (float32 arrays), INT_ROWS(j, i) (an int32 array, a C int per row of arg i), SCALAR(j) (a
 *                    double, returned as a Python float); an output never given one is returned as None (and passed
 *                    to the op as NULL).
 *                    REQUIRE(cond, "fmt", ...) raises ValueError "label: <fmt>"; TRY(helper(...)) for shared rules.
 *     CALL(...))     the op's arguments between be and err: T(i) tensor, OPT(i) tensor or NULL, I(i) int/bool/kind,
 *                    L(i) int64, F(i) float or double, VF(i) VD(i) VI(i) V(i) a float, double, int, int64 vector,
 *                    LIST(i) tensors and count, O(j) output j or NULL, OI(j) int output j (int *), OD(j) double
 *                    output j (double *), OUTS all outputs and their count. A struct of several arguments is a
 *                    compound literal: &(dfc_vb_coefs){VD(3), ..., VI(9), F(10)}.
 *   D(i, d) is dimension d of arg i (a TENSOR, SHAPE, or the first of TENSORS); P(i, k) entry k of a PAIR.
 *   outputs: how many arrays are returned (0: None, 1: the array, more: a tuple); OUT_LIST: a list of c->nout.
 * For example, the whole binding of linear_forward (x (M, In), weight (Out, In), bias (Out) or None -> y (M, Out)):
 *   X(linear_forward, "linear_forward", 1, "linear_forward(backend, x, weight, bias_or_None) -> y.",
 *     ARGS(TENSOR("x", 2, 2), TENSOR("weight", 2, 2), OPTIONAL("bias", 1, 1)), SHAPES(DIMS(0, D(0, 0), D(1, 0))),
 *     CALL(T(0), T(1), OPT(2), O(0)))
 * and an in-place op without outputs: X(ema_update, "ema_update", 0, "...", ARGS(FLOAT("rate"), INOUT("ema", 1, 4),
 *     TENSOR("param", 1, 4)), SHAPES(), CALL(F(0), T(1), T(2))). Then wrap diffice._C.<name> in diffice/ops.
 * Output-shape arithmetic belongs in SHAPES (or in the Python wrapper, passed in as a SHAPE); checks of the inputs
 * against each other belong in the op, which reports them for every caller. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "../ops/conv_check.h"

enum arg_kind {
    A_END,
    A_TENSOR,
    A_OPTIONAL,
    A_INOUT,
    A_INOUT_NONFINITE,
    A_INT,
    A_INT64,
    A_FLOAT,
    A_BOOL,
    A_PAIR,
    A_SHAPE,
    A_ROWS,
    A_KIND,
    A_TENSORS,
    A_OBJECT,
    A_TENSOR_NONFINITE
};

typedef struct {
    enum arg_kind kind;
    const char *name;
    long long lo, hi;    /* ndim range (tensors), value range (ints), ndim (SHAPE), row argument, numpy type (ROWS) */
    const char *choices; /* KIND: "relu|silu|sigmoid", index = the enum value */
} arg_spec;

#define MAX_ARGS 13                    /* p_mean_variance_backward: 3 tensors, 8 coefficient vectors, 2 flags */
#define MAX_OUTS (DFC_PY_MAX_ARGS - 1) /* a split's parts; a concat's inputs take one reference slot each */

typedef struct {
    dfc_tensor t; /* TENSOR/OPTIONAL/INOUT; SHAPE (data NULL); TENSORS: the first part */
    int i;        /* INT, BOOL, KIND; TENSORS: how many */
    long long l;
    double f;
    int pair[2];
    const void *rows; /* ROWS */
    PyObject *obj;
} arg_value;

typedef struct op_call op_call;
typedef struct {
    const char *name, *label;
    int nout; /* OUT_LIST: a list of c->nout */
    arg_spec args[MAX_ARGS];
    int (*shapes)(op_call *c);
    dfc_status (*call)(dfc_backend *be, op_call *c, dfc_error *err);
} op_desc;
#define OUT_LIST (-1)

struct op_call {
    char label[48];
    arg_value a[MAX_ARGS];
    dfc_tensor parts[MAX_OUTS];
    const dfc_tensor *part_ptrs[MAX_OUTS];
    int nout;
    int out_ndim[MAX_OUTS]; /* 0: None */
    int64_t out_shape[MAX_OUTS][DFC_MAX_DIMS];
    enum { OUT_FLOAT32, OUT_INT, OUT_DOUBLE } out_kind[MAX_OUTS];
    dfc_tensor o[MAX_OUTS];
    int *out_ints[MAX_OUTS];
    double out_double[MAX_OUTS];
    dfc_tensor *o_ptrs[MAX_OUTS];
    dfc_py_refs refs;
};

/* ---- the vocabulary of the entries ---- */

#define TENSOR(n, lo, hi) {A_TENSOR, n, lo, hi, NULL}
#define TENSOR_NONFINITE(n, lo, hi) {A_TENSOR_NONFINITE, n, lo, hi, NULL}
#define OPTIONAL(n, lo, hi) {A_OPTIONAL, n, lo, hi, NULL}
#define INOUT(n, lo, hi) {A_INOUT, n, lo, hi, NULL}
#define INOUT_NONFINITE(n, lo, hi) {A_INOUT_NONFINITE, n, lo, hi, NULL}
#define INT(n, lo, hi) {A_INT, n, lo, hi, NULL}
#define INT64(n, lo, hi) {A_INT64, n, lo, hi, NULL}
#define FLOAT(n) {A_FLOAT, n, 0, 0, NULL}
#define BOOL(n) {A_BOOL, n, 0, 0, NULL}
#define PAIR(n, lo, hi) {A_PAIR, n, lo, hi, NULL}
#define SHAPE(n, ndim) {A_SHAPE, n, ndim, ndim, NULL}
#define FLOATS(n, rows_of) {A_ROWS, n, rows_of, NPY_FLOAT32, NULL}
#define DOUBLES(n, rows_of) {A_ROWS, n, rows_of, NPY_FLOAT64, NULL}
#define INTS(n, rows_of) {A_ROWS, n, rows_of, NPY_INT, NULL}
#define INT64S(n, rows_of) {A_ROWS, n, rows_of, NPY_INT64, NULL}
#define KIND(n, choices) {A_KIND, n, 0, 0, choices}
#define TENSORS(n, lo, hi) {A_TENSORS, n, lo, hi, NULL}
#define OBJECT(n) {A_OBJECT, n, 0, 0, NULL}

#define ARGS(...) {__VA_ARGS__}
#define SHAPES(...) __VA_ARGS__
#define CALL(...) __VA_ARGS__

#define T(i) (&c->a[i].t)
#define OPT(i) (c->a[i].t.data ? &c->a[i].t : NULL)
#undef I /* <complex.h>'s imaginary unit, via numpy; nothing here is complex */
#define I(n) (c->a[n].i)
#define L(i) (c->a[i].l)
#define F(i) (c->a[i].f)
#define VF(i) ((const float *)c->a[i].rows)
#define VD(i) ((const double *)c->a[i].rows)
#define VI(i) ((const int *)c->a[i].rows)
#define V(i) ((const int64_t *)c->a[i].rows)
#define P(i, k) (c->a[i].pair[k])
#define D(i, d) ((long long)c->a[i].t.shape[d])
#define LIST(n) c->part_ptrs, c->a[n].i
#define O(j) (c->out_ndim[j] ? &c->o[j] : NULL)
#define OI(j) (c->out_ints[j])
#define OD(j) (&c->out_double[j])
#define OUTS c->o_ptrs, c->nout
/* conv params from PAIR args stride and pad, and the layout flags' values */
#define CONV_LAYOUT(stride, pad, x_layout, y_layout) \
    ((dfc_conv2d_params){.stride_h = P(stride, 0),   \
                         .stride_w = P(stride, 1),   \
                         .pad_h = P(pad, 0),         \
                         .pad_w = P(pad, 1),         \
                         .x_nhwc = (x_layout),       \
                         .y_nhwc = (y_layout)})
#define CONV(stride, pad) CONV_LAYOUT(stride, pad, 0, 0)
#define POOL(kernel, stride, pad) \
    ((dfc_pool2d_params){P(kernel, 0), P(kernel, 1), P(stride, 0), P(stride, 1), P(pad, 0), P(pad, 1)})

#define LIKE(j, i) set_out(c, j, c->a[i].t.ndim, c->a[i].t.shape)
#define INT_ROWS(j, i) (set_out(c, j, 1, c->a[i].t.shape), c->out_kind[j] = OUT_INT)
#define SCALAR(j) (set_out(c, j, 1, (const int64_t[]){1}), c->out_kind[j] = OUT_DOUBLE)
#define DIMS(j, ...) \
    set_out(c, j, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__})
#define TRY(x)         \
    do {               \
        if ((x) < 0)   \
            return -1; \
    } while (0)
#define REQUIRE(cond, ...)                  \
    do {                                    \
        if (!(cond))                        \
            return op_fail(c, __VA_ARGS__); \
    } while (0)

static void set_out(op_call *c, int j, int ndim, const int64_t *shape)
{
    c->out_ndim[j] = ndim;
    c->out_kind[j] = OUT_FLOAT32;
    memcpy(c->out_shape[j], shape, (size_t)ndim * sizeof *shape);
}

/* ValueError "label: <message>"; returns -1. */
static int op_fail(const op_call *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *message = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (message) {
        PyErr_Format(PyExc_ValueError, "%s: %U", c->label, message);
        Py_DECREF(message);
    }
    return -1;
}

/* ---- shape rules several entries share ---- */

/* conv2d of x (N, Ci, H, W) by a kernel (Co, Ci, KH, KW): ValueError naming the axis where the kernel does not fit
 * the padded input; else output j (if j >= 0) gets the shape (N, Co, Ho, Wo). */
static int conv_out(op_call *c, int j, const char *x_name, const int64_t *x, const int64_t *w, dfc_conv2d_params p)
{
    int64_t hw[2];
    const char *axes[2] = {"height", "width"};
    const int stride[2] = {p.stride_h, p.stride_w}, pad[2] = {p.pad_h, p.pad_w};
    for (int k = 0; k < 2; k++) {
        hw[k] = dfc_conv_out_size(x[2 + k], w[2 + k], stride[k], pad[k]);
        REQUIRE(hw[k] > 0, "kernel %s %lld is larger than the padded input %s %lld (%s %s %lld + 2 * padding %d)",
                axes[k], (long long)w[2 + k], axes[k], (long long)(x[2 + k] + 2 * (int64_t)pad[k]), x_name, axes[k],
                (long long)x[2 + k], pad[k]);
    }
    if (j >= 0)
        DIMS(j, x[0], w[0], hw[0], hw[1]);
    return 0;
}

/* An image operand stored NHWC is passed as its (N, H, W, C) array; the op takes it as the (N, C, H, W) tensor of
 * that memory (dfc_conv2d_params, group_norm_act_forward). */
static dfc_tensor nchw_view(const dfc_tensor *t, int nhwc)
{
    return nhwc ? dfc_tensor4(t->data, t->shape[0], t->shape[3], t->shape[1], t->shape[2]) : *t;
}
#define NCHW(t, nhwc) ((dfc_tensor[]){nchw_view((t), (nhwc))})

/* Output j's (N, C, H, W) shape made the (N, H, W, C) of its array when it is stored NHWC. */
static void out_as_nhwc(op_call *c, int j, int nhwc)
{
    if (!nhwc)
        return;
    int64_t *s = c->out_shape[j];
    const int64_t channels = s[1];
    s[1] = s[2];
    s[2] = s[3];
    s[3] = channels;
}

/* A pooling of x (N, C, H, W) with PyTorch's rules (floor mode): ValueError where it does not fit; else output j
 * (if j >= 0) gets the shape (N, C, Ho, Wo). */
static int pool_out(op_call *c, int j, const int64_t *x, dfc_pool2d_params p)
{
    /* at most half the kernel: no 2 * pad overflow below */
    REQUIRE(p.pad_h <= p.kernel_h / 2 && p.pad_w <= p.kernel_w / 2,
            "padding (%d, %d) must be between 0 and half the kernel (%d, %d)", p.pad_h, p.pad_w, p.kernel_h,
            p.kernel_w);
    REQUIRE(x[2] + 2 * p.pad_h >= p.kernel_h && x[3] + 2 * p.pad_w >= p.kernel_w,
            "input %lldx%lld (padded by %d, %d) is smaller than the kernel (%d, %d)", (long long)x[2], (long long)x[3],
            p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
    if (j >= 0)
        DIMS(j, x[0], x[1], (x[2] + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1,
             (x[3] + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1);
    return 0;
}

/* A backward's x_shape against its dy: the same batch and channels. */
#define SAME_BATCH_CHANNELS(dy, x_shape)                                                                            \
    REQUIRE(D(dy, 0) == D(x_shape, 0) && D(dy, 1) == D(x_shape, 1),                                                 \
            "dy has batch %lld and channels %lld but x_shape has %lld and %lld", D(dy, 0), D(dy, 1), D(x_shape, 0), \
            D(x_shape, 1))

/* split's outputs: x (arg 0) cut along axis 1 into the channel counts of sizes (arg 1, a list of ints). */
static int split_outs(op_call *c)
{
    PyObject *seq = PySequence_Fast(c->a[1].obj, "split: sizes must be a list or tuple of ints");
    if (!seq)
        return -1;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t total = 0;
    int status = 0;
    if (n < 1 || n > MAX_OUTS)
        status = op_fail(c, "sizes must hold 1 to %d entries, got %zd", MAX_OUTS, n);
    for (Py_ssize_t k = 0; status == 0 && k < n; k++) {
        char name[96]; /* label (< 48) + ": sizes[" + an index + "]" */
        snprintf(name, sizeof name, "%s: sizes[%zd]", c->label, k);
        long long size = 0;
        status = dfc_py_int64(PySequence_Fast_GET_ITEM(seq, k), name, 1, D(0, 1), &size);
        LIKE(k, 0);
        c->out_shape[k][1] = size;
        total += size; /* at most MAX_OUTS sizes of at most x's channels: no overflow */
    }
    Py_DECREF(seq);
    TRY(status);
    REQUIRE(total == D(0, 1), "sizes add up to %lld, but x has %lld channels", (long long)total, D(0, 1));
    c->nout = (int)n;
    return 0;
}

/* ---- argument groups several entries share ---- */

/* ops.h's dfc_posterior_coefs: eight float32 vectors with one entry per row of argument i, as arguments k..k+7. */
#define POSTERIOR_COEF_NAMES \
    "sqrt_recip_abar, sqrt_recipm1_abar, coef1, coef2, min_log, max_log, variance, log_variance"
#define POSTERIOR_COEF_ARGS(i)                                                                            \
    FLOATS("sqrt_recip_abar", i), FLOATS("sqrt_recipm1_abar", i), FLOATS("coef1", i), FLOATS("coef2", i), \
        FLOATS("min_log", i), FLOATS("max_log", i), FLOATS("variance", i), FLOATS("log_variance", i)
#define POSTERIOR_COEFS(k) \
    (&(dfc_posterior_coefs){VF(k), VF(k + 1), VF(k + 2), VF(k + 3), VF(k + 4), VF(k + 5), VF(k + 6), VF(k + 7)})

/* ops.h's dfc_vb_coefs: six float64 vectors and decoder_nll (C ints) per row of argument i, then the scale. */
#define VB_COEF_NAMES "sqrt_recip_abar, sqrt_recipm1_abar, coef1, coef2, min_log, max_log, decoder_nll, scale"
#define VB_COEF_ARGS(i)                                                                                       \
    DOUBLES("sqrt_recip_abar", i), DOUBLES("sqrt_recipm1_abar", i), DOUBLES("coef1", i), DOUBLES("coef2", i), \
        DOUBLES("min_log", i), DOUBLES("max_log", i), INTS("decoder_nll", i), FLOAT("scale")
#define VB_COEFS(k) (&(dfc_vb_coefs){VD(k), VD(k + 1), VD(k + 2), VD(k + 3), VD(k + 4), VD(k + 5), VI(k + 6), F(k + 7)})

/* ---- the table: one entry per op ---- */

#define BOUND_OPS(X)                                                                                                   \
    X(activation_forward, "%s", 1, "activation_forward(backend, kind, x) -> y; kind in relu/silu/sigmoid.",            \
      ARGS(KIND("kind", "relu|silu|sigmoid"), TENSOR("x", 1, 4)), SHAPES(LIKE(0, 1)), CALL(I(0), T(1), O(0)))          \
    X(activation_backward, "%s", 1, "activation_backward(backend, kind, dy, x) -> dx.",                                \
      ARGS(KIND("kind", "relu|silu|sigmoid"), TENSOR("dy", 1, 4), TENSOR("x", 1, 4)), SHAPES(LIKE(0, 2)),              \
      CALL(I(0), T(1), T(2), O(0)))                                                                                    \
    X(softmax_forward, "softmax", 1, "softmax_forward(backend, x, axis) -> y; axis < 0 counts from the end.",          \
      ARGS(TENSOR("x", 1, 4), INT("axis", -DFC_MAX_DIMS, DFC_MAX_DIMS - 1)), SHAPES(LIKE(0, 0)),                       \
      CALL(T(0), I(1), O(0)))                                                                                          \
    X(softmax_backward, "softmax_backward", 1, "softmax_backward(backend, dy, y, axis) -> dx.",                        \
      ARGS(TENSOR("dy", 1, 4), TENSOR("y", 1, 4), INT("axis", -DFC_MAX_DIMS, DFC_MAX_DIMS - 1)), SHAPES(LIKE(0, 1)),   \
      CALL(T(0), T(1), I(2), O(0)))                                                                                    \
    X(binary_forward, "%s", 1,                                                                                         \
      "binary_forward(backend, kind, a, b) -> y = a (+|*) b; kind in add/mul; b has a's ndim, dims 1 or equal.",       \
      ARGS(KIND("kind", "add|mul"), TENSOR("a", 1, 4), TENSOR("b", 1, 4)), SHAPES(LIKE(0, 1)),                         \
      CALL(I(0), T(1), T(2), O(0)))                                                                                    \
    X(binary_backward, "%s_backward", 2,                                                                               \
      "binary_backward(backend, kind, dy, a, b) -> (da, db); db summed over b's broadcast dims.",                      \
      ARGS(KIND("kind", "add|mul"), TENSOR("dy", 1, 4), TENSOR("a", 1, 4), TENSOR("b", 1, 4)),                         \
      SHAPES(LIKE(0, 2); LIKE(1, 3)), CALL(I(0), T(1), T(2), T(3), O(0), O(1)))                                        \
    X(concat_channels, "concat", 1, "concat_channels(backend, xs) -> y: arrays (N, Ci, ...) joined along axis 1.",     \
      ARGS(TENSORS("xs", 2, 4)),                                                                                       \
      SHAPES(LIKE(0, 0); for (int k = 1; k < I(0); k++) c->out_shape[0][1] += c->parts[k].shape[1]),                   \
      CALL(LIST(0), O(0)))                                                                                             \
    X(split_channels, "split", OUT_LIST,                                                                               \
      "split_channels(backend, x, sizes) -> list of arrays (N, sizes[k], ...), the inverse of concat.",                \
      ARGS(TENSOR("x", 2, 4), OBJECT("sizes")), SHAPES(TRY(split_outs(c))), CALL(T(0), OUTS))                          \
    X(conv2d_forward, "conv2d_forward", 1,                                                                             \
      "conv2d_forward(backend, x, weight, bias_or_None, (stride_h, stride_w), (pad_h, pad_w), x_nhwc, y_nhwc) -> y; "  \
      "an NHWC x or y is an (N, H, W, C) array.",                                                                      \
      ARGS(TENSOR("x", 4, 4), TENSOR("weight", 4, 4), OPTIONAL("bias", 1, 1), PAIR("stride", 1, INT_MAX),              \
           PAIR("padding", 0, INT_MAX), BOOL("x_nhwc"), BOOL("y_nhwc")),                                               \
      SHAPES(TRY(conv_out(c, 0, "x", NCHW(T(0), I(5))->shape, T(1)->shape, CONV(3, 4))); out_as_nhwc(c, 0, I(6))),     \
      CALL(NCHW(T(0), I(5)), T(1), OPT(2), CONV_LAYOUT(3, 4, I(5), I(6)), NCHW(O(0), I(6))))                           \
    X(conv2d_backward_input, "conv2d_backward_input", 1,                                                               \
      "conv2d_backward_input(backend, dy, weight, x_shape, (stride_h, stride_w), (pad_h, pad_w)) -> dx.",              \
      ARGS(TENSOR("dy", 4, 4), TENSOR("weight", 4, 4), SHAPE("x_shape", 4), PAIR("stride", 1, INT_MAX),                \
           PAIR("padding", 0, INT_MAX)),                                                                               \
      SHAPES(TRY(conv_out(c, -1, "x_shape", T(2)->shape, T(1)->shape, CONV(3, 4))); LIKE(0, 2)),                       \
      CALL(T(0), T(1), CONV(3, 4), O(0)))                                                                              \
    X(conv2d_backward_weight, "conv2d_backward_weight", 2,                                                             \
      "conv2d_backward_weight(backend, dy, x, weight_shape, has_bias, (stride_h, stride_w), (pad_h, pad_w))"           \
      " -> (dweight, dbias or None).",                                                                                 \
      ARGS(TENSOR("dy", 4, 4), TENSOR("x", 4, 4), SHAPE("weight_shape", 4), BOOL("has_bias"),                          \
           PAIR("stride", 1, INT_MAX), PAIR("padding", 0, INT_MAX)),                                                   \
      SHAPES(TRY(conv_out(c, -1, "x", T(1)->shape, T(2)->shape, CONV(4, 5))); LIKE(0, 2); if (I(3)) DIMS(1, D(2, 0))), \
      CALL(T(0), T(1), CONV(4, 5), O(0), O(1)))                                                                        \
    X(linear_forward, "linear_forward", 1, "linear_forward(backend, x, weight, bias_or_None) -> y.",                   \
      ARGS(TENSOR("x", 2, 2), TENSOR("weight", 2, 2), OPTIONAL("bias", 1, 1)), SHAPES(DIMS(0, D(0, 0), D(1, 0))),      \
      CALL(T(0), T(1), OPT(2), O(0)))                                                                                  \
    X(linear_backward_input, "linear_backward_input", 1, "linear_backward_input(backend, dy, weight) -> dx.",          \
      ARGS(TENSOR("dy", 2, 2), TENSOR("weight", 2, 2)), SHAPES(DIMS(0, D(0, 0), D(1, 1))), CALL(T(0), T(1), O(0)))     \
    X(linear_backward_weight, "linear_backward_weight", 2,                                                             \
      "linear_backward_weight(backend, dy, x, has_bias) -> (dweight, dbias or None).",                                 \
      ARGS(TENSOR("dy", 2, 2), TENSOR("x", 2, 2), BOOL("has_bias")),                                                   \
      SHAPES(DIMS(0, D(0, 1), D(1, 1)); if (I(2)) DIMS(1, D(0, 1))), CALL(T(0), T(1), O(0), O(1)))                     \
    X(group_norm_forward, "group_norm", 3,                                                                             \
      "group_norm_forward(backend, x, groups, gamma|None, beta|None, eps) -> (y, mean, rstd); mean, rstd "             \
      "(N, groups).",                                                                                                  \
      ARGS(TENSOR("x", 2, 4), INT("groups", 1, INT_MAX), OPTIONAL("gamma", 1, 1), OPTIONAL("beta", 1, 1),              \
           FLOAT("eps")),                                                                                              \
      SHAPES(LIKE(0, 0); DIMS(1, D(0, 0), I(1)); DIMS(2, D(0, 0), I(1))),                                              \
      CALL(T(0), OPT(2), OPT(3), I(1), F(4), O(0), O(1), O(2)))                                                        \
    X(group_norm_act_forward, "group_norm_act", 1,                                                                     \
      "group_norm_act_forward(backend, x, add|None, groups, gamma|None, beta|None, ss|None, eps, silu, x_nhwc, "       \
      "y_nhwc) -> y = silu(group_norm(x + add) (1 + scale) + shift); an NHWC x or y is an (N, H, W, C) array.",        \
      ARGS(TENSOR("x", 4, 4), OPTIONAL("add", 2, 2), INT("groups", 1, INT_MAX), OPTIONAL("gamma", 1, 1),               \
           OPTIONAL("beta", 1, 1), OPTIONAL("ss", 2, 2), FLOAT("eps"), BOOL("silu"), BOOL("x_nhwc"), BOOL("y_nhwc")),  \
      SHAPES(LIKE(0, 0); memcpy(c->out_shape[0], NCHW(T(0), I(8))->shape, sizeof c->out_shape[0]);                     \
             out_as_nhwc(c, 0, I(9))),                                                                                 \
      CALL(NCHW(T(0), I(8)), OPT(1), OPT(3), OPT(4), OPT(5), I(2), F(6), I(7), I(8), I(9), NCHW(O(0), I(9))))          \
    X(group_norm_backward, "group_norm_backward", 3,                                                                   \
      "group_norm_backward(backend, dy, x, groups, gamma|None, mean|None, rstd|None, eps) -> (dx, dgamma, dbeta); "    \
      "dgamma, dbeta are None when gamma is None; mean, rstd None recomputes the statistics.",                         \
      ARGS(TENSOR("dy", 2, 4), TENSOR("x", 2, 4), INT("groups", 1, INT_MAX), OPTIONAL("gamma", 1, 1),                  \
           OPTIONAL("mean", 2, 2), OPTIONAL("rstd", 2, 2), FLOAT("eps")),                                              \
      SHAPES(LIKE(0, 1); if (OPT(3)) {                                                                                 \
          DIMS(1, D(1, 1));                                                                                            \
          DIMS(2, D(1, 1));                                                                                            \
      }),                                                                                                              \
      CALL(T(0), T(1), OPT(3), OPT(4), OPT(5), I(2), F(6), O(0), O(1), O(2)))                                          \
    X(batch_norm_forward, "batch_norm", 1,                                                                             \
      "batch_norm_forward(backend, x, running_mean, running_var, gamma|None, beta|None, eps) -> y.",                   \
      ARGS(TENSOR("x", 2, 4), TENSOR("running_mean", 1, 1), TENSOR("running_var", 1, 1), OPTIONAL("gamma", 1, 1),      \
           OPTIONAL("beta", 1, 1), FLOAT("eps")),                                                                      \
      SHAPES(LIKE(0, 0)), CALL(T(0), OPT(3), OPT(4), T(1), T(2), F(5), O(0)))                                          \
    X(batch_norm_backward, "batch_norm_backward", 3,                                                                   \
      "batch_norm_backward(backend, dy, x, running_mean, running_var, gamma|None, eps) -> (dx, dgamma, dbeta).",       \
      ARGS(TENSOR("dy", 2, 4), TENSOR("x", 2, 4), TENSOR("running_mean", 1, 1), TENSOR("running_var", 1, 1),           \
           OPTIONAL("gamma", 1, 1), FLOAT("eps")),                                                                     \
      SHAPES(LIKE(0, 1); DIMS(1, D(1, 1)); DIMS(2, D(1, 1))),                                                          \
      CALL(T(0), T(1), OPT(4), T(2), T(3), F(5), O(0), O(1), O(2)))                                                    \
    X(upsample_nearest2x_forward, "upsample_nearest2x", 1,                                                             \
      "upsample_nearest2x_forward(backend, x) -> y (N, C, 2H, 2W).", ARGS(TENSOR("x", 4, 4)),                          \
      SHAPES(DIMS(0, D(0, 0), D(0, 1), 2 * D(0, 2), 2 * D(0, 3))), CALL(T(0), O(0)))                                   \
    X(upsample_nearest2x_backward, "upsample_nearest2x_backward", 1,                                                   \
      "upsample_nearest2x_backward(backend, dy) -> dx (N, C, H/2, W/2).", ARGS(TENSOR("dy", 4, 4)),                    \
      SHAPES(REQUIRE(D(0, 2) % 2 == 0 && D(0, 3) % 2 == 0, "dy's height and width (%lld, %lld) must be even", D(0, 2), \
                     D(0, 3));                                                                                         \
             DIMS(0, D(0, 0), D(0, 1), D(0, 2) / 2, D(0, 3) / 2)),                                                     \
      CALL(T(0), O(0)))                                                                                                \
    X(avg_pool2d_forward, "avg_pool2d", 1,                                                                             \
      "avg_pool2d_forward(backend, x, (kh, kw), (sh, sw), (ph, pw)) -> y; padding not counted in the average.",        \
      ARGS(TENSOR("x", 4, 4), PAIR("kernel", 1, INT_MAX), PAIR("stride", 1, INT_MAX), PAIR("padding", 0, INT_MAX)),    \
      SHAPES(TRY(pool_out(c, 0, T(0)->shape, POOL(1, 2, 3)))), CALL(T(0), POOL(1, 2, 3), O(0)))                        \
    X(avg_pool2d_backward, "avg_pool2d_backward", 1,                                                                   \
      "avg_pool2d_backward(backend, dy, x_shape, (kh, kw), (sh, sw), (ph, pw)) -> dx.",                                \
      ARGS(TENSOR("dy", 4, 4), SHAPE("x_shape", 4), PAIR("kernel", 1, INT_MAX), PAIR("stride", 1, INT_MAX),            \
           PAIR("padding", 0, INT_MAX)),                                                                               \
      SHAPES(SAME_BATCH_CHANNELS(0, 1); TRY(pool_out(c, -1, T(1)->shape, POOL(2, 3, 4))); LIKE(0, 1)),                 \
      CALL(T(0), POOL(2, 3, 4), O(0)))                                                                                 \
    X(max_pool2d_forward, "max_pool2d", 1, "max_pool2d_forward(backend, x, (kh, kw), (sh, sw), (ph, pw)) -> y.",       \
      ARGS(TENSOR("x", 4, 4), PAIR("kernel", 1, INT_MAX), PAIR("stride", 1, INT_MAX), PAIR("padding", 0, INT_MAX)),    \
      SHAPES(TRY(pool_out(c, 0, T(0)->shape, POOL(1, 2, 3)))), CALL(T(0), POOL(1, 2, 3), O(0)))                        \
    X(max_pool2d_backward, "max_pool2d_backward", 1,                                                                   \
      "max_pool2d_backward(backend, dy, x, (kh, kw), (sh, sw), (ph, pw)) -> dx.",                                      \
      ARGS(TENSOR("dy", 4, 4), TENSOR("x", 4, 4), PAIR("kernel", 1, INT_MAX), PAIR("stride", 1, INT_MAX),              \
           PAIR("padding", 0, INT_MAX)),                                                                               \
      SHAPES(TRY(pool_out(c, -1, T(1)->shape, POOL(2, 3, 4))); LIKE(0, 1)), CALL(T(0), T(1), POOL(2, 3, 4), O(0)))     \
    X(global_avg_pool_forward, "global_avg_pool", 1, "global_avg_pool_forward(backend, x) -> y (N, C).",               \
      ARGS(TENSOR("x", 4, 4)), SHAPES(DIMS(0, D(0, 0), D(0, 1))), CALL(T(0), O(0)))                                    \
    X(global_avg_pool_backward, "global_avg_pool_backward", 1,                                                         \
      "global_avg_pool_backward(backend, dy, x_shape) -> dx.", ARGS(TENSOR("dy", 2, 2), SHAPE("x_shape", 4)),          \
      SHAPES(SAME_BATCH_CHANNELS(0, 1); LIKE(0, 1)), CALL(T(0), O(0)))                                                 \
    X(resize_bilinear_forward, "resize_bilinear", 1, "resize_bilinear_forward(backend, x, (H, W)) -> y (N, C, H, W).", \
      ARGS(TENSOR("x", 4, 4), PAIR("size", 1, INT_MAX)), SHAPES(DIMS(0, D(0, 0), D(0, 1), P(1, 0), P(1, 1))),          \
      CALL(T(0), O(0)))                                                                                                \
    X(resize_bilinear_backward, "resize_bilinear_backward", 1,                                                         \
      "resize_bilinear_backward(backend, dy, x_shape) -> dx.", ARGS(TENSOR("dy", 4, 4), SHAPE("x_shape", 4)),          \
      SHAPES(SAME_BATCH_CHANNELS(0, 1); LIKE(0, 1)), CALL(T(0), O(0)))                                                 \
    X(attention_forward, "attention", 1,                                                                               \
      "attention_forward(backend, qkv, heads, legacy_order) -> y (N, C, T) from qkv (N, 3C, T).",                      \
      ARGS(TENSOR("qkv", 3, 3), INT("heads", 1, INT_MAX), BOOL("legacy_order")),                                       \
      SHAPES(REQUIRE(D(0, 1) % 3 == 0, "qkv has %lld channels; expected 3 * C (q, k and v)", D(0, 1));                 \
             DIMS(0, D(0, 0), D(0, 1) / 3, D(0, 2))),                                                                  \
      CALL(T(0), I(1), I(2), O(0)))                                                                                    \
    X(attention_backward, "attention_backward", 1,                                                                     \
      "attention_backward(backend, dy, qkv, heads, legacy_order) -> dqkv (N, 3C, T).",                                 \
      ARGS(TENSOR("dy", 3, 3), TENSOR("qkv", 3, 3), INT("heads", 1, INT_MAX), BOOL("legacy_order")),                   \
      SHAPES(LIKE(0, 1)), CALL(T(0), T(1), I(2), I(3), O(0)))                                                          \
    X(timestep_embedding, "timestep_embedding", 1,                                                                     \
      "timestep_embedding(backend, t, dim, max_period) -> y (N, dim) from float32 t (N,).",                            \
      ARGS(TENSOR("t", 1, 1), INT("dim", 2, INT_MAX), FLOAT("max_period")), SHAPES(DIMS(0, D(0, 0), I(1))),            \
      CALL(T(0), F(2), O(0)))                                                                                          \
    X(cross_entropy_forward, "cross_entropy", 1,                                                                       \
      "cross_entropy_forward(backend, logits (N, K), targets (N,) ints in [0, K)) -> per-sample loss (N,).",           \
      ARGS(TENSOR("logits", 2, 2), INT64S("targets", 0)), SHAPES(DIMS(0, D(0, 0))), CALL(T(0), V(1), O(0)))            \
    X(cross_entropy_backward, "cross_entropy_backward", 1,                                                             \
      "cross_entropy_backward(backend, dloss (N,), logits, targets) -> dlogits (N, K).",                               \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("logits", 2, 2), INT64S("targets", 1)), SHAPES(LIKE(0, 1)),                   \
      CALL(T(0), T(1), V(2), O(0)))                                                                                    \
    X(mse_forward, "mse", 1, "mse_forward(backend, a, b) -> per-sample mean of (a - b)^2, shape (N,).",                \
      ARGS(TENSOR("a", 1, 4), TENSOR("b", 1, 4)), SHAPES(DIMS(0, D(0, 0))), CALL(T(0), T(1), O(0)))                    \
    X(mse_backward, "mse_backward", 2, "mse_backward(backend, dloss (N,), a, b) -> (da, db).",                         \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("a", 1, 4), TENSOR("b", 1, 4)), SHAPES(LIKE(0, 1); LIKE(1, 1)),               \
      CALL(T(0), T(1), T(2), O(0), O(1)))                                                                              \
    X(scale_shift_forward, "scale_shift", 1,                                                                           \
      "scale_shift_forward(backend, x, ss) -> y = x (1 + scale) + shift; x (N, C, ...), ss (N, 2C) = [scale|shift].",  \
      ARGS(TENSOR("x", 2, 4), TENSOR("ss", 2, 2)), SHAPES(LIKE(0, 0)), CALL(T(0), T(1), O(0)))                         \
    X(scale_shift_backward, "scale_shift_backward", 2,                                                                 \
      "scale_shift_backward(backend, dy, x, ss) -> (dx, dss); dss = [sum dy x | sum dy] over x's spatial dims.",       \
      ARGS(TENSOR("dy", 2, 4), TENSOR("x", 2, 4), TENSOR("ss", 2, 2)), SHAPES(LIKE(0, 1); LIKE(1, 2)),                 \
      CALL(T(0), T(1), T(2), O(0), O(1)))                                                                              \
    /* diffusion ops: per-row factors and coefficients are host vectors, one entry per row of the images */            \
    X(q_sample, "q_sample", 1,                                                                                         \
      "q_sample(backend, x0, noise, sqrt_abar, sqrt_one_minus_abar) -> x_t = sqrt_abar[b] x0 + "                       \
      "sqrt_one_minus_abar[b] noise; the factors float32 (N,).",                                                       \
      ARGS(TENSOR("x0", 1, 4), TENSOR("noise", 1, 4), FLOATS("sqrt_abar", 0), FLOATS("sqrt_one_minus_abar", 0)),       \
      SHAPES(LIKE(0, 0)), CALL(T(0), T(1), VF(2), VF(3), O(0)))                                                        \
    X(p_mean_variance_forward, "p_mean_variance", 4,                                                                   \
      "p_mean_variance_forward(backend, model_output, x_t, " POSTERIOR_COEF_NAMES ", output_kind, clip) -> (mean, "    \
      "variance, log_variance, pred_xstart); the coefficients float32 (N,) (ops.h's dfc_posterior_coefs).",            \
      ARGS(TENSOR("model_output", 2, 4), TENSOR("x_t", 2, 4), POSTERIOR_COEF_ARGS(1), INT("output_kind", 0, 2),        \
           BOOL("clip")),                                                                                              \
      SHAPES(LIKE(0, 1); LIKE(1, 1); LIKE(2, 1); LIKE(3, 1)),                                                          \
      CALL(T(0), T(1), POSTERIOR_COEFS(2), I(10), I(11), O(0), O(1), O(2), O(3)))                                      \
    X(p_mean_variance_backward, "p_mean_variance_backward", 2,                                                         \
      "p_mean_variance_backward(backend, d_pred_xstart, model_output, x_t, " POSTERIOR_COEF_NAMES ", output_kind, "    \
      "clip) -> (dx_t, d_model_output).",                                                                              \
      ARGS(TENSOR("d_pred_xstart", 2, 4), TENSOR("model_output", 2, 4), TENSOR("x_t", 2, 4), POSTERIOR_COEF_ARGS(2),   \
           INT("output_kind", 0, 2), BOOL("clip")),                                                                    \
      SHAPES(LIKE(0, 2); LIKE(1, 1)), CALL(T(0), T(1), T(2), POSTERIOR_COEFS(3), I(11), I(12), O(0), O(1)))            \
    X(sample_step, "sample_step", 1,                                                                                   \
      "sample_step(backend, mean, variance, log_variance, grad_or_None, noise, noise_weight (N,)) -> x_prev.",         \
      ARGS(TENSOR("mean", 1, 4), TENSOR("variance", 1, 4), TENSOR("log_variance", 1, 4), OPTIONAL("grad", 1, 4),       \
           TENSOR("noise", 1, 4), FLOATS("noise_weight", 0)),                                                          \
      SHAPES(LIKE(0, 0)), CALL(T(0), T(1), T(2), OPT(3), T(4), VF(5), O(0)))                                           \
    X(gaussian_noise, "gaussian_noise", 1,                                                                             \
      "gaussian_noise(backend, shape (N, m), seed, keys (N,), stream, iteration, step, inner_step) -> (N, m): row b "  \
      "the standard normals of the sampler's stream (seed, keys[b], ...); seed and keys as int64 bit patterns.",       \
      ARGS(SHAPE("shape", 2), INT64("seed", LLONG_MIN, LLONG_MAX), INT64S("keys", 0), INT64("stream", 0, UINT32_MAX),  \
           INT64("iteration", 0, UINT32_MAX), INT64("step", 0, UINT32_MAX), INT64("inner_step", 0, UINT32_MAX)),       \
      SHAPES(DIMS(0, D(0, 0), D(0, 1))),                                                                               \
      CALL((uint64_t)L(1), (const uint64_t *)V(2), (uint32_t)L(3), (uint32_t)L(4), (uint32_t)L(5), (uint32_t)L(6),     \
           O(0)))                                                                                                      \
    X(row_scale, "row_scale", 1, "row_scale(backend, x, alpha (N,)) -> alpha[b] x.",                                   \
      ARGS(TENSOR("x", 1, 4), FLOATS("alpha", 0)), SHAPES(LIKE(0, 0)), CALL(T(0), VF(1), O(0)))                        \
    X(row_axpy, "row_axpy", 0, "row_axpy(backend, alpha (N,), x, y): y += alpha[b] x, in place.",                      \
      ARGS(FLOATS("alpha", 1), TENSOR("x", 1, 4), INOUT("y", 1, 4)), SHAPES(), CALL(VF(0), T(1), T(2)))                \
    X(change_map, "change_map", 1, "change_map(backend, a, b) -> FastDiME's change map (N, 1, H, W).",                 \
      ARGS(TENSOR("a", 4, 4), TENSOR("b", 4, 4)), SHAPES(DIMS(0, D(0, 0), 1, D(0, 2), D(0, 3))),                       \
      CALL(T(0), T(1), O(0)))                                                                                          \
    X(masked_blend, "masked_blend", 1,                                                                                 \
      "masked_blend(backend, a, b, mask (N, 1, H, W), threshold) -> a (1 - keep) + keep b, keep = mask < threshold.",  \
      ARGS(TENSOR("a", 4, 4), TENSOR("b", 4, 4), TENSOR("mask", 4, 4), FLOAT("threshold")), SHAPES(LIKE(0, 0)),        \
      CALL(T(0), T(1), T(2), (float)F(3), O(0)))                                                                       \
    X(distance_penalty_forward, "distance_penalty", 1,                                                                 \
      "distance_penalty_forward(backend, a, b, lambda_l1, lambda_l2) -> loss (N,).",                                   \
      ARGS(TENSOR("a", 4, 4), TENSOR("b", 4, 4), FLOAT("lambda_l1"), FLOAT("lambda_l2")), SHAPES(DIMS(0, D(0, 0))),    \
      CALL(T(0), T(1), (float)F(2), (float)F(3), O(0)))                                                                \
    X(distance_penalty_backward, "distance_penalty_backward", 1,                                                       \
      "distance_penalty_backward(backend, dloss (N,), a, b, lambda_l1, lambda_l2) -> da.",                             \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("a", 4, 4), TENSOR("b", 4, 4), FLOAT("lambda_l1"), FLOAT("lambda_l2")),       \
      SHAPES(LIKE(0, 1)), CALL(T(0), T(1), T(2), (float)F(3), (float)F(4), O(0)))                                      \
    X(nonfinite_rows, "nonfinite_rows", 1,                                                                             \
      "nonfinite_rows(backend, x) -> flags (N,) int32: rows of x holding a NaN or infinity, set to 0 in place.",       \
      ARGS(INOUT_NONFINITE("x", 1, 4)), SHAPES(INT_ROWS(0, 0)), CALL(T(0), OI(0)))                                     \
    X(target_probability, "target_probability", 2,                                                                     \
      "target_probability(backend, logits (N, K), targets (N,)) -> (p(target) (N,), argmax == target (N,) int32).",    \
      ARGS(TENSOR("logits", 2, 2), INT64S("targets", 0)), SHAPES(DIMS(0, D(0, 0)); INT_ROWS(1, 0)),                    \
      CALL(T(0), V(1), O(0), OI(1)))                                                                                   \
    X(diffusion_vb_forward, "diffusion_vb", 1,                                                                         \
      "diffusion_vb_forward(backend, model_output, x_start, x_t, " VB_COEF_NAMES ") -> vb (N,); the coefficients "     \
      "float64 (N,), decoder_nll int (N,) (ops.h's dfc_vb_coefs).",                                                    \
      ARGS(TENSOR("model_output", 2, 4), TENSOR("x_start", 2, 4), TENSOR("x_t", 2, 4), VB_COEF_ARGS(1)),               \
      SHAPES(DIMS(0, D(1, 0))), CALL(T(0), T(1), T(2), VB_COEFS(3), O(0)))                                             \
    X(diffusion_vb_backward, "diffusion_vb_backward", 1,                                                               \
      "diffusion_vb_backward(backend, dvb (N,), model_output, x_start, x_t, " VB_COEF_NAMES ") -> d_v.",               \
      ARGS(TENSOR("dvb", 1, 1), TENSOR("model_output", 2, 4), TENSOR("x_start", 2, 4), TENSOR("x_t", 2, 4),            \
           VB_COEF_ARGS(2)),                                                                                           \
      SHAPES(LIKE(0, 2)), CALL(T(0), T(1), T(2), T(3), VB_COEFS(4), O(0)))                                             \
    /* optimizer ops (in place but sum_squares; NaN passes: the trainer checks the gradient norm) */                   \
    X(adamw_step, "adamw_step", 0,                                                                                     \
      "adamw_step(backend, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay): one AdamW "   \
      "step, in place on param, exp_avg, exp_avg_sq.",                                                                 \
      ARGS(INOUT_NONFINITE("param", 1, 4), TENSOR_NONFINITE("grad", 1, 4), INOUT_NONFINITE("exp_avg", 1, 4),           \
           INOUT_NONFINITE("exp_avg_sq", 1, 4), INT64("step", 1, INT64_MAX), FLOAT("lr"), FLOAT("beta1"),              \
           FLOAT("beta2"), FLOAT("eps"), FLOAT("weight_decay")),                                                       \
      SHAPES(), CALL(&(dfc_adamw_config){F(5), F(6), F(7), F(8), F(9)}, L(4), T(0), T(1), T(2), T(3)))                 \
    X(ema_update, "ema_update", 0, "ema_update(backend, rate, ema, param): ema = rate ema + (1 - rate) param.",        \
      ARGS(FLOAT("rate"), INOUT_NONFINITE("ema", 1, 4), TENSOR_NONFINITE("param", 1, 4)), SHAPES(),                    \
      CALL(F(0), T(1), T(2)))                                                                                          \
    X(scale, "scale", 0, "scale(backend, x, factor): x *= factor, in place.",                                          \
      ARGS(INOUT_NONFINITE("x", 1, 4), FLOAT("factor")), SHAPES(), CALL(T(0), (float)F(1)))                            \
    X(sum_squares, "sum_squares", 1, "sum_squares(backend, x) -> the sum of x^2 (a float, accumulated in double).",    \
      ARGS(TENSOR_NONFINITE("x", 1, DFC_MAX_DIMS)), SHAPES(SCALAR(0)), CALL(T(0), OD(0)))                              \
    /* network ops (issue 15, netops): per-sample losses (N,), their backward from dloss (N,) */                       \
    X(logit_loss_forward, "logit_loss", 1,                                                                             \
      "logit_loss_forward(backend, logits (N, C), targets (N,)) -> per-sample -l_y (N,).",                             \
      ARGS(TENSOR("logits", 2, 2), INT64S("targets", 0)), SHAPES(DIMS(0, D(0, 0))), CALL(T(0), V(1), O(0)))            \
    X(logit_loss_backward, "logit_loss_backward", 1,                                                                   \
      "logit_loss_backward(backend, dloss (N,), logits, targets) -> dlogits (N, C).",                                  \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("logits", 2, 2), INT64S("targets", 1)), SHAPES(LIKE(0, 1)),                   \
      CALL(T(0), T(1), V(2), O(0)))                                                                                    \
    X(bce_with_logits_forward, "bce_with_logits", 1,                                                                   \
      "bce_with_logits_forward(backend, logits (N, ...), targets (logits' shape)) -> per-sample mean BCE (N,).",       \
      ARGS(TENSOR("logits", 1, 4), TENSOR("targets", 1, 4)), SHAPES(DIMS(0, D(0, 0))), CALL(T(0), T(1), O(0)))         \
    X(bce_with_logits_backward, "bce_with_logits_backward", 1,                                                         \
      "bce_with_logits_backward(backend, dloss (N,), logits, targets) -> dlogits.",                                    \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("logits", 1, 4), TENSOR("targets", 1, 4)), SHAPES(LIKE(0, 1)),                \
      CALL(T(0), T(1), T(2), O(0)))                                                                                    \
    X(standardize_forward, "standardize", 1,                                                                           \
      "standardize_forward(backend, x (N, C, H, W), scale) -> scale (x - mean) / std per (n, c) plane.",               \
      ARGS(TENSOR("x", 1, 4), FLOAT("scale")), SHAPES(LIKE(0, 0)), CALL(T(0), (float)F(1), O(0)))                      \
    X(standardize_backward, "standardize_backward", 1, "standardize_backward(backend, dy, x, scale) -> dx.",           \
      ARGS(TENSOR("dy", 1, 4), TENSOR("x", 1, 4), FLOAT("scale")), SHAPES(LIKE(0, 1)),                                 \
      CALL(T(0), T(1), (float)F(2), O(0)))                                                                             \
    X(normalized_distance_forward, "normalized_distance", 1,                                                           \
      "normalized_distance_forward(backend, a (N, C, ...), b) -> per-sample channel-normalised distance (N,).",        \
      ARGS(TENSOR("a", 1, 4), TENSOR("b", 1, 4)), SHAPES(DIMS(0, D(0, 0))), CALL(T(0), T(1), O(0)))                    \
    X(normalized_distance_backward, "normalized_distance_backward", 1,                                                 \
      "normalized_distance_backward(backend, dloss (N,), a, b) -> da.",                                                \
      ARGS(TENSOR("dloss", 1, 1), TENSOR("a", 1, 4), TENSOR("b", 1, 4)), SHAPES(LIKE(0, 1)),                           \
      CALL(T(0), T(1), T(2), O(0)))                                                                                    \
    X(fill, "fill", 0, "fill(backend, y, value): y = value everywhere, in place.",                                     \
      ARGS(INOUT_NONFINITE("y", 1, 4), FLOAT("value")), SHAPES(), CALL((float)F(1), T(0)))

/* ---- the one function every entry runs through ---- */

/* A KIND argument: the index of obj's name in choices ("a|b|c"); sets the label from the entry's format. */
static int parse_kind(op_call *c, const op_desc *op, const arg_spec *s, PyObject *obj, int *out)
{
    const char *name = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (!name) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a str, one of %s, got %.100s", op->name, s->name, s->choices,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const size_t len = strlen(name);
    const char *choice = s->choices;
    for (int k = 0; *choice; k++) {
        const char *end = strchr(choice, '|');
        const size_t choice_len = end ? (size_t)(end - choice) : strlen(choice);
        if (len == choice_len && strncmp(name, choice, len) == 0) {
            *out = k;
            snprintf(c->label, sizeof c->label, op->label, name);
            return 0;
        }
        choice += choice_len + (end != NULL);
    }
    PyErr_Format(PyExc_ValueError, "%s: %s must be one of %s, got '%s'", op->name, s->name, s->choices, name);
    return -1;
}

/* A SHAPE argument: s->lo positive ints, kept as a tensor without data (so LIKE and D read it). */
static int parse_shape(op_call *c, const arg_spec *s, PyObject *obj, dfc_tensor *t)
{
    PyObject *seq = PySequence_Check(obj) ? PySequence_Fast(obj, "") : NULL;
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a sequence of %lld ints, got %.100s", c->label, s->name, s->lo,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int status = n == s->lo
                     ? 0
                     : op_fail(c, "%s must be a sequence of %d positive ints, got %zd entries", s->name, (int)s->lo, n);
    *t = (dfc_tensor){.ndim = (int)n};
    for (Py_ssize_t k = 0; status == 0 && k < n; k++) {
        char name[80];
        snprintf(name, sizeof name, "%s: %s[%zd]", c->label, s->name, k);
        long long v;
        status = dfc_py_int64(PySequence_Fast_GET_ITEM(seq, k), name, LLONG_MIN, LLONG_MAX, &v);
        if (status == 0 && v < 1)
            status = op_fail(c, "%s[%zd] must be positive, got %lld", s->name, k, v);
        t->shape[k] = v;
    }
    Py_DECREF(seq);
    return status;
}

/* A TENSORS argument: 1 to MAX_OUTS arrays, named xs[k]; the first is also kept as the argument's tensor. */
static int parse_tensors(op_call *c, const arg_spec *s, PyObject *obj, arg_value *v)
{
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a list or tuple of arrays, got %.100s", c->label, s->name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int status = n >= 1 && n <= MAX_OUTS ? 0 : op_fail(c, "%s must hold 1 to %d arrays, got %zd", s->name, MAX_OUTS, n);
    for (Py_ssize_t k = 0; status == 0 && k < n; k++) {
        char name[40];
        snprintf(name, sizeof name, "%s[%zd]", s->name, k);
        status = dfc_py_tensor(PySequence_Fast_GET_ITEM(seq, k), c->label, name, (int)s->lo, (int)s->hi, 1, &c->refs,
                               &c->parts[k]);
        c->part_ptrs[k] = &c->parts[k];
    }
    Py_DECREF(seq);
    if (status == 0) {
        v->t = c->parts[0];
        v->i = (int)n;
    }
    return status;
}

/* A ROWS argument: a 1-D host array of s->hi (a numpy type) with one entry per row of argument s->lo. */
static int parse_rows(op_call *c, const op_desc *op, const arg_spec *s, PyObject *obj, arg_value *v)
{
    const int64_t rows = c->a[s->lo].t.shape[0];
    const int type = (int)s->hi;
    if (type == NPY_INT64 || type == NPY_INT) {
        const int64_t *values;
        TRY(dfc_py_int64_vector(obj, c->label, s->name, rows, &c->refs, &values));
        v->rows = values;
        if (type == NPY_INT64)
            return 0;
        for (int64_t k = 0; k < rows; k++)
            REQUIRE(values[k] >= INT_MIN && values[k] <= INT_MAX, "%s[%lld] = %lld is outside a C int", s->name,
                    (long long)k, (long long)values[k]);
        obj = c->refs.refs[c->refs.count - 1]; /* the int64 copy: converted below without wrapping */
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    const char *type_name = type == NPY_FLOAT32 ? "float32" : type == NPY_FLOAT64 ? "float64" : "int";
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a 1-D array of %s values (one per row of %s), got %.100s",
                     c->label, s->name, type_name, op->args[s->lo].name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const int ndim = PyArray_NDIM(a);
    const long long got = ndim == 1 ? (long long)PyArray_DIM(a, 0) : -1;
    if (got != rows) {
        Py_DECREF(a);
        if (ndim != 1)
            return op_fail(c, "%s must be a 1-D array of %s values (one per row of %s), got %d dims", s->name,
                           type_name, op->args[s->lo].name, ndim);
        return op_fail(c, "%s must have %lld entries (one per row of %s), got %lld", s->name, (long long)rows,
                       op->args[s->lo].name, got);
    }
    if (c->refs.count >= DFC_PY_MAX_ARGS) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_RuntimeError, "diffice: too many array arguments in one call");
        return -1;
    }
    c->refs.refs[c->refs.count++] = (PyObject *)a;
    v->rows = PyArray_DATA(a);
    return 0;
}

static int parse_arg(op_call *c, const op_desc *op, const arg_spec *s, PyObject *obj, arg_value *v)
{
    char name[80]; /* "label: name", for the scalar readers' messages */
    if (s->kind == A_INT || s->kind == A_INT64 || s->kind == A_FLOAT || s->kind == A_PAIR)
        snprintf(name, sizeof name, "%s: %s", c->label, s->name);
    switch (s->kind) {
    case A_TENSOR:
    case A_TENSOR_NONFINITE:
    case A_INOUT:
    case A_INOUT_NONFINITE: {
        const int finite = s->kind == A_TENSOR || s->kind == A_INOUT;
        const int writable = s->kind == A_INOUT || s->kind == A_INOUT_NONFINITE;
        TRY(dfc_py_tensor(obj, c->label, s->name, (int)s->lo, (int)s->hi, finite, &c->refs, &v->t));
        if (writable && !PyArray_ISWRITEABLE((PyArrayObject *)obj)) {
            PyErr_Format(PyExc_ValueError, "%s: %s must be writable (it is updated in place)", c->label, s->name);
            return -1;
        }
        return 0;
    }
    case A_OPTIONAL: return dfc_py_optional_tensor(obj, c->label, s->name, (int)s->lo, (int)s->hi, 1, &c->refs, &v->t);
    case A_INT: return dfc_py_int(obj, name, (int)s->lo, (int)s->hi, &v->i);
    case A_INT64: return dfc_py_int64(obj, name, s->lo, s->hi, &v->l);
    case A_BOOL: return (v->i = PyObject_IsTrue(obj)) < 0 ? -1 : 0;
    case A_FLOAT: {
        const double value = PyFloat_AsDouble(obj);
        if (value == -1.0 && PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%s: expected a number, got %.100s", name, Py_TYPE(obj)->tp_name);
            return -1;
        }
        v->f = value;
        return 0;
    }
    case A_PAIR: {
        PyObject *seq = PySequence_Check(obj) ? PySequence_Fast(obj, "") : NULL;
        if (!seq || PySequence_Fast_GET_SIZE(seq) != 2) {
            Py_XDECREF(seq);
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a pair of ints (h, w), got %.100s", name, Py_TYPE(obj)->tp_name);
            return -1;
        }
        int status = 0;
        for (int k = 0; status == 0 && k < 2; k++) {
            snprintf(name, sizeof name, "%s: %s[%d]", c->label, s->name, k);
            status = dfc_py_int(PySequence_Fast_GET_ITEM(seq, k), name, (int)s->lo, (int)s->hi, &v->pair[k]);
        }
        Py_DECREF(seq);
        return status;
    }
    case A_SHAPE: return parse_shape(c, s, obj, &v->t);
    case A_ROWS: return parse_rows(c, op, s, obj, v);
    case A_KIND: return parse_kind(c, op, s, obj, &v->i);
    case A_TENSORS: return parse_tensors(c, s, obj, v);
    case A_OBJECT: v->obj = obj; return 0;
    case A_END: break;
    }
    PyErr_Format(PyExc_SystemError, "%s: argument %s has no kind", op->name, s->name);
    return -1;
}

/* The outputs as Python returns them: one array, a tuple, or a list; absent ones None. */
static PyObject *new_outputs(op_call *c, int nout, int as_list)
{
    PyObject *items[MAX_OUTS];
    for (int j = 0; j < c->nout; j++) {
        c->o_ptrs[j] = &c->o[j];
        if (c->out_ndim[j] && c->out_kind[j] == OUT_INT) {
            items[j] = PyArray_ZEROS(1, (npy_intp[]){(npy_intp)c->out_shape[j][0]}, NPY_INT, 0);
            c->out_ints[j] = items[j] ? PyArray_DATA((PyArrayObject *)items[j]) : NULL;
        } else if (c->out_ndim[j] && c->out_kind[j] == OUT_FLOAT32) {
            items[j] = dfc_py_new_tensor(c->out_ndim[j], c->out_shape[j], &c->o[j]);
        } else { /* None, or a double filled in after the call (out_scalars) */
            c->out_double[j] = 0.0;
            items[j] = (Py_INCREF(Py_None), Py_None);
        }
        if (!items[j]) {
            while (j--)
                Py_DECREF(items[j]);
            return NULL;
        }
    }
    if (nout == 0)
        Py_RETURN_NONE;
    if (nout == 1)
        return items[0];
    PyObject *out = as_list ? PyList_New(c->nout) : PyTuple_New(c->nout);
    for (int j = 0; j < c->nout; j++) {
        if (out && as_list)
            PyList_SET_ITEM(out, j, items[j]); /* steals */
        else if (out)
            PyTuple_SET_ITEM(out, j, items[j]);
        else
            Py_DECREF(items[j]);
    }
    return out;
}

/* out with each SCALAR output's None replaced by the double the op wrote; NULL (out dropped) on failure. */
static PyObject *out_scalars(op_call *c, PyObject *out)
{
    for (int j = 0; out && j < c->nout; j++) {
        if (!c->out_ndim[j] || c->out_kind[j] != OUT_DOUBLE)
            continue;
        PyObject *value = PyFloat_FromDouble(c->out_double[j]);
        if (!value || (!PyTuple_Check(out) && !PyList_Check(out))) {
            Py_DECREF(out); /* the single output's None */
            return value;
        }
        if ((PyTuple_Check(out) ? PyTuple_SetItem(out, j, value) : PyList_SetItem(out, j, value)) < 0) /* steals */
            Py_CLEAR(out);
    }
    return out;
}

/* The call on a backend whose memory is not host memory (a GPU): every float32 array (inputs, in-place arguments,
 * outputs) is staged into backend memory for the call (dfc_run_staged). Host vectors and int outputs stay on the
 * host: the op stages those itself. */
typedef struct {
    const op_desc *op;
    op_call *c;
} staged_op;

static dfc_status run_staged_op(dfc_backend *be, void *ctx, dfc_error *err)
{
    staged_op *s = ctx;
    return s->op->call(be, s->c, err);
}

static dfc_status call_staged(dfc_backend *be, const op_desc *op, op_call *c, int nargs, dfc_error *err)
{
    dfc_staged_tensor staged[MAX_ARGS + 2 * MAX_OUTS];
    int count = 0;
    for (int k = 0; k < nargs; k++) {
        enum arg_kind kind = op->args[k].kind;
        int in_place = kind == A_INOUT || kind == A_INOUT_NONFINITE;
        if (kind == A_TENSORS) {
            for (int p = 0; p < c->a[k].i; p++)
                staged[count++] = (dfc_staged_tensor){&c->parts[p], 1, 0, NULL};
        } else if ((kind == A_TENSOR || kind == A_OPTIONAL || kind == A_TENSOR_NONFINITE || in_place) &&
                   c->a[k].t.data) {
            staged[count++] = (dfc_staged_tensor){&c->a[k].t, 1, in_place, NULL};
        }
    }
    for (int j = 0; j < c->nout; j++)
        if (c->out_ndim[j] && c->out_kind[j] == OUT_FLOAT32)
            staged[count++] = (dfc_staged_tensor){&c->o[j], 0, 1, NULL};
    return dfc_run_staged(be, staged, count, run_staged_op, &(staged_op){op, c}, err);
}

static PyObject *run_op(const op_desc *op, PyObject *args)
{
    op_call c; /* not zero-filled whole: it is kilobytes, and every field is written before it is read */
    c.nout = op->nout == OUT_LIST ? 0 : op->nout;
    c.refs.count = 0;
    memset(c.out_ndim, 0, sizeof c.out_ndim);
    snprintf(c.label, sizeof c.label, "%s", op->label);
    int nargs = 0;
    while (nargs < MAX_ARGS && op->args[nargs].kind != A_END)
        nargs++;
    if (PyTuple_GET_SIZE(args) != nargs + 1) {
        PyErr_Format(PyExc_TypeError, "%s: expected %d arguments (backend and %d more), got %zd", op->name, nargs + 1,
                     nargs, PyTuple_GET_SIZE(args));
        return NULL;
    }
    dfc_backend *be;
    if (!dfc_py_backend(PyTuple_GET_ITEM(args, 0), &be))
        return NULL;
    PyObject *out = NULL;
    for (int pass = 0; pass < 2; pass++) /* a vector after the argument whose rows it follows */
        for (int k = 0; k < nargs; k++)
            if ((op->args[k].kind == A_ROWS) == pass &&
                parse_arg(&c, op, &op->args[k], PyTuple_GET_ITEM(args, k + 1), &c.a[k]) < 0)
                goto done;
    if (op->shapes(&c) < 0 || !(out = new_outputs(&c, op->nout, op->nout == OUT_LIST)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->iface->host_memory ? op->call(be, &c, &err) : call_staged(be, op, &c, nargs, &err));
    out = out_scalars(&c, out);
done:
    dfc_py_refs_release(&c.refs);
    return out;
}

/* Each entry becomes its shape rule, its call, its descriptor and its Python function. */
#define DEFINE_OP(name, label, nout, doc, args, shapes, call)                                  \
    static int name##_shapes(op_call *c)                                                       \
    {                                                                                          \
        (void)c; /* an op without outputs has no shape rule */                                 \
        shapes;                                                                                \
        return 0;                                                                              \
    }                                                                                          \
    static dfc_status name##_call(dfc_backend *be, op_call *c, dfc_error *err)                 \
    {                                                                                          \
        return be->ops->name(be, call, err);                                                   \
    }                                                                                          \
    static const op_desc name##_desc = {#name, label, nout, args, name##_shapes, name##_call}; \
    static PyObject *py_##name(PyObject *self, PyObject *py_args)                              \
    {                                                                                          \
        (void)self;                                                                            \
        return run_op(&name##_desc, py_args);                                                  \
    }
BOUND_OPS(DEFINE_OP)

#define METHOD_ENTRY(name, label, nout, doc, args, shapes, call) {#name, py_##name, METH_VARARGS, doc},
PyMethodDef dfc_methods_ops[] = {BOUND_OPS(METHOD_ENTRY){NULL, NULL, 0, NULL}};

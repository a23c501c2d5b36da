/* Bindings for conv2d and linear, forward and backward. Output shapes are computed here (the ops check them
 * again); impossible convolution geometries are rejected before anything is allocated. */
#include "pyutil.h"

#include "../ops/conv_check.h"

/* stride (h, w) and padding (h, w) read through dfc_py_int: a value past int32 (stride=2**40) is a ValueError
 * naming the op, the argument and its range, not a bare OverflowError. */
#define CONV_INT_ARGS(OP)                                                 \
    dfc_py_int_arg sh = {OP ": stride[0]", 1, INT_MAX, 1}, sw = {OP ": stride[1]", 1, INT_MAX, 1}, \
                   ph = {OP ": padding[0]", 0, INT_MAX, 0}, pw = {OP ": padding[1]", 0, INT_MAX, 0}
#define CONV_INT_FORMAT "O&O&O&O&"
#define CONV_INT_CONVERTERS \
    dfc_py_int_converter, &sh, dfc_py_int_converter, &sw, dfc_py_int_converter, &ph, dfc_py_int_converter, &pw

/* Fills p from the Python ints, rejecting strides < 1 and negative padding with a message naming the argument. */
static int conv_params(const char *op, int stride_h, int stride_w, int pad_h, int pad_w, dfc_conv2d_params *p)
{
    if (stride_h < 1 || stride_w < 1) {
        PyErr_Format(PyExc_ValueError, "%s: stride must be >= 1, got stride_h=%d, stride_w=%d", op, stride_h,
                     stride_w);
        return -1;
    }
    if (pad_h < 0 || pad_w < 0) {
        PyErr_Format(PyExc_ValueError, "%s: padding must be >= 0, got pad_h=%d, pad_w=%d", op, pad_h, pad_w);
        return -1;
    }
    p->stride_h = stride_h;
    p->stride_w = stride_w;
    p->pad_h = pad_h;
    p->pad_w = pad_w;
    return 0;
}

/* Reads a shape tuple of exactly n positive ints. */
static int shape_tuple(PyObject *obj, const char *op, const char *name, int n, int64_t *shape)
{
    PyObject *seq = PySequence_Fast(obj, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != n) {
        Py_XDECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s: %s must be a sequence of %d positive ints", op, name, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            v = 0;
        }
        if (v <= 0) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "%s: %s must be a sequence of %d positive ints (entry %d is not)", op,
                         name, n, i);
            return -1;
        }
        shape[i] = (int64_t)v;
    }
    Py_DECREF(seq);
    return 0;
}

/* Output size along one axis; ValueError naming the axis when the kernel does not fit the padded input. */
static int conv_out_size(const char *op, const char *x_name, const char *axis, int64_t in, int64_t kernel, int stride,
                         int pad, int64_t *out)
{
    *out = dfc_conv_out_size(in, kernel, stride, pad);
    if (*out <= 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: kernel %s %lld is larger than the padded input %s %lld (%s %s %lld + 2 * padding %d)", op,
                     axis, (long long)kernel, axis, (long long)(in + 2 * (int64_t)pad), x_name, axis, (long long)in,
                     pad);
        return -1;
    }
    return 0;
}

/* Output height and width of x (N, Ci, H, W) convolved by a kernel of w_shape (Co, Ci, KH, KW) under p. */
static int conv_out_hw(const char *op, const char *x_name, const int64_t *x_shape, const int64_t *w_shape,
                       dfc_conv2d_params p, int64_t *ho, int64_t *wo)
{
    if (conv_out_size(op, x_name, "height", x_shape[2], w_shape[2], p.stride_h, p.pad_h, ho) < 0 ||
        conv_out_size(op, x_name, "width", x_shape[3], w_shape[3], p.stride_w, p.pad_w, wo) < 0)
        return -1;
    return 0;
}

/* The ops take NULL for an absent optional tensor. */
static dfc_tensor *present(dfc_tensor *t)
{
    return t->data ? t : NULL;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "conv2d_forward";
    dfc_backend *be;
    PyObject *x_obj, *w_obj, *b_obj;
    CONV_INT_ARGS("conv2d_forward");
    dfc_conv2d_params p;
    if (!PyArg_ParseTuple(args, "O&OOO" CONV_INT_FORMAT, dfc_py_backend, &be, &x_obj, &w_obj, &b_obj,
                          CONV_INT_CONVERTERS) ||
        conv_params(op, sh.value, sw.value, ph.value, pw.value, &p) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, w, b, y;
    PyObject *out = NULL;
    int64_t ho, wo;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, &refs, &x) < 0 ||
        dfc_py_tensor(w_obj, op, "weight", 4, 4, 1, &refs, &w) < 0 ||
        dfc_py_optional_tensor(b_obj, op, "bias", 1, 1, 1, &refs, &b) < 0 ||
        conv_out_hw(op, "x", x.shape, w.shape, p, &ho, &wo) < 0)
        goto done;
    const int64_t y_shape[4] = {x.shape[0], w.shape[0], ho, wo};
    out = dfc_py_new_tensor(4, y_shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->conv2d_forward(be, &x, &w, present(&b), p, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_conv2d_backward_input(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "conv2d_backward_input";
    dfc_backend *be;
    PyObject *dy_obj, *w_obj, *shape_obj;
    CONV_INT_ARGS("conv2d_backward_input");
    dfc_conv2d_params p;
    int64_t x_shape[4], ho, wo;
    if (!PyArg_ParseTuple(args, "O&OOO" CONV_INT_FORMAT, dfc_py_backend, &be, &dy_obj, &w_obj, &shape_obj,
                          CONV_INT_CONVERTERS) ||
        conv_params(op, sh.value, sw.value, ph.value, pw.value, &p) < 0 ||
        shape_tuple(shape_obj, op, "x_shape", 4, x_shape) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, w, dx;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 4, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(w_obj, op, "weight", 4, 4, 1, &refs, &w) < 0 ||
        conv_out_hw(op, "x_shape", x_shape, w.shape, p, &ho, &wo) < 0)
        goto done;
    out = dfc_py_new_tensor(4, x_shape, &dx);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->conv2d_backward_input(be, &dy, &w, p, &dx, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_conv2d_backward_weight(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "conv2d_backward_weight";
    dfc_backend *be;
    PyObject *dy_obj, *x_obj, *shape_obj;
    int has_bias;
    CONV_INT_ARGS("conv2d_backward_weight");
    dfc_conv2d_params p;
    int64_t w_shape[4], ho, wo;
    if (!PyArg_ParseTuple(args, "O&OOOp" CONV_INT_FORMAT, dfc_py_backend, &be, &dy_obj, &x_obj, &shape_obj,
                          &has_bias, CONV_INT_CONVERTERS) ||
        conv_params(op, sh.value, sw.value, ph.value, pw.value, &p) < 0 ||
        shape_tuple(shape_obj, op, "weight_shape", 4, w_shape) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, dw, db = {0};
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 4, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 4, 4, 1, &refs, &x) < 0 ||
        conv_out_hw(op, "x", x.shape, w_shape, p, &ho, &wo) < 0)
        goto done;
    out = dfc_py_new_tuple(2, (dfc_py_output[]){{4, w_shape, &dw}, {1, has_bias ? w_shape : NULL, &db}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->conv2d_backward_weight(be, &dy, &x, p, &dw, present(&db), &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "linear_forward";
    dfc_backend *be;
    PyObject *x_obj, *w_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &x_obj, &w_obj, &b_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, w, b, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, op, "x", 2, 2, 1, &refs, &x) < 0 ||
        dfc_py_tensor(w_obj, op, "weight", 2, 2, 1, &refs, &w) < 0 ||
        dfc_py_optional_tensor(b_obj, op, "bias", 1, 1, 1, &refs, &b) < 0)
        goto done;
    const int64_t y_shape[2] = {x.shape[0], w.shape[0]};
    out = dfc_py_new_tensor(2, y_shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->linear_forward(be, &x, &w, present(&b), &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_linear_backward_input(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "linear_backward_input";
    dfc_backend *be;
    PyObject *dy_obj, *w_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &dy_obj, &w_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, w;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 2, 2, 1, &refs, &dy) == 0 &&
        dfc_py_tensor(w_obj, op, "weight", 2, 2, 1, &refs, &w) == 0) {
        const int64_t dx_shape[2] = {dy.shape[0], w.shape[1]};
        out = dfc_py_run_op2(be, be->ops->linear_backward_input, &dy, &w, 2, dx_shape);
    }
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_linear_backward_weight(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "linear_backward_weight";
    dfc_backend *be;
    PyObject *dy_obj, *x_obj;
    int has_bias;
    if (!PyArg_ParseTuple(args, "O&OOp", dfc_py_backend, &be, &dy_obj, &x_obj, &has_bias))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, dw, db = {0};
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 2, 2, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 2, 2, 1, &refs, &x) < 0)
        goto done;
    const int64_t dw_shape[2] = {dy.shape[1], x.shape[1]};
    out = dfc_py_new_tuple(2, (dfc_py_output[]){{2, dw_shape, &dw}, {1, has_bias ? dw_shape : NULL, &db}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->linear_backward_weight(be, &dy, &x, &dw, present(&db), &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_conv[] = {
    {"conv2d_forward", py_conv2d_forward, METH_VARARGS,
     "conv2d_forward(backend, x, weight, bias_or_None, stride_h, stride_w, pad_h, pad_w) -> y."},
    {"conv2d_backward_input", py_conv2d_backward_input, METH_VARARGS,
     "conv2d_backward_input(backend, dy, weight, x_shape, stride_h, stride_w, pad_h, pad_w) -> dx."},
    {"conv2d_backward_weight", py_conv2d_backward_weight, METH_VARARGS,
     "conv2d_backward_weight(backend, dy, x, weight_shape, has_bias, stride_h, stride_w, pad_h, pad_w)"
     " -> (dweight, dbias or None)."},
    {"linear_forward", py_linear_forward, METH_VARARGS, "linear_forward(backend, x, weight, bias_or_None) -> y."},
    {"linear_backward_input", py_linear_backward_input, METH_VARARGS,
     "linear_backward_input(backend, dy, weight) -> dx."},
    {"linear_backward_weight", py_linear_backward_weight, METH_VARARGS,
     "linear_backward_weight(backend, dy, x, has_bias) -> (dweight, dbias or None)."},
    {NULL, NULL, 0, NULL},
};

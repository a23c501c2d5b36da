/* Bindings for the spatial ops: nearest x2 upsample, average / max / global pooling, bilinear resize.
 * Output sizes are computed (and their arguments checked, naming the op) here; the ops check them again. */
#include "pyutil.h"

/* kernel, stride and padding (h, w) of a pooling read through dfc_py_int: a value past int32 (kernel=2**40) is a
 * ValueError naming the op, the argument and its range, not a bare OverflowError. Use:
 *   POOL_INT_ARGS("max_pool2d"); PyArg_ParseTuple(args, "O&O" POOL_INT_FORMAT, ..., POOL_INT_CONVERTERS);
 *   dfc_pool2d_params p = POOL_PARAMS; */
#define POOL_INT_ARGS(OP)                                                                             \
    dfc_py_int_arg kh = {OP ": kernel[0]", 1, INT_MAX, 1}, kw = {OP ": kernel[1]", 1, INT_MAX, 1},     \
                   sh = {OP ": stride[0]", 1, INT_MAX, 1}, sw = {OP ": stride[1]", 1, INT_MAX, 1},     \
                   ph = {OP ": padding[0]", 0, INT_MAX, 0}, pw = {OP ": padding[1]", 0, INT_MAX, 0}
#define POOL_INT_FORMAT "(O&O&)(O&O&)"
#define POOL_INT_CONVERTERS                                                                                 \
    dfc_py_int_converter, &kh, dfc_py_int_converter, &kw, dfc_py_int_converter, &sh, dfc_py_int_converter, &sw
#define POOL_PAD_CONVERTERS dfc_py_int_converter, &ph, dfc_py_int_converter, &pw
#define POOL_PARAMS {kh.value, kw.value, sh.value, sw.value, ph.value, pw.value}

/* A backward's x_shape argument: four positive ints whose batch and channels match dy's. */
static int parse_x_shape(PyObject *obj, const char *op, const dfc_tensor *dy, int64_t shape[4])
{
    PyObject *seq = PySequence_Check(obj) ? PySequence_Fast(obj, "") : NULL;
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: x_shape must be a sequence of 4 ints (N, C, H, W)", op);
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: x_shape must be a sequence of 4 ints (N, C, H, W)", op);
            return -1;
        }
        shape[i] = (int64_t)v;
    }
    Py_DECREF(seq);
    if (shape[0] <= 0 || shape[1] <= 0 || shape[2] <= 0 || shape[3] <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: x_shape (%lld, %lld, %lld, %lld) must be positive", op,
                     (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)shape[3]);
        return -1;
    }
    if (dy && (dy->shape[0] != shape[0] || dy->shape[1] != shape[1])) {
        PyErr_Format(PyExc_ValueError, "%s: dy has batch %lld and channels %lld but x_shape has %lld and %lld", op,
                     (long long)dy->shape[0], (long long)dy->shape[1], (long long)shape[0], (long long)shape[1]);
        return -1;
    }
    return 0;
}

/* PyTorch's pooling output size (floor mode), or -1 with ValueError naming the op. */
static int pool_output_size(const char *op, const int64_t x_shape[4], dfc_pool2d_params p, int64_t *ho, int64_t *wo)
{
    if (p.kernel_h < 1 || p.kernel_w < 1 || p.stride_h < 1 || p.stride_w < 1) {
        PyErr_Format(PyExc_ValueError, "%s: kernel (%d, %d) and stride (%d, %d) must be positive", op, p.kernel_h,
                     p.kernel_w, p.stride_h, p.stride_w);
        return -1;
    }
    if (p.pad_h < 0 || p.pad_w < 0 || p.pad_h > p.kernel_h / 2 || p.pad_w > p.kernel_w / 2) { /* no 2 * pad overflow */
        PyErr_Format(PyExc_ValueError, "%s: padding (%d, %d) must be between 0 and half the kernel (%d, %d)", op,
                     p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
        return -1;
    }
    const int64_t H = x_shape[2], W = x_shape[3];
    if (H + 2 * p.pad_h < p.kernel_h || W + 2 * p.pad_w < p.kernel_w) {
        PyErr_Format(PyExc_ValueError, "%s: input %lldx%lld (padded by %d, %d) is smaller than the kernel (%d, %d)",
                     op, (long long)H, (long long)W, p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
        return -1;
    }
    *ho = (H + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
    *wo = (W + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
    return 0;
}

/* The average and max pooling forwards: x (N, C, H, W) -> y (N, C, Ho, Wo) by the same rule and op signature. */
typedef dfc_status (*pool2d_forward_op)(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                        dfc_error *err);

static PyObject *pool2d_forward(dfc_backend *be, pool2d_forward_op run, const char *op, PyObject *x_obj,
                                dfc_pool2d_params p)
{
    dfc_py_refs refs = {0};
    dfc_tensor x, y;
    PyObject *out = NULL;
    int64_t ho, wo;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, &refs, &x) < 0 || pool_output_size(op, x.shape, p, &ho, &wo) < 0)
        goto done;
    const int64_t shape[4] = {x.shape[0], x.shape[1], ho, wo};
    out = dfc_py_new_tensor(4, shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, run(be, &x, p, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* The backwards whose dx shape dy does not determine (several input sizes pool or resize to one output size):
 * dy of dy_ndim dims and the forward's x_shape -> dx of x_shape. */
static PyObject *backward_to_x_shape(dfc_backend *be, dfc_py_op1 run, const char *op, int dy_ndim, PyObject *dy_obj,
                                     PyObject *shape_obj)
{
    dfc_py_refs refs = {0};
    dfc_tensor dy;
    PyObject *out = NULL;
    int64_t shape[4];
    if (dfc_py_tensor(dy_obj, op, "dy", dy_ndim, dy_ndim, 1, &refs, &dy) == 0 &&
        parse_x_shape(shape_obj, op, &dy, shape) == 0)
        out = dfc_py_run_op1(be, run, &dy, 4, shape);
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_upsample_nearest2x_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "upsample_nearest2x", "x", 4, 4, 1, &refs, &x) == 0) {
        const int64_t shape[4] = {x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3]};
        out = dfc_py_run_op1(be, be->ops->upsample_nearest2x_forward, &x, 4, shape);
    }
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_upsample_nearest2x_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "upsample_nearest2x_backward";
    dfc_backend *be;
    PyObject *dy_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &dy_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 4, 4, 1, &refs, &dy) < 0)
        goto done;
    if (dy.shape[2] % 2 || dy.shape[3] % 2) {
        PyErr_Format(PyExc_ValueError, "%s: dy's height and width (%lld, %lld) must be even", op,
                     (long long)dy.shape[2], (long long)dy.shape[3]);
        goto done;
    }
    const int64_t shape[4] = {dy.shape[0], dy.shape[1], dy.shape[2] / 2, dy.shape[3] / 2};
    out = dfc_py_run_op1(be, be->ops->upsample_nearest2x_backward, &dy, 4, shape);
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_avg_pool2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "avg_pool2d";
    dfc_backend *be;
    PyObject *x_obj;
    POOL_INT_ARGS("avg_pool2d");
    if (!PyArg_ParseTuple(args, "O&O" POOL_INT_FORMAT "|(O&O&)", dfc_py_backend, &be, &x_obj, POOL_INT_CONVERTERS,
                          POOL_PAD_CONVERTERS))
        return NULL;
    const dfc_pool2d_params p = POOL_PARAMS;
    return pool2d_forward(be, be->ops->avg_pool2d_forward, op, x_obj, p);
}

static PyObject *py_avg_pool2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "avg_pool2d_backward";
    dfc_backend *be;
    PyObject *dy_obj, *shape_obj;
    POOL_INT_ARGS("avg_pool2d_backward");
    if (!PyArg_ParseTuple(args, "O&OO" POOL_INT_FORMAT "|(O&O&)", dfc_py_backend, &be, &dy_obj, &shape_obj,
                          POOL_INT_CONVERTERS, POOL_PAD_CONVERTERS))
        return NULL;
    const dfc_pool2d_params p = POOL_PARAMS;
    dfc_py_refs refs = {0};
    dfc_tensor dy, dx;
    PyObject *out = NULL;
    int64_t shape[4], ho, wo;
    if (dfc_py_tensor(dy_obj, op, "dy", 4, 4, 1, &refs, &dy) < 0 || parse_x_shape(shape_obj, op, &dy, shape) < 0 ||
        pool_output_size(op, shape, p, &ho, &wo) < 0)
        goto done;
    out = dfc_py_new_tensor(4, shape, &dx);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->avg_pool2d_backward(be, &dy, p, &dx, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_max_pool2d_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "max_pool2d";
    dfc_backend *be;
    PyObject *x_obj;
    POOL_INT_ARGS("max_pool2d");
    if (!PyArg_ParseTuple(args, "O&O" POOL_INT_FORMAT "(O&O&)", dfc_py_backend, &be, &x_obj, POOL_INT_CONVERTERS,
                          POOL_PAD_CONVERTERS))
        return NULL;
    const dfc_pool2d_params p = POOL_PARAMS;
    return pool2d_forward(be, be->ops->max_pool2d_forward, op, x_obj, p);
}

static PyObject *py_max_pool2d_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "max_pool2d_backward";
    dfc_backend *be;
    PyObject *dy_obj, *x_obj;
    POOL_INT_ARGS("max_pool2d_backward");
    if (!PyArg_ParseTuple(args, "O&OO" POOL_INT_FORMAT "(O&O&)", dfc_py_backend, &be, &dy_obj, &x_obj,
                          POOL_INT_CONVERTERS, POOL_PAD_CONVERTERS))
        return NULL;
    const dfc_pool2d_params p = POOL_PARAMS;
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, dx;
    PyObject *out = NULL;
    int64_t ho, wo;
    if (dfc_py_tensor(dy_obj, op, "dy", 4, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 4, 4, 1, &refs, &x) < 0 || pool_output_size(op, x.shape, p, &ho, &wo) < 0)
        goto done;
    out = dfc_py_new_tensor(4, x.shape, &dx);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->max_pool2d_backward(be, &dy, &x, p, &dx, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_global_avg_pool_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "global_avg_pool", "x", 4, 4, 1, &refs, &x) == 0)
        out = dfc_py_run_op1(be, be->ops->global_avg_pool_forward, &x, 2, x.shape);
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_global_avg_pool_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "global_avg_pool_backward";
    dfc_backend *be;
    PyObject *dy_obj, *shape_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &dy_obj, &shape_obj))
        return NULL;
    return backward_to_x_shape(be, be->ops->global_avg_pool_backward, op, 2, dy_obj, shape_obj);
}

static int check_size(const char *op, long long h, long long w)
{
    if (h < 1 || w < 1) {
        PyErr_Format(PyExc_ValueError, "%s: size (%lld, %lld) must be positive", op, h, w);
        return -1;
    }
    return 0;
}

static PyObject *py_resize_bilinear_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "resize_bilinear";
    dfc_backend *be;
    PyObject *x_obj;
    dfc_py_int_arg size_h = {"resize_bilinear: size[0]", 1, INT_MAX, 1}, size_w = {"resize_bilinear: size[1]", 1,
                                                                                   INT_MAX, 1};
    if (!PyArg_ParseTuple(args, "O&O(O&O&)", dfc_py_backend, &be, &x_obj, dfc_py_int_converter, &size_h,
                          dfc_py_int_converter, &size_w))
        return NULL;
    const long long out_h = size_h.value, out_w = size_w.value;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, &refs, &x) == 0 && check_size(op, out_h, out_w) == 0) {
        const int64_t shape[4] = {x.shape[0], x.shape[1], out_h, out_w};
        out = dfc_py_run_op1(be, be->ops->resize_bilinear_forward, &x, 4, shape);
    }
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_resize_bilinear_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "resize_bilinear_backward";
    dfc_backend *be;
    PyObject *dy_obj, *shape_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &dy_obj, &shape_obj))
        return NULL;
    return backward_to_x_shape(be, be->ops->resize_bilinear_backward, op, 4, dy_obj, shape_obj);
}

PyMethodDef dfc_methods_spatial[] = {
    {"upsample_nearest2x_forward", py_upsample_nearest2x_forward, METH_VARARGS,
     "upsample_nearest2x_forward(backend, x) -> y (N, C, 2H, 2W)."},
    {"upsample_nearest2x_backward", py_upsample_nearest2x_backward, METH_VARARGS,
     "upsample_nearest2x_backward(backend, dy) -> dx (N, C, H/2, W/2)."},
    {"avg_pool2d_forward", py_avg_pool2d_forward, METH_VARARGS,
     "avg_pool2d_forward(backend, x, (kh, kw), (sh, sw)[, (ph, pw)]) -> y; padding not counted in the average."},
    {"avg_pool2d_backward", py_avg_pool2d_backward, METH_VARARGS,
     "avg_pool2d_backward(backend, dy, x_shape, (kh, kw), (sh, sw)[, (ph, pw)]) -> dx."},
    {"max_pool2d_forward", py_max_pool2d_forward, METH_VARARGS,
     "max_pool2d_forward(backend, x, (kh, kw), (sh, sw), (ph, pw)) -> y."},
    {"max_pool2d_backward", py_max_pool2d_backward, METH_VARARGS,
     "max_pool2d_backward(backend, dy, x, (kh, kw), (sh, sw), (ph, pw)) -> dx."},
    {"global_avg_pool_forward", py_global_avg_pool_forward, METH_VARARGS,
     "global_avg_pool_forward(backend, x) -> y (N, C)."},
    {"global_avg_pool_backward", py_global_avg_pool_backward, METH_VARARGS,
     "global_avg_pool_backward(backend, dy, x_shape) -> dx."},
    {"resize_bilinear_forward", py_resize_bilinear_forward, METH_VARARGS,
     "resize_bilinear_forward(backend, x, (H, W)) -> y (N, C, H, W)."},
    {"resize_bilinear_backward", py_resize_bilinear_backward, METH_VARARGS,
     "resize_bilinear_backward(backend, dy, x_shape) -> dx."},
    {NULL, NULL, 0, NULL},
};

/* Bindings for the elementwise ops: activations, softmax, broadcast add/mul, channel concat/split. */
#include "pyutil.h"

#include <stdio.h>
#include <string.h>

static int parse_activation(const char *name, dfc_activation *kind)
{
    if (strcmp(name, "relu") == 0)
        *kind = DFC_ACT_RELU;
    else if (strcmp(name, "silu") == 0)
        *kind = DFC_ACT_SILU;
    else if (strcmp(name, "sigmoid") == 0)
        *kind = DFC_ACT_SIGMOID;
    else {
        PyErr_Format(PyExc_ValueError, "activation: kind must be 'relu', 'silu' or 'sigmoid', got '%s'", name);
        return -1;
    }
    return 0;
}

static PyObject *py_activation_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    const char *kind_name;
    PyObject *x_obj;
    dfc_activation kind;
    if (!PyArg_ParseTuple(args, "O&sO", dfc_py_backend, &be, &kind_name, &x_obj) ||
        parse_activation(kind_name, &kind) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, kind_name, "x", 1, 4, 1, &refs, &x) < 0)
        goto done;
    out = dfc_py_new_tensor(x.ndim, x.shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->activation_forward(be, kind, &x, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_activation_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    const char *kind_name;
    PyObject *dy_obj, *x_obj;
    dfc_activation kind;
    if (!PyArg_ParseTuple(args, "O&sOO", dfc_py_backend, &be, &kind_name, &dy_obj, &x_obj) ||
        parse_activation(kind_name, &kind) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, dx;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, kind_name, "dy", 1, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, kind_name, "x", 1, 4, 1, &refs, &x) < 0)
        goto done;
    out = dfc_py_new_tensor(x.ndim, x.shape, &dx);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->activation_backward(be, kind, &dy, &x, &dx, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_softmax_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "softmax", "x", 1, 4, 1, &refs, &x) == 0)
        out = dfc_py_run_op1(be, be->ops->softmax_forward, &x, x.ndim, x.shape);
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_softmax_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *dy_obj, *y_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &dy_obj, &y_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, "softmax_backward", "dy", 1, 4, 1, &refs, &dy) == 0 &&
        dfc_py_tensor(y_obj, "softmax_backward", "y", 1, 4, 1, &refs, &y) == 0)
        out = dfc_py_run_op2(be, be->ops->softmax_backward, &dy, &y, y.ndim, y.shape);
    dfc_py_refs_release(&refs);
    return out;
}

static int parse_binary(const char *name, dfc_binary *kind)
{
    if (strcmp(name, "add") == 0)
        *kind = DFC_BINARY_ADD;
    else if (strcmp(name, "mul") == 0)
        *kind = DFC_BINARY_MUL;
    else {
        PyErr_Format(PyExc_ValueError, "binary: kind must be 'add' or 'mul', got '%s'", name);
        return -1;
    }
    return 0;
}

static PyObject *py_binary_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    const char *kind_name;
    PyObject *a_obj, *b_obj;
    dfc_binary kind;
    if (!PyArg_ParseTuple(args, "O&sOO", dfc_py_backend, &be, &kind_name, &a_obj, &b_obj) ||
        parse_binary(kind_name, &kind) < 0)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor a, b, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(a_obj, kind_name, "a", 1, 4, 1, &refs, &a) < 0 ||
        dfc_py_tensor(b_obj, kind_name, "b", 1, 4, 1, &refs, &b) < 0)
        goto done;
    out = dfc_py_new_tensor(a.ndim, a.shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->binary_forward(be, kind, &a, &b, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_binary_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    const char *kind_name;
    PyObject *dy_obj, *a_obj, *b_obj;
    dfc_binary kind;
    if (!PyArg_ParseTuple(args, "O&sOOO", dfc_py_backend, &be, &kind_name, &dy_obj, &a_obj, &b_obj) ||
        parse_binary(kind_name, &kind) < 0)
        return NULL;
    char op[32];
    snprintf(op, sizeof op, "%s_backward", kind_name);
    dfc_py_refs refs = {0};
    dfc_tensor dy, a, b, da, db;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 1, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(a_obj, op, "a", 1, 4, 1, &refs, &a) < 0 ||
        dfc_py_tensor(b_obj, op, "b", 1, 4, 1, &refs, &b) < 0)
        goto done;
    out = dfc_py_new_tuple(2, (dfc_py_output[]){{a.ndim, a.shape, &da}, {b.ndim, b.shape, &db}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->binary_backward(be, kind, &dy, &a, &b, &da, &db, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* Up to DFC_PY_MAX_ARGS - 1 parts per call: each borrowed array takes one reference slot. */
#define MAX_PARTS (DFC_PY_MAX_ARGS - 1)

static PyObject *py_concat_channels(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *xs_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &xs_obj))
        return NULL;
    const char *op = "concat";
    PyObject *seq = PySequence_Fast(xs_obj, "concat: xs must be a list or tuple of arrays");
    if (!seq)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor parts[MAX_PARTS], y;
    const dfc_tensor *part_ptrs[MAX_PARTS];
    PyObject *out = NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_PARTS) {
        PyErr_Format(PyExc_ValueError, "%s: xs must hold 1 to %d arrays, got %zd", op, MAX_PARTS, n);
        goto done;
    }
    int64_t channels = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        char name[24];
        snprintf(name, sizeof name, "xs[%zd]", k);
        if (dfc_py_tensor(PySequence_Fast_GET_ITEM(seq, k), op, name, 2, 4, 1, &refs, &parts[k]) < 0)
            goto done;
        part_ptrs[k] = &parts[k];
        channels += parts[k].shape[1];
    }
    int64_t shape[DFC_MAX_DIMS];
    for (int d = 0; d < DFC_MAX_DIMS; d++)
        shape[d] = d == 1 ? channels : parts[0].shape[d];
    out = dfc_py_new_tensor(parts[0].ndim, shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->concat_channels(be, part_ptrs, (int)n, &y, &err));
done:
    Py_DECREF(seq);
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_split_channels(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj, *sizes_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &x_obj, &sizes_obj))
        return NULL;
    const char *op = "split";
    PyObject *seq = PySequence_Fast(sizes_obj, "split: sizes must be a list or tuple of ints");
    if (!seq)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, parts[MAX_PARTS];
    dfc_tensor *part_ptrs[MAX_PARTS];
    PyObject *out = NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0)
        goto done;
    if (n < 1 || n > MAX_PARTS) {
        PyErr_Format(PyExc_ValueError, "%s: sizes must hold 1 to %d entries, got %zd", op, MAX_PARTS, n);
        goto done;
    }
    int64_t total = 0, sizes[MAX_PARTS];
    for (Py_ssize_t k = 0; k < n; k++) {
        char name[48];
        snprintf(name, sizeof name, "%s: sizes[%zd]", op, k);
        long long size;
        if (dfc_py_int64(PySequence_Fast_GET_ITEM(seq, k), name, 1, x.shape[1], &size) < 0)
            goto done;
        sizes[k] = size;
        total += size; /* MAX_PARTS sizes of at most x's channels: no overflow */
    }
    if (total != x.shape[1]) {
        PyErr_Format(PyExc_ValueError, "%s: sizes add up to %lld, but x has %lld channels", op, (long long)total,
                     (long long)x.shape[1]);
        goto done;
    }
    out = PyList_New(n);
    if (!out)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        int64_t shape[DFC_MAX_DIMS];
        for (int d = 0; d < DFC_MAX_DIMS; d++)
            shape[d] = d == 1 ? sizes[k] : x.shape[d];
        PyObject *part = dfc_py_new_tensor(x.ndim, shape, &parts[k]);
        if (!part) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, k, part); /* steals */
        part_ptrs[k] = &parts[k];
    }
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->split_channels(be, &x, part_ptrs, (int)n, &err));
done:
    Py_DECREF(seq);
    dfc_py_refs_release(&refs);
    return out;
}

/* ---- UNet ops (issue 15, unetnet) ---- */

/* scale_shift_forward(backend, x, ss) -> y = x (1 + scale) + shift */
static PyObject *py_scale_shift_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj, *ss_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &x_obj, &ss_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, ss;
    if (dfc_py_tensor(x_obj, "scale_shift", "x", 2, 4, 1, &refs, &x) == 0 &&
        dfc_py_tensor(ss_obj, "scale_shift", "ss", 2, 2, 1, &refs, &ss) == 0)
        out = dfc_py_run_op2(be, be->ops->scale_shift_forward, &x, &ss, x.ndim, x.shape);
    dfc_py_refs_release(&refs);
    return out;
}

/* scale_shift_backward(backend, dy, x, ss) -> (dx, dss) */
static PyObject *py_scale_shift_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "scale_shift_backward";
    dfc_backend *be;
    PyObject *dy_obj, *x_obj, *ss_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &dy_obj, &x_obj, &ss_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, ss, dx, dss;
    if (dfc_py_tensor(dy_obj, op, "dy", 2, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0 ||
        dfc_py_tensor(ss_obj, op, "ss", 2, 2, 1, &refs, &ss) < 0)
        goto done;
    out = dfc_py_new_tuple(2, (dfc_py_output[]){{x.ndim, x.shape, &dx}, {ss.ndim, ss.shape, &dss}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->scale_shift_backward(be, &dy, &x, &ss, &dx, &dss, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_elementwise[] = {
    {"activation_forward", py_activation_forward, METH_VARARGS,
     "activation_forward(backend, kind, x) -> y; kind in relu/silu/sigmoid."},
    {"activation_backward", py_activation_backward, METH_VARARGS,
     "activation_backward(backend, kind, dy, x) -> dx."},
    {"softmax_forward", py_softmax_forward, METH_VARARGS, "softmax_forward(backend, x) -> y, over the last axis."},
    {"softmax_backward", py_softmax_backward, METH_VARARGS, "softmax_backward(backend, dy, y) -> dx."},
    {"binary_forward", py_binary_forward, METH_VARARGS,
     "binary_forward(backend, kind, a, b) -> y = a (+|*) b; kind in add/mul; b has a's ndim, dims 1 or equal."},
    {"binary_backward", py_binary_backward, METH_VARARGS,
     "binary_backward(backend, kind, dy, a, b) -> (da, db); db summed over b's broadcast dims."},
    {"concat_channels", py_concat_channels, METH_VARARGS,
     "concat_channels(backend, xs) -> y: arrays (N, Ci, ...) joined along axis 1."},
    {"split_channels", py_split_channels, METH_VARARGS,
     "split_channels(backend, x, sizes) -> list of arrays (N, sizes[k], ...), the inverse of concat."},
    /* UNet ops (issue 15, unetnet) */
    {"scale_shift_forward", py_scale_shift_forward, METH_VARARGS,
     "scale_shift_forward(backend, x, ss) -> y = x (1 + scale) + shift; x (N, C, ...), ss (N, 2C) = [scale|shift]."},
    {"scale_shift_backward", py_scale_shift_backward, METH_VARARGS,
     "scale_shift_backward(backend, dy, x, ss) -> (dx, dss); dss = [sum dy x | sum dy] over x's spatial dims."},
    {NULL, NULL, 0, NULL},
};

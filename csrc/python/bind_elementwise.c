/* Bindings for the elementwise ops: activations, softmax, broadcast add/mul, channel concat/split. */
#include "pyutil.h"

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

PyMethodDef dfc_methods_elementwise[] = {
    {"activation_forward", py_activation_forward, METH_VARARGS,
     "activation_forward(backend, kind, x) -> y; kind in relu/silu/sigmoid."},
    {"activation_backward", py_activation_backward, METH_VARARGS,
     "activation_backward(backend, kind, dy, x) -> dx."},
    {NULL, NULL, 0, NULL},
};

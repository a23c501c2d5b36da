/* Bindings for the loss ops: per-sample cross-entropy and mean squared error (reductions live in Python). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

/* Class indices must be integers: a float array would be silently truncated by the int64 conversion. */
static int integer_targets(PyObject *obj, const char *op, int64_t n, dfc_py_refs *refs, const int64_t **out)
{
    if (PyArray_Check(obj) && !PyArray_ISINTEGER((PyArrayObject *)obj)) {
        PyErr_Format(PyExc_TypeError, "%s: targets must hold integer class indices, got dtype %s", op,
                     PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name);
        return -1;
    }
    return dfc_py_int64_vector(obj, op, "targets", n, refs, out);
}

static PyObject *py_cross_entropy_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *logits_obj, *targets_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &logits_obj, &targets_obj))
        return NULL;
    const char *op = "cross_entropy";
    dfc_py_refs refs = {0};
    dfc_tensor logits, loss;
    const int64_t *targets;
    PyObject *out = NULL;
    if (dfc_py_tensor(logits_obj, op, "logits", 2, 2, 1, &refs, &logits) < 0 ||
        integer_targets(targets_obj, op, logits.shape[0], &refs, &targets) < 0)
        goto done;
    out = dfc_py_new_tensor(1, logits.shape, &loss);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->cross_entropy_forward(be, &logits, targets, &loss, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_cross_entropy_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *dloss_obj, *logits_obj, *targets_obj;
    if (!PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &dloss_obj, &logits_obj, &targets_obj))
        return NULL;
    const char *op = "cross_entropy_backward";
    dfc_py_refs refs = {0};
    dfc_tensor dloss, logits, dlogits;
    const int64_t *targets;
    PyObject *out = NULL;
    if (dfc_py_tensor(dloss_obj, op, "dloss", 1, 1, 1, &refs, &dloss) < 0 ||
        dfc_py_tensor(logits_obj, op, "logits", 2, 2, 1, &refs, &logits) < 0 ||
        integer_targets(targets_obj, op, logits.shape[0], &refs, &targets) < 0)
        goto done;
    out = dfc_py_new_tensor(2, logits.shape, &dlogits);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->cross_entropy_backward(be, &dloss, &logits, targets, &dlogits, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_mse_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &a_obj, &b_obj))
        return NULL;
    const char *op = "mse";
    dfc_py_refs refs = {0};
    dfc_tensor a, b;
    PyObject *out = NULL;
    if (dfc_py_tensor(a_obj, op, "a", 1, 4, 1, &refs, &a) == 0 &&
        dfc_py_tensor(b_obj, op, "b", 1, 4, 1, &refs, &b) == 0)
        out = dfc_py_run_op2(be, be->ops->mse_forward, &a, &b, 1, a.shape);
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_mse_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *dloss_obj, *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &dloss_obj, &a_obj, &b_obj))
        return NULL;
    const char *op = "mse_backward";
    dfc_py_refs refs = {0};
    dfc_tensor dloss, a, b, da, db;
    PyObject *out = NULL;
    if (dfc_py_tensor(dloss_obj, op, "dloss", 1, 1, 1, &refs, &dloss) < 0 ||
        dfc_py_tensor(a_obj, op, "a", 1, 4, 1, &refs, &a) < 0 || dfc_py_tensor(b_obj, op, "b", 1, 4, 1, &refs, &b) < 0)
        goto done;
    out = dfc_py_new_tuple(2, (dfc_py_output[]){{a.ndim, a.shape, &da}, {a.ndim, a.shape, &db}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->mse_backward(be, &dloss, &a, &b, &da, &db, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_loss[] = {
    {"cross_entropy_forward", py_cross_entropy_forward, METH_VARARGS,
     "cross_entropy_forward(backend, logits (N, K), targets (N,) ints in [0, K)) -> per-sample loss (N,)."},
    {"cross_entropy_backward", py_cross_entropy_backward, METH_VARARGS,
     "cross_entropy_backward(backend, dloss (N,), logits, targets) -> dlogits (N, K)."},
    {"mse_forward", py_mse_forward, METH_VARARGS,
     "mse_forward(backend, a, b) -> per-sample mean of (a - b)^2, shape (N,)."},
    {"mse_backward", py_mse_backward, METH_VARARGS, "mse_backward(backend, dloss (N,), a, b) -> (da, db)."},
    {NULL, NULL, 0, NULL},
};

/* Bindings for guided-diffusion QKV attention and the timestep embedding. */
#include "pyutil.h"

/* qkv's channel count must be 3 C before y (N, C, T) can be allocated; heads is checked by the op. */
static int attention_channels(const char *op, const dfc_tensor *qkv, int64_t *C)
{
    if (qkv->shape[1] % 3 != 0) {
        PyErr_Format(PyExc_ValueError, "%s: qkv has %lld channels; expected 3 * C (q, k and v)", op,
                     (long long)qkv->shape[1]);
        return -1;
    }
    *C = qkv->shape[1] / 3;
    return 0;
}

static PyObject *py_attention_forward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "attention";
    dfc_backend *be;
    PyObject *qkv_obj;
    dfc_py_int_arg heads_arg = {"attention: heads", 1, INT_MAX, 1};
    int legacy_order;
    if (!PyArg_ParseTuple(args, "O&OO&p", dfc_py_backend, &be, &qkv_obj, dfc_py_int_converter, &heads_arg,
                          &legacy_order))
        return NULL;
    const int heads = heads_arg.value;
    dfc_py_refs refs = {0};
    dfc_tensor qkv, y;
    PyObject *out = NULL;
    int64_t C;
    if (dfc_py_tensor(qkv_obj, op, "qkv", 3, 3, 1, &refs, &qkv) < 0 || attention_channels(op, &qkv, &C) < 0)
        goto done;
    const int64_t shape[3] = {qkv.shape[0], C, qkv.shape[2]};
    out = dfc_py_new_tensor(3, shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->attention_forward(be, &qkv, heads, legacy_order, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "attention_backward";
    dfc_backend *be;
    PyObject *dy_obj, *qkv_obj;
    dfc_py_int_arg heads_arg = {"attention_backward: heads", 1, INT_MAX, 1};
    int legacy_order;
    if (!PyArg_ParseTuple(args, "O&OOO&p", dfc_py_backend, &be, &dy_obj, &qkv_obj, dfc_py_int_converter, &heads_arg,
                          &legacy_order))
        return NULL;
    const int heads = heads_arg.value;
    dfc_py_refs refs = {0};
    dfc_tensor dy, qkv, dqkv;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 3, 3, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(qkv_obj, op, "qkv", 3, 3, 1, &refs, &qkv) < 0)
        goto done;
    out = dfc_py_new_tensor(3, qkv.shape, &dqkv);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->attention_backward(be, &dy, &qkv, heads, legacy_order, &dqkv, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_timestep_embedding(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "timestep_embedding";
    dfc_backend *be;
    PyObject *t_obj;
    dfc_py_int_arg dim_arg = {"timestep_embedding: dim", 2, INT_MAX, 2};
    double max_period;
    if (!PyArg_ParseTuple(args, "O&OO&d", dfc_py_backend, &be, &t_obj, dfc_py_int_converter, &dim_arg, &max_period))
        return NULL;
    const long long dim = dim_arg.value;
    dfc_py_refs refs = {0};
    dfc_tensor t, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(t_obj, op, "t", 1, 1, 1, &refs, &t) < 0)
        goto done;
    const int64_t shape[2] = {t.shape[0], dim};
    out = dfc_py_new_tensor(2, shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->timestep_embedding(be, &t, (float)max_period, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_attention[] = {
    {"attention_forward", py_attention_forward, METH_VARARGS,
     "attention_forward(backend, qkv, heads, legacy_order) -> y (N, C, T) from qkv (N, 3C, T)."},
    {"attention_backward", py_attention_backward, METH_VARARGS,
     "attention_backward(backend, dy, qkv, heads, legacy_order) -> dqkv (N, 3C, T)."},
    {"timestep_embedding", py_timestep_embedding, METH_VARARGS,
     "timestep_embedding(backend, t, dim, max_period) -> y (N, dim) from float32 t (N,)."},
    {NULL, NULL, 0, NULL},
};

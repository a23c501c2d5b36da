/* Bindings for the optimizer ops (adamw_step, ema_update, sum_squares, scale): numpy float32 in, new arrays out
 * (the in-place ops run on copies), so diffice.ops can test them against PyTorch like every other op. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <string.h>

/* A new array holding a copy of t's values, viewed as *copy (the op's in-place operand). */
static PyObject *new_copy(const dfc_tensor *t, dfc_tensor *copy)
{
    PyObject *arr = dfc_py_new_tensor(t->ndim, t->shape, copy);
    if (arr)
        memcpy(copy->data, t->data, (size_t)dfc_numel(t) * sizeof(float));
    return arr;
}

/* adamw_step(backend, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay)
 *   -> (param, exp_avg, exp_avg_sq) after the step */
static PyObject *py_adamw_step(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "adamw_step";
    dfc_backend *be;
    PyObject *p_obj, *g_obj, *m_obj, *v_obj;
    dfc_py_int64_arg step = {"adamw_step: step", 1, INT64_MAX, 1};
    dfc_adamw_config cfg;
    if (!PyArg_ParseTuple(args, "O&OOOOO&ddddd", dfc_py_backend, &be, &p_obj, &g_obj, &m_obj, &v_obj,
                          dfc_py_int64_converter, &step, &cfg.lr, &cfg.beta1, &cfg.beta2, &cfg.eps,
                          &cfg.weight_decay))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor p, g, m, v, p_out, m_out, v_out;
    PyObject *result = NULL, *p_arr = NULL, *m_arr = NULL, *v_arr = NULL;
    if (dfc_py_tensor(p_obj, op, "param", 1, DFC_MAX_DIMS, 1, &refs, &p) < 0 ||
        dfc_py_tensor(g_obj, op, "grad", 1, DFC_MAX_DIMS, 1, &refs, &g) < 0 ||
        dfc_py_tensor(m_obj, op, "exp_avg", 1, DFC_MAX_DIMS, 1, &refs, &m) < 0 ||
        dfc_py_tensor(v_obj, op, "exp_avg_sq", 1, DFC_MAX_DIMS, 1, &refs, &v) < 0)
        goto done;
    if (!(p_arr = new_copy(&p, &p_out)) || !(m_arr = new_copy(&m, &m_out)) || !(v_arr = new_copy(&v, &v_out)))
        goto done;
    if (!(result = PyTuple_Pack(3, p_arr, m_arr, v_arr)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(result, err, be->ops->adamw_step(be, &cfg, step.value, &p_out, &g, &m_out, &v_out, &err));
done:
    Py_XDECREF(p_arr);
    Py_XDECREF(m_arr);
    Py_XDECREF(v_arr);
    dfc_py_refs_release(&refs);
    return result;
}

/* ema_update(backend, ema, param, rate) -> rate ema + (1 - rate) param */
static PyObject *py_ema_update(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "ema_update";
    dfc_backend *be;
    PyObject *e_obj, *p_obj;
    double rate;
    if (!PyArg_ParseTuple(args, "O&OOd", dfc_py_backend, &be, &e_obj, &p_obj, &rate))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor e, p, e_out;
    PyObject *out = NULL;
    if (dfc_py_tensor(e_obj, op, "ema", 1, DFC_MAX_DIMS, 1, &refs, &e) < 0 ||
        dfc_py_tensor(p_obj, op, "param", 1, DFC_MAX_DIMS, 1, &refs, &p) < 0)
        goto done;
    if (!(out = new_copy(&e, &e_out)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->ema_update(be, rate, &e_out, &p, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* sum_squares(backend, x) -> float: the sum of x^2 in double */
static PyObject *py_sum_squares(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "sum_squares", "x", 1, DFC_MAX_DIMS, 0, &refs, &x) < 0)
        goto done;
    double sum = 0.0;
    dfc_error err = {0};
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = be->ops->sum_squares(be, &x, &sum, &err);
    Py_END_ALLOW_THREADS
    out = st == DFC_OK ? PyFloat_FromDouble(sum) : dfc_py_raise(&err);
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* scale(backend, x, factor) -> x * factor */
static PyObject *py_scale(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    float factor;
    if (!PyArg_ParseTuple(args, "O&Of", dfc_py_backend, &be, &x_obj, &factor))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "scale", "x", 1, DFC_MAX_DIMS, 0, &refs, &x) < 0 || !(out = new_copy(&x, &y)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->scale(be, &y, factor, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_optim[] = {
    {"adamw_step", py_adamw_step, METH_VARARGS,
     "adamw_step(backend, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay) -> "
     "(param, exp_avg, exp_avg_sq) after one AdamW step"},
    {"ema_update", py_ema_update, METH_VARARGS, "ema_update(backend, ema, param, rate) -> rate ema + (1 - rate) param"},
    {"sum_squares", py_sum_squares, METH_VARARGS, "sum_squares(backend, x) -> sum of x^2 (float, double precision)"},
    {"scale", py_scale, METH_VARARGS, "scale(backend, x, factor) -> x * factor"},
    {NULL, NULL, 0, NULL},
};

/* Bindings for the norm ops: group norm (with saved statistics) and inference batch norm. */
#include "pyutil.h"

static PyObject *py_group_norm_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj, *gamma_obj, *beta_obj;
    dfc_py_int_arg groups_arg = {"group_norm: groups", 1, INT_MAX, 1};
    float eps;
    if (!PyArg_ParseTuple(args, "O&OO&OOf", dfc_py_backend, &be, &x_obj, dfc_py_int_converter, &groups_arg,
                          &gamma_obj, &beta_obj, &eps))
        return NULL;
    const int groups = groups_arg.value;
    const char *op = "group_norm";
    dfc_py_refs refs = {0};
    dfc_tensor x, gamma, beta, y, mean, rstd;
    PyObject *out = NULL;
    if (groups <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: groups must be positive, got %d", op, groups);
        goto done;
    }
    if (dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0 ||
        dfc_py_optional_tensor(gamma_obj, op, "gamma", 1, 1, 1, &refs, &gamma) < 0 ||
        dfc_py_optional_tensor(beta_obj, op, "beta", 1, 1, 1, &refs, &beta) < 0)
        goto done;
    const int64_t stats_shape[2] = {x.shape[0], groups};
    out = dfc_py_new_tuple(3, (dfc_py_output[]){{x.ndim, x.shape, &y}, {2, stats_shape, &mean},
                                                {2, stats_shape, &rstd}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->group_norm_forward(be, &x, &gamma, &beta, groups, eps, &y, &mean, &rstd, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* dgamma and dbeta are computed (and returned) only when gamma is given; otherwise they come back as None. */
static PyObject *py_group_norm_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *dy_obj, *x_obj, *gamma_obj, *mean_obj, *rstd_obj;
    dfc_py_int_arg groups_arg = {"group_norm_backward: groups", 1, INT_MAX, 1};
    float eps;
    if (!PyArg_ParseTuple(args, "O&OOO&OOOf", dfc_py_backend, &be, &dy_obj, &x_obj, dfc_py_int_converter,
                          &groups_arg, &gamma_obj, &mean_obj, &rstd_obj, &eps))
        return NULL;
    const int groups = groups_arg.value;
    const char *op = "group_norm_backward";
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, gamma, mean, rstd, dx, dgamma = {0}, dbeta = {0};
    PyObject *out = NULL;
    if (groups <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: groups must be positive, got %d", op, groups);
        goto done;
    }
    if (dfc_py_tensor(dy_obj, op, "dy", 2, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0 ||
        dfc_py_optional_tensor(gamma_obj, op, "gamma", 1, 1, 1, &refs, &gamma) < 0 ||
        dfc_py_optional_tensor(mean_obj, op, "mean", 2, 2, 1, &refs, &mean) < 0 ||
        dfc_py_optional_tensor(rstd_obj, op, "rstd", 2, 2, 1, &refs, &rstd) < 0)
        goto done;
    const int64_t *c_shape = gamma.data ? &x.shape[1] : NULL; /* no gamma: dgamma, dbeta are None */
    out = dfc_py_new_tuple(3, (dfc_py_output[]){{x.ndim, x.shape, &dx}, {1, c_shape, &dgamma}, {1, c_shape, &dbeta}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->group_norm_backward(be, &dy, &x, &gamma, &mean, &rstd, groups, eps, &dx, &dgamma,
                                                      &dbeta, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_batch_norm_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj, *rm_obj, *rv_obj, *gamma_obj, *beta_obj;
    float eps;
    if (!PyArg_ParseTuple(args, "O&OOOOOf", dfc_py_backend, &be, &x_obj, &rm_obj, &rv_obj, &gamma_obj, &beta_obj,
                          &eps))
        return NULL;
    const char *op = "batch_norm";
    dfc_py_refs refs = {0};
    dfc_tensor x, rm, rv, gamma, beta, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0 ||
        dfc_py_tensor(rm_obj, op, "running_mean", 1, 1, 1, &refs, &rm) < 0 ||
        dfc_py_tensor(rv_obj, op, "running_var", 1, 1, 1, &refs, &rv) < 0 ||
        dfc_py_optional_tensor(gamma_obj, op, "gamma", 1, 1, 1, &refs, &gamma) < 0 ||
        dfc_py_optional_tensor(beta_obj, op, "beta", 1, 1, 1, &refs, &beta) < 0)
        goto done;
    out = dfc_py_new_tensor(x.ndim, x.shape, &y);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->batch_norm_forward(be, &x, &gamma, &beta, &rm, &rv, eps, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_batch_norm_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *dy_obj, *x_obj, *rm_obj, *rv_obj, *gamma_obj;
    float eps;
    if (!PyArg_ParseTuple(args, "O&OOOOOf", dfc_py_backend, &be, &dy_obj, &x_obj, &rm_obj, &rv_obj, &gamma_obj,
                          &eps))
        return NULL;
    const char *op = "batch_norm_backward";
    dfc_py_refs refs = {0};
    dfc_tensor dy, x, rm, rv, gamma, dx, dgamma, dbeta;
    PyObject *out = NULL;
    if (dfc_py_tensor(dy_obj, op, "dy", 2, 4, 1, &refs, &dy) < 0 ||
        dfc_py_tensor(x_obj, op, "x", 2, 4, 1, &refs, &x) < 0 ||
        dfc_py_tensor(rm_obj, op, "running_mean", 1, 1, 1, &refs, &rm) < 0 ||
        dfc_py_tensor(rv_obj, op, "running_var", 1, 1, 1, &refs, &rv) < 0 ||
        dfc_py_optional_tensor(gamma_obj, op, "gamma", 1, 1, 1, &refs, &gamma) < 0)
        goto done;
    out = dfc_py_new_tuple(3, (dfc_py_output[]){{x.ndim, x.shape, &dx}, {1, &x.shape[1], &dgamma},
                                                {1, &x.shape[1], &dbeta}});
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->batch_norm_backward(be, &dy, &x, &gamma, &rm, &rv, eps, &dx, &dgamma, &dbeta,
                                                      &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_norm[] = {
    {"group_norm_forward", py_group_norm_forward, METH_VARARGS,
     "group_norm_forward(backend, x, groups, gamma|None, beta|None, eps) -> (y, mean, rstd); mean, rstd (N, groups)."},
    {"group_norm_backward", py_group_norm_backward, METH_VARARGS,
     "group_norm_backward(backend, dy, x, groups, gamma|None, mean|None, rstd|None, eps) -> (dx, dgamma, dbeta); "
     "dgamma, dbeta are None when gamma is None; mean, rstd None recomputes the statistics."},
    {"batch_norm_forward", py_batch_norm_forward, METH_VARARGS,
     "batch_norm_forward(backend, x, running_mean, running_var, gamma|None, beta|None, eps) -> y."},
    {"batch_norm_backward", py_batch_norm_backward, METH_VARARGS,
     "batch_norm_backward(backend, dy, x, running_mean, running_var, gamma|None, eps) -> (dx, dgamma, dbeta)."},
    {NULL, NULL, 0, NULL},
};

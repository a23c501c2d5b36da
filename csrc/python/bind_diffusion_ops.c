/* Bindings for the diffusion ops (ops.h's last block). Per-row coefficients come as one array of rows:
 * posterior coefficients (8, N) float32 in dfc_posterior_coefs order, vb coefficients (6, N) float64 in
 * dfc_vb_coefs order; diffice/ops/_diffusion.py builds them from named arguments. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

/* A C-contiguous (rows, n) (or (n,) when rows == 0) array of type, converted; borrowed into refs. */
static int host_rows(PyObject *obj, const char *op, const char *name, int type, int rows, int64_t n,
                     dfc_py_refs *refs, const void **out)
{
    const int ndim = rows ? 2 : 1;
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(obj, type, ndim, ndim, NPY_ARRAY_CARRAY_RO |
                                                        NPY_ARRAY_FORCECAST);
    if (!a || (rows && PyArray_DIM(a, 0) != rows) || PyArray_DIM(a, ndim - 1) != n ||
        refs->count == DFC_PY_MAX_ARGS) {
        PyErr_Clear();
        Py_XDECREF(a);
        if (rows)
            PyErr_Format(PyExc_ValueError, "%s: %s must have shape (%d, %lld)", op, name, rows, (long long)n);
        else
            PyErr_Format(PyExc_ValueError, "%s: %s must have shape (%lld,)", op, name, (long long)n);
        return -1;
    }
    refs->refs[refs->count++] = (PyObject *)a;
    *out = PyArray_DATA(a);
    return 0;
}

static dfc_posterior_coefs posterior_coefs(const float *c, int64_t n)
{
    dfc_posterior_coefs p = {c, c + n, c + 2 * n, c + 3 * n, c + 4 * n, c + 5 * n, c + 6 * n, c + 7 * n};
    return p;
}

/* q_sample(be, x0, noise, sqrt_abar, sqrt_one_minus_abar) -> x_t */
static PyObject *py_q_sample(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x0_obj, *noise_obj, *a_obj, *s_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OOOO", dfc_py_backend, &be, &x0_obj, &noise_obj, &a_obj, &s_obj))
        return NULL;
    const char *op = "q_sample";
    dfc_py_refs refs = {0};
    dfc_tensor x0, noise, x_t;
    const void *a, *s;
    if (dfc_py_tensor(x0_obj, op, "x0", 1, 4, 1, &refs, &x0) < 0 ||
        dfc_py_tensor(noise_obj, op, "noise", 1, 4, 1, &refs, &noise) < 0 ||
        host_rows(a_obj, op, "sqrt_abar", NPY_FLOAT32, 0, x0.shape[0], &refs, &a) < 0 ||
        host_rows(s_obj, op, "sqrt_one_minus_abar", NPY_FLOAT32, 0, x0.shape[0], &refs, &s) < 0 ||
        !(out = dfc_py_new_tensor(x0.ndim, x0.shape, &x_t)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->q_sample(be, &x0, &noise, a, s, &x_t, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* p_mean_variance_forward(be, model_output, x_t, coefs (8, N), learned, clip)
 *   -> (mean, variance, log_variance, pred_xstart) */
static PyObject *py_p_mean_variance_forward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *mo_obj, *xt_obj, *c_obj, *out = NULL;
    int learned, clip;
    if (!PyArg_ParseTuple(args, "O&OOOpp", dfc_py_backend, &be, &mo_obj, &xt_obj, &c_obj, &learned, &clip))
        return NULL;
    const char *op = "p_mean_variance";
    dfc_py_refs refs = {0};
    dfc_tensor mo, x_t, mean, var, logvar, x0;
    const void *c;
    if (dfc_py_tensor(mo_obj, op, "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_tensor(xt_obj, op, "x_t", 2, 4, 1, &refs, &x_t) < 0 ||
        host_rows(c_obj, op, "coefs", NPY_FLOAT32, 8, x_t.shape[0], &refs, &c) < 0 ||
        !(out = dfc_py_new_tuple(4, (dfc_py_output[]){{x_t.ndim, x_t.shape, &mean}, {x_t.ndim, x_t.shape, &var},
                                                       {x_t.ndim, x_t.shape, &logvar},
                                                       {x_t.ndim, x_t.shape, &x0}})))
        goto done;
    const dfc_posterior_coefs coefs = posterior_coefs(c, x_t.shape[0]);
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->p_mean_variance_forward(be, &mo, &x_t, &coefs, learned, clip, &mean, &var,
                                                          &logvar, &x0, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* p_mean_variance_backward(be, d_pred_xstart, model_output, x_t, coefs (8, N), learned, clip)
 *   -> (dx_t, d_model_output) */
static PyObject *py_p_mean_variance_backward(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *g_obj, *mo_obj, *xt_obj, *c_obj, *out = NULL;
    int learned, clip;
    if (!PyArg_ParseTuple(args, "O&OOOOpp", dfc_py_backend, &be, &g_obj, &mo_obj, &xt_obj, &c_obj, &learned,
                          &clip))
        return NULL;
    const char *op = "p_mean_variance_backward";
    dfc_py_refs refs = {0};
    dfc_tensor g, mo, x_t, dx, dmo;
    const void *c;
    if (dfc_py_tensor(g_obj, op, "d_pred_xstart", 2, 4, 1, &refs, &g) < 0 ||
        dfc_py_tensor(mo_obj, op, "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_tensor(xt_obj, op, "x_t", 2, 4, 1, &refs, &x_t) < 0 ||
        host_rows(c_obj, op, "coefs", NPY_FLOAT32, 8, x_t.shape[0], &refs, &c) < 0 ||
        !(out = dfc_py_new_tuple(2, (dfc_py_output[]){{x_t.ndim, x_t.shape, &dx}, {mo.ndim, mo.shape, &dmo}})))
        goto done;
    const dfc_posterior_coefs coefs = posterior_coefs(c, x_t.shape[0]);
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->p_mean_variance_backward(be, &g, &mo, &x_t, &coefs, learned, clip, &dx, &dmo,
                                                           &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* sample_step(be, mean, variance, log_variance, grad_or_None, noise, noise_weight) -> x_prev */
static PyObject *py_sample_step(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *mean_obj, *var_obj, *logvar_obj, *grad_obj, *noise_obj, *w_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OOOOOO", dfc_py_backend, &be, &mean_obj, &var_obj, &logvar_obj, &grad_obj,
                          &noise_obj, &w_obj))
        return NULL;
    const char *op = "sample_step";
    dfc_py_refs refs = {0};
    dfc_tensor mean, var, logvar, grad, noise, x_prev;
    const void *w;
    if (dfc_py_tensor(mean_obj, op, "mean", 1, 4, 1, &refs, &mean) < 0 ||
        dfc_py_tensor(var_obj, op, "variance", 1, 4, 1, &refs, &var) < 0 ||
        dfc_py_tensor(logvar_obj, op, "log_variance", 1, 4, 1, &refs, &logvar) < 0 ||
        dfc_py_optional_tensor(grad_obj, op, "grad", 1, 4, 1, &refs, &grad) < 0 ||
        dfc_py_tensor(noise_obj, op, "noise", 1, 4, 1, &refs, &noise) < 0 ||
        host_rows(w_obj, op, "noise_weight", NPY_FLOAT32, 0, mean.shape[0], &refs, &w) < 0 ||
        !(out = dfc_py_new_tensor(mean.ndim, mean.shape, &x_prev)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->sample_step(be, &mean, &var, &logvar, &grad, &noise, w, &x_prev, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* row_scale(be, x, alpha) -> alpha[b] x;  row_axpy(be, alpha, x, y) -> y + alpha[b] x (y is not modified) */
static PyObject *row_op(PyObject *args, int axpy)
{
    dfc_backend *be;
    PyObject *x_obj, *a_obj, *y_obj = NULL, *out = NULL;
    if (axpy ? !PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &a_obj, &x_obj, &y_obj)
             : !PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &x_obj, &a_obj))
        return NULL;
    const char *op = axpy ? "row_axpy" : "row_scale";
    dfc_py_refs refs = {0};
    dfc_tensor x, y, result;
    const void *alpha;
    if (dfc_py_tensor(x_obj, op, "x", 1, 4, 1, &refs, &x) < 0 ||
        (axpy && dfc_py_tensor(y_obj, op, "y", 1, 4, 1, &refs, &y) < 0) ||
        host_rows(a_obj, op, "alpha", NPY_FLOAT32, 0, x.shape[0], &refs, &alpha) < 0)
        goto done;
    if (axpy && dfc_numel(&y) != dfc_numel(&x)) {
        PyErr_Format(PyExc_ValueError, "%s: x and y must have the same shape", op);
        goto done;
    }
    if (!(out = dfc_py_new_tensor(x.ndim, x.shape, &result)))
        goto done;
    dfc_error err = {0};
    if (axpy) {
        memcpy(result.data, y.data, (size_t)dfc_numel(&y) * sizeof(float));
        DFC_PY_RUN(out, err, be->ops->row_axpy(be, alpha, &x, &result, &err));
    } else {
        DFC_PY_RUN(out, err, be->ops->row_scale(be, &x, alpha, &result, &err));
    }
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_row_scale(PyObject *self, PyObject *args)
{
    (void)self;
    return row_op(args, 0);
}

static PyObject *py_row_axpy(PyObject *self, PyObject *args)
{
    (void)self;
    return row_op(args, 1);
}

/* the two (N, C, H, W) images a, b */
static int images(PyObject *a_obj, PyObject *b_obj, const char *op, dfc_py_refs *refs, dfc_tensor *a, dfc_tensor *b)
{
    return dfc_py_tensor(a_obj, op, "a", 4, 4, 1, refs, a) < 0 || dfc_py_tensor(b_obj, op, "b", 4, 4, 1, refs, b) < 0
               ? -1
               : 0;
}

/* change_map(be, a, b) -> (N, 1, H, W);  masked_blend(be, a, b, mask, threshold) -> (N, C, H, W) */
static PyObject *py_change_map(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *a_obj, *b_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &a_obj, &b_obj))
        return NULL;
    const char *op = "change_map";
    dfc_py_refs refs = {0};
    dfc_tensor a, b, y;
    if (images(a_obj, b_obj, op, &refs, &a, &b) < 0 ||
        !(out = dfc_py_new_tensor(4, (int64_t[]){a.shape[0], 1, a.shape[2], a.shape[3]}, &y)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->change_map(be, &a, &b, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_masked_blend(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *a_obj, *b_obj, *m_obj, *out = NULL;
    float threshold;
    if (!PyArg_ParseTuple(args, "O&OOOf", dfc_py_backend, &be, &a_obj, &b_obj, &m_obj, &threshold))
        return NULL;
    const char *op = "masked_blend";
    dfc_py_refs refs = {0};
    dfc_tensor a, b, mask, y;
    if (images(a_obj, b_obj, op, &refs, &a, &b) < 0 ||
        dfc_py_tensor(m_obj, op, "mask", 4, 4, 1, &refs, &mask) < 0 || !(out = dfc_py_new_tensor(4, a.shape, &y)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->masked_blend(be, &a, &b, &mask, threshold, &y, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* distance_penalty_forward(be, a, b, l1, l2) -> loss (N);  distance_penalty_backward(be, dloss, a, b, l1, l2) -> da */
static PyObject *distance_penalty(PyObject *args, int backward)
{
    dfc_backend *be;
    PyObject *d_obj = NULL, *a_obj, *b_obj, *out = NULL;
    float l1, l2;
    if (backward ? !PyArg_ParseTuple(args, "O&OOOff", dfc_py_backend, &be, &d_obj, &a_obj, &b_obj, &l1, &l2)
                 : !PyArg_ParseTuple(args, "O&OOff", dfc_py_backend, &be, &a_obj, &b_obj, &l1, &l2))
        return NULL;
    const char *op = backward ? "distance_penalty_backward" : "distance_penalty";
    dfc_py_refs refs = {0};
    dfc_tensor dloss, a, b, result;
    if ((backward && dfc_py_tensor(d_obj, op, "dloss", 1, 1, 1, &refs, &dloss) < 0) ||
        images(a_obj, b_obj, op, &refs, &a, &b) < 0 ||
        !(out = dfc_py_new_tensor(backward ? 4 : 1, a.shape, &result)))
        goto done;
    dfc_error err = {0};
    if (backward)
        DFC_PY_RUN(out, err, be->ops->distance_penalty_backward(be, &dloss, &a, &b, l1, l2, &result, &err));
    else
        DFC_PY_RUN(out, err, be->ops->distance_penalty_forward(be, &a, &b, l1, l2, &result, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_distance_penalty_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return distance_penalty(args, 0);
}

static PyObject *py_distance_penalty_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return distance_penalty(args, 1);
}

/* A new int32 (n,) array (a C int per row), or NULL with the exception. */
static PyObject *new_int_rows(int64_t n, int **data)
{
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *a = PyArray_ZEROS(1, dims, NPY_INT, 0);
    if (a)
        *data = PyArray_DATA((PyArrayObject *)a);
    return a;
}

/* nonfinite_rows(be, x) -> (x with its non-finite rows zeroed, flags (N) int32) */
static PyObject *py_nonfinite_rows(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj, *y_obj = NULL, *flags_obj = NULL;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    const char *op = "nonfinite_rows";
    dfc_py_refs refs = {0};
    dfc_tensor x, y;
    int *flags;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, op, "x", 1, 4, 0, &refs, &x) < 0 || !(y_obj = dfc_py_new_tensor(x.ndim, x.shape, &y)) ||
        !(flags_obj = new_int_rows(x.shape[0], &flags)))
        goto done;
    memcpy(y.data, x.data, (size_t)dfc_numel(&x) * sizeof(float));
    if (!(out = Py_BuildValue("(OO)", y_obj, flags_obj)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->nonfinite_rows(be, &y, flags, &err));
done:
    Py_XDECREF(y_obj);
    Py_XDECREF(flags_obj);
    dfc_py_refs_release(&refs);
    return out;
}

/* target_probability(be, logits, targets) -> (prob (N) float32, is_target (N) int32) */
static PyObject *py_target_probability(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *logits_obj, *t_obj, *prob_obj = NULL, *flags_obj = NULL, *out = NULL;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &logits_obj, &t_obj))
        return NULL;
    const char *op = "target_probability";
    dfc_py_refs refs = {0};
    dfc_tensor logits, prob;
    const int64_t *targets;
    int *flags;
    if (dfc_py_tensor(logits_obj, op, "logits", 2, 2, 1, &refs, &logits) < 0 ||
        dfc_py_int64_vector(t_obj, op, "targets", logits.shape[0], &refs, &targets) < 0 ||
        !(prob_obj = dfc_py_new_tensor(1, logits.shape, &prob)) || !(flags_obj = new_int_rows(logits.shape[0], &flags)))
        goto done;
    if (!(out = Py_BuildValue("(OO)", prob_obj, flags_obj)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, be->ops->target_probability(be, &logits, targets, &prob, flags, &err));
done:
    Py_XDECREF(prob_obj);
    Py_XDECREF(flags_obj);
    dfc_py_refs_release(&refs);
    return out;
}

/* diffusion_vb_forward(be, model_output, x_start, x_t, coefs (6, N) float64, decoder_nll (N), scale) -> vb (N)
 * diffusion_vb_backward(be, dvb, model_output, x_start, x_t, coefs, decoder_nll, scale) -> d_v (N, C, ...) */
static PyObject *diffusion_vb(PyObject *args, int backward)
{
    dfc_backend *be;
    PyObject *d_obj = NULL, *mo_obj, *x0_obj, *xt_obj, *c_obj, *nll_obj, *out = NULL;
    double scale;
    if (backward ? !PyArg_ParseTuple(args, "O&OOOOOOd", dfc_py_backend, &be, &d_obj, &mo_obj, &x0_obj, &xt_obj,
                                     &c_obj, &nll_obj, &scale)
                 : !PyArg_ParseTuple(args, "O&OOOOOd", dfc_py_backend, &be, &mo_obj, &x0_obj, &xt_obj, &c_obj,
                                     &nll_obj, &scale))
        return NULL;
    const char *op = backward ? "diffusion_vb_backward" : "diffusion_vb";
    dfc_py_refs refs = {0};
    dfc_tensor dvb, mo, x0, xt, result;
    const void *c, *nll;
    if ((backward && dfc_py_tensor(d_obj, op, "dvb", 1, 1, 1, &refs, &dvb) < 0) ||
        dfc_py_tensor(mo_obj, op, "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_tensor(x0_obj, op, "x_start", 2, 4, 1, &refs, &x0) < 0 ||
        dfc_py_tensor(xt_obj, op, "x_t", 2, 4, 1, &refs, &xt) < 0 ||
        host_rows(c_obj, op, "coefs", NPY_FLOAT64, 6, x0.shape[0], &refs, &c) < 0 ||
        host_rows(nll_obj, op, "decoder_nll", NPY_INT, 0, x0.shape[0], &refs, &nll) < 0 ||
        !(out = dfc_py_new_tensor(backward ? x0.ndim : 1, x0.shape, &result)))
        goto done;
    const double *cd = c;
    const int64_t n = x0.shape[0];
    const dfc_vb_coefs coefs = {cd, cd + n, cd + 2 * n, cd + 3 * n, cd + 4 * n, cd + 5 * n, nll, scale};
    dfc_error err = {0};
    if (backward)
        DFC_PY_RUN(out, err, be->ops->diffusion_vb_backward(be, &dvb, &mo, &x0, &xt, &coefs, &result, &err));
    else
        DFC_PY_RUN(out, err, be->ops->diffusion_vb_forward(be, &mo, &x0, &xt, &coefs, &result, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_diffusion_vb_forward(PyObject *self, PyObject *args)
{
    (void)self;
    return diffusion_vb(args, 0);
}

static PyObject *py_diffusion_vb_backward(PyObject *self, PyObject *args)
{
    (void)self;
    return diffusion_vb(args, 1);
}

PyMethodDef dfc_methods_diffusion_ops[] = {
    {"q_sample", py_q_sample, METH_VARARGS, "q_sample(backend, x0, noise, sqrt_abar, sqrt_one_minus_abar) -> x_t"},
    {"p_mean_variance_forward", py_p_mean_variance_forward, METH_VARARGS,
     "p_mean_variance_forward(backend, model_output, x_t, coefs (8, N), learned, clip) -> "
     "(mean, variance, log_variance, pred_xstart)"},
    {"p_mean_variance_backward", py_p_mean_variance_backward, METH_VARARGS,
     "p_mean_variance_backward(backend, d_pred_xstart, model_output, x_t, coefs (8, N), learned, clip) -> "
     "(dx_t, d_model_output)"},
    {"sample_step", py_sample_step, METH_VARARGS,
     "sample_step(backend, mean, variance, log_variance, grad_or_None, noise, noise_weight) -> x_prev"},
    {"row_scale", py_row_scale, METH_VARARGS, "row_scale(backend, x, alpha) -> alpha[b] x"},
    {"row_axpy", py_row_axpy, METH_VARARGS, "row_axpy(backend, alpha, x, y) -> y + alpha[b] x"},
    {"change_map", py_change_map, METH_VARARGS, "change_map(backend, a, b) -> (N, 1, H, W)"},
    {"masked_blend", py_masked_blend, METH_VARARGS, "masked_blend(backend, a, b, mask, threshold) -> y"},
    {"distance_penalty_forward", py_distance_penalty_forward, METH_VARARGS,
     "distance_penalty_forward(backend, a, b, lambda_l1, lambda_l2) -> loss (N)"},
    {"distance_penalty_backward", py_distance_penalty_backward, METH_VARARGS,
     "distance_penalty_backward(backend, dloss, a, b, lambda_l1, lambda_l2) -> da"},
    {"nonfinite_rows", py_nonfinite_rows, METH_VARARGS, "nonfinite_rows(backend, x) -> (x zeroed where bad, flags)"},
    {"target_probability", py_target_probability, METH_VARARGS,
     "target_probability(backend, logits, targets) -> (prob, is_target)"},
    {"diffusion_vb_forward", py_diffusion_vb_forward, METH_VARARGS,
     "diffusion_vb_forward(backend, model_output, x_start, x_t, coefs (6, N) float64, decoder_nll, scale) -> vb"},
    {"diffusion_vb_backward", py_diffusion_vb_backward, METH_VARARGS,
     "diffusion_vb_backward(backend, dvb, model_output, x_start, x_t, coefs, decoder_nll, scale) -> d_v"},
    {NULL, NULL, 0, NULL},
};

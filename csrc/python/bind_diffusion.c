/* Bindings for the Gaussian diffusion (diffice._C.Diffusion). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../diffusion/schedule.h"

typedef struct {
    PyObject_HEAD dfc_diffusion *d;
    dfc_backend *be; /* runs q_sample, p_mean_variance and sample_step: the reference kernels */
} DiffusionObject;

static int diffusion_init(DiffusionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"steps", "schedule", "respacing", "variance_type", NULL};
    dfc_py_int_arg steps = {"Diffusion: steps", 1, INT_MAX, 1000};
    dfc_py_int_arg variance_type = {"Diffusion: variance_type", DFC_VAR_LEARNED_RANGE, DFC_VAR_FIXED_SMALL,
                                    DFC_VAR_LEARNED_RANGE};
    const char *schedule = "linear", *respacing = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&ssO&", kwlist, dfc_py_int_converter, &steps, &schedule,
                                     &respacing, dfc_py_int_converter, &variance_type))
        return -1;
    if (dfc_py_diffusion_reset(&self->d, steps.value, schedule, respacing, variance_type.value) < 0)
        return -1;
    return dfc_py_reference_backend(&self->be);
}

int dfc_py_reference_backend(dfc_backend **be)
{
    if (*be)
        return 0;
    dfc_error err = {0};
    if (dfc_backend_create("ref", 0, be, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    return 0;
}

int dfc_py_diffusion_reset(dfc_diffusion **d, int steps, const char *schedule, const char *respacing, int variance_type)
{
    dfc_diffusion_destroy(*d);
    *d = NULL;
    dfc_error err = {0};
    if (dfc_diffusion_create(steps, schedule, respacing, (dfc_variance_type)variance_type, d, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    return 0;
}

static void diffusion_dealloc(DiffusionObject *self)
{
    dfc_diffusion_destroy(self->d);
    dfc_backend_destroy(self->be);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *double_array(const double *src, int n)
{
    npy_intp dims[1] = {n};
    PyObject *a = PyArray_SimpleNew(1, dims, NPY_FLOAT64);
    if (a)
        memcpy(PyArray_DATA((PyArrayObject *)a), src, (size_t)n * sizeof(double));
    return a;
}

/* arrays() -> dict of the float64 tables and the int64 timestep_map (copies). */
static PyObject *diffusion_arrays(DiffusionObject *self, PyObject *noargs)
{
    (void)noargs;
    const dfc_diffusion *d = self->d;
    struct {
        const char *name;
        const double *data;
    } tables[] = {
        {"betas", d->betas},
        {"alphas_cumprod", d->alphas_cumprod},
        {"alphas_cumprod_prev", d->alphas_cumprod_prev},
        {"alphas_cumprod_next", d->alphas_cumprod_next},
        {"sqrt_alphas_cumprod", d->sqrt_alphas_cumprod},
        {"sqrt_one_minus_alphas_cumprod", d->sqrt_one_minus_alphas_cumprod},
        {"log_one_minus_alphas_cumprod", d->log_one_minus_alphas_cumprod},
        {"sqrt_recip_alphas_cumprod", d->sqrt_recip_alphas_cumprod},
        {"sqrt_recipm1_alphas_cumprod", d->sqrt_recipm1_alphas_cumprod},
        {"posterior_variance", d->posterior_variance},
        {"posterior_log_variance_clipped", d->posterior_log_variance_clipped},
        {"posterior_mean_coef1", d->posterior_mean_coef1},
        {"posterior_mean_coef2", d->posterior_mean_coef2},
    };
    PyObject *dict = PyDict_New();
    if (!dict)
        return NULL;
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        PyObject *a = double_array(tables[i].data, d->num_timesteps);
        if (!a || PyDict_SetItemString(dict, tables[i].name, a) < 0) {
            Py_XDECREF(a);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(a);
    }
    npy_intp dims[1] = {d->num_timesteps};
    PyObject *map = PyArray_SimpleNew(1, dims, NPY_INT64);
    if (!map) {
        Py_DECREF(dict);
        return NULL;
    }
    memcpy(PyArray_DATA((PyArrayObject *)map), d->timestep_map, (size_t)d->num_timesteps * sizeof(int64_t));
    int rc = PyDict_SetItemString(dict, "timestep_map", map);
    Py_DECREF(map);
    if (rc < 0) {
        Py_DECREF(dict);
        return NULL;
    }
    return dict;
}

static PyObject *diffusion_q_sample(DiffusionObject *self, PyObject *args)
{
    PyObject *x0_obj, *idx_obj, *noise_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "OOO", &x0_obj, &idx_obj, &noise_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x0, noise, x_t;
    const int64_t *indices;
    if (dfc_py_tensor(x0_obj, "q_sample", "x0", 2, 4, 1, &refs, &x0) < 0 ||
        dfc_py_tensor(noise_obj, "q_sample", "noise", 2, 4, 1, &refs, &noise) < 0 ||
        dfc_py_int64_vector(idx_obj, "q_sample", "indices", x0.shape[0], &refs, &indices) < 0)
        goto done;
    out = dfc_py_new_tensor(x0.ndim, x0.shape, &x_t);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, dfc_diffusion_q_sample(self->d, self->be, &x0, indices, &noise, &x_t, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *diffusion_p_mean_variance(DiffusionObject *self, PyObject *args)
{
    PyObject *mo_obj, *xt_obj, *idx_obj;
    int clip = 1;
    if (!PyArg_ParseTuple(args, "OOO|p", &mo_obj, &xt_obj, &idx_obj, &clip))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor mo, x_t, mean, var, logvar, x0;
    const int64_t *indices;
    PyObject *result = NULL;
    if (dfc_py_tensor(mo_obj, "p_mean_variance", "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_tensor(xt_obj, "p_mean_variance", "x_t", 2, 4, 1, &refs, &x_t) < 0 ||
        dfc_py_int64_vector(idx_obj, "p_mean_variance", "indices", x_t.shape[0], &refs, &indices) < 0)
        goto done;
    const int ndim = x_t.ndim;
    const int64_t *shape = x_t.shape;
    if (!(result = dfc_py_new_tuple(
              4, (dfc_py_output[]){
                     {ndim, shape, &mean}, {ndim, shape, &var}, {ndim, shape, &logvar}, {ndim, shape, &x0}})))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(
        result, err,
        dfc_diffusion_p_mean_variance(self->d, self->be, &mo, &x_t, indices, clip, &mean, &var, &logvar, &x0, &err));
done:
    dfc_py_refs_release(&refs);
    return result;
}

static PyObject *diffusion_sample_step(DiffusionObject *self, PyObject *args)
{
    PyObject *mean_obj, *var_obj, *logvar_obj, *grad_obj, *noise_obj, *idx_obj, *out = NULL;
    if (!PyArg_ParseTuple(args, "OOOOOO", &mean_obj, &var_obj, &logvar_obj, &grad_obj, &noise_obj, &idx_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor mean, var, logvar, grad, noise, x_prev;
    const int64_t *indices;
    const char *op = "sample_step";
    if (dfc_py_tensor(mean_obj, op, "mean", 2, 4, 1, &refs, &mean) < 0 ||
        dfc_py_tensor(var_obj, op, "variance", 2, 4, 1, &refs, &var) < 0 ||
        dfc_py_tensor(logvar_obj, op, "log_variance", 2, 4, 1, &refs, &logvar) < 0 ||
        dfc_py_optional_tensor(grad_obj, op, "grad", 2, 4, 1, &refs, &grad) < 0 ||
        dfc_py_tensor(noise_obj, op, "noise", 2, 4, 1, &refs, &noise) < 0 ||
        dfc_py_int64_vector(idx_obj, op, "indices", mean.shape[0], &refs, &indices) < 0)
        goto done;
    out = dfc_py_new_tensor(mean.ndim, mean.shape, &x_prev);
    if (!out)
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(
        out, err,
        dfc_diffusion_sample_step(self->d, self->be, &mean, &var, &logvar, &grad, &noise, indices, &x_prev, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *diffusion_get_num_timesteps(DiffusionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->d ? self->d->num_timesteps : 0);
}

static PyObject *diffusion_get_original_steps(DiffusionObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->d ? self->d->original_steps : 0);
}

static PyMethodDef diffusion_methods[] = {
    {"arrays", (PyCFunction)diffusion_arrays, METH_NOARGS, "arrays() -> dict of float64 tables + timestep_map"},
    {"q_sample", (PyCFunction)diffusion_q_sample, METH_VARARGS, "q_sample(x0, indices, noise) -> x_t"},
    {"p_mean_variance", (PyCFunction)diffusion_p_mean_variance, METH_VARARGS,
     "p_mean_variance(model_output, x_t, indices, clip=True) -> (mean, variance, log_variance, pred_xstart)"},
    {"sample_step", (PyCFunction)diffusion_sample_step, METH_VARARGS,
     "sample_step(mean, variance, log_variance, grad_or_None, noise, indices) -> x_prev"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef diffusion_getset[] = {
    {"num_timesteps", (getter)diffusion_get_num_timesteps, NULL, "respaced step count", NULL},
    {"original_steps", (getter)diffusion_get_original_steps, NULL, "training step count", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfcDiffusion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.Diffusion",
    .tp_basicsize = sizeof(DiffusionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Diffusion(steps, schedule, respacing, variance_type): guided-diffusion's GaussianDiffusion in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)diffusion_init,
    .tp_dealloc = (destructor)diffusion_dealloc,
    .tp_methods = diffusion_methods,
    .tp_getset = diffusion_getset,
};

dfc_diffusion *dfc_py_unwrap_diffusion(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &DfcDiffusion_Type)) {
        PyErr_Format(PyExc_TypeError, "expected a diffice._C.Diffusion, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    DiffusionObject *d = (DiffusionObject *)obj;
    return dfc_py_ready(d->d, "Diffusion: not initialised") ? d->d : NULL;
}

/* Bindings for the Gaussian diffusion (diffice._C.Diffusion): its float64 tables, and the object the sampler takes.
 * The per-row arithmetic is Python over the diffusion ops (diffice/models/diffusion.py). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../diffusion/schedule.h"

typedef struct {
    PyObject_HEAD dfc_diffusion *d;
} DiffusionObject;

static int diffusion_init(DiffusionObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"steps", "schedule", "respacing", "variance_type", NULL};
    dfc_py_int_arg steps = {"Diffusion: steps", 1, INT_MAX, 1000};
    dfc_py_int_arg variance_type = {"Diffusion: variance_type", DFC_VAR_LEARNED_RANGE,
                                    DFC_VAR_LEARNED_OUTPUT_FIXED_SMALL, DFC_VAR_LEARNED_RANGE};
    const char *schedule = "linear", *respacing = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&ssO&", kwlist, dfc_py_int_converter, &steps, &schedule,
                                     &respacing, dfc_py_int_converter, &variance_type))
        return -1;
    if (self->d) { /* a sampler may be running on it in another thread */
        PyErr_SetString(PyExc_RuntimeError, "Diffusion: already initialised (make a new Diffusion instead)");
        return -1;
    }
    dfc_error err = {0};
    if (dfc_diffusion_create(steps.value, schedule, respacing, (dfc_variance_type)variance_type.value, &self->d,
                             &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    return 0;
}

static void diffusion_dealloc(DiffusionObject *self)
{
    dfc_diffusion_destroy(self->d);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* arrays() -> dict of the (num_timesteps,) float64 tables and the int64 timestep_map (copies). */
static PyObject *diffusion_arrays(DiffusionObject *self, PyObject *noargs)
{
    (void)noargs;
    const dfc_diffusion *d = dfc_py_unwrap_diffusion((PyObject *)self);
    if (!d)
        return NULL;
    const struct {
        const char *name;
        const void *data; /* 8-byte entries of type */
        int type;
    } tables[] = {
        {"betas", d->betas, NPY_FLOAT64},
        {"alphas_cumprod", d->alphas_cumprod, NPY_FLOAT64},
        {"alphas_cumprod_prev", d->alphas_cumprod_prev, NPY_FLOAT64},
        {"alphas_cumprod_next", d->alphas_cumprod_next, NPY_FLOAT64},
        {"sqrt_alphas_cumprod", d->sqrt_alphas_cumprod, NPY_FLOAT64},
        {"sqrt_one_minus_alphas_cumprod", d->sqrt_one_minus_alphas_cumprod, NPY_FLOAT64},
        {"log_one_minus_alphas_cumprod", d->log_one_minus_alphas_cumprod, NPY_FLOAT64},
        {"sqrt_recip_alphas_cumprod", d->sqrt_recip_alphas_cumprod, NPY_FLOAT64},
        {"sqrt_recipm1_alphas_cumprod", d->sqrt_recipm1_alphas_cumprod, NPY_FLOAT64},
        {"posterior_variance", d->posterior_variance, NPY_FLOAT64},
        {"posterior_log_variance_clipped", d->posterior_log_variance_clipped, NPY_FLOAT64},
        {"posterior_mean_coef1", d->posterior_mean_coef1, NPY_FLOAT64},
        {"posterior_mean_coef2", d->posterior_mean_coef2, NPY_FLOAT64},
        {"timestep_map", d->timestep_map, NPY_INT64},
    };
    npy_intp n = d->num_timesteps;
    PyObject *dict = PyDict_New();
    for (size_t i = 0; dict && i < sizeof tables / sizeof tables[0]; i++) {
        PyObject *a = PyArray_SimpleNew(1, &n, tables[i].type);
        if (a)
            memcpy(PyArray_DATA((PyArrayObject *)a), tables[i].data, (size_t)n * 8);
        if (!a || PyDict_SetItemString(dict, tables[i].name, a) < 0)
            Py_CLEAR(dict);
        Py_XDECREF(a);
    }
    return dict;
}

static PyMethodDef diffusion_methods[] = {
    {"arrays", (PyCFunction)diffusion_arrays, METH_NOARGS, "arrays() -> dict of float64 tables + timestep_map"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject DfcDiffusion_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.Diffusion",
    .tp_basicsize = sizeof(DiffusionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Diffusion(steps, schedule, respacing, variance_type): guided-diffusion's GaussianDiffusion tables.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)diffusion_init,
    .tp_dealloc = (destructor)diffusion_dealloc,
    .tp_methods = diffusion_methods,
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

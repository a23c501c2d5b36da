/* Bindings for training: diffice._C.AdamW and diffice._C.EMA (optimiser state as numpy arrays, so a checkpoint
 * saves and restores it), clip_grad_norm, and diffice._C.TrainingLoss (guided-diffusion's
 * training_losses on its own diffusion tables). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "../diffusion/losses.h"
#include "../train/optim.h"

/* ---- parameter lists: a sequence of float32 arrays (a network's views), merged into contiguous segments ---- */

typedef struct {
    float *data;
    int64_t n;
} segment;

typedef struct {
    segment *items;
    int count;
    int64_t total;
    PyObject *seq;   /* keeps the arrays alive for the call */
} segment_list;

static void segments_free(segment_list *s)
{
    PyMem_Free(s->items);
    Py_XDECREF(s->seq);
    s->items = NULL;
    s->seq = NULL;
}

/* Views adjacent in memory (a network's parameter buffer) become one segment, so the update is one loop. */
static int segments_from(PyObject *obj, const char *op, const char *name, int writable, segment_list *s)
{
    s->items = NULL;
    s->count = 0;
    s->total = 0;
    s->seq = PySequence_Fast(obj, "");
    if (!s->seq) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a sequence of float32 arrays, got %s", op, name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(s->seq);
    s->items = PyMem_Malloc((size_t)(len > 0 ? len : 1) * sizeof(segment));
    if (!s->items) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t k = 0; k < len; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(s->seq, k);
        if (!PyArray_Check(item) || PyArray_TYPE((PyArrayObject *)item) != NPY_FLOAT32) {
            PyErr_Format(PyExc_TypeError, "%s: %s[%zd] must be a numpy.ndarray of float32, got %s", op, name, k,
                         PyArray_Check(item) ? PyArray_DESCR((PyArrayObject *)item)->typeobj->tp_name
                                             : Py_TYPE(item)->tp_name);
            goto fail;
        }
        PyArrayObject *a = (PyArrayObject *)item;
        if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || (writable && !PyArray_ISWRITEABLE(a))) {
            PyErr_Format(PyExc_ValueError, "%s: %s[%zd] must be a C-contiguous, aligned%s array", op, name, k,
                         writable ? ", writable" : "");
            goto fail;
        }
        float *data = PyArray_DATA(a);
        int64_t n = (int64_t)PyArray_SIZE(a);
        if (n == 0)
            continue;
        if (s->count > 0 && s->items[s->count - 1].data + s->items[s->count - 1].n == data)
            s->items[s->count - 1].n += n;
        else
            s->items[s->count++] = (segment){data, n};
        s->total += n;
    }
    return 0;
fail:
    segments_free(s);
    return -1;
}

/* A flat float32 array (any shape, C-contiguous) of `expected` floats (expected < 0: any size). */
static int flat_array(PyObject *obj, const char *op, const char *name, int64_t expected, int writable,
                      PyArrayObject **out)
{
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a numpy.ndarray of float32, got %s", op, name,
                     PyArray_Check(obj) ? PyArray_DESCR((PyArrayObject *)obj)->typeobj->tp_name
                                        : Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || (writable && !PyArray_ISWRITEABLE(a))) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be a C-contiguous, aligned%s array", op, name,
                     writable ? ", writable" : "");
        return -1;
    }
    if (expected >= 0 && (int64_t)PyArray_SIZE(a) != expected) {
        PyErr_Format(PyExc_ValueError, "%s: %s has %lld values, expected %lld (one per parameter)", op, name,
                     (long long)PyArray_SIZE(a), (long long)expected);
        return -1;
    }
    *out = a;
    return 0;
}

/* The backend a training call runs its ops on: backend_obj (a diffice._C.Backend) when given, else the default
 * backend ('cpu') of num_threads threads made for this call and left in *owned for the caller to destroy. 0, or -1
 * with an exception. */
static int call_backend(PyObject *backend_obj, int num_threads, dfc_backend **be, dfc_backend **owned)
{
    *owned = NULL;
    if (backend_obj && backend_obj != Py_None)
        return dfc_py_backend(backend_obj, be) ? 0 : -1;
    dfc_error err = {0};
    if (dfc_backend_create(dfc_backend_registered(0), num_threads, owned, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    *be = *owned;
    return 0;
}

static PyArrayObject *zeros_float32(int64_t n)
{
    npy_intp dims[1] = {(npy_intp)n};
    return (PyArrayObject *)PyArray_ZEROS(1, dims, NPY_FLOAT32, 0);
}

/* ---- AdamW ---- */

typedef struct {
    PyObject_HEAD
    dfc_adamw_config cfg;
    int64_t size;
    int64_t num_steps;
    int num_threads;  /* of the backend a step makes when it is given none */
    PyArrayObject *exp_avg, *exp_avg_sq;
} AdamWObject;

static int adamw_init(AdamWObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"size", "lr", "betas", "eps", "weight_decay", "num_threads", NULL};
    dfc_py_int64_arg size_arg = {"AdamW: size", 1, PY_SSIZE_T_MAX, 1};
    dfc_adamw_config cfg = {1e-3, 0.9, 0.999, 1e-8, 1e-2}; /* torch.optim.AdamW defaults */
    dfc_py_int_arg num_threads = {"AdamW: num_threads", INT_MIN, INT_MAX, 0}; /* <= 0: every core */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|d(dd)ddO&", kwlist, dfc_py_int64_converter, &size_arg, &cfg.lr,
                                     &cfg.beta1, &cfg.beta2, &cfg.eps, &cfg.weight_decay, dfc_py_int_converter,
                                     &num_threads))
        return -1;
    const long long size = size_arg.value;
    dfc_error err = {0};
    if (dfc_adamw_check(&cfg, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    Py_CLEAR(self->exp_avg);
    Py_CLEAR(self->exp_avg_sq);
    if (!(self->exp_avg = zeros_float32(size)) || !(self->exp_avg_sq = zeros_float32(size)))
        return -1;
    self->cfg = cfg;
    self->size = size;
    self->num_steps = 0;
    self->num_threads = num_threads.value;
    return 0;
}

static void adamw_dealloc(AdamWObject *self)
{
    Py_XDECREF(self->exp_avg);
    Py_XDECREF(self->exp_avg_sq);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int adamw_ready(AdamWObject *self)
{
    return dfc_py_ready(self->exp_avg, "AdamW: not initialised");
}

/* step(params, grads, backend=None): one AdamW step; params a sequence of writable float32 arrays, grads flat,
 * same order. */
static PyObject *adamw_step(AdamWObject *self, PyObject *args)
{
    dfc_backend *be, *owned;
    PyObject *params_obj, *grads_obj, *backend_obj = NULL;
    if (!adamw_ready(self) || !PyArg_ParseTuple(args, "OO|O", &params_obj, &grads_obj, &backend_obj))
        return NULL;
    segment_list params;
    PyArrayObject *grads;
    if (segments_from(params_obj, "AdamW.step", "params", 1, &params) < 0)
        return NULL;
    if (params.total != self->size) {
        PyErr_Format(PyExc_ValueError, "AdamW.step: params hold %lld values, the optimiser was made for %lld",
                     (long long)params.total, (long long)self->size);
        segments_free(&params);
        return NULL;
    }
    if (flat_array(grads_obj, "AdamW.step", "grads", self->size, 0, &grads) < 0 ||
        call_backend(backend_obj, self->num_threads, &be, &owned) < 0) {
        segments_free(&params);
        return NULL;
    }
    const float *g = PyArray_DATA(grads);
    float *m = PyArray_DATA(self->exp_avg), *v = PyArray_DATA(self->exp_avg_sq);
    int64_t step = self->num_steps + 1;
    dfc_error err = {0};
    dfc_status st = DFC_OK;
    Py_BEGIN_ALLOW_THREADS
    int64_t offset = 0;
    for (int k = 0; k < params.count && st == DFC_OK; k++) {
        st = dfc_adamw_update(be, &self->cfg, step, params.items[k].data, g + offset, m + offset, v + offset,
                              params.items[k].n, &err);
        offset += params.items[k].n;
    }
    Py_END_ALLOW_THREADS
    segments_free(&params);
    dfc_backend_destroy(owned);
    if (st != DFC_OK)
        return dfc_py_raise(&err);
    self->num_steps = step;
    Py_RETURN_NONE;
}

static PyObject *adamw_get_double(AdamWObject *self, void *closure)
{
    return PyFloat_FromDouble(*(double *)((char *)&self->cfg + (size_t)closure));
}

static int adamw_set_double(AdamWObject *self, PyObject *value, void *closure)
{
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "AdamW: cannot delete a hyperparameter");
        return -1;
    }
    dfc_adamw_config cfg = self->cfg;
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    *(double *)((char *)&cfg + (size_t)closure) = v;
    dfc_error err = {0};
    if (dfc_adamw_check(&cfg, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    self->cfg = cfg;
    return 0;
}

static PyObject *adamw_get_betas(AdamWObject *self, void *closure)
{
    (void)closure;
    return Py_BuildValue("(dd)", self->cfg.beta1, self->cfg.beta2);
}

static PyObject *adamw_get_num_steps(AdamWObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong((long long)self->num_steps);
}

static int adamw_set_num_steps(AdamWObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "AdamW: num_steps cannot be deleted");
        return -1;
    }
    long long v;
    if (dfc_py_int64(value, "AdamW: num_steps", 0, INT64_MAX, &v) < 0)
        return -1;
    self->num_steps = v;
    return 0;
}

static PyObject *adamw_get_array(AdamWObject *self, void *closure)
{
    PyArrayObject *a = closure ? self->exp_avg_sq : self->exp_avg;
    if (!adamw_ready(self))
        return NULL;
    Py_INCREF(a);
    return (PyObject *)a;
}

static PyMethodDef adamw_methods[] = {
    {"step", (PyCFunction)adamw_step, METH_VARARGS,
     "step(params, grads, backend=None): one AdamW step (on a 'cpu' backend of num_threads when backend is None); "
     "params: sequence of writable float32 arrays, grads: flat float32"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef adamw_getset[] = {
    {"lr", (getter)adamw_get_double, (setter)adamw_set_double, "learning rate",
     (void *)offsetof(dfc_adamw_config, lr)},
    {"eps", (getter)adamw_get_double, (setter)adamw_set_double, "denominator epsilon",
     (void *)offsetof(dfc_adamw_config, eps)},
    {"weight_decay", (getter)adamw_get_double, (setter)adamw_set_double, "decoupled weight decay",
     (void *)offsetof(dfc_adamw_config, weight_decay)},
    {"betas", (getter)adamw_get_betas, NULL, "(beta1, beta2)", NULL},
    {"num_steps", (getter)adamw_get_num_steps, (setter)adamw_set_num_steps, "steps taken (bias correction)", NULL},
    {"exp_avg", (getter)adamw_get_array, NULL, "first moment (flat float32, writable: restore in place)", NULL},
    {"exp_avg_sq", (getter)adamw_get_array, NULL, "second moment (flat float32, writable: restore in place)",
     (void *)1},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AdamW_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffice._C.AdamW",
    .tp_basicsize = sizeof(AdamWObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "AdamW(size, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, num_threads=0): "
              "torch.optim.AdamW over a flat parameter layout.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)adamw_init,
    .tp_dealloc = (destructor)adamw_dealloc,
    .tp_methods = adamw_methods,
    .tp_getset = adamw_getset,
};

/* ---- EMA ---- */

typedef struct {
    PyObject_HEAD
    double rate;
    int num_threads;  /* of the backend an update makes when it is given none */
    PyArrayObject *values;
} EMAObject;

static int check_rate(double rate)
{
    if (!(rate >= 0.0 && rate <= 1.0)) {
        char value[32]; /* PyErr_Format has no %g */
        snprintf(value, sizeof value, "%g", rate);
        PyErr_Format(PyExc_ValueError, "EMA: rate must be in [0, 1], got %s", value);
        return -1;
    }
    return 0;
}

/* EMA(params, rate, num_threads=0): starts as a copy of params (guided-diffusion copies the master params). */
static int ema_init(EMAObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "rate", "num_threads", NULL};
    PyObject *params_obj;
    double rate;
    dfc_py_int_arg num_threads = {"EMA: num_threads", INT_MIN, INT_MAX, 0}; /* <= 0: every core */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Od|O&", kwlist, &params_obj, &rate, dfc_py_int_converter,
                                     &num_threads))
        return -1;
    if (check_rate(rate) < 0)
        return -1;
    segment_list params;
    if (segments_from(params_obj, "EMA", "params", 0, &params) < 0)
        return -1;
    if (params.total == 0) {
        segments_free(&params);
        PyErr_SetString(PyExc_ValueError, "EMA: params are empty");
        return -1;
    }
    Py_CLEAR(self->values);
    if (!(self->values = zeros_float32(params.total))) {
        segments_free(&params);
        return -1;
    }
    float *dst = PyArray_DATA(self->values);
    for (int k = 0; k < params.count; k++) {
        memcpy(dst, params.items[k].data, (size_t)params.items[k].n * sizeof(float));
        dst += params.items[k].n;
    }
    segments_free(&params);
    self->rate = rate;
    self->num_threads = num_threads.value;
    return 0;
}

static void ema_dealloc(EMAObject *self)
{
    Py_XDECREF(self->values);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ema_ready(EMAObject *self)
{
    return dfc_py_ready(self->values, "EMA: not initialised");
}

/* update(params, backend=None): values = rate * values + (1 - rate) * params */
static PyObject *ema_update(EMAObject *self, PyObject *args)
{
    dfc_backend *be, *owned;
    PyObject *params_obj, *backend_obj = NULL;
    if (!ema_ready(self) || !PyArg_ParseTuple(args, "O|O", &params_obj, &backend_obj))
        return NULL;
    segment_list params;
    if (segments_from(params_obj, "EMA.update", "params", 0, &params) < 0)
        return NULL;
    int64_t size = (int64_t)PyArray_SIZE(self->values);
    if (params.total != size) {
        PyErr_Format(PyExc_ValueError, "EMA.update: params hold %lld values, the average has %lld",
                     (long long)params.total, (long long)size);
        segments_free(&params);
        return NULL;
    }
    if (call_backend(backend_obj, self->num_threads, &be, &owned) < 0) {
        segments_free(&params);
        return NULL;
    }
    float *ema = PyArray_DATA(self->values);
    dfc_error err = {0};
    dfc_status st = DFC_OK;
    Py_BEGIN_ALLOW_THREADS
    for (int k = 0; k < params.count && st == DFC_OK; k++) {
        st = dfc_ema_update(be, ema, params.items[k].data, params.items[k].n, self->rate, &err);
        ema += params.items[k].n;
    }
    Py_END_ALLOW_THREADS
    segments_free(&params);
    dfc_backend_destroy(owned);
    if (st != DFC_OK)
        return dfc_py_raise(&err);
    Py_RETURN_NONE;
}

static PyObject *ema_get_rate(EMAObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->rate);
}

static int ema_set_rate(EMAObject *self, PyObject *value, void *closure)
{
    (void)closure;
    double rate = value ? PyFloat_AsDouble(value) : -1.0;
    if (rate == -1.0 && PyErr_Occurred())
        return -1;
    if (check_rate(rate) < 0)
        return -1;
    self->rate = rate;
    return 0;
}

static PyObject *ema_get_values(EMAObject *self, void *closure)
{
    (void)closure;
    if (!ema_ready(self))
        return NULL;
    Py_INCREF(self->values);
    return (PyObject *)self->values;
}

static PyMethodDef ema_methods[] = {
    {"update", (PyCFunction)ema_update, METH_VARARGS,
     "update(params, backend=None): values = rate values + (1 - rate) params (on a 'cpu' backend of num_threads "
     "when backend is None)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ema_getset[] = {
    {"rate", (getter)ema_get_rate, (setter)ema_set_rate, "EMA rate (0.9999 in guided-diffusion)", NULL},
    {"values", (getter)ema_get_values, NULL, "the averaged parameters (flat float32, writable)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EMA_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffice._C.EMA",
    .tp_basicsize = sizeof(EMAObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "EMA(params, rate, num_threads=0): exponential moving average of parameters (update_ema).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ema_init,
    .tp_dealloc = (destructor)ema_dealloc,
    .tp_methods = ema_methods,
    .tp_getset = ema_getset,
};

/* ---- gradient norm and clipping ---- */

static PyObject *py_grad_norm(PyObject *self, PyObject *args, PyObject *kwargs)
{
    (void)self;
    static char *kwlist[] = {"grads", "max_norm", "num_threads", "backend", NULL};
    dfc_backend *be, *owned;
    PyObject *grads_obj, *backend_obj = NULL;
    double max_norm = 0.0;
    dfc_py_int_arg threads = {"clip_grad_norm: num_threads", INT_MIN, INT_MAX, 0}; /* <= 0: every core */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|dO&O", kwlist, &grads_obj, &max_norm, dfc_py_int_converter,
                                     &threads, &backend_obj))
        return NULL;
    PyArrayObject *grads;
    int clip = max_norm > 0.0;
    if (flat_array(grads_obj, "clip_grad_norm", "grads", -1, clip, &grads) < 0 ||
        call_backend(backend_obj, threads.value, &be, &owned) < 0)
        return NULL;
    float *g = PyArray_DATA(grads);
    int64_t n = (int64_t)PyArray_SIZE(grads);
    double sum_squares = 0.0, norm = 0.0;
    dfc_error err = {0};
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dfc_add_sum_squares(be, g, n, &sum_squares, &err);
    norm = sqrt(sum_squares);
    if (st == DFC_OK)
        st = dfc_clip_scale(be, g, n, norm, max_norm, &err);
    Py_END_ALLOW_THREADS
    dfc_backend_destroy(owned);
    if (st != DFC_OK)
        return dfc_py_raise(&err);
    return PyFloat_FromDouble(norm);
}

/* ---- training loss ---- */

typedef struct {
    PyObject_HEAD
    dfc_diffusion *d;
    dfc_loss_type type;
    dfc_backend *be; /* runs the loss's ops: the reference kernels */
} TrainingLossObject;

static int loss_init(TrainingLossObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"steps", "schedule", "respacing", "variance_type", "loss_type", NULL};
    dfc_py_int_arg steps = {"TrainingLoss: steps", 1, INT_MAX, 1000};
    dfc_py_int_arg variance_type = {"TrainingLoss: variance_type", DFC_VAR_LEARNED_RANGE, DFC_VAR_FIXED_SMALL,
                                    DFC_VAR_LEARNED_RANGE};
    dfc_py_int_arg loss_type = {"TrainingLoss: loss_type (0 mse, 1 rescaled_mse)", DFC_LOSS_MSE,
                                DFC_LOSS_RESCALED_MSE, DFC_LOSS_MSE};
    const char *schedule = "linear", *respacing = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&ssO&O&", kwlist, dfc_py_int_converter, &steps, &schedule,
                                     &respacing, dfc_py_int_converter, &variance_type, dfc_py_int_converter,
                                     &loss_type))
        return -1;
    if (dfc_py_diffusion_reset(&self->d, steps.value, schedule, respacing, variance_type.value) < 0 ||
        dfc_py_reference_backend(&self->be) < 0)
        return -1;
    self->type = (dfc_loss_type)loss_type.value;
    return 0;
}

static void loss_dealloc(TrainingLossObject *self)
{
    dfc_diffusion_destroy(self->d);
    dfc_backend_destroy(self->be);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* compute(x_start, x_t, noise, indices, model_output, weights_or_None, want_grad)
 *   -> (loss, mse, vb, d_model_output or None) */
static PyObject *loss_compute(TrainingLossObject *self, PyObject *args)
{
    const char *op = "training_losses";
    PyObject *x0_obj, *xt_obj, *noise_obj, *idx_obj, *mo_obj, *w_obj;
    int want_grad = 1;
    if (!dfc_py_ready(self->d, "TrainingLoss: not initialised") ||
        !PyArg_ParseTuple(args, "OOOOOO|p", &x0_obj, &xt_obj, &noise_obj, &idx_obj, &mo_obj, &w_obj, &want_grad))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x0, xt, noise, mo, dmo = {0}, loss, mse, vb, weights = {0};
    const int64_t *indices;
    PyObject *result = NULL;
    if (dfc_py_tensor(x0_obj, op, "x_start", 2, 4, 1, &refs, &x0) < 0 ||
        dfc_py_tensor(xt_obj, op, "x_t", 2, 4, 1, &refs, &xt) < 0 ||
        dfc_py_tensor(noise_obj, op, "noise", 2, 4, 1, &refs, &noise) < 0 ||
        dfc_py_tensor(mo_obj, op, "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_int64_vector(idx_obj, op, "indices", x0.shape[0], &refs, &indices) < 0 ||
        dfc_py_optional_tensor(w_obj, op, "weights", 1, 1, 1, &refs, &weights) < 0)
        goto done;
    if (weights.data && weights.shape[0] != x0.shape[0]) {
        PyErr_Format(PyExc_ValueError, "%s: weights must have %lld entries, got %lld", op, (long long)x0.shape[0],
                     (long long)weights.shape[0]);
        goto done;
    }
    int64_t n = x0.shape[0];
    const int64_t *dmo_shape = want_grad ? mo.shape : NULL; /* d_model_output is None without the gradient */
    if (!(result = dfc_py_new_tuple(4, (dfc_py_output[]){{1, &n, &loss}, {1, &n, &mse}, {1, &n, &vb},
                                                          {mo.ndim, dmo_shape, &dmo}})))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(result, err,
               dfc_diffusion_training_losses(self->d, self->be, self->type, &x0, &xt, &noise, indices, &mo,
                                             weights.data, loss.data, mse.data, vb.data, want_grad ? &dmo : NULL,
                                             &err));
done:
    dfc_py_refs_release(&refs);
    return result;
}

static PyObject *loss_get_num_timesteps(TrainingLossObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->d ? self->d->num_timesteps : 0);
}

static PyMethodDef loss_methods[] = {
    {"compute", (PyCFunction)loss_compute, METH_VARARGS,
     "compute(x_start, x_t, noise, indices, model_output, weights_or_None, want_grad=True) -> "
     "(loss, mse, vb, d_model_output or None)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loss_getset[] = {
    {"num_timesteps", (getter)loss_get_num_timesteps, NULL, "respaced step count", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TrainingLoss_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffice._C.TrainingLoss",
    .tp_basicsize = sizeof(TrainingLossObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TrainingLoss(steps, schedule, respacing, variance_type, loss_type): guided-diffusion's "
              "training_losses (mse + frozen-mean vb) and its gradient w.r.t. the model output.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)loss_init,
    .tp_dealloc = (destructor)loss_dealloc,
    .tp_methods = loss_methods,
    .tp_getset = loss_getset,
};

static PyMethodDef train_functions[] = {
    {"clip_grad_norm", (PyCFunction)(void (*)(void))py_grad_norm, METH_VARARGS | METH_KEYWORDS,
     "clip_grad_norm(grads, max_norm=0.0, num_threads=0, backend=None) -> the global L2 norm before clipping "
     "(on backend, else a 'cpu' backend of num_threads); scales grads in "
     "place by min(1, max_norm / (norm + 1e-6)) when max_norm > 0 (torch.nn.utils.clip_grad_norm_)"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_train(PyObject *module)
{
    if (dfc_py_add_type(module, &AdamW_Type, "AdamW") < 0 || dfc_py_add_type(module, &EMA_Type, "EMA") < 0 ||
        dfc_py_add_type(module, &TrainingLoss_Type, "TrainingLoss") < 0)
        return -1;
    return PyModule_AddFunctions(module, train_functions);
}

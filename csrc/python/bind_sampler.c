/* Bindings for the sampler: diffice._C.sample (the whole guided reverse process in one call) and
 * diffice._C.model_guidance (the native guidance it runs). The sampler's noise is the op gaussian_noise.
 *
 * The guidance is either a native one (a capsule holding a dfc_guidance, made by the classifier/perceptual
 * bindings) or any Python object with loss_and_grad(x0, rows, lambda_c, lambda_p) -> (grad, loss_c, loss_p) and
 * classify(x, rows) -> (prob_target, is_target): the latter lets researchers guide with their own models. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../diffusion/guidance.h"
#include "../diffusion/sampler.h"

#define GUIDANCE_CAPSULE "diffice.guidance"

/* ---- Python-object guidance: trampolines that take the GIL for the call ---- */

typedef struct {
    PyObject *object;
    PyObject *progress; /* callable or NULL */
    int64_t channels, height, width;
    /* the first Python exception raised inside a callback, re-raised after the run */
    PyObject *exc_type, *exc_value, *exc_tb;
} py_bridge;

static void keep_exception(py_bridge *b)
{
    if (b->exc_type) {
        PyErr_Clear();
        return;
    }
    PyErr_Fetch(&b->exc_type, &b->exc_value, &b->exc_tb);
}

static PyObject *rows_array(const int64_t *rows, int64_t n)
{
    npy_intp dims[1] = {n};
    PyObject *a = PyArray_SimpleNew(1, dims, NPY_INT64);
    if (a)
        memcpy(PyArray_DATA((PyArrayObject *)a), rows, (size_t)n * sizeof(int64_t));
    return a;
}

/* A new array holding t (backend memory); NULL with err set (and no Python exception pending) on failure. */
static PyObject *copy_tensor(dfc_backend *be, const dfc_tensor *t, dfc_error *err)
{
    dfc_tensor copy;
    PyObject *a = dfc_py_new_tensor(t->ndim, t->shape, &copy);
    if (!a) {
        PyErr_Clear();
        dfc_fail(err, DFC_ERR_NOMEM, "sampler: out of memory for the guidance's input");
    } else if (dfc_copy_tensor_to_host(be, &copy, t, err) != DFC_OK) {
        Py_CLEAR(a);
    }
    return a;
}

/* Copies a float array-like of exactly `count` values into out (be's memory); with `probability`, each must lie in
 * [0, 1] (a NaN or 1.3 would be reported as f's p(target) and steer no decision honestly). -1 with a Python
 * exception, or with err set by the copy. */
static int read_floats(PyObject *obj, const char *what, int probability, dfc_backend *be, float *out, int64_t count,
                       dfc_error *err)
{
    PyArrayObject *a =
        (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 0, 5, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!a)
        return -1;
    if (PyArray_SIZE(a) != count) {
        PyErr_Format(PyExc_ValueError, "guidance: %s has %lld values, expected %lld (one per image)", what,
                     (long long)PyArray_SIZE(a), (long long)count);
        Py_DECREF(a);
        return -1;
    }
    const float *v = PyArray_DATA(a);
    for (int64_t i = 0; probability && i < count; i++) {
        if (!(v[i] >= 0.0f && v[i] <= 1.0f)) {
            PyObject *value = PyFloat_FromDouble((double)v[i]);
            if (value)
                PyErr_Format(PyExc_ValueError, "guidance: %s[%lld] = %R, expected a probability in [0, 1]", what,
                             (long long)i, value);
            Py_XDECREF(value);
            Py_DECREF(a);
            return -1;
        }
    }
    dfc_status st = be->iface->copy_from_host(be, out, PyArray_DATA(a), (size_t)count * sizeof(float), err);
    Py_DECREF(a);
    return st == DFC_OK ? 0 : -1;
}

/* The Python tuple of a tensor's shape (a new reference), NULL with a Python exception. */
static PyObject *shape_tuple(const dfc_tensor *t)
{
    PyObject *shape = PyTuple_New(t->ndim);
    for (int d = 0; shape && d < t->ndim; d++) {
        PyObject *v = PyLong_FromLongLong((long long)t->shape[d]);
        if (!v) {
            Py_CLEAR(shape);
            break;
        }
        PyTuple_SET_ITEM(shape, d, v);
    }
    return shape;
}

/* Copies the guidance's gradient into out (be's memory). It must have exactly x0's shape: one of another shape with
 * as many values (transposed, flattened) would be read in the wrong order. -1 with a Python exception, or with err
 * set by the copy. */
static int read_grad(PyObject *obj, const dfc_tensor *x0, dfc_backend *be, float *out, dfc_error *err)
{
    PyArrayObject *a =
        (PyArrayObject *)PyArray_FROMANY(obj, NPY_FLOAT32, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!a)
        return -1;
    int same = PyArray_NDIM(a) == x0->ndim;
    for (int d = 0; same && d < x0->ndim; d++)
        same = PyArray_DIM(a, d) == x0->shape[d];
    if (!same) {
        PyObject *got = PyObject_GetAttrString((PyObject *)a, "shape"), *expected = got ? shape_tuple(x0) : NULL;
        if (expected)
            PyErr_Format(PyExc_ValueError,
                         "guidance: loss_and_grad returned a grad of shape %R, expected x0's shape %R", got, expected);
        Py_XDECREF(got);
        Py_XDECREF(expected);
        Py_DECREF(a);
        return -1;
    }
    dfc_status st = be->iface->copy_from_host(be, out, PyArray_DATA(a), (size_t)dfc_numel(x0) * sizeof(float), err);
    Py_DECREF(a);
    return st == DFC_OK ? 0 : -1;
}

/* The guidance's is_target flags as 0/1 (a host vector of n): n values, each false/true (bools, or the numbers 0
 * and 1); anything else (2, -1, 0.7, NaN) is a ValueError rather than a flip decision made by truncation. -1 with a
 * Python exception. */
static int read_flags(PyObject *obj, int *out, int64_t n)
{
    PyArrayObject *a =
        (PyArrayObject *)PyArray_FROMANY(obj, NPY_DOUBLE, 0, 0, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!a)
        return -1;
    if (PyArray_SIZE(a) != n) {
        PyErr_Format(PyExc_ValueError,
                     "guidance: classify returned is_target with %lld values, expected %lld (one "
                     "per image)",
                     (long long)PyArray_SIZE(a), (long long)n);
        Py_DECREF(a);
        return -1;
    }
    const double *v = PyArray_DATA(a);
    for (int64_t i = 0; i < n; i++) {
        if (v[i] != 0.0 && v[i] != 1.0) {
            PyObject *value = PyFloat_FromDouble(v[i]);
            if (value)
                PyErr_Format(PyExc_ValueError,
                             "guidance: classify returned is_target[%lld] = %R, expected 0 or 1 "
                             "(false or true)",
                             (long long)i, value);
            Py_XDECREF(value);
            Py_DECREF(a);
            return -1;
        }
        out[i] = v[i] != 0.0;
    }
    Py_DECREF(a);
    return 0;
}

/* A callback's answer could not be taken: its Python error is kept for the caller, or the copy into backend memory
 * failed (err set). */
static dfc_status bad_values(py_bridge *b, const char *callback, dfc_error *err)
{
    if (!PyErr_Occurred())
        return err->code;
    keep_exception(b);
    return dfc_fail(err, DFC_ERR_BACKEND, "sampler: the guidance's %s returned bad values", callback);
}

static dfc_status py_loss_and_grad(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x0,
                                   const int64_t *rows, const float *lambda_c, float lambda_p, dfc_tensor *grad,
                                   float *loss_class, float *loss_perceptual, dfc_error *err)
{
    (void)arena;
    py_bridge *b = ctx;
    int64_t n = x0->shape[0];
    dfc_status st = DFC_OK;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *x_obj = copy_tensor(be, x0, err), *rows_obj = NULL, *lam = NULL, *result = NULL;
    dfc_tensor lam_t;
    int64_t lam_shape[1] = {n};
    if (x_obj && (rows_obj = rows_array(rows, n)) && (lam = dfc_py_new_tensor(1, lam_shape, &lam_t))) {
        memcpy(lam_t.data, lambda_c, (size_t)n * sizeof(float)); /* lambda_c: a per-row host vector */
        result = PyObject_CallMethod(b->object, "loss_and_grad", "OOOd", x_obj, rows_obj, lam, (double)lambda_p);
    }
    if (!x_obj) {
        st = err->code; /* the copy out failed: no Python error */
    } else if (!result || !PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 3) {
        if (result)
            PyErr_SetString(PyExc_TypeError, "guidance.loss_and_grad must return (grad, loss_class, loss_perceptual)");
        keep_exception(b);
        st = dfc_fail(err, DFC_ERR_BACKEND, "sampler: the guidance's loss_and_grad failed");
    } else if (read_grad(PyTuple_GET_ITEM(result, 0), x0, be, grad->data, err) < 0 ||
               read_floats(PyTuple_GET_ITEM(result, 1), "loss_and_grad's loss_class", 0, be, loss_class, n, err) < 0 ||
               read_floats(PyTuple_GET_ITEM(result, 2), "loss_and_grad's loss_perceptual", 0, be, loss_perceptual, n,
                           err) < 0) {
        st = bad_values(b, "loss_and_grad", err);
    }
    Py_XDECREF(x_obj);
    Py_XDECREF(rows_obj);
    Py_XDECREF(lam);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return st;
}

static dfc_status py_classify(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x, const int64_t *rows,
                              float *prob_target, int *is_target, dfc_error *err)
{
    (void)arena;
    py_bridge *b = ctx;
    int64_t n = x->shape[0];
    dfc_status st = DFC_OK;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *x_obj = copy_tensor(be, x, err), *rows_obj = NULL, *result = NULL;
    if (x_obj && (rows_obj = rows_array(rows, n)))
        result = PyObject_CallMethod(b->object, "classify", "OO", x_obj, rows_obj);
    if (!x_obj) {
        st = err->code; /* the copy out failed: no Python error */
    } else if (!result || !PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2) {
        if (result)
            PyErr_SetString(PyExc_TypeError, "guidance.classify must return (prob_target, is_target)");
        keep_exception(b);
        st = dfc_fail(err, DFC_ERR_BACKEND, "sampler: the guidance's classify failed");
    } else if (read_floats(PyTuple_GET_ITEM(result, 0), "classify's prob_target", 1, be, prob_target, n, err) < 0 ||
               read_flags(PyTuple_GET_ITEM(result, 1), is_target, n) < 0) { /* is_target: a per-row host vector */
        st = bad_values(b, "classify", err);
    }
    Py_XDECREF(x_obj);
    Py_XDECREF(rows_obj);
    Py_XDECREF(result);
    PyGILState_Release(gil);
    return st;
}

/* Called after every reverse step: reports progress and checks for Ctrl-C (stops within one step). */
static int py_progress(void *user, int iteration, int lambda_index, int step, int steps_per_pass, int active)
{
    py_bridge *b = user;
    int stop = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    if (PyErr_CheckSignals() < 0) {
        keep_exception(b);
        stop = 1;
    } else if (b->progress) {
        PyObject *r =
            PyObject_CallFunction(b->progress, "iiiii", iteration, lambda_index, step, steps_per_pass, active);
        if (!r) {
            keep_exception(b);
            stop = 1;
        } else {
            int truth = PyObject_IsTrue(r); /* -1: its truth value raised (a numpy array of several values) */
            Py_DECREF(r);
            if (truth < 0)
                keep_exception(b); /* raised after the run, never left pending while the C loop goes on */
            stop = truth != 0;
        }
    }
    PyGILState_Release(gil);
    return stop;
}

/* ---- config ---- */

static int get_float(PyObject *d, const char *key, float *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "sampler config: missing key '%s'", key);
        return -1;
    }
    double x = PyFloat_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    *out = (float)x;
    return 0;
}

static int parse_config(PyObject *d, dfc_sampler_config *c)
{
    memset(c, 0, sizeof *c);
    int method;
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "sampler config must be a dict");
        return -1;
    }
    const char *what = "sampler";
    if (dfc_py_config_required_int(d, what, "method", DFC_METHOD_DIFF_ICE, DFC_METHOD_FASTDIME, &method) < 0 ||
        dfc_py_config_required_int(d, what, "iterations", 1, DFC_SAMPLER_MAX_ITERATIONS, &c->iterations) < 0 ||
        dfc_py_config_required_int(d, what, "tau", 1, INT_MAX, &c->tau) < 0 ||
        get_float(d, "lambda_p", &c->lambda_p) < 0 || get_float(d, "lambda_l1", &c->lambda_l1) < 0 ||
        get_float(d, "lambda_l2", &c->lambda_l2) < 0 ||
        dfc_py_config_required_int(d, what, "grad_at_previous", 0, 1, &c->grad_at_previous) < 0 ||
        dfc_py_config_required_int(d, what, "scale_grads", 0, 1, &c->scale_grads) < 0 ||
        dfc_py_config_required_int(d, what, "clip", 0, 1, &c->clip) < 0 ||
        dfc_py_config_required_int(d, what, "mask_dilation", 0, INT_MAX, &c->mask_dilation) < 0 ||
        get_float(d, "mask_threshold", &c->mask_threshold) < 0 ||
        dfc_py_config_required_int(d, what, "mask_warmup", 0, INT_MAX, &c->mask_warmup) < 0 ||
        dfc_py_config_required_int(d, what, "record_steps", 0, 1, &c->record_steps) < 0 ||
        dfc_py_config_int(d, what, "classify_first_step", 0, 1, &c->classify_first_step) < 0) /* optional: 0 */
        return -1;
    c->method = (dfc_sampler_method)method;
    PyObject *seed = PyDict_GetItemString(d, "seed");
    c->seed = seed ? PyLong_AsUnsignedLongLongMask(seed) : 0;
    if (PyErr_Occurred())
        return -1;
    PyObject *lambdas = PyDict_GetItemString(d, "lambda_c");
    PyObject *seq = lambdas ? PySequence_Fast(lambdas, "sampler config: lambda_c must be a sequence") : NULL;
    if (!seq) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "sampler config: missing key 'lambda_c'");
        return -1;
    }
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    if (k < 1 || k > DFC_MAX_LAMBDAS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "sampler config: lambda_c needs 1 to %d values, got %zd", DFC_MAX_LAMBDAS, k);
        return -1;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        c->lambda_c[i] = (float)v;
    }
    c->num_lambdas = (int)k;
    Py_DECREF(seq);
    return 0;
}

/* One array of sample()'s result: its key in the dict, whether this call makes it, its numpy type and shape. */
typedef struct {
    const char *key;
    int wanted, type, ndim;
    npy_intp dims[6];
} sample_output;
enum { SAMPLE_OUTPUTS = 11 };

/* sample(config, denoiser, diffusion, guidance, backend, x, sample_keys, progress=None) -> dict; denoiser: a
 * Network conditioned on the timesteps (the UNet) */
static PyObject *py_sample(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *cfg_obj, *denoiser_obj, *diff_obj, *guidance_obj, *x_obj, *keys_obj, *progress = Py_None;
    PyObject *backend_obj;
    dfc_backend *be;
    if (!PyArg_ParseTuple(args, "OOOOOOO|O", &cfg_obj, &denoiser_obj, &diff_obj, &guidance_obj, &backend_obj, &x_obj,
                          &keys_obj, &progress) ||
        !dfc_py_backend(backend_obj, &be))
        return NULL;
    dfc_sampler_config cfg;
    dfc_net *denoiser = dfc_py_unwrap_net(denoiser_obj);
    dfc_diffusion *diffusion = denoiser ? dfc_py_unwrap_diffusion(diff_obj) : NULL;
    if (!denoiser || !diffusion || parse_config(cfg_obj, &cfg) < 0)
        return NULL;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "sample: progress must be callable or None");
        return NULL;
    }
    dfc_error err = {0};
    if (dfc_sampler_validate(&cfg, diffusion, &err) != DFC_OK)
        return dfc_py_raise(&err);

    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *result = NULL, *arrays[SAMPLE_OUTPUTS] = {NULL};
    PyArrayObject *keys = NULL;
    if (dfc_py_tensor(x_obj, "sample", "x", 4, 4, 1, &refs, &x) < 0)
        goto done;
    keys = (PyArrayObject *)PyArray_FROMANY(keys_obj, NPY_UINT64, 1, 1, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    if (!keys || PyArray_SIZE(keys) != x.shape[0]) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "sample: sample_keys must have one entry per image (%lld)",
                         (long long)x.shape[0]);
        goto done;
    }
    for (int64_t j = 0; j < dfc_numel(&x); j++) {
        if (x.data[j] < -1.0f || x.data[j] > 1.0f) {
            PyErr_Format(PyExc_ValueError, "sample: x must be in [-1, 1]; image %lld has a value outside",
                         (long long)(j / dfc_inner_size(&x, 1)));
            goto done;
        }
    }
    const npy_intp L = cfg.iterations, N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
    const int steps = cfg.record_steps, first = cfg.classify_first_step;
    const sample_output outputs[SAMPLE_OUTPUTS] = {
        {"counterfactuals", 1, NPY_FLOAT32, 5, {L, N, C, H, W}},
        {"prob_target", 1, NPY_FLOAT32, 2, {L + 1, N}},
        {"lambda_used", 1, NPY_FLOAT32, 2, {L, N}},
        {"flipped", 1, NPY_INT32, 2, {L, N}},
        {"nonfinite_step", 1, NPY_INT32, 2, {L, N}},
        {"iteration_seconds", 1, NPY_FLOAT64, 1, {L}},
        {"steps_xt", steps, NPY_FLOAT32, 6, {L, cfg.tau, N, C, H, W}},
        {"steps_x0", steps, NPY_FLOAT32, 6, {L, cfg.tau, N, C, H, W}},
        {"input_is_target", 1, NPY_INT32, 1, {N}},
        {"first_step_prob", first, NPY_FLOAT32, 1, {N}},
        {"first_step_target", first, NPY_INT32, 1, {N}},
    };
    void *data[SAMPLE_OUTPUTS] = {NULL}; /* NULL: not wanted, which tells the sampler so */
    for (int i = 0; i < SAMPLE_OUTPUTS; i++) {
        const sample_output *o = &outputs[i];
        if (o->wanted && !(arrays[i] = PyArray_ZEROS(o->ndim, (npy_intp *)o->dims, o->type, 0)))
            goto done;
        data[i] = o->wanted ? PyArray_DATA((PyArrayObject *)arrays[i]) : NULL;
    }
    dfc_sampler_outputs out = {.counterfactuals = data[0],
                               .prob_target = data[1],
                               .lambda_used = data[2],
                               .flipped = data[3],
                               .nonfinite_step = data[4],
                               .iteration_seconds = data[5],
                               .steps_xt = data[6],
                               .steps_x0 = data[7],
                               .input_is_target = data[8],
                               .first_step_prob = data[9],
                               .first_step_target = data[10]};
    py_bridge bridge = {guidance_obj, progress == Py_None ? NULL : progress, C, H, W, NULL, NULL, NULL};
    dfc_guidance guidance;
    if (PyCapsule_IsValid(guidance_obj, GUIDANCE_CAPSULE)) {
        guidance = *(dfc_guidance *)PyCapsule_GetPointer(guidance_obj, GUIDANCE_CAPSULE);
    } else {
        if (!PyObject_HasAttrString(guidance_obj, "loss_and_grad") ||
            !PyObject_HasAttrString(guidance_obj, "classify")) {
            PyErr_SetString(PyExc_TypeError, "sample: guidance must be a native guidance or have loss_and_grad() "
                                             "and classify() methods");
            goto done;
        }
        guidance.ctx = &bridge;
        guidance.loss_and_grad = py_loss_and_grad;
        guidance.classify = py_classify;
    }
    /* The run works in the denoiser's workspace: the memory stays with the model between calls (and between the
     * Explainers that share it, one per unit of a sweep), so only a call that needs more than the last faults in
     * fresh pages. A workspace another thread is using, or whose memory the backend cannot use, gives the run
     * arenas of its own. */
    dfc_py_workspace *ws = &((DfcWorkspaceObject *)denoiser_obj)->ws;
    dfc_workspace_arenas w;
    dfc_py_workspace_acquire(ws, &(dfc_py_backend_ref){backend_obj, be}, &w);
    const int kept = dfc_arena_usable_by(w.main, be) && dfc_arena_usable_by(w.scratch, be);
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st =
        dfc_sampler_run_from_host(&cfg, denoiser, diffusion, &guidance, be, kept ? w.main : NULL,
                                  kept ? w.scratch : NULL, &x, PyArray_DATA(keys), py_progress, &bridge, &out, &err);
    Py_END_ALLOW_THREADS dfc_py_workspace_release(ws, &w);
    if (bridge.exc_type) {
        /* a Python error inside a callback (or Ctrl-C) is the real cause: raise it */
        PyErr_Restore(bridge.exc_type, bridge.exc_value, bridge.exc_tb);
        goto done;
    }
    if (st != DFC_OK) {
        dfc_py_raise(&err);
        goto done;
    }
    result = Py_BuildValue("{s:n,s:L}", "peak_bytes", (Py_ssize_t)out.peak_bytes, "unet_evaluations",
                           (long long)out.unet_evaluations);
    for (int i = 0; result && i < SAMPLE_OUTPUTS; i++)
        if (arrays[i] && PyDict_SetItemString(result, outputs[i].key, arrays[i]) < 0)
            Py_CLEAR(result);
done:
    for (int i = 0; i < SAMPLE_OUTPUTS; i++)
        Py_XDECREF(arrays[i]);
    Py_XDECREF(keys);
    dfc_py_refs_release(&refs);
    return result;
}

/* ---- native guidance: diffice's networks, no Python in the step loop ---- */

typedef struct {
    dfc_guidance iface; /* what the sampler calls; ctx = the model guidance */
    dfc_model_guidance *guidance;
    dfc_perceptual *perceptual;      /* private to this guidance (its reference follows the sampler's passes) */
    PyObject *classifier, *features; /* the Network objects whose C nets are used, kept alive */
    PyObject *backend;               /* the Backend it runs on and whose memory it holds, kept alive */
} native_guidance;

static void native_guidance_free(PyObject *capsule)
{
    native_guidance *g = PyCapsule_GetPointer(capsule, GUIDANCE_CAPSULE);
    if (!g)
        return;
    dfc_model_guidance_destroy(g->guidance);
    dfc_perceptual_destroy(g->perceptual);
    Py_XDECREF(g->classifier);
    Py_XDECREF(g->features);
    Py_XDECREF(g->backend); /* after the memory it holds is freed */
    PyMem_Free(g);
}

/* model_guidance(classifier, class_loss, features_or_None, variant, weight, x, targets, backend) -> capsule: runs on
 * that backend only */
static PyObject *py_model_guidance(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *clf_obj, *feat_obj, *x_obj, *targets_obj;
    const char *kind_name;
    dfc_py_int_arg variant = {"model_guidance: variant (0 mse, 1 normalized)", DFC_PERCEPTUAL_MSE,
                              DFC_PERCEPTUAL_NORMALIZED, 0};
    float weight;
    dfc_py_backend_ref backend;
    if (!PyArg_ParseTuple(args, "OsOO&fOOO&", &clf_obj, &kind_name, &feat_obj, dfc_py_int_converter, &variant, &weight,
                          &x_obj, &targets_obj, dfc_py_backend_ref_converter, &backend))
        return NULL;
    dfc_class_loss_kind kind;
    if (strcmp(kind_name, "ce") == 0)
        kind = DFC_CLASS_LOSS_CE;
    else if (strcmp(kind_name, "logit") == 0)
        kind = DFC_CLASS_LOSS_LOGIT;
    else {
        PyErr_Format(PyExc_ValueError, "model_guidance: class_loss must be 'ce' or 'logit', got '%s'", kind_name);
        return NULL;
    }
    dfc_net *classifier = dfc_py_unwrap_net(clf_obj);
    dfc_net *features = (classifier && feat_obj != Py_None) ? dfc_py_unwrap_net(feat_obj) : NULL;
    if (!classifier || (feat_obj != Py_None && !features))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    const int64_t *targets;
    PyObject *capsule = NULL;
    if (dfc_py_tensor(x_obj, "model_guidance", "x", 4, 4, 1, &refs, &x) < 0 ||
        dfc_py_int64_vector(targets_obj, "model_guidance", "targets", x.shape[0], &refs, &targets) < 0)
        goto done;
    native_guidance *g = PyMem_Calloc(1, sizeof *g);
    if (!g) {
        PyErr_NoMemory();
        goto done;
    }
    dfc_error err = {0};
    if ((features && dfc_perceptual_create(features, (dfc_perceptual_variant)variant.value, weight, &g->perceptual,
                                           &err) != DFC_OK) ||
        dfc_model_guidance_create(classifier, kind, g->perceptual, backend.be, &x, targets, &g->guidance, &err) !=
            DFC_OK) {
        dfc_perceptual_destroy(g->perceptual);
        PyMem_Free(g);
        dfc_py_raise(&err);
        goto done;
    }
    g->iface = dfc_model_guidance_interface(g->guidance);
    Py_INCREF(clf_obj);
    g->classifier = clf_obj;
    Py_XINCREF(features ? feat_obj : NULL);
    g->features = features ? feat_obj : NULL;
    Py_INCREF(backend.obj);
    g->backend = backend.obj;
    capsule = PyCapsule_New(g, GUIDANCE_CAPSULE, native_guidance_free);
    if (!capsule) {
        dfc_model_guidance_destroy(g->guidance);
        dfc_perceptual_destroy(g->perceptual);
        Py_XDECREF(g->classifier);
        Py_XDECREF(g->features);
        Py_XDECREF(g->backend);
        PyMem_Free(g);
    }
done:
    dfc_py_refs_release(&refs);
    return capsule;
}

static PyMethodDef sampler_methods[] = {
    {"sample", py_sample, METH_VARARGS,
     "sample(config, denoiser, diffusion, guidance, backend, x, sample_keys, progress=None) -> dict of outputs"},
    {"model_guidance", py_model_guidance, METH_VARARGS,
     "model_guidance(classifier, class_loss, features_or_None, variant, weight, x, targets, backend) -> native "
     "guidance for that backend"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_sampler(PyObject *module) { return PyModule_AddFunctions(module, sampler_methods); }

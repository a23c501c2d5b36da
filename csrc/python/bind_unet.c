/* Bindings for the guided-diffusion UNet (diffice._C.UNet). Parameters are exposed as numpy views into the C buffer, so
 * loading and saving checkpoints happen in Python while the math stays in C. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../nets/unet.h"

typedef struct {
    DfcWorkspaceObject base; /* the object head and the workspace */
    dfc_unet *unet;
} UNetObject;

static int unet_init(UNetObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"config", NULL};
    PyObject *cfg_dict;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!", kwlist, &PyDict_Type, &cfg_dict))
        return -1;
    dfc_unet_config c;
    memset(&c, 0, sizeof c);
    int n_attention = 0;
    const char *what = "UNet";
    /* num_heads, num_head_channels, num_heads_upsample: -1 is guided-diffusion's "not set" */
    if (dfc_py_config_required_int(cfg_dict, what, "in_channels", 1, INT_MAX, &c.in_channels) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "model_channels", 1, INT_MAX, &c.model_channels) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "out_channels", 1, INT_MAX, &c.out_channels) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "num_res_blocks", 1, INT_MAX, &c.num_res_blocks) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "num_heads", -1, INT_MAX, &c.num_heads) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "num_head_channels", -1, INT_MAX, &c.num_head_channels) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "num_heads_upsample", -1, INT_MAX, &c.num_heads_upsample) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "legacy_attention", 0, 1, &c.legacy_attention) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "use_scale_shift_norm", 0, 1, &c.use_scale_shift_norm) < 0 ||
        dfc_py_config_required_int(cfg_dict, what, "resblock_updown", 0, 1, &c.resblock_updown) < 0 ||
        dfc_py_config_int_list(cfg_dict, what, "level_channels", 1, INT_MAX, DFC_UNET_MAX_LEVELS, c.level_channels,
                               &c.num_levels) < 0 ||
        dfc_py_config_int_list(cfg_dict, what, "attention", 0, 1, DFC_UNET_MAX_LEVELS, c.attention, &n_attention) < 0)
        return -1;
    if (n_attention != c.num_levels) {
        PyErr_Format(PyExc_ValueError, "UNet config: 'attention' has %d entries for %d levels", n_attention,
                     c.num_levels);
        return -1;
    }
    dfc_unet_destroy(self->unet);
    self->unet = NULL;
    if (dfc_py_workspace_init(&self->base.ws) < 0)
        return -1;
    dfc_error err = {0};
    if (dfc_unet_create(&c, &self->unet, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    return 0;
}

static void unet_dealloc(UNetObject *self)
{
    dfc_unet_destroy(self->unet);
    dfc_py_workspace_free(&self->base.ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int unet_ready(UNetObject *self)
{
    return dfc_py_ready(self->unet, "UNet: not initialised");
}

/* parameters() -> dict name -> writable numpy view into the parameter buffer (keeps the UNet alive). */
static PyObject *unet_parameters(UNetObject *self, PyObject *noargs)
{
    (void)noargs;
    return unet_ready(self) ? dfc_py_params_dict((PyObject *)self, dfc_unet_params(self->unet)) : NULL;
}

static PyObject *unet_parameter_count(UNetObject *self, PyObject *noargs)
{
    (void)noargs;
    if (!unet_ready(self))
        return NULL;
    return PyLong_FromLongLong((long long)dfc_unet_params(self->unet)->total);
}

/* Parses (backend, x, t[, last]) and checks t: one float timestep per sample. With v, last is the array v; with fn,
 * last is returned as it is (train_step's grad_fn, borrowed); with neither, there is no last argument. */
static int parse_call(UNetObject *self, PyObject *args, dfc_backend **be, dfc_tensor *x, dfc_tensor *t, dfc_tensor *v,
                      PyObject **fn, dfc_py_refs *refs, const char *op)
{
    PyObject *x_obj, *t_obj, *last = NULL;
    if (!unet_ready(self))
        return -1;
    if ((v || fn) ? !PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, be, &x_obj, &t_obj, &last)
                  : !PyArg_ParseTuple(args, "O&OO", dfc_py_backend, be, &x_obj, &t_obj))
        return -1;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, refs, x) < 0 || dfc_py_tensor(t_obj, op, "t", 1, 1, 1, refs, t) < 0)
        return -1;
    if (t->shape[0] != x->shape[0]) {
        PyErr_Format(PyExc_ValueError, "%s: t has %lld timesteps for a batch of %lld", op, (long long)t->shape[0],
                     (long long)x->shape[0]);
        return -1;
    }
    if (v && dfc_py_tensor(last, op, "v", 4, 4, 1, refs, v) < 0)
        return -1;
    if (fn)
        *fn = last;
    return 0;
}

/* The shape of forward(x, t): x's batch and spatial size, the UNet's out_channels. */
static void output_shape(const dfc_unet *u, const dfc_tensor *x, int64_t shape[4])
{
    shape[0] = x->shape[0];
    shape[1] = dfc_unet_get_config(u)->out_channels;
    shape[2] = x->shape[2];
    shape[3] = x->shape[3];
}

static PyObject *unet_forward(UNetObject *self, PyObject *args)
{
    dfc_backend *be;
    dfc_tensor x, t, y;
    dfc_py_refs refs = {0};
    PyObject *out = NULL;
    if (parse_call(self, args, &be, &x, &t, NULL, NULL, &refs, "UNet.forward") < 0)
        goto done;
    int64_t shape[4];
    output_shape(self->unet, &x, shape);
    if (!(out = dfc_py_new_tensor(4, shape, &y)))
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    DFC_PY_RUN(out, err, dfc_unet_forward(self->unet, be, w.main, w.scratch, &x, t.data, NULL, &y, &err));
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return out;
}

static dfc_status forward_backward(const dfc_unet *u, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x,
                                   const float *t, const dfc_tensor *v, dfc_tensor *dx, float *grads,
                                   dfc_error *err)
{
    int64_t shape[4];
    output_shape(u, x, shape);
    dfc_tensor y = dfc_arena_tensor(arena, 4, shape, err);
    DFC_CHECK_ALLOC(y);
    dfc_unet_tape *tape = NULL;
    DFC_TRY(dfc_unet_forward(u, be, arena, NULL, x, t, &tape, &y, err));
    return dfc_unet_backward(u, be, arena, tape, v, dx, grads, err);
}

/* vjp and gradients: (backend, x, t, v) -> dx, or with_grads (dx, flat parameter gradients). */
static PyObject *backward_call(UNetObject *self, PyObject *args, int with_grads, const char *op)
{
    dfc_backend *be;
    dfc_tensor x, t, v, dx, flat = {0};
    dfc_py_refs refs = {0};
    PyObject *result = NULL;
    if (parse_call(self, args, &be, &x, &t, &v, NULL, &refs, op) < 0)
        goto done;
    int64_t total = dfc_unet_params(self->unet)->total;
    result = with_grads ? dfc_py_new_tuple(2, (dfc_py_output[]){{4, x.shape, &dx}, {1, &total, &flat}})
                        : dfc_py_new_tensor(4, x.shape, &dx);
    if (!result)
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    DFC_PY_RUN(result, err, forward_backward(self->unet, be, w.main, &x, t.data, &v, &dx, flat.data, &err));
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return result;
}

/* vjp(backend, x, t, v) -> d sum(v * forward(x, t)) / dx */
static PyObject *unet_vjp(UNetObject *self, PyObject *args)
{
    return backward_call(self, args, 0, "UNet.vjp");
}

/* gradients(backend, x, t, v) -> (dx, flat parameter gradient in parameter-buffer order) */
static PyObject *unet_gradients(UNetObject *self, PyObject *args)
{
    return backward_call(self, args, 1, "UNet.gradients");
}

/* train_step(backend, x, t, grad_fn) -> (loss_info, flat parameter gradients): one forward with a tape, then
 * grad_fn(output) -> (dL/doutput, loss_info) in Python (the training loss), then the backward: one forward per
 * training step instead of two. */
static PyObject *unet_train_step(UNetObject *self, PyObject *args)
{
    dfc_backend *be;
    PyObject *grad_fn, *result = NULL, *y_obj = NULL, *grads_obj = NULL, *answer = NULL;
    dfc_tensor x, t, y, dy, flat;
    dfc_py_refs refs = {0};
    if (parse_call(self, args, &be, &x, &t, NULL, &grad_fn, &refs, "UNet.train_step") < 0)
        goto done;
    int64_t yshape[4];
    output_shape(self->unet, &x, yshape);
    int64_t total = dfc_unet_params(self->unet)->total;
    if (!(y_obj = dfc_py_new_tensor(4, yshape, &y)) || !(grads_obj = dfc_py_new_tensor(1, &total, &flat)))
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    dfc_unet_tape *tape = NULL;
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = dfc_unet_forward(self->unet, be, w.main, NULL, &x, t.data, &tape, &y, &err);
    Py_END_ALLOW_THREADS
    if (st != DFC_OK) {
        dfc_py_raise(&err);
    } else if ((answer = PyObject_CallFunctionObjArgs(grad_fn, y_obj, NULL))) {
        if (!PyTuple_Check(answer) || PyTuple_GET_SIZE(answer) != 2) {
            PyErr_SetString(PyExc_TypeError, "UNet.train_step: grad_fn must return (dL/doutput, info)");
        } else if (dfc_py_tensor(PyTuple_GET_ITEM(answer, 0), "UNet.train_step", "dL/doutput", 4, 4, 1, &refs,
                                 &dy) == 0) {
            Py_BEGIN_ALLOW_THREADS
            st = dfc_unet_backward(self->unet, be, w.main, tape, &dy, NULL, flat.data, &err);
            Py_END_ALLOW_THREADS
            if (st != DFC_OK)
                dfc_py_raise(&err);
            else
                result = PyTuple_Pack(2, PyTuple_GET_ITEM(answer, 1), grads_obj);
        }
    }
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    Py_XDECREF(answer);
    Py_XDECREF(y_obj);
    Py_XDECREF(grads_obj);
    dfc_py_refs_release(&refs);
    return result;
}

static PyMethodDef unet_methods[] = {
    {"parameters", (PyCFunction)unet_parameters, METH_NOARGS,
     "parameters() -> dict of writable float32 views, keyed by guided-diffusion state_dict names, in order"},
    {"parameter_count", (PyCFunction)unet_parameter_count, METH_NOARGS, "number of parameters (floats)"},
    {"forward", (PyCFunction)unet_forward, METH_VARARGS, "forward(backend, x, t) -> y"},
    {"vjp", (PyCFunction)unet_vjp, METH_VARARGS, "vjp(backend, x, t, v) -> dx"},
    {"train_step", (PyCFunction)unet_train_step, METH_VARARGS,
     "train_step(backend, x, t, grad_fn) -> (info, flat parameter gradients); grad_fn(y) -> (dL/dy, info)"},
    DFC_PY_WS_RELEASE_MEMORY_METHOD,
    {"gradients", (PyCFunction)unet_gradients, METH_VARARGS,
     "gradients(backend, x, t, v) -> (dx, flat parameter gradients)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef unet_getset[] = {
    DFC_PY_WS_PEAK_GETSET,
    DFC_PY_WS_HELD_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfcUNet_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffice._C.UNet",
    .tp_basicsize = sizeof(UNetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UNet(config): guided-diffusion's UNetModel in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)unet_init,
    .tp_dealloc = (destructor)unet_dealloc,
    .tp_methods = unet_methods,
    .tp_getset = unet_getset,
};

dfc_unet *dfc_py_unwrap_unet(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &DfcUNet_Type)) {
        PyErr_Format(PyExc_TypeError, "expected a diffice._C.UNet, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    UNetObject *u = (UNetObject *)obj;
    return unet_ready(u) ? u->unet : NULL;
}

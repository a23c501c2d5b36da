/* diffice._C.Network: one Python type for every dfc_net (SonoNet, ResNet features, segmenter, plane classifier).
 * Network-specific binding files create the C net from a config and hand it to dfc_py_wrap_net. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

typedef struct {
    DfcWorkspaceObject base; /* the object head and the workspace */
    dfc_net *net;
} NetworkObject;

static void network_dealloc(NetworkObject *self)
{
    dfc_net_destroy(self->net);
    dfc_py_workspace_free(&self->base.ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int network_ready(NetworkObject *self)
{
    return dfc_py_ready(self->net, "Network: not initialised (create networks with their factory functions)");
}

PyObject *dfc_py_params_dict(PyObject *owner, const dfc_param_set *set)
{
    PyObject *dict = PyDict_New();
    if (!dict)
        return NULL;
    for (int i = 0; i < set->count; i++) {
        const dfc_param_info *info = &set->infos[i];
        npy_intp dims[DFC_MAX_DIMS];
        for (int d = 0; d < info->ndim; d++)
            dims[d] = (npy_intp)info->shape[d];
        PyObject *arr = PyArray_SimpleNewFromData(info->ndim, dims, NPY_FLOAT32, dfc_param_data(set, i));
        if (!arr)
            goto fail;
        Py_INCREF(owner);
        if (PyArray_SetBaseObject((PyArrayObject *)arr, owner) < 0 || PyDict_SetItemString(dict, info->name, arr) < 0) {
            Py_DECREF(arr);
            goto fail;
        }
        Py_DECREF(arr);
    }
    return dict;
fail:
    Py_DECREF(dict);
    return NULL;
}

static PyObject *network_parameters(NetworkObject *self, PyObject *noargs)
{
    (void)noargs;
    return network_ready(self) ? dfc_py_params_dict((PyObject *)self, &self->net->params) : NULL;
}

static PyObject *network_parameter_count(NetworkObject *self, PyObject *noargs)
{
    (void)noargs;
    return network_ready(self) ? PyLong_FromLongLong((long long)self->net->params.total) : NULL;
}

/* Parses (backend, x[, douts]) where douts is a tuple with one array or None per output. */
static int parse_call(NetworkObject *self, PyObject *args, int with_douts, dfc_backend **be, dfc_tensor *x,
                      dfc_tensor *douts, dfc_py_refs *refs, const char *op)
{
    PyObject *x_obj, *douts_obj = NULL;
    if (!network_ready(self))
        return -1;
    if (with_douts ? !PyArg_ParseTuple(args, "O&OO", dfc_py_backend, be, &x_obj, &douts_obj)
                   : !PyArg_ParseTuple(args, "O&O", dfc_py_backend, be, &x_obj))
        return -1;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, refs, x) < 0)
        return -1;
    if (x->shape[1] != self->net->in_channels) {
        PyErr_Format(PyExc_ValueError, "%s: x has %lld channels, the %s network takes %d", op, (long long)x->shape[1],
                     self->net->vt->kind, self->net->in_channels);
        return -1;
    }
    if (!with_douts)
        return 0;
    int n = self->net->num_outputs;
    if (!PyTuple_Check(douts_obj) || PyTuple_GET_SIZE(douts_obj) != n) {
        PyErr_Format(PyExc_ValueError, "%s: douts must be a tuple of %d gradients (array or None), one per output", op,
                     n);
        return -1;
    }
    int any = 0;
    for (int k = 0; k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "d%s", self->net->output_names[k]);
        if (dfc_py_optional_tensor(PyTuple_GET_ITEM(douts_obj, k), op, name, 1, 4, 1, refs, &douts[k]) < 0)
            return -1;
        any |= douts[k].data != NULL;
    }
    if (!any) {
        PyErr_Format(PyExc_ValueError, "%s: every output gradient is None", op);
        return -1;
    }
    return 0;
}

/* The net's outputs copied out of the arena into a new tuple of arrays; NULL with an exception on failure. */
static PyObject *outputs_tuple(const dfc_net *net, const dfc_tensor *outputs)
{
    PyObject *result = PyTuple_New(net->num_outputs);
    for (int k = 0; result && k < net->num_outputs; k++) {
        dfc_tensor copy;
        PyObject *arr = dfc_py_new_tensor(outputs[k].ndim, outputs[k].shape, &copy);
        if (!arr) {
            Py_CLEAR(result);
            break;
        }
        memcpy(copy.data, outputs[k].data, (size_t)dfc_numel(&copy) * sizeof(float));
        PyTuple_SET_ITEM(result, k, arr);
    }
    return result;
}

static dfc_status forward_call(const dfc_net *net, dfc_backend *be, dfc_py_arenas *w, const dfc_tensor *x,
                               dfc_tensor *outputs, dfc_error *err)
{
    return net->vt->forward(net, be, w->main, w->scratch, x, NULL, outputs, err);
}

/* forward(backend, x) -> tuple of outputs (copied out of the arena) */
static PyObject *network_forward(NetworkObject *self, PyObject *args)
{
    dfc_backend *be;
    dfc_tensor x, outputs[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    PyObject *result = NULL;
    if (parse_call(self, args, 0, &be, &x, NULL, &refs, "Network.forward") < 0)
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = forward_call(self->net, be, &w, &x, outputs, &err);
    Py_END_ALLOW_THREADS
    if (st == DFC_OK)
        result = outputs_tuple(self->net, outputs);
    else
        dfc_py_raise(&err);
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return result;
}

static dfc_status forward_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x,
                                   const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    dfc_tensor outputs[DFC_NET_MAX_OUTPUTS];
    void *tape = NULL;
    DFC_TRY(net->vt->forward(net, be, arena, NULL, x, &tape, outputs, err));
    for (int k = 0; k < net->num_outputs; k++) {
        if (douts[k].data)
            DFC_TRY(dfc_check_shape(&douts[k], "Network.vjp", net->output_names[k], outputs[k].ndim, outputs[k].shape,
                                    err));
    }
    return net->vt->backward(net, be, arena, tape, douts, dx, grads, err);
}

/* vjp and gradients: (backend, x, douts) -> dx, or with_grads (dx, flat parameter gradients). */
static PyObject *backward_call(NetworkObject *self, PyObject *args, int with_grads, const char *op)
{
    dfc_backend *be;
    dfc_tensor x, dx, flat = {0}, douts[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    PyObject *result = NULL;
    if (parse_call(self, args, 1, &be, &x, douts, &refs, op) < 0)
        goto done;
    int64_t total = self->net->params.total;
    result = with_grads ? dfc_py_new_tuple(2, (dfc_py_output[]){{4, x.shape, &dx}, {1, &total, &flat}})
                        : dfc_py_new_tensor(4, x.shape, &dx);
    if (!result)
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    DFC_PY_RUN(result, err, forward_backward(self->net, be, w.main, &x, douts, &dx, flat.data, &err));
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return result;
}

/* vjp(backend, x, douts) -> dx */
static PyObject *network_vjp(NetworkObject *self, PyObject *args)
{
    return backward_call(self, args, 0, "Network.vjp");
}

/* gradients(backend, x, douts) -> (dx, flat parameter gradients in registration order) */
static PyObject *network_gradients(NetworkObject *self, PyObject *args)
{
    return backward_call(self, args, 1, "Network.gradients");
}

/* train_step(backend, x, grad_fn) -> (info, flat parameter gradients): one forward with a tape, then
 * grad_fn(outputs) -> (douts, info) in Python (the training loss), then the backward. */
static PyObject *network_train_step(NetworkObject *self, PyObject *args)
{
    dfc_backend *be;
    PyObject *x_obj, *grad_fn, *outputs_obj = NULL, *answer = NULL, *grads_obj = NULL, *result = NULL;
    dfc_tensor x, flat, outputs[DFC_NET_MAX_OUTPUTS], douts[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    if (!network_ready(self) || !PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &x_obj, &grad_fn))
        return NULL;
    if (dfc_py_tensor(x_obj, "Network.train_step", "x", 4, 4, 1, &refs, &x) < 0)
        goto done;
    int64_t total = self->net->params.total;
    if (!(grads_obj = dfc_py_new_tensor(1, &total, &flat)))
        goto done;
    dfc_error err = {0};
    dfc_py_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &w);
    void *tape = NULL;
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->net->vt->forward(self->net, be, w.main, NULL, &x, &tape, outputs, &err);
    Py_END_ALLOW_THREADS
    if (st != DFC_OK) {
        dfc_py_raise(&err);
        goto release;
    }
    const int n = self->net->num_outputs;
    if (!(outputs_obj = outputs_tuple(self->net, outputs)))
        goto release;
    if (!(answer = PyObject_CallFunctionObjArgs(grad_fn, outputs_obj, NULL)))
        goto release;
    if (!PyTuple_Check(answer) || PyTuple_GET_SIZE(answer) != 2 || !PyTuple_Check(PyTuple_GET_ITEM(answer, 0)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(answer, 0)) != n) {
        PyErr_Format(PyExc_TypeError, "Network.train_step: grad_fn must return (douts, info), douts a tuple of %d", n);
        goto release;
    }
    for (int k = 0; k < n; k++) {
        if (dfc_py_optional_tensor(PyTuple_GET_ITEM(PyTuple_GET_ITEM(answer, 0), k), "Network.train_step",
                                   self->net->output_names[k], 1, 4, 1, &refs, &douts[k]) < 0)
            goto release;
        if (douts[k].data && dfc_check_shape(&douts[k], "Network.train_step", self->net->output_names[k],
                                             outputs[k].ndim, outputs[k].shape, &err) != DFC_OK) {
            dfc_py_raise(&err);
            goto release;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    st = self->net->vt->backward(self->net, be, w.main, tape, douts, NULL, flat.data, &err);
    Py_END_ALLOW_THREADS
    if (st != DFC_OK)
        dfc_py_raise(&err);
    else
        result = PyTuple_Pack(2, PyTuple_GET_ITEM(answer, 1), grads_obj);
release:
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    Py_XDECREF(outputs_obj);
    Py_XDECREF(answer);
    Py_XDECREF(grads_obj);
    dfc_py_refs_release(&refs);
    return result;
}

static PyObject *network_get_kind(NetworkObject *self, void *closure)
{
    (void)closure;
    return network_ready(self) ? PyUnicode_FromString(self->net->vt->kind) : NULL;
}

static PyObject *network_get_output_names(NetworkObject *self, void *closure)
{
    (void)closure;
    if (!network_ready(self))
        return NULL;
    PyObject *names = PyTuple_New(self->net->num_outputs);
    for (int k = 0; names && k < self->net->num_outputs; k++) {
        PyObject *s = PyUnicode_FromString(self->net->output_names[k]);
        if (!s) {
            Py_CLEAR(names);
            break;
        }
        PyTuple_SET_ITEM(names, k, s);
    }
    return names;
}

static PyObject *network_get_in_channels(NetworkObject *self, void *closure)
{
    (void)closure;
    return network_ready(self) ? PyLong_FromLong(self->net->in_channels) : NULL;
}

static PyMethodDef network_methods[] = {
    {"parameters", (PyCFunction)network_parameters, METH_NOARGS,
     "parameters() -> dict of writable float32 views, keyed by state_dict names, in order"},
    {"parameter_count", (PyCFunction)network_parameter_count, METH_NOARGS, "number of parameters (floats)"},
    {"forward", (PyCFunction)network_forward, METH_VARARGS, "forward(backend, x) -> tuple of outputs"},
    {"vjp", (PyCFunction)network_vjp, METH_VARARGS,
     "vjp(backend, x, douts) -> dx; douts: one gradient (array or None) per output"},
    {"gradients", (PyCFunction)network_gradients, METH_VARARGS,
     "gradients(backend, x, douts) -> (dx, flat parameter gradients in parameter order)"},
    {"train_step", (PyCFunction)network_train_step, METH_VARARGS,
     "train_step(backend, x, grad_fn) -> (info, flat gradients); grad_fn(outputs) -> (douts, info)"},
    DFC_PY_WS_RELEASE_MEMORY_METHOD,
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef network_getset[] = {
    {"kind", (getter)network_get_kind, NULL, "network kind", NULL},
    {"output_names", (getter)network_get_output_names, NULL, "names of the forward's outputs", NULL},
    {"in_channels", (getter)network_get_in_channels, NULL, "input channels", NULL},
    DFC_PY_WS_PEAK_GETSET,
    DFC_PY_WS_HELD_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfcNetwork_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffice._C.Network",
    .tp_basicsize = sizeof(NetworkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A C image network (made by a factory such as sononet_create); forward, vjp, gradients.",
    .tp_dealloc = (destructor)network_dealloc,
    .tp_methods = network_methods,
    .tp_getset = network_getset,
};

PyObject *dfc_py_wrap_net(dfc_net *net)
{
    NetworkObject *self = PyObject_New(NetworkObject, &DfcNetwork_Type);
    if (!self) {
        dfc_net_destroy(net);
        return NULL;
    }
    self->net = net;
    memset(&self->base.ws, 0, sizeof self->base.ws);
    if (dfc_py_workspace_init(&self->base.ws) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

PyObject *dfc_py_created_net(dfc_status st, dfc_net *net, const dfc_error *err)
{
    if (st != DFC_OK)
        return dfc_py_raise(err);
    return dfc_py_wrap_net(net);
}

dfc_net *dfc_py_unwrap_net(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &DfcNetwork_Type)) {
        PyErr_Format(PyExc_TypeError, "expected a diffice._C.Network, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return ((NetworkObject *)obj)->net;
}

/* diffice._C.Network: one Python type for every dfc_net (SonoNet, ResNet features, segmenter, plane classifier,
 * the UNet), and the factories that make them from a config dict (one table: unet_create, resnet_create,
 * sononet_create, inception_create, segmenter_create, small_classifier_create; plane_classifier_create, which takes
 * two networks, is in bind_classifier.c). A conditioned network (the UNet) takes its conditioning input (the
 * timesteps) as the last argument of forward, vjp, gradients and train_step. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <stddef.h>

#include "../nets/inception.h"
#include "../nets/plane_classifier.h"
#include "../nets/resnet.h"
#include "../nets/segmenter.h"
#include "../nets/sononet.h"
#include "../nets/unet.h"

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

/* The conditioning input (the UNet's timesteps): None (data NULL) or numbers of any dtype, one per sample, as
 * float32 (original timesteps are exact in float32). Whether the network takes one is checked by dfc_net_forward. */
static int parse_cond(PyObject *obj, const char *op, dfc_py_refs *refs, dfc_tensor *cond)
{
    cond->data = NULL;
    if (!obj || obj == Py_None)
        return 0;
    PyObject *a = PyArray_FROMANY(obj, NPY_FLOAT32, 0, 0, NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: cond must be an array of numbers (one per sample), got %s", op,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int rc = dfc_py_tensor(a, op, "cond", 1, 1, 1, refs, cond);
    Py_DECREF(a);
    return rc;
}

/* Parses (backend, x[, douts][, cond]) where douts is a tuple with one array or None per output and cond the
 * conditioning input of a conditioned network. */
static int parse_call(NetworkObject *self, PyObject *args, int with_douts, dfc_py_backend_ref *be, dfc_tensor *x,
                      dfc_tensor *douts, dfc_tensor *cond, dfc_py_refs *refs, const char *op)
{
    PyObject *x_obj, *douts_obj = NULL, *cond_obj = NULL;
    if (!network_ready(self))
        return -1;
    if (with_douts ? !PyArg_ParseTuple(args, "O&OO|O", dfc_py_backend_ref_converter, be, &x_obj, &douts_obj, &cond_obj)
                   : !PyArg_ParseTuple(args, "O&O|O", dfc_py_backend_ref_converter, be, &x_obj, &cond_obj))
        return -1;
    if (dfc_py_tensor(x_obj, op, "x", 4, 4, 1, refs, x) < 0 || parse_cond(cond_obj, op, refs, cond) < 0)
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

/* The net's outputs copied out of the arena (backend memory) into a new tuple of arrays; NULL with an exception on
 * failure. */
static PyObject *outputs_tuple(const dfc_net *net, dfc_backend *be, const dfc_tensor *outputs)
{
    PyObject *result = PyTuple_New(net->num_outputs);
    for (int k = 0; result && k < net->num_outputs; k++) {
        dfc_tensor copy;
        dfc_error err = {0};
        PyObject *arr = dfc_py_new_tensor(outputs[k].ndim, outputs[k].shape, &copy);
        if (arr && dfc_copy_tensor_to_host(be, &copy, &outputs[k], &err) != DFC_OK) {
            dfc_py_raise(&err);
            Py_CLEAR(arr);
        }
        if (!arr) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, k, arr);
    }
    return result;
}

/* forward(backend, x[, cond]) -> tuple of outputs (copied out of the arena) */
static PyObject *network_forward(NetworkObject *self, PyObject *args)
{
    dfc_py_backend_ref be;
    dfc_tensor x, cond, outputs[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    PyObject *result = NULL;
    if (parse_call(self, args, 0, &be, &x, NULL, &cond, &refs, "Network.forward") < 0)
        goto done;
    dfc_error err = {0};
    dfc_workspace_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &be, &w);
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st =
        dfc_net_forward_from_host(self->net, be.be, w.main, w.scratch, &x, &cond, NULL, outputs, &err);
    Py_END_ALLOW_THREADS if (st == DFC_OK) result = outputs_tuple(self->net, be.be, outputs);
    else dfc_py_raise(&err);
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return result;
}

/* vjp and gradients: (backend, x, douts[, cond]) -> dx, or with_grads (dx, flat parameter gradients). */
static PyObject *backward_call(NetworkObject *self, PyObject *args, int with_grads, const char *op)
{
    dfc_py_backend_ref be;
    dfc_tensor x, cond, dx, flat = {0}, douts[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    PyObject *result = NULL;
    if (parse_call(self, args, 1, &be, &x, douts, &cond, &refs, op) < 0)
        goto done;
    int64_t total = self->net->params.total;
    result = with_grads ? dfc_py_new_tuple(2, (dfc_py_output[]){{4, x.shape, &dx}, {1, &total, &flat}})
                        : dfc_py_new_tensor(4, x.shape, &dx);
    if (!result)
        goto done;
    dfc_error err = {0};
    dfc_workspace_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &be, &w);
    DFC_PY_RUN(result, err, dfc_net_vjp_from_host(self->net, be.be, w.main, &x, &cond, douts, &dx, &flat, op, &err));
    dfc_py_workspace_release(&self->base.ws, &w);
done:
    dfc_py_refs_release(&refs);
    return result;
}

/* vjp(backend, x, douts[, cond]) -> dx */
static PyObject *network_vjp(NetworkObject *self, PyObject *args)
{
    return backward_call(self, args, 0, "Network.vjp");
}

/* gradients(backend, x, douts[, cond]) -> (dx, flat parameter gradients in registration order) */
static PyObject *network_gradients(NetworkObject *self, PyObject *args)
{
    return backward_call(self, args, 1, "Network.gradients");
}

/* train_step(backend, x, grad_fn[, cond]) -> (info, flat parameter gradients): one forward with a tape, then
 * grad_fn(outputs) -> (douts, info) in Python (the training loss), then the backward: one forward per training
 * step instead of two. */
static PyObject *network_train_step(NetworkObject *self, PyObject *args)
{
    dfc_py_backend_ref be;
    PyObject *x_obj, *grad_fn, *cond_obj = NULL, *outputs_obj = NULL, *answer = NULL, *grads_obj = NULL;
    PyObject *result = NULL;
    dfc_tensor x, cond, flat, outputs[DFC_NET_MAX_OUTPUTS], douts[DFC_NET_MAX_OUTPUTS];
    dfc_py_refs refs = {0};
    if (!network_ready(self) ||
        !PyArg_ParseTuple(args, "O&OO|O", dfc_py_backend_ref_converter, &be, &x_obj, &grad_fn, &cond_obj))
        return NULL;
    if (dfc_py_tensor(x_obj, "Network.train_step", "x", 4, 4, 1, &refs, &x) < 0 ||
        parse_cond(cond_obj, "Network.train_step", &refs, &cond) < 0)
        goto done;
    int64_t total = self->net->params.total;
    if (!(grads_obj = dfc_py_new_tensor(1, &total, &flat)))
        goto done;
    dfc_error err = {0};
    dfc_workspace_arenas w;
    dfc_py_workspace_acquire(&self->base.ws, &be, &w);
    void *tape = NULL;
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st =
        dfc_net_forward_from_host(self->net, be.be, w.main, NULL, &x, &cond, &tape, outputs, &err);
    Py_END_ALLOW_THREADS if (st != DFC_OK)
    {
        dfc_py_raise(&err);
        goto release;
    }
    const int n = self->net->num_outputs;
    if (!(outputs_obj = outputs_tuple(self->net, be.be, outputs)))
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
    Py_BEGIN_ALLOW_THREADS st = dfc_net_backward_from_host(self->net, be.be, w.main, tape, douts, NULL, &flat, &err);
    Py_END_ALLOW_THREADS if (st != DFC_OK) dfc_py_raise(&err);
    else result = PyTuple_Pack(2, PyTuple_GET_ITEM(answer, 1), grads_obj);
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

static PyObject *network_get_conditioned(NetworkObject *self, void *closure)
{
    (void)closure;
    return network_ready(self) ? PyBool_FromLong(dfc_net_is_conditioned(self->net)) : NULL;
}

/* check_input((N, C, H, W)): None when forward takes inputs of that shape, else the forward's own error */
static PyObject *network_check_input(NetworkObject *self, PyObject *args)
{
    long long n, c, h, w;
    if (!network_ready(self) || !PyArg_ParseTuple(args, "(LLLL)", &n, &c, &h, &w))
        return NULL;
    float never_read = 0.0f; /* the checks look at the shape only, but a tensor without data is "missing" */
    dfc_tensor x = {.data = &never_read, .ndim = 4, .shape = {n, c, h, w}};
    dfc_error err = {0};
    if (dfc_net_check_input(self->net, &x, &err) != DFC_OK)
        return dfc_py_raise(&err);
    Py_RETURN_NONE;
}

static PyMethodDef network_methods[] = {
    {"parameters", (PyCFunction)network_parameters, METH_NOARGS,
     "parameters() -> dict of writable float32 views, keyed by state_dict names, in order"},
    {"parameter_count", (PyCFunction)network_parameter_count, METH_NOARGS, "number of parameters (floats)"},
    {"forward", (PyCFunction)network_forward, METH_VARARGS,
     "forward(backend, x[, cond]) -> tuple of outputs; cond: the conditioning input of a conditioned network"},
    {"vjp", (PyCFunction)network_vjp, METH_VARARGS,
     "vjp(backend, x, douts[, cond]) -> dx; douts: one gradient (array or None) per output"},
    {"gradients", (PyCFunction)network_gradients, METH_VARARGS,
     "gradients(backend, x, douts[, cond]) -> (dx, flat parameter gradients in parameter order)"},
    {"train_step", (PyCFunction)network_train_step, METH_VARARGS,
     "train_step(backend, x, grad_fn[, cond]) -> (info, flat gradients); grad_fn(outputs) -> (douts, info)"},
    {"check_input", (PyCFunction)network_check_input, METH_VARARGS,
     "check_input((N, C, H, W)) -> None; raises forward's error when the network cannot take inputs of that shape"},
    DFC_PY_WS_RELEASE_MEMORY_METHOD,
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef network_getset[] = {
    {"kind", (getter)network_get_kind, NULL, "network kind", NULL},
    {"output_names", (getter)network_get_output_names, NULL, "names of the forward's outputs", NULL},
    {"in_channels", (getter)network_get_in_channels, NULL, "input channels", NULL},
    {"conditioned", (getter)network_get_conditioned, NULL,
     "True when the network takes a conditioning input (the UNet: timesteps)", NULL},
    DFC_PY_WS_PEAK_GETSET,
    DFC_PY_WS_HELD_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfcNetwork_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.Network",
    .tp_basicsize = sizeof(NetworkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A C network (made by a factory such as sononet_create or unet_create); forward, vjp, gradients.",
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
    dfc_py_workspace_init(&self->base.ws);
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

/* ---- the factories: <kind>_create(config dict) -> Network, from one table ---- */

/* A config value read into a factory's arguments at offset: an int (an absent optional key keeps the default) or
 * a list of at most max_count ints, its length at count_offset. Messages name "<what> config '<key>'". */
typedef struct {
    const char *key;
    size_t offset;
    int min, max;
    enum { OPTIONAL, REQUIRED, LIST } kind;
    int max_count;
    size_t count_offset;
} config_field;

/* the arguments of the factories whose C config is not read as is */
struct unet_args {
    dfc_unet_config c;
    int n_attention; /* must equal c.num_levels */
};
struct resnet_args {
    dfc_resnet_config c;
    int layout, taps[DFC_RESNET_STAGES], n_taps; /* the enum and the stage set, as ints */
};
typedef union {
    struct unet_args unet;
    struct resnet_args resnet;
    dfc_sononet_config sononet;
    dfc_inception_config inception;
    dfc_segmenter_config segmenter;
    dfc_small_classifier_config small_classifier;
} factory_args;

static dfc_status create_unet(factory_args *a, dfc_net **out, dfc_error *err)
{
    if (a->unet.n_attention != a->unet.c.num_levels)
        return dfc_fail(err, DFC_ERR_VALUE, "UNet config: 'attention' has %d entries for %d levels",
                        a->unet.n_attention, a->unet.c.num_levels);
    return dfc_unet_create(&a->unet.c, out, err);
}

static dfc_status create_resnet(factory_args *a, dfc_net **out, dfc_error *err)
{
    a->resnet.c.layout = (dfc_resnet_layout)a->resnet.layout;
    for (int i = 0; i < a->resnet.n_taps; i++)
        a->resnet.c.taps |= 1u << a->resnet.taps[i];
    return dfc_resnet_create(&a->resnet.c, out, err);
}

/* the factories whose config is read as is */
#define CREATE_AS_IS(kind)                                                          \
    static dfc_status create_##kind(factory_args *a, dfc_net **out, dfc_error *err) \
    {                                                                               \
        return dfc_##kind##_create(&a->kind, out, err);                             \
    }
CREATE_AS_IS(sononet)
CREATE_AS_IS(inception)
CREATE_AS_IS(segmenter)
CREATE_AS_IS(small_classifier)

#define INT(args, member, min, max, kind) {#member, offsetof(args, member), min, max, kind, 0, 0}
#define UNET(member, min, max) {#member, offsetof(struct unet_args, c.member), min, max, REQUIRED, 0, 0}
#define RESNET_C(member, min, max) {#member, offsetof(struct resnet_args, c.member), min, max, REQUIRED, 0, 0}
#define LIST_OF(args, key, member, min, max, max_count, count) \
    {key, offsetof(args, member), min, max, LIST, max_count, offsetof(args, count)}

static PyObject *net_create(PyObject *index, PyObject *args);

static struct net_factory {
    PyMethodDef def; /* the module function: its name and doc */
    const char *what;
    factory_args defaults;   /* the values of absent optional keys */
    config_field fields[13]; /* ended by a NULL key */
    dfc_status (*create)(factory_args *args, dfc_net **out, dfc_error *err);
} factories[] = {
    {{"unet_create", net_create, METH_VARARGS,
      "unet_create(config) -> Network: guided-diffusion's UNetModel; forward(backend, x, t) -> (model_output,); "
      "num_heads, num_head_channels, num_heads_upsample: -1 is guided-diffusion's \"not set\""},
     "UNet",
     {.unet = {.n_attention = 0}},
     {UNET(in_channels, 1, INT_MAX), UNET(model_channels, 1, INT_MAX), UNET(out_channels, 1, INT_MAX),
      UNET(num_res_blocks, 1, INT_MAX), UNET(num_heads, -1, INT_MAX), UNET(num_head_channels, -1, INT_MAX),
      UNET(num_heads_upsample, -1, INT_MAX), UNET(legacy_attention, 0, 1), UNET(use_scale_shift_norm, 0, 1),
      UNET(resblock_updown, 0, 1),
      LIST_OF(struct unet_args, "level_channels", c.level_channels, 1, INT_MAX, DFC_UNET_MAX_LEVELS, c.num_levels),
      LIST_OF(struct unet_args, "attention", c.attention, 0, 1, DFC_UNET_MAX_LEVELS, n_attention)},
     create_unet},
    {{"resnet_create", net_create, METH_VARARGS,
      "resnet_create(config) -> Network; config: depth, layout (0 torchvision, 1 radimagenet), in_channels, "
      "taps (stage indices: 0 stem, 1..4 layer1..4)"},
     "ResNet",
     {.resnet = {.n_taps = 0}},
     {RESNET_C(depth, 1, INT_MAX),
      INT(struct resnet_args, layout, DFC_RESNET_TORCHVISION, DFC_RESNET_RADIMAGENET, REQUIRED),
      RESNET_C(in_channels, 1, INT_MAX),
      LIST_OF(struct resnet_args, "taps", taps, 0, DFC_RESNET_STAGES - 1, DFC_RESNET_STAGES, n_taps)},
     create_resnet},
    {{"sononet_create", net_create, METH_VARARGS,
      "sononet_create(config) -> Network: SonoNet-k (config keys k, in_channels, num_classes, standardize); "
      "outputs logits, cam, features"},
     "SonoNet",
     {.sononet = {16, 1, 14, 1}},
     {INT(dfc_sononet_config, k, 1, INT_MAX, OPTIONAL), INT(dfc_sononet_config, in_channels, 1, INT_MAX, OPTIONAL),
      INT(dfc_sononet_config, num_classes, 1, INT_MAX, OPTIONAL), INT(dfc_sononet_config, standardize, 0, 1, OPTIONAL)},
     create_sononet},
    {{"inception_create", net_create, METH_VARARGS,
      "inception_create(config) -> Network: the FID Inception-v3 (config keys in_channels, resize (0: none)); "
      "input in [0, 1]; output pool3 (N, 2048); forward only"},
     "Inception",
     {.inception = {3, 299}},
     {INT(dfc_inception_config, in_channels, 1, INT_MAX, OPTIONAL),
      INT(dfc_inception_config, resize, 0, INT_MAX, OPTIONAL)},
     create_inception},
    {{"segmenter_create", net_create, METH_VARARGS,
      "segmenter_create(config) -> Network: the UNet-style segmenter (config: in_channels, classes, width, levels, "
      "groups)"},
     "Segmenter",
     {.segmenter = {.in_channels = 1}},
     {INT(dfc_segmenter_config, in_channels, 1, INT_MAX, OPTIONAL),
      INT(dfc_segmenter_config, classes, 1, INT_MAX, REQUIRED), INT(dfc_segmenter_config, width, 1, INT_MAX, REQUIRED),
      INT(dfc_segmenter_config, levels, 1, INT_MAX, REQUIRED), INT(dfc_segmenter_config, groups, 1, INT_MAX, REQUIRED)},
     create_segmenter},
    {{"small_classifier_create", net_create, METH_VARARGS,
      "small_classifier_create(config) -> Network: a small conv classifier (config: in_channels, width, "
      "num_classes)"},
     "SmallClassifier",
     {.small_classifier = {0, 0, 0}},
     {INT(dfc_small_classifier_config, in_channels, 1, INT_MAX, REQUIRED),
      INT(dfc_small_classifier_config, width, 1, INT_MAX, REQUIRED),
      INT(dfc_small_classifier_config, num_classes, 1, INT_MAX, REQUIRED)},
     create_small_classifier},
};

/* <kind>_create(config): self is the factory's index in factories[] */
static PyObject *net_create(PyObject *index, PyObject *args)
{
    struct net_factory *f = &factories[PyLong_AsSsize_t(index)];
    PyObject *config;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &config))
        return NULL;
    factory_args a = f->defaults;
    for (const config_field *c = f->fields; c->key; c++) {
        int *value = (int *)((char *)&a + c->offset);
        int rc = c->kind == LIST ? dfc_py_config_int_list(config, f->what, c->key, c->min, c->max, c->max_count, value,
                                                          (int *)((char *)&a + c->count_offset))
                 : c->kind == REQUIRED ? dfc_py_config_required_int(config, f->what, c->key, c->min, c->max, value)
                                       : dfc_py_config_int(config, f->what, c->key, c->min, c->max, value);
        if (rc < 0)
            return NULL;
    }
    dfc_error err = {0};
    dfc_net *net = NULL;
    dfc_status st = f->create(&a, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

int dfc_register_net(PyObject *module)
{
    for (size_t i = 0; i < sizeof factories / sizeof factories[0]; i++) {
        PyObject *index = PyLong_FromSize_t(i);
        PyObject *fn = index ? PyCFunction_NewEx(&factories[i].def, index, NULL) : NULL;
        Py_XDECREF(index);
        if (!fn || PyModule_AddObject(module, factories[i].def.ml_name, fn) < 0) {
            Py_XDECREF(fn);
            return -1;
        }
    }
    return 0;
}

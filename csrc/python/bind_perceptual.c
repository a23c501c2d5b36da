/* Bindings for the perceptual loss (diffice._C.PerceptualLoss), which runs a feature network (a diffice._C.Network
 * from bind_net.c's resnet_create). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../nets/perceptual.h"

/* ---- PerceptualLoss ---- */

typedef struct {
    DfcWorkspaceObject base; /* the object head and the workspace */
    dfc_perceptual *loss;
    PyObject *network;             /* the diffice._C.Network the loss runs (kept alive) */
    PyObject *reference_backend;   /* the Backend whose memory holds the reference features (kept alive) */
    PyThread_type_lock state_lock; /* held by set_reference (which replaces the reference features) and loss (which
                                    * reads them): calls from several threads take turns instead of racing */
} PerceptualObject;

/* Takes self->state_lock without holding the GIL (another thread may hold the lock while it waits for the GIL). */
static void perceptual_lock(PyThread_type_lock lock)
{
    if (PyThread_acquire_lock(lock, NOWAIT_LOCK))
        return;
    Py_BEGIN_ALLOW_THREADS PyThread_acquire_lock(lock, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

static int perceptual_init(PerceptualObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"network", "variant", "weight", NULL};
    PyObject *network;
    dfc_py_int_arg variant = {"PerceptualLoss: variant (0 mse, 1 normalized)", DFC_PERCEPTUAL_MSE,
                              DFC_PERCEPTUAL_NORMALIZED, 0};
    float weight;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&f", kwlist, &network, dfc_py_int_converter, &variant, &weight))
        return -1;
    dfc_net *net = dfc_py_unwrap_net(network);
    if (!net)
        return -1;
    if (self->loss || self->network) {
        PyErr_SetString(PyExc_RuntimeError, "PerceptualLoss: already initialised");
        return -1;
    }
    dfc_py_workspace_init(&self->base.ws);
    if (!self->state_lock && !(self->state_lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    dfc_error err = {0};
    if (dfc_perceptual_create(net, (dfc_perceptual_variant)variant.value, weight, &self->loss, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    Py_INCREF(network);
    self->network = network;
    return 0;
}

static void perceptual_dealloc(PerceptualObject *self)
{
    dfc_perceptual_destroy(self->loss);
    Py_XDECREF(self->reference_backend); /* after the features in its memory are freed */
    Py_XDECREF(self->network);
    dfc_py_workspace_free(&self->base.ws);
    if (self->state_lock)
        PyThread_free_lock(self->state_lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int perceptual_ready(PerceptualObject *self)
{
    return dfc_py_ready(self->loss, "PerceptualLoss: not initialised");
}

/* set_reference(backend, b) */
static PyObject *perceptual_set_reference(PerceptualObject *self, PyObject *args)
{
    dfc_py_backend_ref be;
    PyObject *b_obj;
    if (!perceptual_ready(self) || !PyArg_ParseTuple(args, "O&O", dfc_py_backend_ref_converter, &be, &b_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor b;
    PyObject *out = NULL;
    if (dfc_py_tensor(b_obj, "PerceptualLoss.set_reference", "b", 4, 4, 1, &refs, &b) < 0)
        goto done;
    out = Py_None;
    Py_INCREF(out);
    dfc_error err = {0};
    dfc_workspace_arenas w;
    perceptual_lock(self->state_lock);
    dfc_py_workspace_acquire(&self->base.ws, &be, &w);
    DFC_PY_RUN(out, err, dfc_perceptual_set_reference_from_host(self->loss, be.be, w.main, w.scratch, &b, &err));
    if (out) { /* the features are in be's memory now */
        Py_INCREF(be.obj);
        Py_XSETREF(self->reference_backend, be.obj);
    }
    dfc_py_workspace_release(&self->base.ws, &w);
    PyThread_release_lock(self->state_lock);
done:
    dfc_py_refs_release(&refs);
    return out;
}

/* loss(backend, a, with_grad) -> (loss (N,), da or None) */
static PyObject *perceptual_loss(PerceptualObject *self, PyObject *args)
{
    dfc_py_backend_ref be;
    PyObject *a_obj;
    int with_grad;
    if (!perceptual_ready(self) ||
        !PyArg_ParseTuple(args, "O&Op", dfc_py_backend_ref_converter, &be, &a_obj, &with_grad))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor a, loss, da = {0};
    PyObject *result = NULL;
    if (dfc_py_tensor(a_obj, "PerceptualLoss.loss", "a", 4, 4, 1, &refs, &a) < 0)
        goto done;
    const int64_t *da_shape = with_grad ? a.shape : NULL; /* da is None without the gradient */
    if (!(result = dfc_py_new_tuple(2, (dfc_py_output[]){{1, a.shape, &loss}, {4, da_shape, &da}})))
        goto done;
    dfc_error err = {0};
    dfc_workspace_arenas w;
    perceptual_lock(self->state_lock);
    dfc_py_workspace_acquire(&self->base.ws, &be, &w);
    DFC_PY_RUN(result, err, dfc_perceptual_loss_from_host(self->loss, be.be, w.main, w.scratch, &a, &loss, &da, &err));
    dfc_py_workspace_release(&self->base.ws, &w);
    PyThread_release_lock(self->state_lock);
done:
    dfc_py_refs_release(&refs);
    return result;
}

static PyObject *perceptual_get_has_reference(PerceptualObject *self, void *closure)
{
    (void)closure;
    return perceptual_ready(self) ? PyBool_FromLong(dfc_perceptual_has_reference(self->loss)) : NULL;
}

static PyObject *perceptual_get_network(PerceptualObject *self, void *closure)
{
    (void)closure;
    if (!perceptual_ready(self))
        return NULL;
    Py_INCREF(self->network);
    return self->network;
}

static PyMethodDef perceptual_methods[] = {
    {"set_reference", (PyCFunction)perceptual_set_reference, METH_VARARGS,
     "set_reference(backend, b): compute and keep the reference image's features"},
    {"loss", (PyCFunction)perceptual_loss, METH_VARARGS,
     "loss(backend, a, with_grad) -> (per-sample loss (N,), d sum(loss) / da or None)"},
    DFC_PY_WS_RELEASE_MEMORY_METHOD,
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef perceptual_getset[] = {
    {"has_reference", (getter)perceptual_get_has_reference, NULL, "whether set_reference was called", NULL},
    {"network", (getter)perceptual_get_network, NULL, "the feature network (diffice._C.Network)", NULL},
    DFC_PY_WS_PEAK_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DfcPerceptual_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.PerceptualLoss",
    .tp_basicsize = sizeof(PerceptualObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PerceptualLoss(network, variant, weight): variant 0 = mse (DiME), 1 = normalized (MONAI).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)perceptual_init,
    .tp_dealloc = (destructor)perceptual_dealloc,
    .tp_methods = perceptual_methods,
    .tp_getset = perceptual_getset,
};

int dfc_register_perceptual(PyObject *module) { return dfc_py_add_type(module, &DfcPerceptual_Type, "PerceptualLoss"); }

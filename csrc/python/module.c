/* diffice._C: the CPython/NumPy module. Only binding code lives under csrc/python/. */
#include "pyutil.h"

#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <oneapi/dnnl/dnnl.h>

#include "../core/memory.h"

/* ---- Backend type ---- */

static int backend_init(DfcBackendObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name", "num_threads", "precision", NULL};
    const char *name = "cpu", *precision_name = "fp32";
    dfc_py_int_arg num_threads = {"Backend: num_threads", INT_MIN, INT_MAX, 0}; /* <= 0: every core */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|sO&s", kwlist, &name, dfc_py_int_converter, &num_threads,
                                     &precision_name))
        return -1;
    int precision = 0;
    while (dfc_precision_name(precision) && strcmp(dfc_precision_name(precision), precision_name) != 0)
        precision++;
    if (!dfc_precision_name(precision)) {
        PyErr_Format(PyExc_ValueError, "Backend: precision must be 'fp32', 'tf32' or 'bf16', got '%s'", precision_name);
        return -1;
    }
    if (self->be) { /* arenas, workspaces and copies of parameters may hold its memory */
        PyErr_SetString(PyExc_RuntimeError, "Backend: already initialised (make a new Backend instead)");
        return -1;
    }
    dfc_error err = {0};
    if (dfc_backend_create(name, num_threads.value, (dfc_precision)precision, &self->be, &err) != DFC_OK) {
        dfc_py_raise(&err);
        return -1;
    }
    self->owner = PyThread_get_thread_ident();
    return 0;
}

static void backend_dealloc(DfcBackendObject *self)
{
    dfc_backend_destroy(self->be);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *backend_repr(DfcBackendObject *self)
{
    if (!self->be)
        return PyUnicode_FromString("Backend(<uninitialised>)");
    return PyUnicode_FromFormat("Backend('%s', num_threads=%d, precision='%s')", dfc_backend_name(self->be),
                                self->be->num_threads, dfc_precision_name(self->be->precision));
}

static PyObject *backend_get_precision(DfcBackendObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(self->be ? dfc_precision_name(self->be->precision) : "");
}

static PyObject *backend_get_name(DfcBackendObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(self->be ? dfc_backend_name(self->be) : "");
}

static PyObject *backend_get_num_threads(DfcBackendObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->be ? self->be->num_threads : 0);
}

static PyObject *backend_get_memory_limit(DfcBackendObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->be ? __atomic_load_n(&self->be->memory_limit, __ATOMIC_RELAXED) : 0);
}

static int backend_set_memory_limit(DfcBackendObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "Backend: memory_limit cannot be deleted (0 means no limit)");
        return -1;
    }
    if (!PyLong_Check(value) || PyBool_Check(value)) {
        PyErr_Format(PyExc_TypeError, "Backend: memory_limit must be an int (bytes; 0: no limit), got %s",
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    size_t bytes = PyLong_AsSize_t(value);
    if (bytes == (size_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "Backend: memory_limit must be a number of bytes >= 0 (0: no limit)");
        return -1;
    }
    if (!self->be) {
        PyErr_SetString(PyExc_RuntimeError, "Backend: not initialised");
        return -1;
    }
    __atomic_store_n(&self->be->memory_limit, bytes, __ATOMIC_RELAXED);
    return 0;
}

static PyObject *backend_get_memory_held(DfcBackendObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->be ? __atomic_load_n(&self->be->memory_held, __ATOMIC_RELAXED) : 0);
}

static PyGetSetDef backend_getset[] = {
    {"name", (getter)backend_get_name, NULL, "backend name ('ref' or 'cpu')", NULL},
    {"num_threads", (getter)backend_get_num_threads, NULL, "threads the backend's kernels use", NULL},
    {"precision", (getter)backend_get_precision, NULL, "what its convolutions and products may use ('fp32', 'tf32')",
     NULL},
    {"memory_limit", (getter)backend_get_memory_limit, (setter)backend_set_memory_limit,
     "bytes of host memory its arenas and scratch buffers may hold together (default: default_memory_limit(); 0: no "
     "limit, a GPU backend's default); past it an allocation raises MemoryError",
     NULL},
    {"memory_held", (getter)backend_get_memory_held, NULL,
     "bytes its arenas and scratch buffers hold now (what counts against memory_limit)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject DfcBackend_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.Backend",
    .tp_basicsize = sizeof(DfcBackendObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Backend(name='cpu', num_threads=0): an op table ('ref': plain C oracle; 'cpu': oneDNN + OpenMP).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)backend_init,
    .tp_dealloc = (destructor)backend_dealloc,
    .tp_repr = (reprfunc)backend_repr,
    .tp_getset = backend_getset,
};

/* ---- module ---- */

static PyObject *build_info(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    const dnnl_version_t *v = dnnl_version();
    return Py_BuildValue("{s:s,s:i}", "onednn", v ? "available" : "missing", "onednn_major", v ? v->major : 0);
}

static PyObject *default_memory_limit(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromSize_t(dfc_default_memory_limit());
}

static PyMethodDef module_methods[] = {
    {"build_info", build_info, METH_NOARGS, "build_info() -> dict: how this extension was built."},
    {"default_memory_limit", default_memory_limit, METH_NOARGS,
     "default_memory_limit() -> int: the bytes of host memory a new backend may hold (its arenas and scratch "
     "buffers together): 90% of the physical memory or of the cgroup's limit where lower; 0: unknown, no limit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "diffice._C",
    "diffice's C core: op tables, networks, samplers, file readers.",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    PyMethodDef *tables[] = {dfc_methods_ops, dfc_methods_io, dfc_methods_backend};
    for (size_t i = 0; i < sizeof tables / sizeof tables[0]; i++) {
        if (PyModule_AddFunctions(m, tables[i]) < 0)
            goto fail;
    }
    PyTypeObject *types[] = {&DfcBackend_Type, &DfcDiffusion_Type, &DfcNetwork_Type};
    const char *type_names[] = {"Backend", "Diffusion", "Network"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (dfc_py_add_type(m, types[i], type_names[i]) < 0)
            goto fail;
    int (*registrations[])(PyObject *) = {dfc_register_perceptual, dfc_register_classifier, dfc_register_sampler,
                                          dfc_register_net};
    for (size_t i = 0; i < sizeof registrations / sizeof registrations[0]; i++)
        if (registrations[i](m) < 0)
            goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}

#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <math.h>

void dfc_py_refs_release(dfc_py_refs *refs)
{
    for (int i = 0; i < refs->count; i++)
        Py_CLEAR(refs->refs[i]);
    refs->count = 0;
}

int dfc_py_ready(const void *ptr, const char *message)
{
    if (!ptr) {
        PyErr_SetString(PyExc_RuntimeError, message);
        return 0;
    }
    return 1;
}

int dfc_py_backend(PyObject *obj, void *out)
{
    if (!PyObject_TypeCheck(obj, &DfcBackend_Type)) {
        PyErr_Format(PyExc_TypeError, "backend must be a diffice._C.Backend, got %s", Py_TYPE(obj)->tp_name);
        return 0;
    }
    DfcBackendObject *b = (DfcBackendObject *)obj;
    if (!b->be) {
        PyErr_SetString(PyExc_RuntimeError, "backend: diffice._C.Backend is not initialised");
        return 0;
    }
    if (b->owner != PyThread_get_thread_ident()) {
        PyErr_Format(PyExc_RuntimeError,
                     "backend: this Backend('%s') was created in another thread and holds that thread's state; "
                     "use diffice.ops.get_backend() in each thread",
                     dfc_backend_name(b->be));
        return 0;
    }
    *(dfc_backend **)out = b->be;
    return 1;
}

int dfc_py_backend_ref_converter(PyObject *obj, void *out)
{
    dfc_py_backend_ref *ref = out;
    if (!dfc_py_backend(obj, &ref->be))
        return 0;
    ref->obj = obj;
    return 1;
}

static const char *shape_string(PyArrayObject *a, char *buf, size_t len)
{
    size_t pos = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < PyArray_NDIM(a) && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, i ? ", %lld" : "%lld", (long long)PyArray_DIM(a, i));
    if (pos < len)
        snprintf(buf + pos, len - pos, PyArray_NDIM(a) == 1 ? ",)" : ")");
    return buf;
}

int dfc_py_tensor(PyObject *obj, const char *op, const char *name, int ndim_min, int ndim_max, int check_finite,
                  dfc_py_refs *refs, dfc_tensor *t)
{
    char shape[128];
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a numpy.ndarray of float32, got %s", op, name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s: %s must have dtype float32, got %s", op, name,
                     PyArray_DESCR(a)->typeobj->tp_name);
        return -1;
    }
    int ndim = PyArray_NDIM(a);
    if (ndim < ndim_min || ndim > ndim_max || ndim > DFC_MAX_DIMS) {
        if (ndim_min == ndim_max)
            PyErr_Format(PyExc_ValueError, "%s: %s must have %d dimensions, got %d (shape %s)", op, name, ndim_min,
                         ndim, shape_string(a, shape, sizeof shape));
        else
            PyErr_Format(PyExc_ValueError, "%s: %s must have %d to %d dimensions, got %d (shape %s)", op, name,
                         ndim_min, ndim_max, ndim, shape_string(a, shape, sizeof shape));
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError,
                     "%s: %s must be C-contiguous and aligned (use numpy.ascontiguousarray), got strides of a "
                     "view with shape %s",
                     op, name, shape_string(a, shape, sizeof shape));
        return -1;
    }
    if (PyArray_SIZE(a) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: %s is empty (shape %s)", op, name, shape_string(a, shape, sizeof shape));
        return -1;
    }
    const float *data = PyArray_DATA(a);
    if (check_finite) {
        npy_intp n = PyArray_SIZE(a);
        /* Branch-free test per block (vectorised), exact index only in a block that has a non-finite value. */
        npy_intp start = 0;
        for (; start < n; start += 4096) {
            npy_intp end = n - start < 4096 ? n : start + 4096;
            int bad = 0;
            for (npy_intp i = start; i < end; i++)
                bad |= !isfinite(data[i]);
            if (bad)
                break;
        }
        for (npy_intp i = start; i < n; i++) {
            if (!isfinite(data[i])) {
                /* PyErr_Format has no %f: format the value first */
                char value[32];
                snprintf(value, sizeof value, "%g", (double)data[i]);
                PyErr_Format(PyExc_ValueError, "%s: %s contains a non-finite value (%s at flat index %lld)", op, name,
                             value, (long long)i);
                return -1;
            }
        }
    }
    if (refs->count >= DFC_PY_MAX_ARGS) {
        PyErr_SetString(PyExc_RuntimeError, "diffice: too many array arguments in one call");
        return -1;
    }
    Py_INCREF(obj);
    refs->refs[refs->count++] = obj;
    t->data = (float *)data;
    t->ndim = ndim;
    for (int i = 0; i < DFC_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? (int64_t)PyArray_DIM(a, i) : 1;
    return 0;
}

int dfc_py_optional_tensor(PyObject *obj, const char *op, const char *name, int ndim_min, int ndim_max,
                           int check_finite, dfc_py_refs *refs, dfc_tensor *t)
{
    if (obj == NULL || obj == Py_None) {
        t->data = NULL;
        t->ndim = 0;
        return 0;
    }
    return dfc_py_tensor(obj, op, name, ndim_min, ndim_max, check_finite, refs, t);
}

PyObject *dfc_py_new_tensor(int ndim, const int64_t *shape, dfc_tensor *t)
{
    npy_intp dims[DFC_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            PyErr_Format(PyExc_ValueError, "diffice: output dimension %d would be %lld (must be positive)", i,
                         (long long)shape[i]);
            return NULL;
        }
        dims[i] = (npy_intp)shape[i];
    }
    PyObject *arr = PyArray_ZEROS(ndim, dims, NPY_FLOAT32, 0);
    if (!arr)
        return NULL;
    t->data = PyArray_DATA((PyArrayObject *)arr);
    t->ndim = ndim;
    for (int i = 0; i < DFC_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 1;
    return arr;
}

int dfc_py_int64_vector(PyObject *obj, const char *op, const char *name, int64_t n, dfc_py_refs *refs,
                        const int64_t **out)
{
    /* integers only: a float array would be truncated and a uint64 past int64 wrap to a negative value */
    PyArrayObject *src = (PyArrayObject *)PyArray_FROM_O(obj);
    if (!src || (PyArray_SIZE(src) > 0 && !PyArray_ISINTEGER(src) && !PyArray_ISBOOL(src))) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a 1-D array of integers%s%s", op, name, src ? ", got dtype " : "",
                     src ? PyArray_DESCR(src)->typeobj->tp_name : "");
        Py_XDECREF(src);
        return -1;
    }
    PyArrayObject *a =
        (PyArrayObject *)PyArray_FROMANY((PyObject *)src, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY_RO | NPY_ARRAY_FORCECAST);
    const int was_unsigned = PyArray_ISUNSIGNED(src);
    Py_DECREF(src);
    if (!a) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: %s must be a 1-D array of integers", op, name);
        return -1;
    }
    const int64_t *values = PyArray_DATA(a);
    for (npy_intp k = 0; was_unsigned && k < PyArray_DIM(a, 0); k++) {
        if (values[k] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: %s[%lld] = %llu is out of range", op, name, (long long)k,
                         (unsigned long long)values[k]);
            Py_DECREF(a);
            return -1;
        }
    }
    if (PyArray_DIM(a, 0) != n) {
        PyErr_Format(PyExc_ValueError, "%s: %s must have %lld entries, got %lld", op, name, (long long)n,
                     (long long)PyArray_DIM(a, 0));
        Py_DECREF(a);
        return -1;
    }
    if (refs->count >= DFC_PY_MAX_ARGS) {
        Py_DECREF(a);
        PyErr_SetString(PyExc_RuntimeError, "diffice: too many array arguments in one call");
        return -1;
    }
    refs->refs[refs->count++] = (PyObject *)a;
    *out = PyArray_DATA(a);
    return 0;
}

PyObject *dfc_py_raise(const dfc_error *err)
{
    PyObject *type;
    switch (err->code) {
    case DFC_ERR_SHAPE:
    case DFC_ERR_VALUE:
    case DFC_ERR_FORMAT: type = PyExc_ValueError; break;
    case DFC_ERR_IO: type = PyExc_OSError; break;
    case DFC_ERR_NOMEM: type = PyExc_MemoryError; break;
    case DFC_ERR_NOT_IMPLEMENTED: type = PyExc_NotImplementedError; break;
    case DFC_ERR_INTERRUPTED: type = PyExc_KeyboardInterrupt; break;
    case DFC_ERR_NUMERIC: type = PyExc_FloatingPointError; break;
    default: type = PyExc_RuntimeError; break;
    }
    PyErr_SetString(type, err->message[0] ? err->message : dfc_status_name(err->code));
    return NULL;
}

int dfc_py_int64(PyObject *obj, const char *name, long long min, long long max, long long *out)
{
    PyObject *index = PyNumber_Index(obj); /* ints, numpy integers; a float or a str is a TypeError */
    if (!index) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: expected an integer, got %.100s", name, Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(index);
        return -1;
    }
    if (overflow || value < min || value > max) {
        PyErr_Format(PyExc_ValueError, "%s: expected an integer in [%lld, %lld], got %S", name, min, max, index);
        Py_DECREF(index);
        return -1;
    }
    Py_DECREF(index);
    *out = value;
    return 0;
}

int dfc_py_int(PyObject *obj, const char *name, int min, int max, int *out)
{
    long long value;
    if (dfc_py_int64(obj, name, min, max, &value) < 0)
        return -1;
    *out = (int)value; /* in [min, max], so it fits */
    return 0;
}

int dfc_py_int_converter(PyObject *obj, void *arg)
{
    dfc_py_int_arg *a = arg;
    return dfc_py_int(obj, a->name, a->min, a->max, &a->value) < 0 ? 0 : 1;
}

int dfc_py_int64_converter(PyObject *obj, void *arg)
{
    dfc_py_int64_arg *a = arg;
    return dfc_py_int64(obj, a->name, a->min, a->max, &a->value) < 0 ? 0 : 1;
}

int dfc_py_config_int(PyObject *dict, const char *what, const char *key, int min, int max, int *out)
{
    PyObject *v = PyDict_GetItemString(dict, key);
    if (!v)
        return 0;
    char name[160];
    snprintf(name, sizeof name, "%s config '%s'", what, key);
    return dfc_py_int(v, name, min, max, out);
}

int dfc_py_config_required_int(PyObject *dict, const char *what, const char *key, int min, int max, int *out)
{
    if (!PyDict_GetItemString(dict, key)) {
        PyErr_Format(PyExc_KeyError, "%s config: missing key '%s'", what, key);
        return -1;
    }
    return dfc_py_config_int(dict, what, key, min, max, out);
}

int dfc_py_config_int_list(PyObject *dict, const char *what, const char *key, int min, int max, int max_count, int *out,
                           int *count)
{
    PyObject *v = PyDict_GetItemString(dict, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "%s config: missing key '%s'", what, key);
        return -1;
    }
    char name[160];
    snprintf(name, sizeof name, "%s config '%s' must be a list of integers", what, key);
    PyObject *seq = PySequence_Fast(v, name);
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > max_count) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "%s config '%s': %zd entries, at most %d are supported", what, key, n,
                     max_count);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        snprintf(name, sizeof name, "%s config '%s[%zd]'", what, key, i);
        if (dfc_py_int(PySequence_Fast_GET_ITEM(seq, i), name, min, max, &out[i]) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    *count = (int)n;
    return 0;
}

int dfc_py_add_type(PyObject *module, PyTypeObject *type, const char *name)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

/* ---- network workspaces ---- */

void dfc_py_workspace_init(dfc_py_workspace *ws)
{
    if (ws->ready)
        return;
    dfc_workspace_init(&ws->ws);
    ws->backend = NULL;
    ws->ready = 1;
}

void dfc_py_workspace_free(dfc_py_workspace *ws)
{
    if (!ws->ready)
        return;
    dfc_workspace_free(&ws->ws);
    Py_CLEAR(ws->backend); /* after the memory it holds is freed */
    ws->ready = 0;
}

void dfc_py_workspace_acquire(dfc_py_workspace *ws, const dfc_py_backend_ref *backend, dfc_workspace_arenas *w)
{
    dfc_py_workspace_init(ws); /* a no-op once made: an object's memory is then freed with it */
    if (dfc_workspace_acquire(&ws->ws, backend->be, w)) { /* the kept arenas now hold backend's memory */
        Py_INCREF(backend->obj);
        Py_XSETREF(ws->backend, backend->obj);
    }
}

void dfc_py_workspace_release(dfc_py_workspace *ws, dfc_workspace_arenas *w) { dfc_workspace_release(&ws->ws, w); }

PyObject *dfc_py_ws_release_memory(PyObject *self, PyObject *noargs)
{
    (void)noargs;
    dfc_py_workspace *ws = &((DfcWorkspaceObject *)self)->ws;
    if (ws->ready && dfc_workspace_release_memory(&ws->ws))
        Py_CLEAR(ws->backend);
    Py_RETURN_NONE;
}

PyObject *dfc_py_ws_get_peak(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(((DfcWorkspaceObject *)self)->ws.ws.last_peak_bytes);
}

PyObject *dfc_py_ws_get_held(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(dfc_workspace_held(&((DfcWorkspaceObject *)self)->ws.ws));
}

/* ---- shapes most op bindings share ---- */

PyObject *dfc_py_new_tuple(int n, const dfc_py_output *outs)
{
    PyObject *tuple = PyTuple_New(n);
    if (!tuple)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *item = Py_None;
        if (outs[i].shape)
            item = dfc_py_new_tensor(outs[i].ndim, outs[i].shape, outs[i].t);
        else
            Py_INCREF(item);
        if (!item) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, item); /* steals */
    }
    return tuple;
}

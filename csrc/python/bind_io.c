/* Bindings for the weight-file readers and the safetensors writer. Files are read with the GIL released; the
 * loaded tensors' buffers are then handed to numpy arrays without a copy (a capsule frees them). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../io/weights.h"

#define WEIGHTS_CAPSULE "diffice.weights.data"

static void free_capsule_data(PyObject *capsule) { free(PyCapsule_GetPointer(capsule, WEIGHTS_CAPSULE)); }

/* A float32 array owning item i's buffer (taken from the collection). */
static PyObject *take_array(dfc_weights *w, size_t i)
{
    const dfc_weight *t = &w->items[i];
    npy_intp dims[DFC_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++)
        dims[d] = (npy_intp)t->shape[d];
    float *data = dfc_weights_take_data(w, i);
    PyObject *arr = PyArray_SimpleNewFromData(t->ndim, dims, NPY_FLOAT32, data);
    if (!arr) {
        free(data);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(data, WEIGHTS_CAPSULE, free_capsule_data);
    if (!capsule) {
        Py_DECREF(arr); /* does not own data */
        free(data);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, capsule) < 0) { /* steals capsule, which frees data */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* (dict name -> array, dict metadata) from a collection, which keeps only names afterwards. */
static PyObject *weights_to_python(dfc_weights *w)
{
    PyObject *tensors = PyDict_New(), *metadata = PyDict_New(), *result = NULL;
    if (!tensors || !metadata)
        goto done;
    for (size_t i = 0; i < w->count; i++) {
        PyObject *arr = take_array(w, i);
        if (!arr)
            goto done;
        int rc = PyDict_SetItemString(tensors, w->items[i].name, arr);
        Py_DECREF(arr);
        if (rc < 0)
            goto done;
    }
    for (size_t i = 0; i < w->meta_count; i++) {
        PyObject *value = PyUnicode_FromString(w->meta_values[i]);
        if (!value)
            goto done;
        int rc = PyDict_SetItemString(metadata, w->meta_keys[i], value);
        Py_DECREF(value);
        if (rc < 0)
            goto done;
    }
    result = PyTuple_Pack(2, tensors, metadata);
done:
    Py_XDECREF(tensors);
    Py_XDECREF(metadata);
    return result;
}

static PyObject *py_load_weights(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *path_bytes = NULL;
    const char *format;
    if (!PyArg_ParseTuple(args, "O&s", PyUnicode_FSConverter, &path_bytes, &format))
        return NULL;
    dfc_status (*loader)(const char *, dfc_weights **, dfc_error *) = NULL;
    if (strcmp(format, "auto") == 0)
        loader = dfc_load_weights;
    else if (strcmp(format, "safetensors") == 0)
        loader = dfc_load_safetensors;
    else if (strcmp(format, "npz") == 0)
        loader = dfc_load_npz;
    else if (strcmp(format, "torch") == 0)
        loader = dfc_load_torch;
    else {
        Py_DECREF(path_bytes);
        return PyErr_Format(PyExc_ValueError,
                            "load_weights: format must be 'auto', 'safetensors', 'npz' or 'torch', got '%s'", format);
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    dfc_weights *w = NULL;
    dfc_error err = {0};
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st = loader(path, &w, &err);
    Py_END_ALLOW_THREADS Py_DECREF(path_bytes);
    if (st != DFC_OK)
        return dfc_py_raise(&err);
    PyObject *result = weights_to_python(w);
    dfc_weights_destroy(w);
    return result;
}

/* A str argument as UTF-8 without an embedded NUL; borrowed from the str object. */
static const char *utf8_arg(PyObject *s, const char *what, Py_ssize_t index)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "save_safetensors: %s %zd must be a str, got %s", what, index,
                     Py_TYPE(s)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *u = PyUnicode_AsUTF8AndSize(s, &len);
    if (u && (size_t)len != strlen(u)) {
        PyErr_Format(PyExc_ValueError, "save_safetensors: %s %R contains a NUL character", what, s);
        return NULL;
    }
    return u;
}

static PyObject *py_save_safetensors(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *path_bytes = NULL, *names_obj, *arrays_obj, *meta_keys_obj, *meta_values_obj;
    int half = 0;
    if (!PyArg_ParseTuple(args, "O&OOOO|p", PyUnicode_FSConverter, &path_bytes, &names_obj, &arrays_obj, &meta_keys_obj,
                          &meta_values_obj, &half))
        return NULL;
    const int npy_type = half ? NPY_FLOAT16 : NPY_FLOAT32;
    PyObject *result = NULL;
    /* Own tuples, so nothing can change under the call while the GIL is released. */
    PyObject *names = PySequence_Tuple(names_obj), *arrays = names ? PySequence_Tuple(arrays_obj) : NULL;
    PyObject *meta_keys = arrays ? PySequence_Tuple(meta_keys_obj) : NULL;
    PyObject *meta_values = meta_keys ? PySequence_Tuple(meta_values_obj) : NULL;
    dfc_weight *items = NULL;
    const char **mk = NULL, **mv = NULL;
    if (!meta_values)
        goto done;
    Py_ssize_t count = PyTuple_GET_SIZE(names), meta_count = PyTuple_GET_SIZE(meta_keys);
    if (PyTuple_GET_SIZE(arrays) != count || PyTuple_GET_SIZE(meta_values) != meta_count) {
        PyErr_SetString(PyExc_ValueError, "save_safetensors: names/arrays or metadata keys/values differ in length");
        goto done;
    }
    items = PyMem_Calloc((size_t)count + 1, sizeof *items);
    mk = PyMem_Calloc((size_t)meta_count + 1, sizeof *mk);
    mv = PyMem_Calloc((size_t)meta_count + 1, sizeof *mv);
    if (!items || !mk || !mv) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *name = utf8_arg(PyTuple_GET_ITEM(names, i), "tensor name", i);
        if (!name)
            goto done;
        PyObject *obj = PyTuple_GET_ITEM(arrays, i);
        if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != npy_type ||
            !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)obj) || !PyArray_ISALIGNED((PyArrayObject *)obj)) {
            PyErr_Format(PyExc_TypeError, "save_safetensors: tensor '%s' must be a C-contiguous %s numpy array", name,
                         half ? "float16" : "float32");
            goto done;
        }
        PyArrayObject *a = (PyArrayObject *)obj;
        if (PyArray_NDIM(a) > DFC_MAX_DIMS) {
            PyErr_Format(PyExc_ValueError, "save_safetensors: tensor '%s' has %d dimensions; at most %d are supported",
                         name, PyArray_NDIM(a), DFC_MAX_DIMS);
            goto done;
        }
        items[i].name = (char *)name;
        items[i].ndim = PyArray_NDIM(a);
        for (int d = 0; d < DFC_MAX_DIMS; d++)
            items[i].shape[d] = d < items[i].ndim ? (int64_t)PyArray_DIM(a, d) : 1;
        items[i].numel = (int64_t)PyArray_SIZE(a);
        items[i].data = PyArray_DATA(a);
    }
    for (Py_ssize_t i = 0; i < meta_count; i++) {
        mk[i] = utf8_arg(PyTuple_GET_ITEM(meta_keys, i), "metadata key", i);
        mv[i] = mk[i] ? utf8_arg(PyTuple_GET_ITEM(meta_values, i), "metadata value", i) : NULL;
        if (!mv[i])
            goto done;
    }
    const char *path = PyBytes_AS_STRING(path_bytes);
    dfc_error err = {0};
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st =
        dfc_save_safetensors(path, items, (size_t)count, mk, mv, (size_t)meta_count, half, &err);
    Py_END_ALLOW_THREADS if (st != DFC_OK)
    {
        dfc_py_raise(&err);
        goto done;
    }
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(items);
    PyMem_Free(mk);
    PyMem_Free(mv);
    Py_XDECREF(names);
    Py_XDECREF(arrays);
    Py_XDECREF(meta_keys);
    Py_XDECREF(meta_values);
    Py_XDECREF(path_bytes);
    return result;
}

PyMethodDef dfc_methods_io[] = {
    {"load_weights", py_load_weights, METH_VARARGS,
     "load_weights(path, format) -> (dict name -> float32 array, dict metadata); format: auto/safetensors/npz/torch."},
    {"save_safetensors", py_save_safetensors, METH_VARARGS,
     "save_safetensors(path, names, arrays, metadata_keys, metadata_values, half=False): C-contiguous float32 "
     "arrays (float16 with half=True)."},
    {NULL, NULL, 0, NULL},
};

/* diffice._C.backend_names: the backend registry. diffice._C.arena_roundtrip: drives an arena of a backend's memory
 * through that backend's memory functions, so tests can check that arenas get their memory from the backend (and
 * what the memory interface does); arena_replay: a sequence of allocations and resets, for the chunk policy. */
#include "pyutil.h"

#include "../ops/cpu.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

/* x -> backend (copy_from_host) -> a second backend tensor (copy) -> host (copy_to_host), plus a zero-filled
 * backend tensor, all from one backend arena of the given chunk size and limit. */
static dfc_status roundtrip(dfc_backend *be, dfc_arena *arena, const dfc_tensor *x, dfc_tensor *copy, dfc_tensor *zeros,
                            dfc_error *err)
{
    const size_t bytes = (size_t)dfc_numel(x) * sizeof(float);
    dfc_tensor on_backend = dfc_arena_tensor(arena, x->ndim, x->shape, err);
    if (!on_backend.data)
        return err->code;
    DFC_TRY(be->iface->copy_from_host(be, on_backend.data, x->data, bytes, err));
    dfc_tensor second = dfc_arena_tensor(arena, x->ndim, x->shape, err);
    if (!second.data)
        return err->code;
    DFC_TRY(be->iface->copy(be, second.data, on_backend.data, bytes, err));
    dfc_tensor zero = dfc_arena_zeros(arena, x->ndim, x->shape, err);
    if (!zero.data)
        return err->code;
    DFC_TRY(be->iface->copy_to_host(be, copy->data, second.data, bytes, err));
    DFC_TRY(be->iface->copy_to_host(be, zeros->data, zero.data, bytes, err));
    return be->iface->synchronize(be, err);
}

/* arena_roundtrip(backend, x, chunk_bytes, limit_bytes) -> (copy, zeros, num_chunks, capacity_bytes, peak_bytes) */
static PyObject *py_arena_roundtrip(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "arena_roundtrip";
    dfc_backend *be;
    PyObject *x_obj;
    dfc_py_int64_arg chunk = {"arena_roundtrip: chunk_bytes", 0, INT64_MAX, 0};
    dfc_py_int64_arg limit = {"arena_roundtrip: limit_bytes", 0, INT64_MAX, 0};
    if (!PyArg_ParseTuple(args, "O&OO&O&", dfc_py_backend, &be, &x_obj, dfc_py_int64_converter, &chunk,
                          dfc_py_int64_converter, &limit))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x, copy, zeros;
    PyObject *copy_arr = NULL, *zeros_arr = NULL, *result = NULL;
    if (dfc_py_tensor(x_obj, op, "x", 1, DFC_MAX_DIMS, 0, &refs, &x) < 0 ||
        !(copy_arr = dfc_py_new_tensor(x.ndim, x.shape, &copy)) ||
        !(zeros_arr = dfc_py_new_tensor(x.ndim, x.shape, &zeros)))
        goto done;
    dfc_arena arena;
    dfc_arena_init_backend(&arena, be, (size_t)chunk.value, (size_t)limit.value);
    dfc_error err = {0};
    dfc_status st;
    Py_BEGIN_ALLOW_THREADS st = roundtrip(be, &arena, &x, &copy, &zeros, &err);
    Py_END_ALLOW_THREADS if (st == DFC_OK) result =
        Py_BuildValue("(OOinn)", copy_arr, zeros_arr, arena.num_chunks, (Py_ssize_t)dfc_arena_capacity(&arena),
                      (Py_ssize_t)arena.peak);
    else dfc_py_raise(&err);
    dfc_arena_free(&arena);
done:
    Py_XDECREF(copy_arr);
    Py_XDECREF(zeros_arr);
    dfc_py_refs_release(&refs);
    return result;
}

/* The steps of arena_replay: n > 0 allocates n bytes (zero-filled through the backend, so a sanitizer sees every
 * byte written), 0 takes a mark, -1 resets to the last mark taken and not yet reset to; capacity after each step. */
static dfc_status replay(dfc_backend *be, dfc_arena *arena, const long long *steps, Py_ssize_t n, size_t *capacity,
                         dfc_error *err)
{
    dfc_arena_mark marks[64];
    int depth = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (steps[i] > 0) {
            void *p = dfc_arena_alloc(arena, (size_t)steps[i], err);
            if (!p)
                return err->code;
            DFC_TRY(be->iface->zero(be, p, (size_t)steps[i], err));
        } else if (steps[i] == 0 && depth < 64) {
            marks[depth++] = dfc_arena_get_mark(arena);
        } else if (steps[i] == -1 && depth > 0) {
            dfc_arena_reset(arena, marks[--depth]);
        } else {
            return dfc_fail(err, DFC_ERR_VALUE, "arena_replay: step %zd is %lld (a size, 0: mark, -1: reset)", i,
                            steps[i]);
        }
        capacity[i] = dfc_arena_capacity(arena);
    }
    return DFC_OK;
}

/* arena_replay(backend, steps, chunk_bytes) -> (capacities after each step, num_chunks, peak_bytes) */
static PyObject *py_arena_replay(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *steps_obj;
    dfc_py_int64_arg chunk = {"arena_replay: chunk_bytes", 0, INT64_MAX, 0};
    if (!PyArg_ParseTuple(args, "O&OO&", dfc_py_backend, &be, &steps_obj, dfc_py_int64_converter, &chunk))
        return NULL;
    PyArrayObject *steps = (PyArrayObject *)PyArray_FROMANY(steps_obj, NPY_LONGLONG, 1, 1, NPY_ARRAY_IN_ARRAY);
    if (!steps)
        return NULL;
    const Py_ssize_t n = PyArray_DIM(steps, 0);
    npy_intp dims[1] = {n};
    PyArrayObject *capacity = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_UINTP);
    PyObject *result = NULL;
    if (capacity) {
        dfc_arena arena;
        dfc_arena_init_backend(&arena, be, (size_t)chunk.value, 0);
        dfc_error err = {0};
        dfc_status st;
        Py_BEGIN_ALLOW_THREADS st = replay(be, &arena, PyArray_DATA(steps), n, PyArray_DATA(capacity), &err);
        Py_END_ALLOW_THREADS if (st == DFC_OK) result =
            Py_BuildValue("(Oin)", capacity, arena.num_chunks, (Py_ssize_t)arena.peak);
        else dfc_py_raise(&err);
        dfc_arena_free(&arena);
    }
    Py_XDECREF(capacity);
    Py_DECREF(steps);
    return result;
}

/* fill_unstaged(backend, x, value): be->ops->fill on x's own host memory, NOT staged into backend memory — what
 * bind_ops does for host-memory backends only. Tests use it to see the strict emulated GPU refuse a host tensor. */
static PyObject *py_fill_unstaged(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    double value;
    if (!PyArg_ParseTuple(args, "O&Od", dfc_py_backend, &be, &x_obj, &value))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *result = NULL;
    if (dfc_py_tensor(x_obj, "fill_unstaged", "x", 1, DFC_MAX_DIMS, 0, &refs, &x) == 0) {
        result = (Py_INCREF(Py_None), Py_None);
        dfc_error err = {0};
        DFC_PY_RUN(result, err, be->ops->fill(be, (float)value, &x, &err));
    }
    dfc_py_refs_release(&refs);
    return result;
}

/* onednn_workspace_bytes(backend) -> bytes the "cpu" backend keeps for oneDNN's copies and scratchpads */
static PyObject *py_onednn_workspace_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    if (!PyArg_ParseTuple(args, "O&", dfc_py_backend, &be))
        return NULL;
    if (be->iface != &dfc_cpu_backend_iface)
        return PyErr_Format(PyExc_ValueError, "onednn_workspace_bytes: the '%s' backend does not use oneDNN",
                            be->iface->name);
    return PyLong_FromSize_t(dfc_cpu_workspace_bytes(be->impl));
}

/* backend_names() -> tuple of the registered backends' names, the default first */
static PyObject *py_backend_names(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    PyObject *names = PyList_New(0);
    for (int i = 0; names && dfc_backend_registered(i); i++) {
        PyObject *name = PyUnicode_FromString(dfc_backend_registered(i));
        if (!name || PyList_Append(names, name) < 0)
            Py_CLEAR(names);
        Py_XDECREF(name);
    }
    PyObject *result = names ? PyList_AsTuple(names) : NULL;
    Py_XDECREF(names);
    return result;
}

/* device_count(name) -> how many devices the registered backend `name` may number ("cuda": the GPUs seen here) */
static PyObject *py_device_count(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s:device_count", &name))
        return NULL;
    PyThreadState *saved = PyEval_SaveThread(); /* "cuda" may load the plugin and start the CUDA runtime */
    const int count = dfc_backend_device_count(name);
    PyEval_RestoreThread(saved);
    if (count < 0)
        return PyErr_Format(PyExc_ValueError, "device_count: unknown backend '%s'", name);
    return PyLong_FromLong(count);
}

PyMethodDef dfc_methods_backend[] = {
    {"device_count", py_device_count, METH_VARARGS,
     "device_count(name) -> how many devices backend `name` may number, name:0 .. name:count-1 (\"cuda\": the GPUs "
     "this process sees, 0 without a plugin or device; host backends 1)"},
    {"backend_names", py_backend_names, METH_NOARGS,
     "backend_names() -> tuple of the backends this build has (the default first)"},
    {"onednn_workspace_bytes", py_onednn_workspace_bytes, METH_VARARGS,
     "onednn_workspace_bytes(backend) -> bytes the cpu backend keeps for oneDNN's blocked copies and scratchpads"},
    {"fill_unstaged", py_fill_unstaged, METH_VARARGS,
     "fill_unstaged(backend, x, value): the fill op on x's host memory without staging (a test instrument)"},
    {"arena_roundtrip", py_arena_roundtrip, METH_VARARGS,
     "arena_roundtrip(backend, x, chunk_bytes, limit_bytes) -> (copy, zeros, num_chunks, capacity_bytes, "
     "peak_bytes): x through an arena of the backend's memory and back"},
    {"arena_replay", py_arena_replay, METH_VARARGS,
     "arena_replay(backend, steps, chunk_bytes) -> (capacity after each step, num_chunks, peak_bytes): steps are "
     "allocation sizes, 0 (take a mark) and -1 (reset to the last mark)"},
    {NULL, NULL, 0, NULL},
};

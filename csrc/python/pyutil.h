/* Helpers shared by the binding files: argument checking at the boundary, output allocation, error conversion.
 * Every binding follows one pattern: parse, check (each failure names the op and the argument), release the GIL,
 * call the op table, convert a failed status into an exception. */
#ifndef DIFFICE_PYUTIL_H
#define DIFFICE_PYUTIL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../core/arena.h"
#include "../nets/net.h"
#include "../nets/workspace.h"
#include "../ops/ops.h"

/* The Python object wrapping a dfc_backend (diffice._C.Backend). */
typedef struct {
    PyObject_HEAD dfc_backend *be;
    unsigned long owner; /* PyThread_get_thread_ident() of the thread that created it: a backend holds per-thread
                          * state (oneDNN stream, primitive cache), so dfc_py_backend refuses it elsewhere */
} DfcBackendObject;

extern PyTypeObject DfcBackend_Type;
extern PyTypeObject DfcDiffusion_Type;

/* Arrays borrowed for one call; released together (like a small arena of references). */
#define DFC_PY_MAX_ARGS 24
typedef struct {
    PyObject *refs[DFC_PY_MAX_ARGS];
    int count;
} dfc_py_refs;

void dfc_py_refs_release(dfc_py_refs *refs);

/* 1 where ptr (an object's C state) is set; else 0 with RuntimeError(message), e.g. "UNet: not initialised". */
int dfc_py_ready(const void *ptr, const char *message);

/* "O&" converter: a diffice._C.Backend -> dfc_backend*. */
int dfc_py_backend(PyObject *obj, void *out);

/* The same with the Python object, for an owner that holds the backend's memory past the call and so keeps the
 * Backend alive (Py_INCREF obj) until that memory is freed. */
typedef struct {
    PyObject *obj; /* borrowed from the arguments */
    dfc_backend *be;
} dfc_py_backend_ref;
int dfc_py_backend_ref_converter(PyObject *obj, void *out);

/* Views a numpy float32, C-contiguous, aligned array of ndim in [ndim_min, ndim_max] as a tensor.
 * check_finite rejects NaN/Inf. On failure sets TypeError/ValueError naming op and argument, returns -1. */
int dfc_py_tensor(PyObject *obj, const char *op, const char *name, int ndim_min, int ndim_max, int check_finite,
                  dfc_py_refs *refs, dfc_tensor *t);

/* As dfc_py_tensor, but None gives a tensor with data == NULL. */
int dfc_py_optional_tensor(PyObject *obj, const char *op, const char *name, int ndim_min, int ndim_max,
                           int check_finite, dfc_py_refs *refs, dfc_tensor *t);

/* A new zero-filled float32 array of the given shape, viewed as t, returned as a new reference for the caller to
 * hand back to Python (or drop on failure). NULL with an exception set on failure. */
PyObject *dfc_py_new_tensor(int ndim, const int64_t *shape, dfc_tensor *t);

/* Reads an int64 numpy array (any integer dtype is converted) of shape (n,) into a borrowed pointer. */
int dfc_py_int64_vector(PyObject *obj, const char *op, const char *name, int64_t n, dfc_py_refs *refs,
                        const int64_t **out);

/* Sets the Python exception that matches err->code; returns NULL. */
PyObject *dfc_py_raise(const dfc_error *err);

/* The one reader for an integer that crosses from Python into C (a config value, a list entry, a keyword
 * setting): obj (an int, or anything with __index__ such as a numpy integer) as a value in [min, max]. Nothing
 * wraps around: a value outside, however large, is a ValueError "<name>: expected an integer in [min, max], got
 * <value>", and a non-integer (a float, a str) a TypeError "<name>: expected an integer, got <type>". 0, or -1 with
 * the exception set. name says what the value is, e.g. "UNet config 'model_channels'". */
int dfc_py_int64(PyObject *obj, const char *name, long long min, long long max, long long *out);

/* dfc_py_int64 into an int. */
int dfc_py_int(PyObject *obj, const char *name, int min, int max, int *out);

/* An int keyword (or positional) argument read through dfc_py_int by PyArg_Parse*'s "O&": the converter takes a
 * dfc_py_int_arg holding the name, the range and the default, and leaves the value in it. Use:
 *   dfc_py_int_arg steps = {"Diffusion: steps", 1, INT_MAX, 1000};
 *   PyArg_ParseTupleAndKeywords(args, kwargs, "|O&", kwlist, dfc_py_int_converter, &steps); ... steps.value */
typedef struct {
    const char *name;
    int min, max;
    int value;
} dfc_py_int_arg;
int dfc_py_int_converter(PyObject *obj, void *arg);

/* The same for an int64 argument (a size): dfc_py_int64_arg {name, min, max, default}, dfc_py_int64_converter. */
typedef struct {
    const char *name;
    long long min, max;
    long long value;
} dfc_py_int64_arg;
int dfc_py_int64_converter(PyObject *obj, void *arg);

/* dict[key] through dfc_py_int, named "<what> config '<key>'", where present; a missing key leaves *out (the
 * caller's default). 0, or -1 with an exception. */
int dfc_py_config_int(PyObject *dict, const char *what, const char *key, int min, int max, int *out);

/* dfc_py_config_int where the key must be present: a missing key is a KeyError "<what> config: missing key
 * '<key>'". 0, or -1 with an exception. */
int dfc_py_config_required_int(PyObject *dict, const char *what, const char *key, int min, int max, int *out);

/* dict[key] (required) as a sequence of at most max_count ints, each through dfc_py_int (named "<what> config
 * '<key>[i]'"), into out[0..*count). 0, or -1 with an exception. */
int dfc_py_config_int_list(PyObject *dict, const char *what, const char *key, int min, int max, int max_count, int *out,
                           int *count);

/* Runs `call` (an op-table call that reports into `err`) with the GIL released; on failure drops `out` and sets
 * the matching exception. Use: dfc_error err = {0}; DFC_PY_RUN(out, err, be->ops->x(be, ..., &err)); */
#define DFC_PY_RUN(out, err, call)                          \
    do {                                                    \
        dfc_status dfc_run_status_;                         \
        Py_BEGIN_ALLOW_THREADS dfc_run_status_ = (call);    \
        Py_END_ALLOW_THREADS if (dfc_run_status_ != DFC_OK) \
        {                                                   \
            Py_CLEAR(out);                                  \
            dfc_py_raise(&(err));                           \
        }                                                   \
    } while (0)

/* A network object's workspace (nets/workspace.h) and the Backend whose memory its arenas hold, kept alive for them
 * (a reference; NULL: none yet). Called with the GIL. */
typedef struct {
    dfc_workspace ws;
    PyObject *backend;
    int ready;
} dfc_py_workspace;

void dfc_py_workspace_init(dfc_py_workspace *ws); /* idempotent */
void dfc_py_workspace_free(dfc_py_workspace *ws);
void dfc_py_workspace_acquire(dfc_py_workspace *ws, const dfc_py_backend_ref *backend, dfc_workspace_arenas *w);
void dfc_py_workspace_release(dfc_py_workspace *ws, dfc_workspace_arenas *w);

/* The head of every Python object that keeps a workspace (diffice._C.Network, UNet, PerceptualLoss): their structs
 * start with a DfcWorkspaceObject member, so the method and getters below serve all of them. */
typedef struct {
    PyObject_HEAD dfc_py_workspace ws;
} DfcWorkspaceObject;

/* release_memory() -> None: frees the activation memory kept between calls. */
PyObject *dfc_py_ws_release_memory(PyObject *self, PyObject *noargs);
/* last_peak_bytes / held_bytes getters. */
PyObject *dfc_py_ws_get_peak(PyObject *self, void *closure);
PyObject *dfc_py_ws_get_held(PyObject *self, void *closure);

/* Their PyMethodDef / PyGetSetDef entries. */
#define DFC_PY_WS_RELEASE_MEMORY_METHOD                       \
    {"release_memory", dfc_py_ws_release_memory, METH_NOARGS, \
     "release_memory(): free the activation memory kept between calls"}
#define DFC_PY_WS_PEAK_GETSET \
    {"last_peak_bytes", dfc_py_ws_get_peak, NULL, "activation memory peak of the last call (bytes)", NULL}
#define DFC_PY_WS_HELD_GETSET \
    {"held_bytes", dfc_py_ws_get_held, NULL, "activation memory kept for the next call (bytes)", NULL}

/* Method tables of the binding files, added to the module in module.c. */
extern PyMethodDef dfc_methods_ops[]; /* bind_ops.c: every op of the table */
extern PyMethodDef dfc_methods_io[];
extern PyMethodDef dfc_methods_backend[]; /* bind_backend.c */

/* Network binding files register their types and functions on the module (0 on success, -1 with an
 * exception); each file owns its part of the module. */
int dfc_register_perceptual(PyObject *module);
int dfc_register_classifier(PyObject *module);
int dfc_register_sampler(PyObject *module);
int dfc_register_net(PyObject *module); /* the network factories */

/* diffice._C.Network: wraps a C network (takes ownership; on failure the net is destroyed and NULL returned). */
extern PyTypeObject DfcNetwork_Type;
PyObject *dfc_py_wrap_net(dfc_net *net);
/* The result of a network factory: the wrapped net if st is DFC_OK, else NULL with err's exception. */
PyObject *dfc_py_created_net(dfc_status st, dfc_net *net, const dfc_error *err);
/* The C network inside a diffice._C.Network (borrowed; NULL with TypeError otherwise). Composite networks that
 * take child networks must keep a reference to the child Python objects for as long as they live. */
dfc_net *dfc_py_unwrap_net(PyObject *obj);
/* The C object inside a diffice._C.Diffusion (borrowed; NULL with an exception otherwise). */
struct dfc_diffusion;
struct dfc_diffusion *dfc_py_unwrap_diffusion(PyObject *obj);

/* dict name -> writable numpy view of each parameter of set; each view keeps owner alive. */
PyObject *dfc_py_params_dict(PyObject *owner, const dfc_param_set *set);

/* Adds a ready type to the module under its short name; -1 with an exception on failure. */
int dfc_py_add_type(PyObject *module, PyTypeObject *type, const char *name);

/* ---- several outputs at once (the network bindings) ---- */

/* One output of a binding that returns several: a new array of shape[0..ndim) viewed as *t, or None where shape is
 * NULL (t is then left as it is, e.g. {0} for an absent optional gradient). */
typedef struct {
    int ndim;
    const int64_t *shape;
    dfc_tensor *t;
} dfc_py_output;

/* A tuple of new zero-filled arrays (or None) as outs[0..n) describe; NULL with an exception on failure.
 * Use: out = dfc_py_new_tuple(2, (dfc_py_output[]){{a.ndim, a.shape, &da}, {b.ndim, b.shape, &db}}); */
PyObject *dfc_py_new_tuple(int n, const dfc_py_output *outs);

#endif

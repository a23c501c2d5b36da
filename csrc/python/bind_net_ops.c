/* Bindings for the network-side ops (issue 15, netops): the logit loss, BCE with logits, the class-probability rule,
 * per-plane standardisation, the normalised feature distance, pixel distances, fill. Integer targets are checked for
 * their dtype by the Python wrappers (diffice/ops/_net.py); here only their count. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

/* Reads objs[0..n) as tensors named names[i] (1 to 4 dims, finite) into ts; 0 or -1 with an exception. */
static int read_tensors(const char *op, int n, PyObject *const *objs, const char *const *names, dfc_py_refs *refs,
                        dfc_tensor *ts)
{
    for (int i = 0; i < n; i++)
        if (dfc_py_tensor(objs[i], op, names[i], 1, 4, 1, refs, &ts[i]) < 0)
            return -1;
    return 0;
}

/* ---- logit loss: (backend, [dloss,] logits, targets) ---- */

static PyObject *logit_loss(PyObject *args, int backward)
{
    const char *op = backward ? "logit_loss_backward" : "logit_loss";
    dfc_backend *be;
    PyObject *objs[2] = {NULL, NULL}, *targets_obj;
    if (backward ? !PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &objs[0], &objs[1], &targets_obj)
                 : !PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &objs[1], &targets_obj))
        return NULL;
    static const char *const names[] = {"dloss", "logits"};
    dfc_py_refs refs = {0};
    dfc_tensor ts[2], out_t;
    const int64_t *targets;
    PyObject *out = NULL;
    if (read_tensors(op, 2 - !backward, objs + !backward, names + !backward, &refs, ts + !backward) < 0 ||
        dfc_py_int64_vector(targets_obj, op, "targets", ts[1].shape[0], &refs, &targets) < 0)
        goto done;
    if (!(out = backward ? dfc_py_new_tensor(2, ts[1].shape, &out_t) : dfc_py_new_tensor(1, ts[1].shape, &out_t)))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(out, err, backward ? be->ops->logit_loss_backward(be, &ts[0], &ts[1], targets, &out_t, &err)
                                  : be->ops->logit_loss_forward(be, &ts[1], targets, &out_t, &err));
done:
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_logit_loss_forward(PyObject *self, PyObject *args) { (void)self; return logit_loss(args, 0); }
static PyObject *py_logit_loss_backward(PyObject *self, PyObject *args) { (void)self; return logit_loss(args, 1); }

/* ---- class_probability(backend, logits, targets) -> (prob (N,) float32, predicted (N,) int64) ---- */

static PyObject *py_class_probability(PyObject *self, PyObject *args)
{
    (void)self;
    const char *op = "class_probability";
    dfc_backend *be;
    PyObject *logits_obj, *targets_obj;
    if (!PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &logits_obj, &targets_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor logits, prob;
    const int64_t *targets;
    PyObject *prob_obj = NULL, *predicted_obj = NULL, *out = NULL;
    if (dfc_py_tensor(logits_obj, op, "logits", 2, 2, 1, &refs, &logits) < 0 ||
        dfc_py_int64_vector(targets_obj, op, "targets", logits.shape[0], &refs, &targets) < 0)
        goto done;
    npy_intp n = (npy_intp)logits.shape[0];
    if (!(prob_obj = dfc_py_new_tensor(1, logits.shape, &prob)) ||
        !(predicted_obj = PyArray_SimpleNew(1, &n, NPY_INT64)))
        goto done;
    int64_t *predicted = PyArray_DATA((PyArrayObject *)predicted_obj);
    dfc_error err = {0};
    DFC_PY_RUN(prob_obj, err, be->ops->class_probability(be, &logits, targets, &prob, predicted, &err));
    if (prob_obj)
        out = PyTuple_Pack(2, prob_obj, predicted_obj);
done:
    Py_XDECREF(prob_obj);
    Py_XDECREF(predicted_obj);
    dfc_py_refs_release(&refs);
    return out;
}

/* ---- standardize(backend, x, scale), standardize_backward(backend, dy, x, scale) ---- */

static PyObject *standardize(PyObject *args, int backward)
{
    const char *op = backward ? "standardize_backward" : "standardize";
    dfc_backend *be;
    PyObject *objs[2] = {NULL, NULL};
    float scale;
    if (backward ? !PyArg_ParseTuple(args, "O&OOf", dfc_py_backend, &be, &objs[0], &objs[1], &scale)
                 : !PyArg_ParseTuple(args, "O&Of", dfc_py_backend, &be, &objs[1], &scale))
        return NULL;
    static const char *const names[] = {"dy", "x"};
    dfc_py_refs refs = {0};
    dfc_tensor ts[2], out_t;
    PyObject *out = NULL;
    if (read_tensors(op, 2 - !backward, objs + !backward, names + !backward, &refs, ts + !backward) == 0 &&
        (out = dfc_py_new_tensor(ts[1].ndim, ts[1].shape, &out_t))) {
        dfc_error err = {0};
        DFC_PY_RUN(out, err, backward ? be->ops->standardize_backward(be, &ts[0], &ts[1], scale, &out_t, &err)
                                      : be->ops->standardize_forward(be, &ts[1], scale, &out_t, &err));
    }
    dfc_py_refs_release(&refs);
    return out;
}

static PyObject *py_standardize_forward(PyObject *self, PyObject *args) { (void)self; return standardize(args, 0); }
static PyObject *py_standardize_backward(PyObject *self, PyObject *args) { (void)self; return standardize(args, 1); }

/* ---- per-sample losses of a pair (x, y): BCE with logits (logits, targets), the normalised distance and pixel
 * losses (a, b); (backend, [kind,] [dloss,] x, y) -> loss (N,) or the gradient with respect to x ---- */

typedef enum { PAIR_BCE, PAIR_NORMALIZED, PAIR_PIXEL } pair_loss;

static PyObject *pair_loss_op(PyObject *args, pair_loss which, int backward)
{
    static const char *const op_names[3][2] = {{"bce_with_logits", "bce_with_logits_backward"},
                                               {"normalized_distance", "normalized_distance_backward"},
                                               {"pixel_loss", "pixel_loss_backward"}};
    static const char *const bce_names[] = {"dloss", "logits", "targets"}, *const ab_names[] = {"dloss", "a", "b"};
    const char *op = op_names[which][backward];
    const char *const *names = which == PAIR_BCE ? bce_names : ab_names;
    dfc_backend *be;
    dfc_py_int_arg kind = {"pixel_loss: kind (0 l1, 1 l2, 2 l2 channel norm)", 0, 2, 0};
    PyObject *objs[3] = {NULL, NULL, NULL};
    int ok = which == PAIR_PIXEL
                 ? (backward ? PyArg_ParseTuple(args, "O&O&OOO", dfc_py_backend, &be, dfc_py_int_converter, &kind,
                                                &objs[0], &objs[1], &objs[2])
                             : PyArg_ParseTuple(args, "O&O&OO", dfc_py_backend, &be, dfc_py_int_converter, &kind,
                                                &objs[1], &objs[2]))
                 : (backward ? PyArg_ParseTuple(args, "O&OOO", dfc_py_backend, &be, &objs[0], &objs[1], &objs[2])
                             : PyArg_ParseTuple(args, "O&OO", dfc_py_backend, &be, &objs[1], &objs[2]));
    if (!ok)
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor ts[3], out_t;
    PyObject *out = NULL;
    if (read_tensors(op, 3 - !backward, objs + !backward, names + !backward, &refs, ts + !backward) < 0)
        goto done;
    if (!(out = backward ? dfc_py_new_tensor(ts[1].ndim, ts[1].shape, &out_t)
                         : dfc_py_new_tensor(1, ts[1].shape, &out_t)))
        goto done;
    const dfc_pixel_loss_kind k = (dfc_pixel_loss_kind)kind.value;
    const dfc_tensor *d = &ts[0], *x = &ts[1], *y = &ts[2];
    const dfc_ops *o = be->ops;
    dfc_error err = {0};
    switch (which) {
    case PAIR_BCE:
        DFC_PY_RUN(out, err, backward ? o->bce_with_logits_backward(be, d, x, y, &out_t, &err)
                                      : o->bce_with_logits_forward(be, x, y, &out_t, &err));
        break;
    case PAIR_NORMALIZED:
        DFC_PY_RUN(out, err, backward ? o->normalized_distance_backward(be, d, x, y, &out_t, &err)
                                      : o->normalized_distance_forward(be, x, y, &out_t, &err));
        break;
    case PAIR_PIXEL:
        DFC_PY_RUN(out, err, backward ? o->pixel_loss_backward(be, k, d, x, y, &out_t, &err)
                                      : o->pixel_loss_forward(be, k, x, y, &out_t, &err));
        break;
    }
done:
    dfc_py_refs_release(&refs);
    return out;
}

#define PAIR_BINDING(name, which, backward)                        \
    static PyObject *py_##name(PyObject *self, PyObject *args)     \
    {                                                              \
        (void)self;                                                \
        return pair_loss_op(args, which, backward);                \
    }
PAIR_BINDING(bce_with_logits_forward, PAIR_BCE, 0)
PAIR_BINDING(bce_with_logits_backward, PAIR_BCE, 1)
PAIR_BINDING(normalized_distance_forward, PAIR_NORMALIZED, 0)
PAIR_BINDING(normalized_distance_backward, PAIR_NORMALIZED, 1)
PAIR_BINDING(pixel_loss_forward, PAIR_PIXEL, 0)
PAIR_BINDING(pixel_loss_backward, PAIR_PIXEL, 1)
#undef PAIR_BINDING

/* fill(backend, like, value) -> a new array of like's shape, every entry value */
static PyObject *py_fill(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *like_obj;
    float value;
    if (!PyArg_ParseTuple(args, "O&Of", dfc_py_backend, &be, &like_obj, &value))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor like, y;
    PyObject *out = NULL;
    if (dfc_py_tensor(like_obj, "fill", "like", 1, 4, 0, &refs, &like) == 0 &&
        (out = dfc_py_new_tensor(like.ndim, like.shape, &y))) {
        dfc_error err = {0};
        DFC_PY_RUN(out, err, be->ops->fill(be, value, &y, &err));
    }
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_net_ops[] = {
    {"logit_loss_forward", py_logit_loss_forward, METH_VARARGS,
     "logit_loss_forward(backend, logits (N, C), targets (N,)) -> per-sample -l_y (N,)."},
    {"logit_loss_backward", py_logit_loss_backward, METH_VARARGS,
     "logit_loss_backward(backend, dloss (N,), logits, targets) -> dlogits (N, C)."},
    {"bce_with_logits_forward", py_bce_with_logits_forward, METH_VARARGS,
     "bce_with_logits_forward(backend, logits (N, ...), targets (logits' shape)) -> per-sample mean BCE (N,)."},
    {"bce_with_logits_backward", py_bce_with_logits_backward, METH_VARARGS,
     "bce_with_logits_backward(backend, dloss (N,), logits, targets) -> dlogits."},
    {"class_probability", py_class_probability, METH_VARARGS,
     "class_probability(backend, logits (N, C), targets (N,)) -> (p(target) (N,), predicted class (N,) int64)."},
    {"standardize_forward", py_standardize_forward, METH_VARARGS,
     "standardize_forward(backend, x (N, C, H, W), scale) -> scale (x - mean) / std per (n, c) plane."},
    {"standardize_backward", py_standardize_backward, METH_VARARGS,
     "standardize_backward(backend, dy, x, scale) -> dx."},
    {"normalized_distance_forward", py_normalized_distance_forward, METH_VARARGS,
     "normalized_distance_forward(backend, a (N, C, ...), b) -> per-sample channel-normalised distance (N,)."},
    {"normalized_distance_backward", py_normalized_distance_backward, METH_VARARGS,
     "normalized_distance_backward(backend, dloss (N,), a, b) -> da."},
    {"pixel_loss_forward", py_pixel_loss_forward, METH_VARARGS,
     "pixel_loss_forward(backend, kind (0 l1, 1 l2, 2 l2 channel norm), a, b) -> per-sample distance (N,)."},
    {"pixel_loss_backward", py_pixel_loss_backward, METH_VARARGS,
     "pixel_loss_backward(backend, kind, dloss (N,), a, b) -> da."},
    {"fill", py_fill, METH_VARARGS, "fill(backend, like, value) -> an array of like's shape, every entry value."},
    {NULL, NULL, 0, NULL},
};

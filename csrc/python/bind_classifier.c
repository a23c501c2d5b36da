/* Bindings for the standard-plane classifier's networks and loss: factories that build a C net from a config dict
 * and hand it to diffice._C.Network (segmenter_create, small_classifier_create, plane_classifier_create), and
 * classification_loss.
 *
 * plane_classifier_create(segmenter, classifier, config) takes two existing Network objects: the composite
 * borrows their C nets and holds a reference to both Python objects, dropped when the composite is destroyed, so
 * the children live at least as long as it (their parameters stay shared: loading weights into a child changes
 * the composite, and the composite's parameter views write into the children). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../nets/class_loss.h"
#include "../nets/plane_classifier.h"
#include "../nets/segmenter.h"

/* segmenter_create(config) -> Network; config: classes, width, levels, groups[, in_channels=1] */
static PyObject *py_segmenter_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *d;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &d))
        return NULL;
    dfc_segmenter_config c;
    const char *what = "Segmenter";
    c.in_channels = 1;
    if (dfc_py_config_int(d, what, "in_channels", 1, INT_MAX, &c.in_channels) < 0 ||
        dfc_py_config_required_int(d, what, "classes", 1, INT_MAX, &c.classes) < 0 ||
        dfc_py_config_required_int(d, what, "width", 1, INT_MAX, &c.width) < 0 ||
        dfc_py_config_required_int(d, what, "levels", 1, INT_MAX, &c.levels) < 0 ||
        dfc_py_config_required_int(d, what, "groups", 1, INT_MAX, &c.groups) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    dfc_status st = dfc_segmenter_create(&c, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

/* small_classifier_create(config) -> Network; config: in_channels, width, num_classes */
static PyObject *py_small_classifier_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *d;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &d))
        return NULL;
    dfc_small_classifier_config c;
    const char *what = "SmallClassifier";
    if (dfc_py_config_required_int(d, what, "in_channels", 1, INT_MAX, &c.in_channels) < 0 ||
        dfc_py_config_required_int(d, what, "width", 1, INT_MAX, &c.width) < 0 ||
        dfc_py_config_required_int(d, what, "num_classes", 1, INT_MAX, &c.num_classes) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    dfc_status st = dfc_small_classifier_create(&c, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

/* The composite's release hook: drops its references to the child Network objects (called with the GIL held, from
 * the composite's dealloc or a failed create). */
static void release_children(void *ctx) { Py_XDECREF((PyObject *)ctx); }

/* plane_classifier_create(segmenter, classifier, config) -> Network;
 * config: grad_through_segmenter (1), seg_input (0 probabilities, 1 logits) */
static PyObject *py_plane_classifier_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *seg_obj, *cls_obj, *d;
    if (!PyArg_ParseTuple(args, "OOO!", &seg_obj, &cls_obj, &PyDict_Type, &d))
        return NULL;
    dfc_net *seg = dfc_py_unwrap_net(seg_obj), *cls = seg ? dfc_py_unwrap_net(cls_obj) : NULL;
    if (!seg || !cls)
        return NULL;
    if (seg_obj == cls_obj) {
        PyErr_SetString(PyExc_ValueError,
                        "PlaneClassifier: the segmenter and the classifier must be different networks");
        return NULL;
    }
    dfc_plane_classifier_config c;
    int seg_input = DFC_SEG_INPUT_PROBABILITIES;
    const char *what = "PlaneClassifier";
    c.grad_through_segmenter = 1;
    if (dfc_py_config_int(d, what, "grad_through_segmenter", 0, 1, &c.grad_through_segmenter) < 0 ||
        dfc_py_config_int(d, what, "seg_input", DFC_SEG_INPUT_PROBABILITIES, DFC_SEG_INPUT_LOGITS, &seg_input) < 0)
        return NULL;
    c.seg_input = (dfc_seg_input)seg_input;
    PyObject *children = PyTuple_Pack(2, seg_obj, cls_obj);
    if (!children)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    /* on failure the hook has already dropped `children` */
    dfc_status st = dfc_plane_classifier_create(&c, seg, cls, release_children, children, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

/* classification_loss(logits, targets, kind[, backend]) -> (loss (N), dlogits (N, C)); kind "ce" or "logit";
 * without a backend, the registry's default made for this call (one thread) */
static PyObject *py_classification_loss(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *logits_obj, *targets_obj;
    const char *kind_name;
    dfc_backend *be = NULL, *owned = NULL;
    if (!PyArg_ParseTuple(args, "OOs|O&", &logits_obj, &targets_obj, &kind_name, dfc_py_backend, &be))
        return NULL;
    const char *op = "classification_loss";
    dfc_class_loss_kind kind;
    if (strcmp(kind_name, "ce") == 0)
        kind = DFC_CLASS_LOSS_CE;
    else if (strcmp(kind_name, "logit") == 0)
        kind = DFC_CLASS_LOSS_LOGIT;
    else {
        PyErr_Format(PyExc_ValueError, "%s: kind must be 'ce' or 'logit', got '%s'", op, kind_name);
        return NULL;
    }
    dfc_py_refs refs = {0};
    dfc_tensor logits, loss, dlogits;
    const int64_t *targets;
    PyObject *result = NULL;
    if (dfc_py_tensor(logits_obj, op, "logits", 2, 2, 1, &refs, &logits) < 0)
        goto done;
    if (PyArray_Check(targets_obj) && !PyArray_ISINTEGER((PyArrayObject *)targets_obj)) {
        PyErr_Format(PyExc_TypeError, "%s: targets must hold integer class indices, got dtype %s", op,
                     PyArray_DESCR((PyArrayObject *)targets_obj)->typeobj->tp_name);
        goto done;
    }
    if (dfc_py_int64_vector(targets_obj, op, "targets", logits.shape[0], &refs, &targets) < 0)
        goto done;
    if (!(result = dfc_py_new_tuple(2, (dfc_py_output[]){{1, logits.shape, &loss}, {2, logits.shape, &dlogits}})))
        goto done;
    dfc_error err = {0};
    if (!be && dfc_backend_create(dfc_backend_registered(0), 1, &owned, &err) != DFC_OK) {
        dfc_py_raise(&err);
        Py_CLEAR(result);
        goto done;
    }
    DFC_PY_RUN(result, err, dfc_classification_loss(be ? be : owned, kind, &logits, targets, &loss, &dlogits, &err));
done:
    dfc_backend_destroy(owned);
    dfc_py_refs_release(&refs);
    return result;
}

static PyMethodDef classifier_methods[] = {
    {"segmenter_create", py_segmenter_create, METH_VARARGS,
     "segmenter_create(config) -> Network: the UNet-style segmenter (config: in_channels, classes, width, levels, "
     "groups)"},
    {"small_classifier_create", py_small_classifier_create, METH_VARARGS,
     "small_classifier_create(config) -> Network: a small conv classifier (config: in_channels, width, "
     "num_classes)"},
    {"plane_classifier_create", py_plane_classifier_create, METH_VARARGS,
     "plane_classifier_create(segmenter, classifier, config) -> Network: f(x) = l(s(x), x) (config: "
     "grad_through_segmenter, seg_input); keeps both children alive"},
    {"classification_loss", py_classification_loss, METH_VARARGS,
     "classification_loss(logits, targets, kind[, backend]) -> (per-sample loss, d(sum loss)/dlogits); kind 'ce' or "
     "'logit'"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_classifier(PyObject *module) { return PyModule_AddFunctions(module, classifier_methods); }

/* Bindings for the standard-plane classifier: plane_classifier_create (segmenter_create and
 * small_classifier_create are in bind_net.c's factory table). The classification loss is Python over the
 * cross_entropy / logit_loss ops (diffice/models/classifier.py).
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

#include "../nets/plane_classifier.h"

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

static PyMethodDef classifier_methods[] = {
    {"plane_classifier_create", py_plane_classifier_create, METH_VARARGS,
     "plane_classifier_create(segmenter, classifier, config) -> Network: f(x) = l(s(x), x) (config: "
     "grad_through_segmenter, seg_input); keeps both children alive"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_classifier(PyObject *module) { return PyModule_AddFunctions(module, classifier_methods); }

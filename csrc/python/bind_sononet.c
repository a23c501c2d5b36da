/* Bindings for SonoNet: sononet_create(config) -> diffice._C.Network. */
#include "pyutil.h"

#include "../nets/sononet.h"

static int config_int(PyObject *dict, const char *key, int *out)
{
    PyObject *v = PyDict_GetItemString(dict, key);
    if (!v)
        return 0; /* keep the default */
    long value = PyLong_AsLong(v);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT32_MIN || value > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "sononet_create: config '%s' is out of range", key);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* sononet_create(config: dict with k, in_channels, num_classes, standardize) -> Network */
static PyObject *sononet_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *cfg_dict;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &cfg_dict))
        return NULL;
    dfc_sononet_config c = {16, 1, 14, 1};
    if (config_int(cfg_dict, "k", &c.k) < 0 || config_int(cfg_dict, "in_channels", &c.in_channels) < 0 ||
        config_int(cfg_dict, "num_classes", &c.num_classes) < 0 ||
        config_int(cfg_dict, "standardize", &c.standardize) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    if (dfc_sononet_create(&c, &net, &err) != DFC_OK)
        return dfc_py_raise(&err);
    return dfc_py_wrap_net(net);
}

static PyMethodDef sononet_functions[] = {
    {"sononet_create", sononet_create, METH_VARARGS,
     "sononet_create(config) -> Network: SonoNet-k (config keys k, in_channels, num_classes, standardize); "
     "outputs logits, cam, features"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_sononet(PyObject *module)
{
    return PyModule_AddFunctions(module, sononet_functions);
}

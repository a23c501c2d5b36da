/* Bindings for the FID Inception-v3: inception_create(config) -> diffice._C.Network (forward only). */
#include "pyutil.h"

#include "../nets/inception.h"

static int config_int(PyObject *dict, const char *key, int *out)
{
    PyObject *v = PyDict_GetItemString(dict, key);
    if (!v)
        return 0; /* keep the default */
    long value = PyLong_AsLong(v);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < INT32_MIN || value > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "inception_create: config '%s' is out of range", key);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* inception_create(config: dict with in_channels (default 3), resize (default 299; 0: none)) -> Network */
static PyObject *inception_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *cfg_dict;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &cfg_dict))
        return NULL;
    dfc_inception_config c = {3, 299};
    if (config_int(cfg_dict, "in_channels", &c.in_channels) < 0 || config_int(cfg_dict, "resize", &c.resize) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    if (dfc_inception_create(&c, &net, &err) != DFC_OK)
        return dfc_py_raise(&err);
    return dfc_py_wrap_net(net);
}

static PyMethodDef inception_functions[] = {
    {"inception_create", inception_create, METH_VARARGS,
     "inception_create(config) -> Network: the FID Inception-v3 (config keys in_channels, resize); input in "
     "[0, 1]; output pool3 (N, 2048); forward only"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_inception(PyObject *module)
{
    return PyModule_AddFunctions(module, inception_functions);
}

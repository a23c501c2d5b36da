/* Bindings for the FID Inception-v3: inception_create(config) -> diffice._C.Network (forward only). */
#include "pyutil.h"

#include "../nets/inception.h"

/* inception_create(config: dict with in_channels (default 3), resize (default 299; 0: none)) -> Network */
static PyObject *inception_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *cfg_dict;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &cfg_dict))
        return NULL;
    dfc_inception_config c = {3, 299};
    const char *what = "Inception";
    if (dfc_py_config_int(cfg_dict, what, "in_channels", 1, INT_MAX, &c.in_channels) < 0 ||
        dfc_py_config_int(cfg_dict, what, "resize", 0, INT_MAX, &c.resize) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    dfc_status st = dfc_inception_create(&c, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

static PyMethodDef inception_functions[] = {
    {"inception_create", inception_create, METH_VARARGS,
     "inception_create(config) -> Network: the FID Inception-v3 (config keys in_channels, resize); input in "
     "[0, 1]; output pool3 (N, 2048); forward only"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_inception(PyObject *module) { return PyModule_AddFunctions(module, inception_functions); }

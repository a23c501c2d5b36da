/* Bindings for SonoNet: sononet_create(config) -> diffice._C.Network. */
#include "pyutil.h"

#include "../nets/sononet.h"

/* sononet_create(config: dict with k, in_channels, num_classes, standardize) -> Network */
static PyObject *sononet_create(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *cfg_dict;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &cfg_dict))
        return NULL;
    dfc_sononet_config c = {16, 1, 14, 1};
    const char *what = "SonoNet";
    if (dfc_py_config_int(cfg_dict, what, "k", 1, INT_MAX, &c.k) < 0 ||
        dfc_py_config_int(cfg_dict, what, "in_channels", 1, INT_MAX, &c.in_channels) < 0 ||
        dfc_py_config_int(cfg_dict, what, "num_classes", 1, INT_MAX, &c.num_classes) < 0 ||
        dfc_py_config_int(cfg_dict, what, "standardize", 0, 1, &c.standardize) < 0)
        return NULL;
    dfc_error err = {0};
    dfc_net *net = NULL;
    dfc_status st = dfc_sononet_create(&c, &net, &err);
    return dfc_py_created_net(st, net, &err);
}

static PyMethodDef sononet_functions[] = {
    {"sononet_create", sononet_create, METH_VARARGS,
     "sononet_create(config) -> Network: SonoNet-k (config keys k, in_channels, num_classes, standardize); "
     "outputs logits, cam, features"},
    {NULL, NULL, 0, NULL},
};

int dfc_register_sononet(PyObject *module) { return PyModule_AddFunctions(module, sononet_functions); }

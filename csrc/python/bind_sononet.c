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
    const char *op = "sononet_create";
    if (dfc_py_config_int(cfg_dict, op, "k", &c.k) < 0 ||
        dfc_py_config_int(cfg_dict, op, "in_channels", &c.in_channels) < 0 ||
        dfc_py_config_int(cfg_dict, op, "num_classes", &c.num_classes) < 0 ||
        dfc_py_config_int(cfg_dict, op, "standardize", &c.standardize) < 0)
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

int dfc_register_sononet(PyObject *module)
{
    return PyModule_AddFunctions(module, sononet_functions);
}

/* Bindings for the resnet networks (to be written). */
#include "pyutil.h"

int dfc_register_resnet(PyObject *module)
{
    (void)module;
    return 0;
}

/* Bindings for the sononet networks (to be written). */
#include "pyutil.h"

int dfc_register_sononet(PyObject *module)
{
    (void)module;
    return 0;
}

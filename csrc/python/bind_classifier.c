/* Bindings for the classifier networks (to be written). */
#include "pyutil.h"

int dfc_register_classifier(PyObject *module)
{
    (void)module;
    return 0;
}

/* Bindings for the norm ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_norm[] = {
    {NULL, NULL, 0, NULL},
};

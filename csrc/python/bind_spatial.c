/* Bindings for the spatial ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_spatial[] = {
    {NULL, NULL, 0, NULL},
};

/* Bindings for the conv ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_conv[] = {
    {NULL, NULL, 0, NULL},
};

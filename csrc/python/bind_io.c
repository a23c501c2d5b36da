/* Bindings for the io ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_io[] = {
    {NULL, NULL, 0, NULL},
};

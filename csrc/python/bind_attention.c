/* Bindings for the attention ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_attention[] = {
    {NULL, NULL, 0, NULL},
};

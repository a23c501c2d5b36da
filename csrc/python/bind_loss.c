/* Bindings for the loss ops (to be written). */
#include "pyutil.h"

PyMethodDef dfc_methods_loss[] = {
    {NULL, NULL, 0, NULL},
};

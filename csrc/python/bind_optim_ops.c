/* diffice._C.sum_squares: the one optimizer op whose result (a double) the table-driven binder (bind_ops.c, which
 * binds adamw_step, ema_update and scale) has no kind for. */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

/* sum_squares(backend, x) -> float: the sum of x^2 in double */
static PyObject *py_sum_squares(PyObject *self, PyObject *args)
{
    (void)self;
    dfc_backend *be;
    PyObject *x_obj;
    if (!PyArg_ParseTuple(args, "O&O", dfc_py_backend, &be, &x_obj))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x;
    PyObject *out = NULL;
    if (dfc_py_tensor(x_obj, "sum_squares", "x", 1, DFC_MAX_DIMS, 1, &refs, &x) == 0) {
        double sum = 0.0;
        dfc_error err = {0};
        dfc_status st;
        Py_BEGIN_ALLOW_THREADS
        st = be->ops->sum_squares(be, &x, &sum, &err);
        Py_END_ALLOW_THREADS
        out = st == DFC_OK ? PyFloat_FromDouble(sum) : dfc_py_raise(&err);
    }
    dfc_py_refs_release(&refs);
    return out;
}

PyMethodDef dfc_methods_optim[] = {
    {"sum_squares", py_sum_squares, METH_VARARGS, "sum_squares(backend, x) -> sum of x^2 (float, double precision)"},
    {NULL, NULL, 0, NULL},
};

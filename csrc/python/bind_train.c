/* Bindings for training: diffice._C.TrainingLoss (guided-diffusion's training_losses on its own diffusion tables).
 * The optimisers are Python over the op table's optimizer ops (diffice/train/ddpm.py). */
#include "pyutil.h"

#define NO_IMPORT_ARRAY
#define PY_ARRAY_UNIQUE_SYMBOL diffice_ARRAY_API
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../diffusion/losses.h"

/* ---- training loss ---- */

typedef struct {
    PyObject_HEAD dfc_diffusion *d;
    dfc_loss_type type;
    dfc_backend *be; /* runs the loss's ops: the reference kernels */
} TrainingLossObject;

static int loss_init(TrainingLossObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"steps", "schedule", "respacing", "variance_type", "loss_type", NULL};
    dfc_py_int_arg steps = {"TrainingLoss: steps", 1, INT_MAX, 1000};
    dfc_py_int_arg variance_type = {"TrainingLoss: variance_type", DFC_VAR_LEARNED_RANGE, DFC_VAR_FIXED_SMALL,
                                    DFC_VAR_LEARNED_RANGE};
    dfc_py_int_arg loss_type = {"TrainingLoss: loss_type (0 mse, 1 rescaled_mse)", DFC_LOSS_MSE, DFC_LOSS_RESCALED_MSE,
                                DFC_LOSS_MSE};
    const char *schedule = "linear", *respacing = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&ssO&O&", kwlist, dfc_py_int_converter, &steps, &schedule,
                                     &respacing, dfc_py_int_converter, &variance_type, dfc_py_int_converter,
                                     &loss_type))
        return -1;
    if (dfc_py_diffusion_reset(&self->d, steps.value, schedule, respacing, variance_type.value) < 0 ||
        dfc_py_reference_backend(&self->be) < 0)
        return -1;
    self->type = (dfc_loss_type)loss_type.value;
    return 0;
}

static void loss_dealloc(TrainingLossObject *self)
{
    dfc_diffusion_destroy(self->d);
    dfc_backend_destroy(self->be);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* compute(x_start, x_t, noise, indices, model_output, weights_or_None, want_grad)
 *   -> (loss, mse, vb, d_model_output or None) */
static PyObject *loss_compute(TrainingLossObject *self, PyObject *args)
{
    const char *op = "training_losses";
    PyObject *x0_obj, *xt_obj, *noise_obj, *idx_obj, *mo_obj, *w_obj;
    int want_grad = 1;
    if (!dfc_py_ready(self->d, "TrainingLoss: not initialised") ||
        !PyArg_ParseTuple(args, "OOOOOO|p", &x0_obj, &xt_obj, &noise_obj, &idx_obj, &mo_obj, &w_obj, &want_grad))
        return NULL;
    dfc_py_refs refs = {0};
    dfc_tensor x0, xt, noise, mo, dmo = {0}, loss, mse, vb, weights = {0};
    const int64_t *indices;
    PyObject *result = NULL;
    if (dfc_py_tensor(x0_obj, op, "x_start", 2, 4, 1, &refs, &x0) < 0 ||
        dfc_py_tensor(xt_obj, op, "x_t", 2, 4, 1, &refs, &xt) < 0 ||
        dfc_py_tensor(noise_obj, op, "noise", 2, 4, 1, &refs, &noise) < 0 ||
        dfc_py_tensor(mo_obj, op, "model_output", 2, 4, 1, &refs, &mo) < 0 ||
        dfc_py_int64_vector(idx_obj, op, "indices", x0.shape[0], &refs, &indices) < 0 ||
        dfc_py_optional_tensor(w_obj, op, "weights", 1, 1, 1, &refs, &weights) < 0)
        goto done;
    if (weights.data && weights.shape[0] != x0.shape[0]) {
        PyErr_Format(PyExc_ValueError, "%s: weights must have %lld entries, got %lld", op, (long long)x0.shape[0],
                     (long long)weights.shape[0]);
        goto done;
    }
    int64_t n = x0.shape[0];
    const int64_t *dmo_shape = want_grad ? mo.shape : NULL; /* d_model_output is None without the gradient */
    if (!(result = dfc_py_new_tuple(
              4, (dfc_py_output[]){{1, &n, &loss}, {1, &n, &mse}, {1, &n, &vb}, {mo.ndim, dmo_shape, &dmo}})))
        goto done;
    dfc_error err = {0};
    DFC_PY_RUN(result, err,
               dfc_diffusion_training_losses(self->d, self->be, self->type, &x0, &xt, &noise, indices, &mo,
                                             weights.data, loss.data, mse.data, vb.data, want_grad ? &dmo : NULL,
                                             &err));
done:
    dfc_py_refs_release(&refs);
    return result;
}

static PyObject *loss_get_num_timesteps(TrainingLossObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->d ? self->d->num_timesteps : 0);
}

static PyMethodDef loss_methods[] = {
    {"compute", (PyCFunction)loss_compute, METH_VARARGS,
     "compute(x_start, x_t, noise, indices, model_output, weights_or_None, want_grad=True) -> "
     "(loss, mse, vb, d_model_output or None)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loss_getset[] = {
    {"num_timesteps", (getter)loss_get_num_timesteps, NULL, "respaced step count", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TrainingLoss_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "diffice._C.TrainingLoss",
    .tp_basicsize = sizeof(TrainingLossObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TrainingLoss(steps, schedule, respacing, variance_type, loss_type): guided-diffusion's "
              "training_losses (mse + frozen-mean vb) and its gradient w.r.t. the model output.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)loss_init,
    .tp_dealloc = (destructor)loss_dealloc,
    .tp_methods = loss_methods,
    .tp_getset = loss_getset,
};

int dfc_register_train(PyObject *module) { return dfc_py_add_type(module, &TrainingLoss_Type, "TrainingLoss"); }

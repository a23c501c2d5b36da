/* Reference kernels (stub: to be written). */
#include "ref.h"

dfc_status ref_cross_entropy_forward(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *loss, dfc_error *err)
{
    (void)be;
    (void)logits;
    (void)targets;
    (void)loss;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "cross_entropy_forward: not implemented on the ref backend");
}

dfc_status ref_cross_entropy_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *dlogits, dfc_error *err)
{
    (void)be;
    (void)dloss;
    (void)logits;
    (void)targets;
    (void)dlogits;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "cross_entropy_backward: not implemented on the ref backend");
}

dfc_status ref_mse_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss, dfc_error *err)
{
    (void)be;
    (void)a;
    (void)b;
    (void)loss;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "mse_forward: not implemented on the ref backend");
}

dfc_status ref_mse_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    (void)be;
    (void)dloss;
    (void)a;
    (void)b;
    (void)da;
    (void)db;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "mse_backward: not implemented on the ref backend");
}

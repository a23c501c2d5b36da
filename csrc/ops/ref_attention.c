/* Reference kernels (stub: to be written). */
#include "ref.h"

dfc_status ref_attention_forward(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)qkv;
    (void)heads;
    (void)legacy_order;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "attention_forward: not implemented on the ref backend");
}

dfc_status ref_attention_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *dqkv, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)qkv;
    (void)heads;
    (void)legacy_order;
    (void)dqkv;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "attention_backward: not implemented on the ref backend");
}

dfc_status ref_timestep_embedding(dfc_backend *be, const dfc_tensor *t, float max_period, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)t;
    (void)max_period;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "timestep_embedding: not implemented on the ref backend");
}

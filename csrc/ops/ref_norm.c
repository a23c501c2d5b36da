/* Reference kernels (stub: to be written). */
#include "ref.h"

dfc_status ref_group_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta, int groups, float eps, dfc_tensor *y, dfc_tensor *mean, dfc_tensor *rstd, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)gamma;
    (void)beta;
    (void)groups;
    (void)eps;
    (void)y;
    (void)mean;
    (void)rstd;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "group_norm_forward: not implemented on the ref backend");
}

dfc_status ref_group_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps, dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)x;
    (void)gamma;
    (void)mean;
    (void)rstd;
    (void)groups;
    (void)eps;
    (void)dx;
    (void)dgamma;
    (void)dbeta;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "group_norm_backward: not implemented on the ref backend");
}

dfc_status ref_batch_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta, const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)gamma;
    (void)beta;
    (void)running_mean;
    (void)running_var;
    (void)eps;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "batch_norm_forward: not implemented on the ref backend");
}

dfc_status ref_batch_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps, dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)x;
    (void)gamma;
    (void)running_mean;
    (void)running_var;
    (void)eps;
    (void)dx;
    (void)dgamma;
    (void)dbeta;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "batch_norm_backward: not implemented on the ref backend");
}

/* Reference kernels (stub: to be written). */
#include "ref.h"

dfc_status ref_conv2d_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias, dfc_conv2d_params p, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)weight;
    (void)bias;
    (void)p;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "conv2d_forward: not implemented on the ref backend");
}

dfc_status ref_conv2d_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)weight;
    (void)p;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "conv2d_backward_input: not implemented on the ref backend");
}

dfc_status ref_conv2d_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_conv2d_params p, dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)x;
    (void)p;
    (void)dweight;
    (void)dbias;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "conv2d_backward_weight: not implemented on the ref backend");
}

dfc_status ref_linear_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)weight;
    (void)bias;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "linear_forward: not implemented on the ref backend");
}

dfc_status ref_linear_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)weight;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "linear_backward_input: not implemented on the ref backend");
}

dfc_status ref_linear_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)x;
    (void)dweight;
    (void)dbias;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "linear_backward_weight: not implemented on the ref backend");
}

/* Reference kernels (stub: to be written). */
#include "ref.h"

dfc_status ref_upsample_nearest2x_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "upsample_nearest2x_forward: not implemented on the ref backend");
}

dfc_status ref_upsample_nearest2x_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "upsample_nearest2x_backward: not implemented on the ref backend");
}

dfc_status ref_avg_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)p;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "avg_pool2d_forward: not implemented on the ref backend");
}

dfc_status ref_avg_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, dfc_pool2d_params p, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)p;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "avg_pool2d_backward: not implemented on the ref backend");
}

dfc_status ref_max_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)p;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "max_pool2d_forward: not implemented on the ref backend");
}

dfc_status ref_max_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)x;
    (void)p;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "max_pool2d_backward: not implemented on the ref backend");
}

dfc_status ref_global_avg_pool_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "global_avg_pool_forward: not implemented on the ref backend");
}

dfc_status ref_global_avg_pool_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "global_avg_pool_backward: not implemented on the ref backend");
}

dfc_status ref_resize_bilinear_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "resize_bilinear_forward: not implemented on the ref backend");
}

dfc_status ref_resize_bilinear_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "resize_bilinear_backward: not implemented on the ref backend");
}

/* Shape checks of conv2d and linear, shared by the reference kernels (ref_conv.c, which defines them) and the
 * oneDNN ones (cpu_dnnl.c), so both backends reject the same inputs with the same messages. */
#ifndef DIFFICE_CONV_CHECK_H
#define DIFFICE_CONV_CHECK_H

#include "ops.h"

/* Output extent of a convolution along one axis, or <= 0 when the kernel does not fit the padded input. */
static inline int64_t dfc_conv_out_size(int64_t in, int64_t kernel, int stride, int pad)
{
    if (stride < 1 || in + 2 * (int64_t)pad < kernel)
        return 0;
    return (in + 2 * (int64_t)pad - kernel) / stride + 1;
}

/* x (N, Ci, H, W), weight (Co, Ci, KH, KW), bias (Co) or NULL, y (N, Co, Ho, Wo) must agree with p.
 * The names are the op's own ("dy", "dx", "dweight", ...), so messages match the caller's arguments. */
dfc_status dfc_conv2d_check(const char *op, const dfc_tensor *x, const char *x_name, const dfc_tensor *weight,
                            const char *weight_name, const dfc_tensor *bias, const char *bias_name, const dfc_tensor *y,
                            const char *y_name, dfc_conv2d_params p, dfc_error *err);

/* x (M, In), weight (Out, In), bias (Out) or NULL, y (M, Out), with names as above. */
dfc_status dfc_linear_check(const char *op, const dfc_tensor *x, const char *x_name, const dfc_tensor *weight,
                            const char *weight_name, const dfc_tensor *bias, const char *bias_name, const dfc_tensor *y,
                            const char *y_name, dfc_error *err);

#endif

/* Shape checks of conv2d and linear, shared by the reference kernels (ref_conv.c), the oneDNN ones (cpu_dnnl.c) and
 * the CUDA ones (csrc/cuda/dense.cu, also built into the plugin, hence inline), so every backend rejects the same
 * inputs with the same messages. */
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
static inline dfc_status dfc_conv2d_check(const char *op, const dfc_tensor *x, const char *x_name,
                                          const dfc_tensor *weight, const char *weight_name, const dfc_tensor *bias,
                                          const char *bias_name, const dfc_tensor *y, const char *y_name,
                                          dfc_conv2d_params p, dfc_error *err)
{
    if (p.stride_h < 1 || p.stride_w < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: stride must be >= 1, got stride_h=%d, stride_w=%d", op, p.stride_h,
                        p.stride_w);
    if (p.pad_h < 0 || p.pad_w < 0)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: padding must be >= 0, got pad_h=%d, pad_w=%d", op, p.pad_h, p.pad_w);
    DFC_TRY(dfc_check_ndim(x, op, x_name, 4, 4, err));
    DFC_TRY(dfc_check_ndim(weight, op, weight_name, 4, 4, err));
    const int64_t n = x->shape[0], ci = x->shape[1], h = x->shape[2], w = x->shape[3];
    const int64_t co = weight->shape[0], kh = weight->shape[2], kw = weight->shape[3];
    if (weight->shape[1] != ci)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s has %lld input channels but %s has %lld", op, weight_name,
                        (long long)weight->shape[1], x_name, (long long)ci);
    if (h + 2 * (int64_t)p.pad_h < kh)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: kernel height %lld is larger than the padded input height %lld (%s height %lld + 2 * "
                        "pad_h %d)",
                        op, (long long)kh, (long long)(h + 2 * (int64_t)p.pad_h), x_name, (long long)h, p.pad_h);
    if (w + 2 * (int64_t)p.pad_w < kw)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: kernel width %lld is larger than the padded input width %lld (%s width %lld + 2 * "
                        "pad_w %d)",
                        op, (long long)kw, (long long)(w + 2 * (int64_t)p.pad_w), x_name, (long long)w, p.pad_w);
    const int64_t y_shape[4] = {n, co, dfc_conv_out_size(h, kh, p.stride_h, p.pad_h),
                                dfc_conv_out_size(w, kw, p.stride_w, p.pad_w)};
    DFC_TRY(dfc_check_shape(y, op, y_name, 4, y_shape, err));
    if (bias)
        DFC_TRY(dfc_check_shape(bias, op, bias_name, 1, &co, err));
    return DFC_OK;
}

/* The convolutions that take NCHW x and y only (the backward ones, and every CUDA one) reject the layout flags, and
 * conv2d_forward takes only 0 or 1 in them. */
static inline dfc_status dfc_conv2d_check_layout(const char *op, dfc_conv2d_params p, int nhwc_allowed, dfc_error *err)
{
    const int ok = nhwc_allowed ? (p.x_nhwc == 0 || p.x_nhwc == 1) && (p.y_nhwc == 0 || p.y_nhwc == 1)
                                : p.x_nhwc == 0 && p.y_nhwc == 0;
    if (!ok)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: %s, got x_nhwc=%d, y_nhwc=%d", op,
                        nhwc_allowed ? "x_nhwc and y_nhwc must be 0 (NCHW) or 1 (NHWC)"
                                     : "x and y must be NCHW here (x_nhwc = y_nhwc = 0)",
                        p.x_nhwc, p.y_nhwc);
    return DFC_OK;
}

/* x (M, In), weight (Out, In), bias (Out) or NULL, y (M, Out), with names as above. */
static inline dfc_status dfc_linear_check(const char *op, const dfc_tensor *x, const char *x_name,
                                          const dfc_tensor *weight, const char *weight_name, const dfc_tensor *bias,
                                          const char *bias_name, const dfc_tensor *y, const char *y_name,
                                          dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, x_name, 2, 2, err));
    DFC_TRY(dfc_check_ndim(weight, op, weight_name, 2, 2, err));
    if (weight->shape[1] != x->shape[1])
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s has %lld input features but %s has %lld", op, weight_name,
                        (long long)weight->shape[1], x_name, (long long)x->shape[1]);
    const int64_t y_shape[2] = {x->shape[0], weight->shape[0]};
    DFC_TRY(dfc_check_shape(y, op, y_name, 2, y_shape, err));
    if (bias)
        DFC_TRY(dfc_check_shape(bias, op, bias_name, 1, &weight->shape[0], err));
    return DFC_OK;
}

#endif

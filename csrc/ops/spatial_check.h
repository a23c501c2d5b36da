/* Argument checks and index arithmetic of the spatial ops (channel concat/split, pooling, bilinear resize), shared
 * by the reference kernels (ref_spatial.c, ref_elementwise.c) and the CUDA ones (csrc/cuda/spatial.cu), so all
 * backends reject the same inputs with the same messages and read the same pixels. The checks live in
 * spatial_check.c, which the CUDA plugin links too. Private to csrc. */
#ifndef DIFFICE_SPATIAL_CHECK_H
#define DIFFICE_SPATIAL_CHECK_H

#include <math.h>

#include "../core/also_device.h"
#include "ops.h"

/* Every part must match `whole` on all dims but the channel one (dim 1), and the channels must add up. */
dfc_status dfc_channel_parts_check(const char *op, const char *part_name, const char *whole_name,
                                   const dfc_tensor *whole, const dfc_tensor *const *parts, int n, dfc_error *err);

/* small (N, C, H, W) and big (N, C, 2H, 2W): a nearest x2 upsample's two sides. */
dfc_status dfc_upsample2x_check_shapes(const char *op, const dfc_tensor *small, const char *small_name,
                                       const dfc_tensor *big, const char *big_name, dfc_error *err);

/* in (N, C, H, W) at full resolution and out (N, C, Ho, Wo) pooled from it: checks both against p (PyTorch's rules,
 * floor mode), gives Ho, Wo. */
dfc_status dfc_pool_check_shapes(const char *op, const dfc_tensor *in, const char *in_name, const dfc_tensor *out,
                                 const char *out_name, dfc_pool2d_params p, int64_t *Ho, int64_t *Wo, dfc_error *err);

/* full (N, C, H, W) and pooled (N, C): a global average pool's two sides. */
dfc_status dfc_global_pool_check_shapes(const char *op, const dfc_tensor *full, const char *full_name,
                                        const dfc_tensor *pooled, const char *pooled_name, dfc_error *err);

/* in and out 4-d with the same batch and channels (a bilinear resize's two sides). */
dfc_status dfc_resize_check_shapes(const char *op, const dfc_tensor *in, const char *in_name, const dfc_tensor *out,
                                   const char *out_name, dfc_error *err);

/* Rows [*lo, *hi) of the input that window i covers, clipped to the image (the padding holds no values). */
static DFC_ALSO_DEVICE inline void dfc_pool_window_range(int64_t i, int stride, int pad, int kernel, int64_t size,
                                                         int64_t *lo, int64_t *hi)
{
    int64_t start = i * stride - pad, end = start + kernel;
    *lo = start < 0 ? 0 : start;
    *hi = end > size ? size : end;
}

/* Flat index (within the plane) of the first maximum of window (i, j) in row-major scan order, skipping the
 * -inf padding; PyTorch's rule, so ties route the gradient to the same input. */
static DFC_ALSO_DEVICE inline int64_t dfc_max_pool_argmax(const float *xp, int64_t H, int64_t W, dfc_pool2d_params p,
                                                          int64_t i, int64_t j)
{
    const int64_t h0 = i * p.stride_h - p.pad_h, w0 = j * p.stride_w - p.pad_w;
    int64_t best = -1;
    float best_val = -INFINITY;
    for (int64_t h = h0; h < h0 + p.kernel_h; h++) {
        if (h < 0 || h >= H)
            continue;
        for (int64_t w = w0; w < w0 + p.kernel_w; w++) {
            if (w < 0 || w >= W)
                continue;
            const float v = xp[h * W + w];
            if (best < 0 || v > best_val) {
                best = h * W + w;
                best_val = v;
            }
        }
    }
    return best; /* never -1: padding <= kernel / 2 leaves every window an input element */
}

/* PyTorch's source coordinate for output index `o` when resizing `in` -> `out` given an output size:
 * src = (o + 0.5) * in / out - 0.5, clamped at 0; neighbours i0 and i1 = min(i0 + 1, in - 1), weight of i1 = frac.
 * i0 does not decrease with o. */
typedef struct dfc_lerp_taps {
    int64_t i0, i1;
    double w0, w1;
} dfc_lerp_taps;

static DFC_ALSO_DEVICE inline dfc_lerp_taps dfc_bilinear_taps(int64_t o, int64_t in, int64_t out)
{
    double src = ((double)o + 0.5) * ((double)in / (double)out) - 0.5;
    if (src < 0.0)
        src = 0.0;
    dfc_lerp_taps t;
    t.i0 = (int64_t)src;
    if (t.i0 > in - 1)
        t.i0 = in - 1;
    t.i1 = t.i0 < in - 1 ? t.i0 + 1 : t.i0;
    t.w1 = src - (double)t.i0;
    t.w0 = 1.0 - t.w1;
    return t;
}

#endif

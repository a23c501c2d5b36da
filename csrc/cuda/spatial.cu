/* Spatial ops on the CUDA backend: channel concat / split, nearest x2 upsample, average / max / global pooling,
 * bilinear resize. Read against ref_spatial.c and ref_elementwise.c: the same checks and the same index arithmetic
 * (spatial_check.h), one index per output element. The backwards, which the reference kernels write as a scatter
 * over one plane, are gathers here: each dx element visits the outputs that read it, in the order the reference
 * scatter reaches it, and adds the same float32 terms, so ref, cpu and cuda_emulated give the same bytes.
 *
 * Verified only on a GPU: the launches themselves (grid-stride loops, one per op, or one per part for concat and
 * split); the plugin is built with -fmad=false, so the device's double arithmetic (the bilinear taps) rounds as the
 * host's. */
#include "cuda_backend.cuh"

extern "C" {
#include "../ops/spatial_check.h"
}

/* ---- channel concat / split ---- */

/* The parts' shapes and data pointers sit in host structs (the data itself is backend memory): one copy per part,
 * each element of the part to its place in the whole, or back. */
static dfc_status copy_channel_parts(dfc_backend *be, const char *op, const dfc_tensor *whole,
                                     const dfc_tensor *const *parts, int n, int to_whole, dfc_error *err)
{
    const int64_t batch = whole->shape[0], inner = dfc_inner_size(whole, 2), sample = whole->shape[1] * inner;
    int64_t offset = 0;
    for (int k = 0; k < n; k++) {
        const int64_t len = parts[k]->shape[1] * inner, start = offset;
        float *w = whole->data, *part = parts[k]->data;
        DFC_TRY(dfc_cuda_for_each(be, batch * len, op, err, [=] DFC_DEVICE(int64_t i) {
            float *in_whole = w + (i / len) * sample + start + i % len;
            if (to_whole)
                *in_whole = part[i];
            else
                part[i] = *in_whole;
        }));
        offset += len;
    }
    return DFC_OK;
}

dfc_status cuda_concat_channels(dfc_backend *be, const dfc_tensor *const *xs, int n, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_channel_parts_check("concat", "xs", "y", y, xs, n, err));
    return copy_channel_parts(be, "concat", y, xs, n, 1, err);
}

dfc_status cuda_split_channels(dfc_backend *be, const dfc_tensor *x, dfc_tensor *const *ys, int n, dfc_error *err)
{
    const dfc_tensor *const *parts = (const dfc_tensor *const *)ys;
    DFC_TRY(dfc_channel_parts_check("split", "ys", "x", x, parts, n, err));
    return copy_channel_parts(be, "split", x, parts, n, 0, err);
}

/* ---- the planes of the 4-d ops ---- */

/* The sizes of an upsampling, pooling or resizing op: planes (N C) of H x W on the input side, Ho x Wo on the
 * output side. */
typedef struct plane_dims {
    int64_t planes, H, W, Ho, Wo;
} plane_dims;

static plane_dims plane_dims_of(const dfc_tensor *in, const dfc_tensor *out)
{
    plane_dims d = {in->shape[0] * in->shape[1], in->shape[2], in->shape[3], out->shape[2], out->shape[3]};
    return d;
}

/* ---- nearest-neighbour upsample x2 ---- */

dfc_status cuda_upsample_nearest2x_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    const char *op = "upsample_nearest2x";
    DFC_TRY(dfc_upsample2x_check_shapes(op, x, "x", y, "y", err));
    const plane_dims d = plane_dims_of(x, y);
    const int64_t H = d.H, W = d.W;
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, d.planes * d.Ho * d.Wo, op, err, [=] DFC_DEVICE(int64_t e) {
        const int64_t j = e % (2 * W), i = e / (2 * W) % (2 * H), plane = e / (4 * H * W);
        ys[e] = xs[plane * H * W + (i / 2) * W + j / 2];
    });
}

/* dx[i, j] = sum of the 2x2 block of dy it was copied to. */
dfc_status cuda_upsample_nearest2x_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    const char *op = "upsample_nearest2x_backward";
    DFC_TRY(dfc_upsample2x_check_shapes(op, dx, "dx", dy, "dy", err));
    const plane_dims d = plane_dims_of(dx, dy);
    const int64_t H = d.H, W = d.W;
    const float *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, d.planes * H * W, op, err, [=] DFC_DEVICE(int64_t e) {
        const int64_t j = e % W, i = e / W % H, plane = e / (H * W);
        const float *block = dys + plane * 4 * H * W + 2 * i * 2 * W + 2 * j;
        dxs[e] = (float)((double)block[0] + block[1] + block[2 * W] + block[2 * W + 1]);
    });
}

/* ---- pooling ---- */

/* Windows [*first, *last] along one axis whose unclipped span [o stride - pad, o stride - pad + kernel) holds input
 * index h, within [0, count); empty when *first > *last. */
static DFC_HOST_DEVICE inline void windows_holding(int64_t h, int stride, int pad, int kernel, int64_t count,
                                                   int64_t *first, int64_t *last)
{
    const int64_t lowest = h + pad - kernel + 1; /* o stride >= lowest */
    *first = lowest <= 0 ? 0 : (lowest + stride - 1) / stride;
    *last = (h + pad) / stride;
    if (*last > count - 1)
        *last = count - 1;
}

/* dfc_pool_check_shapes on in (N, C, H, W) and out (N, C, Ho, Wo), then their sizes. */
static dfc_status pool_dims_of(const char *op, const dfc_tensor *in, const char *in_name, const dfc_tensor *out,
                               const char *out_name, dfc_pool2d_params p, plane_dims *d, dfc_error *err)
{
    int64_t Ho, Wo;
    DFC_TRY(dfc_pool_check_shapes(op, in, in_name, out, out_name, p, &Ho, &Wo, err));
    *d = plane_dims_of(in, out);
    return DFC_OK;
}

dfc_status cuda_avg_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                   dfc_error *err)
{
    plane_dims d;
    DFC_TRY(pool_dims_of("avg_pool2d", x, "x", y, "y", p, &d, err));
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, d.planes * d.Ho * d.Wo, "avg_pool2d", err, [=] DFC_DEVICE(int64_t e) {
        const int64_t H = d.H, W = d.W, j = e % d.Wo, i = e / d.Wo % d.Ho, plane = e / (d.Ho * d.Wo);
        const float *xp = xs + plane * H * W;
        int64_t h0, h1, w0, w1;
        dfc_pool_window_range(i, p.stride_h, p.pad_h, p.kernel_h, H, &h0, &h1);
        dfc_pool_window_range(j, p.stride_w, p.pad_w, p.kernel_w, W, &w0, &w1);
        double sum = 0.0;
        for (int64_t h = h0; h < h1; h++)
            for (int64_t w = w0; w < w1; w++)
                sum += xp[h * W + w];
        ys[e] = (float)(sum / (double)((h1 - h0) * (w1 - w0)));
    });
}

/* Each dx element adds dy / (pixels the window covers) of every window holding it, in the reference's window
 * order; elements no window holds get zero. */
dfc_status cuda_avg_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, dfc_pool2d_params p, dfc_tensor *dx,
                                    dfc_error *err)
{
    plane_dims d;
    DFC_TRY(pool_dims_of("avg_pool2d_backward", dx, "dx", dy, "dy", p, &d, err));
    const float *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, d.planes * d.H * d.W, "avg_pool2d_backward", err, [=] DFC_DEVICE(int64_t e) {
        const int64_t H = d.H, W = d.W, Ho = d.Ho, Wo = d.Wo, w = e % W, h = e / W % H, plane = e / (H * W);
        const float *dyp = dys + plane * Ho * Wo;
        int64_t i0, i1, j0, j1;
        windows_holding(h, p.stride_h, p.pad_h, p.kernel_h, Ho, &i0, &i1);
        windows_holding(w, p.stride_w, p.pad_w, p.kernel_w, Wo, &j0, &j1);
        float acc = 0.0f;
        for (int64_t i = i0; i <= i1; i++) {
            int64_t ha, hb;
            dfc_pool_window_range(i, p.stride_h, p.pad_h, p.kernel_h, H, &ha, &hb);
            for (int64_t j = j0; j <= j1; j++) {
                int64_t wa, wb;
                dfc_pool_window_range(j, p.stride_w, p.pad_w, p.kernel_w, W, &wa, &wb);
                acc += (float)(dyp[i * Wo + j] / (double)((hb - ha) * (wb - wa)));
            }
        }
        dxs[e] = acc;
    });
}

dfc_status cuda_max_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                   dfc_error *err)
{
    plane_dims d;
    DFC_TRY(pool_dims_of("max_pool2d", x, "x", y, "y", p, &d, err));
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, d.planes * d.Ho * d.Wo, "max_pool2d", err, [=] DFC_DEVICE(int64_t e) {
        const int64_t j = e % d.Wo, i = e / d.Wo % d.Ho, plane = e / (d.Ho * d.Wo);
        const float *xp = xs + plane * d.H * d.W;
        ys[e] = xp[dfc_max_pool_argmax(xp, d.H, d.W, p, i, j)];
    });
}

/* Each dx element adds the dy of every window holding it whose (recomputed) first maximum it is. */
dfc_status cuda_max_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_pool2d_params p,
                                    dfc_tensor *dx, dfc_error *err)
{
    const char *op = "max_pool2d_backward";
    plane_dims d;
    DFC_TRY(pool_dims_of(op, x, "x", dy, "dy", p, &d, err));
    DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, d.planes * d.H * d.W, op, err, [=] DFC_DEVICE(int64_t e) {
        const int64_t H = d.H, W = d.W, Ho = d.Ho, Wo = d.Wo, w = e % W, h = e / W % H, plane = e / (H * W);
        const float *xp = xs + plane * H * W, *dyp = dys + plane * Ho * Wo;
        int64_t i0, i1, j0, j1;
        windows_holding(h, p.stride_h, p.pad_h, p.kernel_h, Ho, &i0, &i1);
        windows_holding(w, p.stride_w, p.pad_w, p.kernel_w, Wo, &j0, &j1);
        float acc = 0.0f;
        for (int64_t i = i0; i <= i1; i++)
            for (int64_t j = j0; j <= j1; j++)
                if (dfc_max_pool_argmax(xp, H, W, p, i, j) == h * W + w)
                    acc += dyp[i * Wo + j];
        dxs[e] = acc;
    });
}

/* ---- global average pool ---- */

dfc_status cuda_global_avg_pool_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    const char *op = "global_avg_pool";
    DFC_TRY(dfc_global_pool_check_shapes(op, x, "x", y, "y", err));
    const int64_t hw = x->shape[2] * x->shape[3];
    const float *xs = x->data;
    float *ys = y->data;
    /* one plane per index, the reference's serial double sum: the networks pool their last, small feature maps */
    return dfc_cuda_for_each(be, x->shape[0] * x->shape[1], op, err, [=] DFC_DEVICE(int64_t plane) {
        const float *xp = xs + plane * hw;
        double sum = 0.0;
        for (int64_t i = 0; i < hw; i++)
            sum += xp[i];
        ys[plane] = (float)(sum / (double)hw);
    });
}

dfc_status cuda_global_avg_pool_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    const char *op = "global_avg_pool_backward";
    DFC_TRY(dfc_global_pool_check_shapes(op, dx, "dx", dy, "dy", err));
    const int64_t hw = dx->shape[2] * dx->shape[3];
    const float *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, dfc_numel(dx), op, err,
                             [=] DFC_DEVICE(int64_t e) { dxs[e] = (float)((double)dys[e / hw] / (double)hw); });
}

/* ---- bilinear resize, align_corners = False ---- */

dfc_status cuda_resize_bilinear_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_resize_check_shapes("resize_bilinear", x, "x", y, "y", err));
    const plane_dims d = plane_dims_of(x, y);
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, d.planes * d.Ho * d.Wo, "resize_bilinear", err, [=] DFC_DEVICE(int64_t e) {
        const int64_t H = d.H, W = d.W, Ho = d.Ho, Wo = d.Wo, j = e % Wo, i = e / Wo % Ho, plane = e / (Ho * Wo);
        const float *xp = xs + plane * H * W;
        const dfc_lerp_taps th = dfc_bilinear_taps(i, H, Ho), tw = dfc_bilinear_taps(j, W, Wo);
        const double v = th.w0 * (tw.w0 * xp[th.i0 * W + tw.i0] + tw.w1 * xp[th.i0 * W + tw.i1]) +
                         th.w1 * (tw.w0 * xp[th.i1 * W + tw.i0] + tw.w1 * xp[th.i1 * W + tw.i1]);
        ys[e] = (float)v;
    });
}

/* The first output index (of out) whose taps read input index h or above: tap i0 is h - 1 or h exactly for the
 * outputs that read h (i1 = i0 + 1 below the last row), and i0 does not decrease with the output index. */
static DFC_HOST_DEVICE inline int64_t first_output_reading(int64_t h, int64_t in, int64_t out)
{
    int64_t lo = 0, hi = out; /* binary search for the first o with i0(o) >= h - 1 */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (dfc_bilinear_taps(mid, in, out).i0 >= h - 1)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Each dx element gathers, over the outputs that read it in row-major order, the same float32 terms the reference
 * scatter adds to it, in the same order (an output whose two taps coincide at the border adds twice). */
dfc_status cuda_resize_bilinear_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    const char *op = "resize_bilinear_backward";
    DFC_TRY(dfc_resize_check_shapes(op, dx, "dx", dy, "dy", err));
    const plane_dims d = plane_dims_of(dx, dy);
    const float *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, d.planes * d.H * d.W, op, err, [=] DFC_DEVICE(int64_t e) {
        const int64_t H = d.H, W = d.W, Ho = d.Ho, Wo = d.Wo, w = e % W, h = e / W % H, plane = e / (H * W);
        const float *dyp = dys + plane * Ho * Wo;
        const int64_t j_first = first_output_reading(w, W, Wo);
        float acc = 0.0f;
        for (int64_t i = first_output_reading(h, H, Ho); i < Ho; i++) {
            const dfc_lerp_taps th = dfc_bilinear_taps(i, H, Ho);
            if (th.i0 > h)
                break;
            for (int64_t j = j_first; j < Wo; j++) {
                const dfc_lerp_taps tw = dfc_bilinear_taps(j, W, Wo);
                if (tw.i0 > w)
                    break;
                const double g = dyp[i * Wo + j];
                if (th.i0 == h && tw.i0 == w)
                    acc += (float)(g * th.w0 * tw.w0);
                if (th.i0 == h && tw.i1 == w)
                    acc += (float)(g * th.w0 * tw.w1);
                if (th.i1 == h && tw.i0 == w)
                    acc += (float)(g * th.w1 * tw.w0);
                if (th.i1 == h && tw.i1 == w)
                    acc += (float)(g * th.w1 * tw.w1);
            }
        }
        dxs[e] = acc;
    });
}

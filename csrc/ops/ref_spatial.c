/* Reference spatial kernels: nearest x2 upsample, average / max / global pooling, bilinear resize.
 * Forwards gather; backwards loop over one (n, c) plane per iteration so the scatter into dx never races. */
#include <math.h>
#include <string.h>

#include "ref.h"
#include "spatial_check.h"

/* ---- nearest-neighbour upsample x2 ---- */

dfc_status ref_upsample_nearest2x_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_upsample2x_check_shapes("upsample_nearest2x", x, "x", y, "y", err));
    const int64_t planes = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *xp = x->data + p * H * W;
        float *yp = y->data + p * 4 * H * W;
        for (int64_t i = 0; i < 2 * H; i++)
            for (int64_t j = 0; j < 2 * W; j++)
                yp[i * 2 * W + j] = xp[(i / 2) * W + j / 2];
    }
    return DFC_OK;
}

/* dx[i, j] = sum of the 2x2 block of dy it was copied to. */
dfc_status ref_upsample_nearest2x_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_upsample2x_check_shapes("upsample_nearest2x_backward", dx, "dx", dy, "dy", err));
    const int64_t planes = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *dyp = dy->data + p * 4 * H * W;
        float *dxp = dx->data + p * H * W;
        for (int64_t i = 0; i < H; i++) {
            for (int64_t j = 0; j < W; j++) {
                const float *d = dyp + 2 * i * 2 * W + 2 * j;
                dxp[i * W + j] = (float)((double)d[0] + d[1] + d[2 * W] + d[2 * W + 1]);
            }
        }
    }
    return DFC_OK;
}

/* ---- pooling ---- */

/* Padding, where given, adds no values and no count: each window averages only the pixels inside the image
 * (PyTorch's count_include_pad=False, which pytorch-fid's FID Inception uses). Without padding every window is
 * inside, and the divisor is the kernel area. */
dfc_status ref_avg_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                  dfc_error *err)
{
    const char *op = "avg_pool2d";
    int64_t Ho, Wo;
    DFC_TRY(dfc_pool_check_shapes(op, x, "x", y, "y", p, &Ho, &Wo, err));
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t planes = N * C;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * H * W;
        float *yp = y->data + pl * Ho * Wo;
        for (int64_t i = 0; i < Ho; i++) {
            int64_t h0, h1;
            dfc_pool_window_range(i, p.stride_h, p.pad_h, p.kernel_h, H, &h0, &h1);
            for (int64_t j = 0; j < Wo; j++) {
                int64_t w0, w1;
                dfc_pool_window_range(j, p.stride_w, p.pad_w, p.kernel_w, W, &w0, &w1);
                double sum = 0.0;
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++)
                        sum += xp[h * W + w];
                yp[i * Wo + j] = (float)(sum / (double)((h1 - h0) * (w1 - w0)));
            }
        }
    }
    return DFC_OK;
}

/* Each window spreads dy / (pixels it covers) over them; rows/cols no window covers get zero. */
dfc_status ref_avg_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, dfc_pool2d_params p, dfc_tensor *dx,
                                   dfc_error *err)
{
    const char *op = "avg_pool2d_backward";
    int64_t Ho, Wo;
    DFC_TRY(dfc_pool_check_shapes(op, dx, "dx", dy, "dy", p, &Ho, &Wo, err));
    const int64_t N = dx->shape[0], C = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    const int64_t planes = N * C;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *dyp = dy->data + pl * Ho * Wo;
        float *dxp = dx->data + pl * H * W;
        memset(dxp, 0, (size_t)(H * W) * sizeof *dxp);
        for (int64_t i = 0; i < Ho; i++) {
            int64_t h0, h1;
            dfc_pool_window_range(i, p.stride_h, p.pad_h, p.kernel_h, H, &h0, &h1);
            for (int64_t j = 0; j < Wo; j++) {
                int64_t w0, w1;
                dfc_pool_window_range(j, p.stride_w, p.pad_w, p.kernel_w, W, &w0, &w1);
                const float g = (float)(dyp[i * Wo + j] / (double)((h1 - h0) * (w1 - w0)));
                for (int64_t h = h0; h < h1; h++)
                    for (int64_t w = w0; w < w1; w++)
                        dxp[h * W + w] += g;
            }
        }
    }
    return DFC_OK;
}

dfc_status ref_max_pool2d_forward(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                  dfc_error *err)
{
    const char *op = "max_pool2d";
    int64_t Ho, Wo;
    DFC_TRY(dfc_pool_check_shapes(op, x, "x", y, "y", p, &Ho, &Wo, err));
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t planes = N * C;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * H * W;
        float *yp = y->data + pl * Ho * Wo;
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++)
                yp[i * Wo + j] = xp[dfc_max_pool_argmax(xp, H, W, p, i, j)];
    }
    return DFC_OK;
}

dfc_status ref_max_pool2d_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_pool2d_params p,
                                   dfc_tensor *dx, dfc_error *err)
{
    const char *op = "max_pool2d_backward";
    int64_t Ho, Wo;
    DFC_TRY(dfc_pool_check_shapes(op, x, "x", dy, "dy", p, &Ho, &Wo, err));
    DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t planes = N * C;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * H * W;
        const float *dyp = dy->data + pl * Ho * Wo;
        float *dxp = dx->data + pl * H * W;
        memset(dxp, 0, (size_t)(H * W) * sizeof *dxp);
        for (int64_t i = 0; i < Ho; i++)
            for (int64_t j = 0; j < Wo; j++)
                dxp[dfc_max_pool_argmax(xp, H, W, p, i, j)] += dyp[i * Wo + j];
    }
    return DFC_OK;
}

/* ---- global average pool ---- */

dfc_status ref_global_avg_pool_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_global_pool_check_shapes("global_avg_pool", x, "x", y, "y", err));
    const int64_t planes = x->shape[0] * x->shape[1], hw = x->shape[2] * x->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * hw;
        double sum = 0.0;
        for (int64_t i = 0; i < hw; i++)
            sum += xp[i];
        y->data[pl] = (float)(sum / (double)hw);
    }
    return DFC_OK;
}

dfc_status ref_global_avg_pool_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_global_pool_check_shapes("global_avg_pool_backward", dx, "dx", dy, "dy", err));
    const int64_t planes = dx->shape[0] * dx->shape[1], hw = dx->shape[2] * dx->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float g = (float)((double)dy->data[pl] / (double)hw);
        float *dxp = dx->data + pl * hw;
        for (int64_t i = 0; i < hw; i++)
            dxp[i] = g;
    }
    return DFC_OK;
}

/* ---- bilinear resize, align_corners = False ---- */

dfc_status ref_resize_bilinear_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_resize_check_shapes("resize_bilinear", x, "x", y, "y", err));
    const int64_t H = x->shape[2], W = x->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    const int64_t planes = x->shape[0] * x->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * H * W;
        float *yp = y->data + pl * Ho * Wo;
        for (int64_t i = 0; i < Ho; i++) {
            const dfc_lerp_taps th = dfc_bilinear_taps(i, H, Ho);
            for (int64_t j = 0; j < Wo; j++) {
                const dfc_lerp_taps tw = dfc_bilinear_taps(j, W, Wo);
                const double v = th.w0 * (tw.w0 * xp[th.i0 * W + tw.i0] + tw.w1 * xp[th.i0 * W + tw.i1]) +
                                 th.w1 * (tw.w0 * xp[th.i1 * W + tw.i0] + tw.w1 * xp[th.i1 * W + tw.i1]);
                yp[i * Wo + j] = (float)v;
            }
        }
    }
    return DFC_OK;
}

dfc_status ref_resize_bilinear_backward(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_resize_check_shapes("resize_bilinear_backward", dx, "dx", dy, "dy", err));
    const int64_t H = dx->shape[2], W = dx->shape[3], Ho = dy->shape[2], Wo = dy->shape[3];
    const int64_t planes = dx->shape[0] * dx->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *dyp = dy->data + pl * Ho * Wo;
        float *dxp = dx->data + pl * H * W;
        memset(dxp, 0, (size_t)(H * W) * sizeof *dxp);
        for (int64_t i = 0; i < Ho; i++) {
            const dfc_lerp_taps th = dfc_bilinear_taps(i, H, Ho);
            for (int64_t j = 0; j < Wo; j++) {
                const dfc_lerp_taps tw = dfc_bilinear_taps(j, W, Wo);
                const double g = dyp[i * Wo + j];
                dxp[th.i0 * W + tw.i0] += (float)(g * th.w0 * tw.w0);
                dxp[th.i0 * W + tw.i1] += (float)(g * th.w0 * tw.w1);
                dxp[th.i1 * W + tw.i0] += (float)(g * th.w1 * tw.w0);
                dxp[th.i1 * W + tw.i1] += (float)(g * th.w1 * tw.w1);
            }
        }
    }
    return DFC_OK;
}

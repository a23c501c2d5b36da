/* Fast CPU activations: the same formulas as the reference kernels, with a vectorised exp (fast_math.h) in place of
 * libm's scalar expf, which dominated SiLU. Softmax over a non-last axis likewise. */
#include "activation_check.h"
#include "cpu.h"
#include "fast_math.h"
#include "ref.h"
#include "softmax_row.h"

DFC_VECTOR_CLONES
dfc_status cpu_activation_forward(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                  dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, y, "y", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data;
    float *ys = y->data;
    switch (kind) {
    case DFC_ACT_RELU:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            ys[i] = xs[i] > 0.0f ? xs[i] : 0.0f;
        break;
    case DFC_ACT_SILU:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            ys[i] = xs[i] * dfc_sigmoidf(xs[i]);
        break;
    case DFC_ACT_SIGMOID:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            ys[i] = dfc_sigmoidf(xs[i]);
        break;
    }
    return DFC_OK;
}

DFC_VECTOR_CLONES
dfc_status cpu_activation_backward(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                   dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, dy, "dy", err));
    DFC_TRY(dfc_activation_check(kind, x, dx, "dx", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
    switch (kind) {
    case DFC_ACT_RELU:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++)
            dxs[i] = xs[i] > 0.0f ? dys[i] : 0.0f;
        break;
    case DFC_ACT_SILU:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float s = dfc_sigmoidf(xs[i]);
            dxs[i] = dys[i] * s * (1.0f + xs[i] * (1.0f - s));
        }
        break;
    case DFC_ACT_SIGMOID:
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
        for (int64_t i = 0; i < n; i++) {
            float s = dfc_sigmoidf(xs[i]);
            dxs[i] = dys[i] * s * (1.0f - s);
        }
        break;
    }
    return DFC_OK;
}

/* ---- softmax over a non-last axis ---- */

/* The reference walks one position down the axis at a time (a stride of `inner` floats); here a work item is TILE
 * consecutive positions, so each step along the axis reads TILE contiguous floats and the exps vectorise. The
 * last axis (contiguous rows) keeps the reference kernel. */
#define SOFTMAX_TILE 64

DFC_VECTOR_CLONES
dfc_status cpu_softmax_forward(dfc_backend *be, const dfc_tensor *x, int axis, dfc_tensor *y, dfc_error *err)
{
    dfc_softmax_axis s;
    DFC_TRY(dfc_softmax_layout("softmax", x, axis, &s, err));
    if (s.inner == 1)
        return ref_softmax_forward(be, x, axis, y, err);
    DFC_TRY(dfc_check_same_shape(x, y, "softmax", "x", "y", err));
    const int64_t k = s.k, inner = s.inner, tiles = (inner + SOFTMAX_TILE - 1) / SOFTMAX_TILE;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t item = 0; item < s.outer * tiles; item++) {
        const int64_t q0 = (item % tiles) * SOFTMAX_TILE, width = inner - q0 < SOFTMAX_TILE ? inner - q0 : SOFTMAX_TILE;
        const float *xs = x->data + (item / tiles) * k * inner + q0;
        float *ys = y->data + (item / tiles) * k * inner + q0;
        float max[SOFTMAX_TILE];
        double sum[SOFTMAX_TILE];
        for (int64_t q = 0; q < width; q++) {
            max[q] = xs[q];
            sum[q] = 0.0;
        }
        for (int64_t j = 1; j < k; j++)
            for (int64_t q = 0; q < width; q++)
                max[q] = xs[j * inner + q] > max[q] ? xs[j * inner + q] : max[q];
        for (int64_t j = 0; j < k; j++)
#pragma omp simd
            for (int64_t q = 0; q < width; q++) {
                const float e = dfc_expf_nonpositive(xs[j * inner + q] - max[q]);
                ys[j * inner + q] = e;
                sum[q] += e;
            }
        float inv[SOFTMAX_TILE];
        for (int64_t q = 0; q < width; q++)
            inv[q] = (float)(1.0 / sum[q]);
        for (int64_t j = 0; j < k; j++)
            for (int64_t q = 0; q < width; q++)
                ys[j * inner + q] *= inv[q];
    }
    return DFC_OK;
}

DFC_VECTOR_CLONES
dfc_status cpu_softmax_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *y, int axis, dfc_tensor *dx,
                                dfc_error *err)
{
    const char *op = "softmax_backward";
    dfc_softmax_axis s;
    DFC_TRY(dfc_softmax_layout(op, y, axis, &s, err));
    if (s.inner == 1)
        return ref_softmax_backward(be, dy, y, axis, dx, err);
    DFC_TRY(dfc_check_same_shape(y, dy, op, "y", "dy", err));
    DFC_TRY(dfc_check_same_shape(y, dx, op, "y", "dx", err));
    const int64_t k = s.k, inner = s.inner, tiles = (inner + SOFTMAX_TILE - 1) / SOFTMAX_TILE;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t item = 0; item < s.outer * tiles; item++) {
        const int64_t q0 = (item % tiles) * SOFTMAX_TILE, width = inner - q0 < SOFTMAX_TILE ? inner - q0 : SOFTMAX_TILE;
        const int64_t base = (item / tiles) * k * inner + q0;
        const float *ys = y->data + base, *dys = dy->data + base;
        float *dxs = dx->data + base;
        double dot[SOFTMAX_TILE];
        for (int64_t q = 0; q < width; q++)
            dot[q] = 0.0;
        for (int64_t j = 0; j < k; j++)
            for (int64_t q = 0; q < width; q++)
                dot[q] += (double)dys[j * inner + q] * ys[j * inner + q];
        for (int64_t j = 0; j < k; j++)
            for (int64_t q = 0; q < width; q++)
                dxs[j * inner + q] = (float)(ys[j * inner + q] * (dys[j * inner + q] - dot[q]));
    }
    return DFC_OK;
}

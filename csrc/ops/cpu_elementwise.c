/* Fast CPU activations: the same formulas as the reference kernels, with a vectorised exp (fast_math.h) in place of
 * libm's scalar expf, which dominated SiLU. */
#include "activation_check.h"
#include "cpu.h"
#include "fast_math.h"

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

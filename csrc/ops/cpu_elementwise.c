/* Fast CPU activations: the same formulas as the reference kernels, with a vectorised exp (fast_math.h) in place of
 * libm's scalar expf, which dominated SiLU. */
#include "cpu.h"
#include "fast_math.h"

static dfc_status check_activation(dfc_activation kind, const dfc_tensor *x, const dfc_tensor *other,
                                   const char *other_name, dfc_error *err)
{
    if (kind != DFC_ACT_RELU && kind != DFC_ACT_SILU && kind != DFC_ACT_SIGMOID)
        return dfc_fail(err, DFC_ERR_VALUE, "activation: unknown kind %d", (int)kind);
    const char *op = kind == DFC_ACT_RELU ? "relu" : kind == DFC_ACT_SILU ? "silu" : "sigmoid";
    return dfc_check_same_shape(x, other, op, "x", other_name, err);
}

DFC_VECTOR_CLONES
dfc_status cpu_activation_forward(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                  dfc_error *err)
{
    DFC_TRY(check_activation(kind, x, y, "y", err));
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
    DFC_TRY(check_activation(kind, x, dy, "dy", err));
    DFC_TRY(check_activation(kind, x, dx, "dx", err));
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

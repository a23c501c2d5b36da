/* Elementwise ops on the CUDA backend: activations, fill, scale and the per-row scale/axpy. Read against
 * ref_elementwise.c, ref_net.c, ref_optim.c and ref_diffusion.c: the same checks, one index per element. */
#include "cuda_backend.cuh"

extern "C" {
#include "../ops/activation_check.h"
}

dfc_status cuda_activation_forward(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                   dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, y, "y", err));
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(x), dfc_activation_name(kind), err, [=] DFC_DEVICE(int64_t i) {
        float v = xs[i];
        ys[i] = kind == DFC_ACT_RELU   ? (v > 0.0f ? v : 0.0f)
                : kind == DFC_ACT_SILU ? v * dfc_sigmoid_stable(v)
                                       : dfc_sigmoid_stable(v);
    });
}

/* relu' = 1[x > 0]; silu' = s (1 + x (1 - s)); sigmoid' = s (1 - s), with s = sigmoid(x). */
dfc_status cuda_activation_backward(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                    dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, dy, "dy", err));
    DFC_TRY(dfc_activation_check(kind, x, dx, "dx", err));
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, dfc_numel(x), dfc_activation_name(kind), err, [=] DFC_DEVICE(int64_t i) {
        float v = xs[i];
        if (kind == DFC_ACT_RELU) {
            dxs[i] = v > 0.0f ? dys[i] : 0.0f;
        } else {
            float s = dfc_sigmoid_stable(v);
            dxs[i] = kind == DFC_ACT_SILU ? dys[i] * s * (1.0f + v * (1.0f - s)) : dys[i] * s * (1.0f - s);
        }
    });
}

dfc_status cuda_fill(dfc_backend *be, float value, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(y, "fill", "y", 1, DFC_MAX_DIMS, err));
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(y), "fill", err, [=] DFC_DEVICE(int64_t i) { ys[i] = value; });
}

dfc_status cuda_scale(dfc_backend *be, dfc_tensor *x, float factor, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, "scale", "x", 1, DFC_MAX_DIMS, err));
    float *xs = x->data;
    return dfc_cuda_for_each(be, dfc_numel(x), "scale", err, [=] DFC_DEVICE(int64_t i) { xs[i] *= factor; });
}

/* y = alpha[b] x, or y += alpha[b] x when accumulate; alpha is a host vector of N entries, staged in. */
static dfc_status row_linear(dfc_backend *be, const char *op, const float *alpha, const dfc_tensor *x, dfc_tensor *y,
                             int accumulate, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    if (!alpha)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: the per-row array alpha is missing", op);
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1);
    const void *pieces[1] = {alpha};
    const size_t sizes[1] = {(size_t)n * sizeof(float)};
    void *staged[1];
    DFC_TRY(dfc_cuda_stage_host(be, 1, pieces, sizes, staged, 0, NULL, err));
    const float *a = (const float *)staged[0], *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, n * m, op, err, [=] DFC_DEVICE(int64_t i) {
        float v = a[i / m];
        ys[i] = accumulate ? ys[i] + v * xs[i] : xs[i] * v;
    });
}

dfc_status cuda_row_scale(dfc_backend *be, const dfc_tensor *x, const float *alpha, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_scale", alpha, x, y, 0, err);
}

dfc_status cuda_row_axpy(dfc_backend *be, const float *alpha, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_axpy", alpha, x, y, 1, err);
}

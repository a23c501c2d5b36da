/* Reference elementwise kernels: activations, softmax, broadcast add/mul, channel concat/split. */
#include <math.h>

#include "ref.h"

static const char *activation_name(dfc_activation kind)
{
    switch (kind) {
    case DFC_ACT_RELU: return "relu";
    case DFC_ACT_SILU: return "silu";
    case DFC_ACT_SIGMOID: return "sigmoid";
    }
    return "activation";
}

static dfc_status check_activation(dfc_activation kind, dfc_error *err)
{
    if (kind != DFC_ACT_RELU && kind != DFC_ACT_SILU && kind != DFC_ACT_SIGMOID)
        return dfc_fail(err, DFC_ERR_VALUE, "activation: unknown kind %d", (int)kind);
    return DFC_OK;
}

/* Stable for large |x|: exp of a non-positive argument only. */
static inline float sigmoidf(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

dfc_status ref_activation_forward(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                  dfc_error *err)
{
    const char *op = activation_name(kind);
    DFC_TRY(check_activation(kind, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data;
    float *ys = y->data;
    #pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = xs[i];
        switch (kind) {
        case DFC_ACT_RELU: ys[i] = v > 0.0f ? v : 0.0f; break;
        case DFC_ACT_SILU: ys[i] = v * sigmoidf(v); break;
        case DFC_ACT_SIGMOID: ys[i] = sigmoidf(v); break;
        }
    }
    return DFC_OK;
}

/* relu' = 1[x > 0]; silu' = s (1 + x (1 - s)); sigmoid' = s (1 - s), with s = sigmoid(x). */
dfc_status ref_activation_backward(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                   dfc_tensor *dx, dfc_error *err)
{
    const char *op = activation_name(kind);
    DFC_TRY(check_activation(kind, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
    #pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = xs[i], s;
        switch (kind) {
        case DFC_ACT_RELU: dxs[i] = v > 0.0f ? dys[i] : 0.0f; break;
        case DFC_ACT_SILU: s = sigmoidf(v); dxs[i] = dys[i] * s * (1.0f + v * (1.0f - s)); break;
        case DFC_ACT_SIGMOID: s = sigmoidf(v); dxs[i] = dys[i] * s * (1.0f - s); break;
        }
    }
    return DFC_OK;
}

dfc_status ref_softmax_forward(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "softmax_forward: not implemented on the ref backend");
}

dfc_status ref_softmax_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *y, dfc_tensor *dx, dfc_error *err)
{
    (void)be;
    (void)dy;
    (void)y;
    (void)dx;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "softmax_backward: not implemented on the ref backend");
}

dfc_status ref_binary_forward(dfc_backend *be, dfc_binary kind, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)kind;
    (void)a;
    (void)b;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "binary_forward: not implemented on the ref backend");
}

dfc_status ref_binary_backward(dfc_backend *be, dfc_binary kind, const dfc_tensor *dy, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    (void)be;
    (void)kind;
    (void)dy;
    (void)a;
    (void)b;
    (void)da;
    (void)db;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "binary_backward: not implemented on the ref backend");
}

dfc_status ref_concat_channels(dfc_backend *be, const dfc_tensor *const *xs, int n, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    (void)xs;
    (void)n;
    (void)y;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "concat_channels: not implemented on the ref backend");
}

dfc_status ref_split_channels(dfc_backend *be, const dfc_tensor *x, dfc_tensor *const *ys, int n, dfc_error *err)
{
    (void)be;
    (void)x;
    (void)ys;
    (void)n;
    (void)err;
    return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "split_channels: not implemented on the ref backend");
}

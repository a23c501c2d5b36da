/* Reference elementwise kernels: activations, softmax, broadcast add/mul, channel concat/split. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "activation_check.h"
#include "norm_check.h"
#include "ref.h"
#include "softmax_row.h"
#include "spatial_check.h"


dfc_status ref_activation_forward(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                  dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, y, "y", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data;
    float *ys = y->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = xs[i];
        switch (kind) {
        case DFC_ACT_RELU: ys[i] = v > 0.0f ? v : 0.0f; break;
        case DFC_ACT_SILU: ys[i] = v * dfc_sigmoid_stable(v); break;
        case DFC_ACT_SIGMOID: ys[i] = dfc_sigmoid_stable(v); break;
        }
    }
    return DFC_OK;
}

/* relu' = 1[x > 0]; silu' = s (1 + x (1 - s)); sigmoid' = s (1 - s), with s = sigmoid(x). */
dfc_status ref_activation_backward(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                   dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_activation_check(kind, x, dy, "dy", err));
    DFC_TRY(dfc_activation_check(kind, x, dx, "dx", err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = xs[i], s;
        switch (kind) {
        case DFC_ACT_RELU: dxs[i] = v > 0.0f ? dys[i] : 0.0f; break;
        case DFC_ACT_SILU:
            s = dfc_sigmoid_stable(v);
            dxs[i] = dys[i] * s * (1.0f + v * (1.0f - s));
            break;
        case DFC_ACT_SIGMOID:
            s = dfc_sigmoid_stable(v);
            dxs[i] = dys[i] * s * (1.0f - s);
            break;
        }
    }
    return DFC_OK;
}

/* ---- softmax over one axis ---- */

dfc_status ref_softmax_forward(dfc_backend *be, const dfc_tensor *x, int axis, dfc_tensor *y, dfc_error *err)
{
    const char *op = "softmax";
    dfc_softmax_axis s;
    DFC_TRY(dfc_softmax_layout(op, x, axis, &s, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t k = s.k, inner = s.inner;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < s.outer * inner; r++) {
        const int64_t base = (r / inner) * k * inner + r % inner;
        const float *xr = x->data + base;
        float *yr = y->data + base;
        if (inner == 1) { /* a contiguous row */
            float max;
            const double sum = dfc_row_sum_exp(xr, k, &max);
            for (int64_t j = 0; j < k; j++)
                yr[j] = (float)(exp((double)xr[j] - max) / sum);
            continue;
        }
        dfc_softmax_strided_row(xr, yr, k, inner);
    }
    return DFC_OK;
}

/* dx = y (dy - sum_j dy_j y_j), along the axis. */
dfc_status ref_softmax_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *y, int axis, dfc_tensor *dx,
                                dfc_error *err)
{
    const char *op = "softmax_backward";
    dfc_softmax_axis s;
    DFC_TRY(dfc_softmax_layout(op, y, axis, &s, err));
    DFC_TRY(dfc_check_same_shape(y, dy, op, "y", "dy", err));
    DFC_TRY(dfc_check_same_shape(y, dx, op, "y", "dx", err));
    const int64_t k = s.k, inner = s.inner;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < s.outer * inner; r++) {
        const int64_t base = (r / inner) * k * inner + r % inner;
        const float *yr = y->data + base, *dyr = dy->data + base;
        float *dxr = dx->data + base;
        double dot = 0.0;
        for (int64_t j = 0; j < k; j++)
            dot += (double)dyr[j * inner] * yr[j * inner];
        for (int64_t j = 0; j < k; j++)
            dxr[j * inner] = (float)(yr[j * inner] * (dyr[j * inner] - dot));
    }
    return DFC_OK;
}

/* ---- broadcast add / mul ---- */

/* Start of b's row for row r (dims 0..2) of a. */
static inline const float *b_row(const dfc_broadcast_dims *bd, const float *b, int64_t r)
{
    const int64_t *sh = bd->a, *bs = bd->b_stride;
    const int64_t i0 = r / (sh[1] * sh[2]), i1 = (r / sh[2]) % sh[1], i2 = r % sh[2];
    return b + i0 * bs[0] + i1 * bs[1] + i2 * bs[2];
}

dfc_status ref_binary_forward(dfc_backend *be, dfc_binary kind, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y,
                              dfc_error *err)
{
    const char *op = dfc_binary_name(kind);
    dfc_broadcast_dims bd;
    DFC_TRY(dfc_binary_check_kind(kind, err));
    DFC_TRY(dfc_binary_check_broadcast(op, a, b, &bd, err));
    DFC_TRY(dfc_check_same_shape(a, y, op, "a", "y", err));
    const int64_t rows = bd.a[0] * bd.a[1] * bd.a[2], cols = bd.a[3], step = bd.b_stride[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *ar = a->data + r * cols, *br = b_row(&bd, b->data, r);
        float *yr = y->data + r * cols;
        for (int64_t j = 0; j < cols; j++) {
            const float bv = br[j * step];
            yr[j] = kind == DFC_BINARY_ADD ? ar[j] + bv : ar[j] * bv;
        }
    }
    return DFC_OK;
}

/* add: da = dy, db = sum dy;  mul: da = dy b, db = sum dy a; sums over b's broadcast dims, in double.
 * db is computed first (from dy), so da may alias dy. */
dfc_status ref_binary_backward(dfc_backend *be, dfc_binary kind, const dfc_tensor *dy, const dfc_tensor *a,
                               const dfc_tensor *b, dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    char op[32];
    snprintf(op, sizeof op, "%s_backward", dfc_binary_name(kind));
    dfc_broadcast_dims bd;
    DFC_TRY(dfc_binary_check_kind(kind, err));
    DFC_TRY(dfc_binary_check_broadcast(op, a, b, &bd, err));
    DFC_TRY(dfc_check_same_shape(a, dy, op, "a", "dy", err));
    if (da && da->data)
        DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    if (db && db->data)
        DFC_TRY(dfc_check_same_shape(b, db, op, "b", "db", err));
    const int64_t *sh = bd.a, *bsh = bd.b;
    if (db && db->data) {
        /* For each element of b, sum over the a-indices that map to it: dims where b is 1 but a is not. */
        const int64_t as[DFC_MAX_DIMS] = {sh[1] * sh[2] * sh[3], sh[2] * sh[3], sh[3], 1}; /* a's strides */
        int64_t rep[DFC_MAX_DIMS];
        for (int d = 0; d < DFC_MAX_DIMS; d++)
            rep[d] = bsh[d] == 1 ? sh[d] : 1;
        const int64_t nb = dfc_numel(b);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t e = 0; e < nb; e++) {
            const int64_t j0 = e / (bsh[1] * bsh[2] * bsh[3]), j1 = (e / (bsh[2] * bsh[3])) % bsh[1];
            const int64_t j2 = (e / bsh[3]) % bsh[2], j3 = e % bsh[3];
            const int64_t base = j0 * as[0] + j1 * as[1] + j2 * as[2] + j3 * as[3];
            double sum = 0.0;
            for (int64_t k0 = 0; k0 < rep[0]; k0++)
                for (int64_t k1 = 0; k1 < rep[1]; k1++)
                    for (int64_t k2 = 0; k2 < rep[2]; k2++)
                        for (int64_t k3 = 0; k3 < rep[3]; k3++) {
                            const int64_t i = base + k0 * as[0] + k1 * as[1] + k2 * as[2] + k3 * as[3];
                            sum += kind == DFC_BINARY_ADD ? (double)dy->data[i] : (double)dy->data[i] * a->data[i];
                        }
            db->data[e] = (float)sum;
        }
    }
    if (da && da->data) {
        const int64_t rows = sh[0] * sh[1] * sh[2], cols = sh[3], step = bd.b_stride[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *dyr = dy->data + r * cols, *br = b_row(&bd, b->data, r);
            float *dar = da->data + r * cols;
            for (int64_t j = 0; j < cols; j++)
                dar[j] = kind == DFC_BINARY_ADD ? dyr[j] : dyr[j] * br[j * step];
        }
    }
    return DFC_OK;
}

/* ---- channel concat / split ---- */

dfc_status ref_concat_channels(dfc_backend *be, const dfc_tensor *const *xs, int n, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_channel_parts_check("concat", "xs", "y", y, xs, n, err));
    const int64_t batch = y->shape[0], inner = dfc_inner_size(y, 2), y_sample = y->shape[1] * inner;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t s = 0; s < batch; s++) {
        int64_t offset = 0;
        for (int k = 0; k < n; k++) {
            const int64_t len = xs[k]->shape[1] * inner;
            memcpy(y->data + s * y_sample + offset, xs[k]->data + s * len, (size_t)len * sizeof(float));
            offset += len;
        }
    }
    return DFC_OK;
}

dfc_status ref_split_channels(dfc_backend *be, const dfc_tensor *x, dfc_tensor *const *ys, int n, dfc_error *err)
{
    DFC_TRY(dfc_channel_parts_check("split", "ys", "x", x, (const dfc_tensor *const *)ys, n, err));
    const int64_t batch = x->shape[0], inner = dfc_inner_size(x, 2), x_sample = x->shape[1] * inner;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t s = 0; s < batch; s++) {
        int64_t offset = 0;
        for (int k = 0; k < n; k++) {
            const int64_t len = ys[k]->shape[1] * inner;
            memcpy(ys[k]->data + s * len, x->data + s * x_sample + offset, (size_t)len * sizeof(float));
            offset += len;
        }
    }
    return DFC_OK;
}

/* The argument checks of the norm-family ops (norm_check.h): one definition for every backend. Compiled into _C and
 * into the CUDA plugin (build_tools/cuda_build.py PLUGIN_C_SOURCES), so it needs only csrc/core. */
#include <math.h>

#include "norm_check.h"

/* ---- group norm, batch norm ---- */

dfc_status dfc_group_norm_check(const char *op, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 2, DFC_MAX_DIMS, err));
    const int64_t n = x->shape[0], c = x->shape[1];
    if (groups <= 0 || c % groups != 0)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: groups (%d) must be positive and divide the channel count C (%lld)",
                        op, groups, (long long)c);
    if (!(eps >= 0.0f) || !isfinite(eps))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: eps must be finite and >= 0, got %g", op, (double)eps);
    if (dfc_present(gamma))
        DFC_TRY(dfc_check_shape(gamma, op, "gamma", 1, &c, err));
    if (dfc_present(beta))
        DFC_TRY(dfc_check_shape(beta, op, "beta", 1, &c, err));
    if (dfc_present(mean) != dfc_present(rstd))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: mean and rstd must be given together (got only %s)", op,
                        dfc_present(mean) ? "mean" : "rstd");
    const int64_t stats_shape[2] = {n, groups};
    if (dfc_present(mean)) {
        DFC_TRY(dfc_check_shape(mean, op, "mean", 2, stats_shape, err));
        DFC_TRY(dfc_check_shape(rstd, op, "rstd", 2, stats_shape, err));
    }
    return DFC_OK;
}

dfc_status dfc_group_norm_act_check(const char *op, const dfc_tensor *x, const dfc_tensor *add, const dfc_tensor *gamma,
                                    const dfc_tensor *beta, const dfc_tensor *ss, int groups, float eps, int x_nhwc,
                                    int y_nhwc, const dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    DFC_TRY(dfc_group_norm_check(op, x, gamma, beta, NULL, NULL, groups, eps, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t nc[2] = {x->shape[0], x->shape[1]};
    if (dfc_present(add))
        DFC_TRY(dfc_check_shape(add, op, "add", 2, nc, err));
    if (dfc_present(ss))
        DFC_TRY(dfc_scale_shift_check(op, x, ss, err));
    if ((x_nhwc != 0 && x_nhwc != 1) || (y_nhwc != 0 && y_nhwc != 1))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: x_nhwc and y_nhwc must be 0 or 1, got %d and %d", op, x_nhwc, y_nhwc);
    return DFC_OK;
}

dfc_status dfc_norm_grads_check(const char *op, const dfc_tensor *x, const dfc_tensor *dx, const dfc_tensor *dgamma,
                                const dfc_tensor *dbeta, dfc_error *err)
{
    const int64_t c = x->shape[1];
    if (dfc_present(dx))
        DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    if (dfc_present(dgamma))
        DFC_TRY(dfc_check_shape(dgamma, op, "dgamma", 1, &c, err));
    if (dfc_present(dbeta))
        DFC_TRY(dfc_check_shape(dbeta, op, "dbeta", 1, &c, err));
    return DFC_OK;
}

dfc_status dfc_batch_norm_check_shapes(const char *op, const dfc_tensor *x, const dfc_tensor *gamma,
                                       const dfc_tensor *beta, const dfc_tensor *running_mean,
                                       const dfc_tensor *running_var, float eps, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 2, DFC_MAX_DIMS, err));
    const int64_t c = x->shape[1];
    DFC_TRY(dfc_check_shape(running_mean, op, "running_mean", 1, &c, err));
    DFC_TRY(dfc_check_shape(running_var, op, "running_var", 1, &c, err));
    if (dfc_present(gamma))
        DFC_TRY(dfc_check_shape(gamma, op, "gamma", 1, &c, err));
    if (dfc_present(beta))
        DFC_TRY(dfc_check_shape(beta, op, "beta", 1, &c, err));
    if (!(eps >= 0.0f) || !isfinite(eps))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: eps must be finite and >= 0, got %g", op, (double)eps);
    return DFC_OK;
}

dfc_status dfc_batch_norm_check_var(const char *op, const float *running_var, int64_t c, float eps, dfc_error *err)
{
    for (int64_t ch = 0; ch < c; ch++) {
        if (!((double)running_var[ch] + eps > 0.0))
            return dfc_fail(err, DFC_ERR_VALUE, "%s: running_var[%lld] + eps = %g must be positive", op, (long long)ch,
                            (double)running_var[ch] + eps);
    }
    return DFC_OK;
}

/* ---- scale-shift ---- */

dfc_status dfc_scale_shift_check(const char *op, const dfc_tensor *x, const dfc_tensor *ss, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 2, DFC_MAX_DIMS, err));
    const int64_t want[2] = {x->shape[0], 2 * x->shape[1]};
    return dfc_check_shape(ss, op, "ss", 2, want, err);
}

/* ---- broadcast add / mul ---- */

const char *dfc_binary_name(dfc_binary kind)
{
    return kind == DFC_BINARY_ADD ? "add" : kind == DFC_BINARY_MUL ? "mul" : "binary";
}

dfc_status dfc_binary_check_broadcast(const char *op, const dfc_tensor *a, const dfc_tensor *b, dfc_broadcast_dims *bd,
                                      dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_ndim(b, op, "b", 1, DFC_MAX_DIMS, err));
    int ok = a->ndim == b->ndim;
    for (int d = 0; ok && d < a->ndim; d++)
        ok = b->shape[d] == 1 || b->shape[d] == a->shape[d];
    if (!ok) {
        char sa[96], sb[96];
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: b with shape %s cannot be broadcast to a's shape %s (b needs a's number of dimensions, "
                        "each 1 or equal to a's)",
                        op, dfc_shape_str(b, sb, sizeof sb), dfc_shape_str(a, sa, sizeof sa));
    }
    const int lead = DFC_MAX_DIMS - a->ndim;
    for (int d = 0; d < DFC_MAX_DIMS; d++) {
        bd->a[d] = d < lead ? 1 : a->shape[d - lead];
        bd->b[d] = d < lead ? 1 : b->shape[d - lead];
    }
    int64_t stride = 1;
    for (int d = DFC_MAX_DIMS - 1; d >= 0; d--) {
        bd->b_stride[d] = bd->b[d] == 1 ? 0 : stride;
        stride *= bd->b[d];
    }
    return DFC_OK;
}

dfc_status dfc_binary_check_kind(dfc_binary kind, dfc_error *err)
{
    if (kind != DFC_BINARY_ADD && kind != DFC_BINARY_MUL)
        return dfc_fail(err, DFC_ERR_VALUE, "binary: unknown kind %d", (int)kind);
    return DFC_OK;
}

/* ---- timestep embedding ---- */

dfc_status dfc_timestep_embedding_check(const char *op, const dfc_tensor *t, float max_period, const dfc_tensor *y,
                                        dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(t, op, "t", 1, 1, err));
    DFC_TRY(dfc_check_ndim(y, op, "y", 2, 2, err));
    if (y->shape[0] != t->shape[0]) {
        char a[96], b[96];
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: y has shape %s but t has shape %s; y must be (N, dim)", op,
                        dfc_shape_str(y, a, sizeof a), dfc_shape_str(t, b, sizeof b));
    }
    if (!(max_period > 1.0f) || !isfinite(max_period))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: max_period must be a finite number > 1, got %g", op,
                        (double)max_period);
    if (y->shape[1] < 2) /* guided-diffusion gives (N, 0) for dim 1 */
        return dfc_fail(err, DFC_ERR_VALUE, "%s: dim must be at least 2, got %lld", op, (long long)y->shape[1]);
    return DFC_OK;
}

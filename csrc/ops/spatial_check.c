/* The spatial ops' argument checks (spatial_check.h), in a file of their own so the CUDA plugin links them without
 * the reference kernels. */
#include "spatial_check.h"

dfc_status dfc_channel_parts_check(const char *op, const char *part_name, const char *whole_name,
                                   const dfc_tensor *whole, const dfc_tensor *const *parts, int n, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(whole, op, whole_name, 2, DFC_MAX_DIMS, err));
    if (n < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: needs at least one tensor in %s, got %d", op, part_name, n);
    int64_t channels = 0;
    for (int k = 0; k < n; k++) {
        const dfc_tensor *t = parts[k];
        if (!t || !t->data)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: %s[%d] is missing", op, part_name, k);
        int ok = t->ndim == whole->ndim;
        for (int d = 0; ok && d < whole->ndim; d++)
            ok = d == 1 || t->shape[d] == whole->shape[d];
        if (!ok) {
            char st[96], sw[96];
            return dfc_fail(err, DFC_ERR_SHAPE,
                            "%s: %s[%d] has shape %s, which differs from %s's shape %s outside the channel dim 1", op,
                            part_name, k, dfc_shape_str(t, st, sizeof st), whole_name,
                            dfc_shape_str(whole, sw, sizeof sw));
        }
        channels += t->shape[1];
    }
    if (channels != whole->shape[1])
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: the channels of %s add up to %lld, but %s has %lld", op, part_name,
                        (long long)channels, whole_name, (long long)whole->shape[1]);
    return DFC_OK;
}

dfc_status dfc_upsample2x_check_shapes(const char *op, const dfc_tensor *small, const char *small_name,
                                       const dfc_tensor *big, const char *big_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(small, op, small_name, 4, 4, err));
    const int64_t want[4] = {small->shape[0], small->shape[1], 2 * small->shape[2], 2 * small->shape[3]};
    return dfc_check_shape(big, op, big_name, 4, want, err);
}

/* Checks kernel/stride/padding against PyTorch's rules and gives the floor-mode output size. */
static dfc_status pool_output_size(const char *op, const dfc_tensor *x, dfc_pool2d_params p, int64_t *ho, int64_t *wo,
                                   dfc_error *err)
{
    if (p.kernel_h < 1 || p.kernel_w < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: kernel must be positive, got %dx%d", op, p.kernel_h, p.kernel_w);
    if (p.stride_h < 1 || p.stride_w < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: stride must be positive, got %dx%d", op, p.stride_h, p.stride_w);
    if (p.pad_h < 0 || p.pad_w < 0 || p.pad_h > p.kernel_h / 2 || p.pad_w > p.kernel_w / 2) /* no 2 * pad overflow */
        return dfc_fail(err, DFC_ERR_VALUE, "%s: padding %dx%d must be between 0 and half the kernel %dx%d", op,
                        p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
    const int64_t H = x->shape[2], W = x->shape[3];
    if (H + 2 * p.pad_h < p.kernel_h || W + 2 * p.pad_w < p.kernel_w)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: input %lldx%lld (padded by %dx%d) is smaller than the kernel %dx%d",
                        op, (long long)H, (long long)W, p.pad_h, p.pad_w, p.kernel_h, p.kernel_w);
    *ho = (H + 2 * p.pad_h - p.kernel_h) / p.stride_h + 1;
    *wo = (W + 2 * p.pad_w - p.kernel_w) / p.stride_w + 1;
    return DFC_OK;
}

dfc_status dfc_pool_check_shapes(const char *op, const dfc_tensor *in, const char *in_name, const dfc_tensor *out,
                                 const char *out_name, dfc_pool2d_params p, int64_t *Ho, int64_t *Wo, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(in, op, in_name, 4, 4, err));
    DFC_TRY(pool_output_size(op, in, p, Ho, Wo, err));
    const int64_t want[4] = {in->shape[0], in->shape[1], *Ho, *Wo};
    return dfc_check_shape(out, op, out_name, 4, want, err);
}

dfc_status dfc_global_pool_check_shapes(const char *op, const dfc_tensor *full, const char *full_name,
                                        const dfc_tensor *pooled, const char *pooled_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(full, op, full_name, 4, 4, err));
    const int64_t want[2] = {full->shape[0], full->shape[1]};
    return dfc_check_shape(pooled, op, pooled_name, 2, want, err);
}

dfc_status dfc_resize_check_shapes(const char *op, const dfc_tensor *in, const char *in_name, const dfc_tensor *out,
                                   const char *out_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(in, op, in_name, 4, 4, err));
    DFC_TRY(dfc_check_ndim(out, op, out_name, 4, 4, err));
    if (out->shape[0] != in->shape[0] || out->shape[1] != in->shape[1]) {
        char a[96], b[96];
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s has shape %s and %s has shape %s; batch and channels must agree",
                        op, in_name, dfc_shape_str(in, a, sizeof a), out_name, dfc_shape_str(out, b, sizeof b));
    }
    return DFC_OK;
}

/* The losses on the CUDA backend: cross-entropy, mean squared error (ref_loss.c), the logit loss, BCE with logits and
 * the normalised feature distance (ref_net.c). The same checks and operation order as those reference kernels,
 * double accumulation where they accumulate in double; sums over a whole row in two passes (rows.cuh); int64
 * targets staged from the host.
 *
 * Verified only on a GPU: the launches (grid-stride, sizes), the staging copies, and the device math library's
 * exp/log/log1p (the emulation uses the host libm; CUDA's are within 1-2 ulp). */
#include "rows.cuh"

extern "C" {
#include "../ops/net_ops.h"
}

/* Targets into scratch, with extra_bytes of scratch of one's own after them (extra: NULL when none is wanted). */
static dfc_status stage_targets(dfc_backend *be, const int64_t *targets, int64_t n, const int64_t **staged_targets,
                                size_t extra_bytes, void **extra, dfc_error *err)
{
    const void *pieces[1] = {targets};
    const size_t sizes[1] = {(size_t)n * sizeof(int64_t)};
    void *staged[1];
    DFC_TRY(dfc_cuda_stage_host(be, 1, pieces, sizes, staged, extra_bytes, extra, err));
    *staged_targets = (const int64_t *)staged[0];
    return DFC_OK;
}

/* ---- cross-entropy ---- */

/* loss[n] = logsumexp(logits[n]) - logits[n, target[n]]; one logit: -log sigmoid(l_y). One index per row. */
dfc_status cuda_cross_entropy_forward(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets,
                                      dfc_tensor *loss, dfc_error *err)
{
    const char *op = "cross_entropy";
    DFC_TRY(dfc_check_class_loss(op, logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
    const int64_t *ys;
    DFC_TRY(stage_targets(be, targets, n, &ys, 0, NULL, err));
    const float *zs = logits->data;
    float *out = loss->data;
    return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t i) {
        const float *row = zs + i * k;
        if (k == 1) {
            out[i] = (float)dfc_neg_log_sigmoid(dfc_target_logit(row, k, ys[i]));
        } else {
            float max;
            const double sum = dfc_row_sum_exp(row, k, &max);
            out[i] = (float)((max + log(sum)) - row[ys[i]]);
        }
    });
}

/* Each row's log-sum-exp (one index per row, into scratch), then one index per logit. */
dfc_status cuda_cross_entropy_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                       const int64_t *targets, dfc_tensor *dlogits, dfc_error *err)
{
    const char *op = "cross_entropy_backward";
    DFC_TRY(dfc_check_class_loss(op, logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
    const int64_t *ys;
    void *extra;
    DFC_TRY(stage_targets(be, targets, n, &ys, (size_t)n * sizeof(double), &extra, err));
    double *lses = (double *)extra;
    const float *zs = logits->data, *dl = dloss->data;
    float *dz = dlogits->data;
    if (k == 1) /* d/dz softplus(-sign z) = -sign sigmoid(-l_y) (= sigmoid(z) - target) */
        return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t i) {
            const double ly = dfc_target_logit(zs + i, 1, ys[i]);
            dz[i] = (float)(dl[i] * (ys[i] == 1 ? -1.0 : 1.0) * dfc_sigmoid(-ly));
        });
    DFC_TRY(dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t i) {
        float max;
        const double sum = dfc_row_sum_exp(zs + i * k, k, &max);
        lses[i] = max + log(sum);
    }));
    return dfc_cuda_for_each(be, n * k, op, err, [=] DFC_DEVICE(int64_t at) {
        const int64_t i = at / k, j = at % k;
        const double scale = dl[i];
        dz[at] = (float)(scale * (exp((double)zs[at] - lses[i]) - (j == ys[i] ? 1.0 : 0.0)));
    });
}

/* ---- mean squared error ---- */

/* sum += (a - b)^2 at item j of row r (rows of m values) */
struct squared_difference {
    const float *a, *b;
    int64_t m;
    DFC_HOST_DEVICE void operator()(int64_t r, int64_t j, double *sum) const
    {
        const double d = (double)a[r * m + j] - b[r * m + j];
        *sum += d * d;
    }
};

/* loss[n] = mean over the non-batch dims of (a - b)^2, in double. */
dfc_status cuda_mse_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss, dfc_error *err)
{
    const char *op = "mse";
    DFC_TRY(dfc_check_mse(op, a, b, err));
    const int64_t n = a->shape[0], m = dfc_inner_size(a, 1);
    DFC_TRY(dfc_check_shape(loss, op, "loss", 1, &n, err));
    double *partials = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n * dfc_row_chunks(m)) * sizeof(double), (void **)&partials, err));
    return dfc_row_sums(be, n, m, squared_difference{a->data, b->data, m}, partials, 1.0, (double)m, loss->data, op,
                        err);
}

/* da = dloss[n] 2 (a - b) / M, db = -da; either NULL. */
dfc_status cuda_mse_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b,
                             dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    const char *op = "mse_backward";
    DFC_TRY(dfc_check_mse_backward(dloss, a, b, da, db, err));
    const int64_t n = a->shape[0], m = dfc_inner_size(a, 1);
    float *das = da && da->data ? da->data : NULL, *dbs = db && db->data ? db->data : NULL;
    const float *as = a->data, *bs = b->data, *dl = dloss->data;
    return dfc_cuda_for_each(be, n * m, op, err, [=] DFC_DEVICE(int64_t j) {
        const double scale = 2.0 * dl[j / m] / (double)m;
        const double g = scale * ((double)as[j] - bs[j]);
        if (das)
            das[j] = (float)g;
        if (dbs)
            dbs[j] = (float)-g;
    });
}

/* ---- the logit loss: -l_y ---- */

dfc_status cuda_logit_loss_forward(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *loss,
                                   dfc_error *err)
{
    const char *op = "logit_loss";
    DFC_TRY(dfc_check_class_loss(op, logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], c = logits->shape[1];
    const int64_t *ys;
    DFC_TRY(stage_targets(be, targets, n, &ys, 0, NULL, err));
    const float *zs = logits->data;
    float *out = loss->data;
    return dfc_cuda_for_each(be, n, op, err,
                             [=] DFC_DEVICE(int64_t i) { out[i] = (float)-dfc_target_logit(zs + i * c, c, ys[i]); });
}

/* d(-l_y)/dz: C == 1: -(+-1); C == 2: -1 at y, +1 at 1 - y; C > 2: -1 at y; 0 elsewhere. One index per logit. */
dfc_status cuda_logit_loss_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                    const int64_t *targets, dfc_tensor *dlogits, dfc_error *err)
{
    const char *op = "logit_loss_backward";
    DFC_TRY(dfc_check_class_loss(op, logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], c = logits->shape[1];
    const int64_t *ys;
    DFC_TRY(stage_targets(be, targets, n, &ys, 0, NULL, err));
    const float *dl = dloss->data;
    float *dz = dlogits->data;
    return dfc_cuda_for_each(be, n * c, op, err, [=] DFC_DEVICE(int64_t at) {
        const int64_t i = at / c, k = at % c, y = ys[i];
        const float g = dl[i];
        float d = 0.0f;
        if (c == 1)
            d = y == 1 ? -g : g;
        else if (k == y)
            d = -g;
        else if (c == 2)
            d = g; /* k == 1 - y */
        dz[at] = d;
    });
}

/* ---- binary cross-entropy with logits, per sample ---- */

/* sum += the loss at logit j of row r: max(z, 0) - z t + log(1 + exp(-|z|)) */
struct bce_term {
    const float *z, *t;
    int64_t m;
    DFC_HOST_DEVICE void operator()(int64_t r, int64_t j, double *sum) const
    {
        const double zj = z[r * m + j];
        *sum += fmax(zj, 0.0) - zj * t[r * m + j] + log1p(exp(-fabs(zj)));
    }
};

dfc_status cuda_bce_with_logits_forward(dfc_backend *be, const dfc_tensor *logits, const dfc_tensor *targets,
                                        dfc_tensor *loss, dfc_error *err)
{
    const char *op = "bce_with_logits";
    DFC_TRY(dfc_check_bce(op, logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], m = dfc_inner_size(logits, 1);
    double *partials = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n * dfc_row_chunks(m)) * sizeof(double), (void **)&partials, err));
    return dfc_row_sums(be, n, m, bce_term{logits->data, targets->data, m}, partials, 1.0, (double)m, loss->data, op,
                        err);
}

dfc_status cuda_bce_with_logits_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                         const dfc_tensor *targets, dfc_tensor *dlogits, dfc_error *err)
{
    const char *op = "bce_with_logits_backward";
    DFC_TRY(dfc_check_bce(op, logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], m = dfc_inner_size(logits, 1);
    const float *zs = logits->data, *ts = targets->data, *dl = dloss->data;
    float *dz = dlogits->data;
    return dfc_cuda_for_each(be, n * m, op, err, [=] DFC_DEVICE(int64_t j) {
        const double scale = dl[j / m] / (double)m;
        dz[j] = (float)(scale * (dfc_sigmoid(zs[j]) - ts[j]));
    });
}

/* ---- normalised feature distance ---- */

/* sum += |a^ - b^|^2 at position q of sample r (a^ = a / (|a| + eps) over the c channels, hw apart) */
struct normalized_difference {
    const float *a, *b;
    int64_t c, hw;
    DFC_HOST_DEVICE void operator()(int64_t r, int64_t q, double *sum) const
    {
        const float *ap = a + r * c * hw, *bp = b + r * c * hw;
        const double ra = dfc_channel_norm(ap, c, hw, q) + DFC_NORMALIZE_EPS;
        const double rb = dfc_channel_norm(bp, c, hw, q) + DFC_NORMALIZE_EPS;
        for (int64_t ch = 0; ch < c; ch++) {
            const double d = ap[ch * hw + q] / ra - bp[ch * hw + q] / rb;
            *sum += d * d;
        }
    }
};

/* Partials per chunk of a sample's positions, then per sample. */
dfc_status cuda_normalized_distance_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss,
                                            dfc_error *err)
{
    const char *op = "normalized_distance";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, loss, "loss", NULL, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2);
    double *partials = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n * dfc_row_chunks(hw)) * sizeof(double), (void **)&partials, err));
    return dfc_row_sums(be, n, hw, normalized_difference{a->data, b->data, c, hw}, partials, 1.0, (double)hw,
                        loss->data, op, err);
}

/* dfc_normalized_distance_grad_at with scale 2 dloss / hw, one index per position. */
dfc_status cuda_normalized_distance_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                             const dfc_tensor *b, dfc_tensor *da, dfc_error *err)
{
    const char *op = "normalized_distance_backward";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, dloss, "dloss", da, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2);
    const float *as = a->data, *bs = b->data, *dl = dloss->data;
    float *das = da->data;
    return dfc_cuda_for_each(be, n * hw, op, err, [=] DFC_DEVICE(int64_t p) {
        const int64_t i = p / hw, q = p % hw;
        const double scale = 2.0 * dl[i] / (double)hw;
        dfc_normalized_distance_grad_at(as + i * c * hw, bs + i * c * hw, das + i * c * hw, c, hw, q, scale);
    });
}

/* Reference kernels of the network-side ops: the logit loss, BCE with logits, per-plane standardisation, the
 * normalised feature distance, fill. Sums in double. */
#include <math.h>
#include <stdint.h>

#include "net_ops.h"
#include "ref.h"

/* ---- the logit loss: -l_y ---- */

dfc_status ref_logit_loss_forward(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *loss,
                                  dfc_error *err)
{
    DFC_TRY(dfc_check_class_loss("logit_loss", logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], c = logits->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        loss->data[i] = (float)-dfc_target_logit(logits->data + i * c, c, targets[i]);
    return DFC_OK;
}

/* d(-l_y)/dz: C == 1: -(+-1); C == 2: -1 at y, +1 at 1 - y; C > 2: -1 at y; 0 elsewhere. */
dfc_status ref_logit_loss_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                   const int64_t *targets, dfc_tensor *dlogits, dfc_error *err)
{
    DFC_TRY(dfc_check_class_loss("logit_loss_backward", logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], c = logits->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float *d = dlogits->data + i * c;
        const float g = dloss->data[i];
        const int64_t y = targets[i];
        for (int64_t k = 0; k < c; k++)
            d[k] = 0.0f;
        if (c == 1) {
            d[0] = y == 1 ? -g : g;
        } else {
            d[y] = -g;
            if (c == 2)
                d[1 - y] = g;
        }
    }
    return DFC_OK;
}

/* ---- binary cross-entropy with logits, per sample ---- */

dfc_status ref_bce_with_logits_forward(dfc_backend *be, const dfc_tensor *logits, const dfc_tensor *targets,
                                       dfc_tensor *loss, dfc_error *err)
{
    DFC_TRY(dfc_check_bce("bce_with_logits", logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], m = dfc_inner_size(logits, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        double sum = 0.0;
        for (int64_t j = i * m; j < (i + 1) * m; j++) {
            const double z = logits->data[j];
            sum += fmax(z, 0.0) - z * targets->data[j] + log1p(exp(-fabs(z)));
        }
        loss->data[i] = (float)(sum / (double)m);
    }
    return DFC_OK;
}

dfc_status ref_bce_with_logits_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                        const dfc_tensor *targets, dfc_tensor *dlogits, dfc_error *err)
{
    DFC_TRY(dfc_check_bce("bce_with_logits_backward", logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], m = dfc_inner_size(logits, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const double scale = dloss->data[i] / (double)m;
        for (int64_t j = i * m; j < (i + 1) * m; j++)
            dlogits->data[j] = (float)(scale * (dfc_sigmoid(logits->data[j]) - targets->data[j]));
    }
    return DFC_OK;
}

/* ---- per-plane standardisation ---- */

/* mean and population std of one plane of m values, in double */
static void plane_moments(const float *x, int64_t m, double *mean, double *std)
{
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < m; i++)
        sum += x[i];
    *mean = sum / (double)m;
    for (int64_t i = 0; i < m; i++)
        sq += ((double)x[i] - *mean) * ((double)x[i] - *mean);
    *std = sqrt(sq / (double)m);
}

dfc_status ref_standardize_forward(dfc_backend *be, const dfc_tensor *x, float scale, dfc_tensor *y, dfc_error *err)
{
    const char *op = "standardize";
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t planes = x->shape[0] * x->shape[1], m = x->shape[2] * x->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *xs = x->data + p * m;
        float *ys = y->data + p * m;
        double mean, std;
        plane_moments(xs, m, &mean, &std);
        const double s = scale / dfc_standardize_divisor(std);
        for (int64_t i = 0; i < m; i++)
            ys[i] = (float)(((double)xs[i] - mean) * s);
    }
    return DFC_OK;
}

/* With xh = (x - mean) / std: dx = (scale / std) (dy - mean(dy) - xh mean(dy xh)), as for a layer norm (std the
 * divisor: 1 on a constant plane, where xh = 0). */
dfc_status ref_standardize_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, float scale,
                                    dfc_tensor *dx, dfc_error *err)
{
    const char *op = "standardize_backward";
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(dy, x, op, "dy", "x", err));
    DFC_TRY(dfc_check_same_shape(dx, x, op, "dx", "x", err));
    const int64_t planes = x->shape[0] * x->shape[1], m = x->shape[2] * x->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *xs = x->data + p * m, *dys = dy->data + p * m;
        float *dxs = dx->data + p * m;
        double mean, std;
        plane_moments(xs, m, &mean, &std);
        const double rstd = 1.0 / dfc_standardize_divisor(std);
        double sum_dy = 0.0, sum_dy_xh = 0.0;
        for (int64_t i = 0; i < m; i++) {
            sum_dy += dys[i];
            sum_dy_xh += dys[i] * ((double)xs[i] - mean) * rstd;
        }
        const double mean_dy = sum_dy / (double)m, mean_dy_xh = sum_dy_xh / (double)m;
        for (int64_t i = 0; i < m; i++) {
            const double xh = ((double)xs[i] - mean) * rstd;
            dxs[i] = (float)(scale * rstd * ((double)dys[i] - mean_dy - xh * mean_dy_xh));
        }
    }
    return DFC_OK;
}

/* ---- normalised feature distance ---- */

dfc_status ref_normalized_distance_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss,
                                           dfc_error *err)
{
    const char *op = "normalized_distance";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, loss, "loss", NULL, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *ap = a->data + i * c * hw, *bp = b->data + i * c * hw;
        double sum = 0.0;
        for (int64_t q = 0; q < hw; q++) {
            const double ra = dfc_channel_norm(ap, c, hw, q) + DFC_NORMALIZE_EPS;
            const double rb = dfc_channel_norm(bp, c, hw, q) + DFC_NORMALIZE_EPS;
            for (int64_t ch = 0; ch < c; ch++) {
                const double d = ap[ch * hw + q] / ra - bp[ch * hw + q] / rb;
                sum += d * d;
            }
        }
        loss->data[i] = (float)(sum / (double)hw);
    }
    return DFC_OK;
}

/* With r = |a|, re = r + eps and g = dL/da^ = 2 dloss (a^ - b^) / hw: da = g / re - a (g . a) / (r re^2); the
 * second term is 0 where r = 0 (then a = 0). */
dfc_status ref_normalized_distance_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                            const dfc_tensor *b, dfc_tensor *da, dfc_error *err)
{
    const char *op = "normalized_distance_backward";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, dloss, "dloss", da, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *ap = a->data + i * c * hw, *bp = b->data + i * c * hw;
        float *dp = da->data + i * c * hw;
        const double scale = 2.0 * dloss->data[i] / (double)hw;
        for (int64_t q = 0; q < hw; q++)
            dfc_normalized_distance_grad_at(ap, bp, dp, c, hw, q, scale);
    }
    return DFC_OK;
}

/* ---- fill ---- */

dfc_status ref_fill(dfc_backend *be, float value, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(y, "fill", "y", 1, DFC_MAX_DIMS, err));
    const int64_t total = dfc_numel(y);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < total; i++)
        y->data[i] = value;
    return DFC_OK;
}

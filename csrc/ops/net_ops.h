/* The arithmetic the network-side kernels share (ref_net.c, ref_loss.c, cpu_net.c, ref_diffusion.c's flip decision):
 * the class-probability rule over one sample's logits and the checks of class targets. Private to csrc/ops. */
#ifndef DIFFICE_NET_OPS_H
#define DIFFICE_NET_OPS_H

#include <math.h>
#include <stdint.h>

#include "../core/also_device.h"
#include "ops.h"
#include "softmax_row.h"

#define DFC_NORMALIZE_EPS 1e-10 /* MONAI's normalize_tensor */

/* What standardize divides a plane by: its population std, or 1 where the plane is constant (std 0), as
 * scikit-learn's StandardScaler does, so a constant plane becomes zeros and its gradient stays finite (a blank frame
 * among a run's images, or an estimate that clipping made constant, must not stop the run). A NaN std stays NaN. */
static DFC_ALSO_DEVICE inline double dfc_standardize_divisor(double std) { return std == 0.0 ? 1.0 : std; }

/* Stable for either sign: exp of a non-positive argument only. */
static DFC_ALSO_DEVICE inline double dfc_sigmoid(double v)
{
    return v >= 0 ? 1.0 / (1.0 + exp(-v)) : exp(v) / (1.0 + exp(v));
}

/* -log sigmoid(v) = softplus(-v), without overflow for either sign. */
static DFC_ALSO_DEVICE inline double dfc_neg_log_sigmoid(double v) { return fmax(-v, 0.0) + log1p(exp(-fabs(v))); }

/* The signed logit of target y (DiME's l_y): c == 1: +-z (sign by y in {0, 1}); c == 2: z_y - z_(1-y); c > 2: z_y. */
static DFC_ALSO_DEVICE inline double dfc_target_logit(const float *z, int64_t c, int64_t y)
{
    if (c == 1)
        return y == 1 ? (double)z[0] : -(double)z[0];
    if (c == 2)
        return (double)z[y] - z[1 - y];
    return z[y];
}

/* p(y) under the rule: c >= 2 softmax(z)_y; c == 1 sigmoid(+-z) (1 - sigmoid(v) = sigmoid(-v)). */
static DFC_ALSO_DEVICE inline double dfc_class_probability_row(const float *z, int64_t c, int64_t y)
{
    if (c == 1)
        return dfc_sigmoid(dfc_target_logit(z, c, y));
    float max;
    const double sum = dfc_row_sum_exp(z, c, &max);
    return exp((double)z[y] - max) / sum;
}

/* argmax (the first on ties) for c >= 2; z > 0 for one logit. */
static DFC_ALSO_DEVICE inline int64_t dfc_predicted_class_row(const float *z, int64_t c)
{
    if (c == 1)
        return z[0] > 0.0f;
    int64_t best = 0;
    for (int64_t k = 1; k < c; k++)
        if (z[k] > z[best])
            best = k;
    return best;
}

/* logits (N, C) with C >= 1 and targets (N) in [0, max(C, 2)): one logit stands for two classes. */
static inline dfc_status dfc_check_class_targets(const char *op, const dfc_tensor *logits, const int64_t *targets,
                                                 dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(logits, op, "logits", 2, 2, err));
    const int64_t n = logits->shape[0], c = logits->shape[1], classes = c == 1 ? 2 : c;
    if (c < 1)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: logits have no classes", op);
    if (!targets)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: targets is missing", op);
    for (int64_t i = 0; i < n; i++)
        if (targets[i] < 0 || targets[i] >= classes)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: targets[%lld] = %lld is out of range [0, %lld) for %lld logits",
                            op, (long long)i, (long long)targets[i], (long long)classes, (long long)c);
    return DFC_OK;
}

/* |f[:, q]| over the c channels of one sample, positions hw apart, in double (the normalised distance's). */
static DFC_ALSO_DEVICE inline double dfc_channel_norm(const float *f, int64_t c, int64_t hw, int64_t q)
{
    double sq = 0.0;
    for (int64_t ch = 0; ch < c; ch++)
        sq += (double)f[ch * hw + q] * f[ch * hw + q];
    return sqrt(sq);
}

/* A per-sample class loss's arguments: logits and targets as dfc_check_class_targets, per_row (N) (loss, or dloss
 * in the backward), and dlogits like logits (the backward; NULL in the forward). */
static inline dfc_status dfc_check_class_loss(const char *op, const dfc_tensor *logits, const int64_t *targets,
                                              const dfc_tensor *per_row, const char *per_row_name,
                                              const dfc_tensor *dlogits, dfc_error *err)
{
    DFC_TRY(dfc_check_class_targets(op, logits, targets, err));
    DFC_TRY(dfc_check_shape(per_row, op, per_row_name, 1, logits->shape, err));
    return dlogits ? dfc_check_same_shape(logits, dlogits, op, "logits", "dlogits", err) : DFC_OK;
}

/* The normalised distance's gradient at position q of one sample (a, b, da at the sample; c channels hw apart):
 * with r = |a|, re = r + eps and g = scale (a^ - b^), da = g / re - a (g . a) / (r re^2), the second term 0 where
 * r = 0 (then a = 0). */
static DFC_ALSO_DEVICE inline void dfc_normalized_distance_grad_at(const float *ap, const float *bp, float *dp,
                                                                   int64_t c, int64_t hw, int64_t q, double scale)
{
    const double r = dfc_channel_norm(ap, c, hw, q), re = r + DFC_NORMALIZE_EPS;
    const double rb = dfc_channel_norm(bp, c, hw, q) + DFC_NORMALIZE_EPS;
    double dot = 0.0;
    for (int64_t ch = 0; ch < c; ch++)
        dot += scale * (ap[ch * hw + q] / re - bp[ch * hw + q] / rb) * ap[ch * hw + q];
    for (int64_t ch = 0; ch < c; ch++) {
        const double g = scale * (ap[ch * hw + q] / re - bp[ch * hw + q] / rb);
        const double radial = r > 0.0 ? ap[ch * hw + q] * dot / (r * re * re) : 0.0;
        dp[ch * hw + q] = (float)(g / re - radial);
    }
}

/* a, b (N, C, ...) of one shape, per_row (N) (loss or dloss), da like a (the backward; NULL in the forward). */
dfc_status dfc_check_normalized_distance(const char *op, const dfc_tensor *a, const dfc_tensor *b,
                                         const dfc_tensor *per_row, const char *per_row_name, const dfc_tensor *da,
                                         dfc_error *err);

/* mse's a, b: rank >= 1, one shape (ref_loss.c); bce_with_logits' logits, targets likewise (ref_net.c). */
dfc_status dfc_check_mse(const char *op, const dfc_tensor *a, const dfc_tensor *b, dfc_error *err);
/* mse_backward's: dloss (N), da, db (either NULL) shaped like a. */
dfc_status dfc_check_mse_backward(const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b,
                                  const dfc_tensor *da, const dfc_tensor *db, dfc_error *err);
/* bce_with_logits': also per_row (N) (loss or dloss) and dlogits like logits (NULL in the forward) */
dfc_status dfc_check_bce(const char *op, const dfc_tensor *logits, const dfc_tensor *targets, const dfc_tensor *per_row,
                         const char *per_row_name, const dfc_tensor *dlogits, dfc_error *err);

#endif

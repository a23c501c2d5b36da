/* Reference kernels of the diffusion arithmetic (ops.h's last block): the sampler's per-row formulas in float32 with
 * guided-diffusion's operation order (its tests compare with PyTorch at ~1e-6), and the training loss's variational
 * bound in double. Rows (samples) are independent and run in parallel. */
#include <math.h>
#include <string.h>

#include "diffusion_rows.h"
#include "net_ops.h"
#include "ref.h"

#define LN2 0.69314718055994530942
#define SQRT_2_OVER_PI 0.79788456080286535588

static dfc_status check_rows(const char *op, const char *name, const void *array, dfc_error *err)
{
    return array ? DFC_OK : dfc_fail(err, DFC_ERR_VALUE, "%s: the per-row array %s is missing", op, name);
}

dfc_status dfc_model_output_check(const char *op, const dfc_tensor *model_output, const dfc_tensor *x,
                                  const char *x_name, int learned, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, x_name, 2, DFC_MAX_DIMS, err));
    int64_t shape[DFC_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[1] *= learned ? 2 : 1;
    if (dfc_check_shape(model_output, op, "model_output", x->ndim, shape, err) != DFC_OK) {
        dfc_error_prefix(err, "%s", learned ? "(learned sigma: 2C channels) " : "(fixed variance: C channels) ");
        return err ? err->code : DFC_ERR_SHAPE;
    }
    return DFC_OK;
}

static int present(const dfc_tensor *t) { return t && t->data; }

/* ---- q_sample ---- */

dfc_status dfc_q_sample_check(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                              const float *sqrt_one_minus_abar, const dfc_tensor *x_t, dfc_error *err)
{
    const char *op = "q_sample";
    DFC_TRY(dfc_check_ndim(x0, op, "x0", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x0, noise, op, "x0", "noise", err));
    DFC_TRY(dfc_check_same_shape(x0, x_t, op, "x0", "x_t", err));
    DFC_TRY(check_rows(op, "sqrt_abar", sqrt_abar, err));
    return check_rows(op, "sqrt_one_minus_abar", sqrt_one_minus_abar, err);
}

dfc_status ref_q_sample(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                        const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err)
{
    DFC_TRY(dfc_q_sample_check(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, err));
    const int64_t n = x0->shape[0], m = dfc_inner_size(x0, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_q_sample_span(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, b, m, 0, m);
    return DFC_OK;
}

/* ---- p_mean_variance, forward and backward ---- */

static dfc_status check_posterior(const char *op, const dfc_posterior_coefs *c, int learned, dfc_error *err)
{
    if (!c)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: coefs is missing", op);
    DFC_TRY(check_rows(op, "sqrt_recip_abar", c->sqrt_recip_abar, err));
    DFC_TRY(check_rows(op, "sqrt_recipm1_abar", c->sqrt_recipm1_abar, err));
    DFC_TRY(check_rows(op, "coef1", c->coef1, err));
    DFC_TRY(check_rows(op, "coef2", c->coef2, err));
    DFC_TRY(check_rows(op, learned ? "min_log" : "variance", learned ? c->min_log : c->variance, err));
    return check_rows(op, learned ? "max_log" : "log_variance", learned ? c->max_log : c->log_variance, err);
}

dfc_status dfc_p_mean_variance_check(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                     const dfc_posterior_coefs *coefs, int learned, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance,
                                     const dfc_tensor *pred_xstart, dfc_error *err)
{
    const char *op = "p_mean_variance";
    DFC_TRY(dfc_model_output_check(op, model_output, x_t, "x_t", learned, err));
    DFC_TRY(check_posterior(op, coefs, learned, err));
    DFC_TRY(dfc_check_same_shape(x_t, mean, op, "x_t", "mean", err));
    const dfc_tensor *optional[] = {variance, log_variance, pred_xstart};
    const char *names[] = {"variance", "log_variance", "pred_xstart"};
    for (int i = 0; i < 3; i++)
        if (present(optional[i]))
            DFC_TRY(dfc_check_same_shape(x_t, optional[i], op, "x_t", names[i], err));
    return DFC_OK;
}

dfc_status ref_p_mean_variance_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                       const dfc_posterior_coefs *coefs, int learned, int clip, dfc_tensor *mean,
                                       dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                       dfc_error *err)
{
    DFC_TRY(
        dfc_p_mean_variance_check(model_output, x_t, coefs, learned, mean, variance, log_variance, pred_xstart, err));
    float *var_out = dfc_optional_data(variance), *log_out = dfc_optional_data(log_variance);
    float *x0_out = dfc_optional_data(pred_xstart);
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_p_mean_variance_span(model_output, x_t, coefs, learned, clip, mean->data, var_out, log_out, x0_out, b, m, 0,
                                 m);
    return DFC_OK;
}

dfc_status ref_p_mean_variance_backward(dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                        const dfc_tensor *model_output, const dfc_tensor *x_t,
                                        const dfc_posterior_coefs *coefs, int learned, int clip, dfc_tensor *dx_t,
                                        dfc_tensor *d_model_output, dfc_error *err)
{
    const char *op = "p_mean_variance_backward";
    DFC_TRY(dfc_model_output_check(op, model_output, x_t, "x_t", learned, err));
    DFC_TRY(check_posterior(op, coefs, learned, err));
    DFC_TRY(dfc_check_same_shape(x_t, d_pred_xstart, op, "x_t", "d_pred_xstart", err));
    float *dx = dfc_optional_data(dx_t), *dmo = dfc_optional_data(d_model_output);
    if (dx)
        DFC_TRY(dfc_check_same_shape(x_t, dx_t, op, "x_t", "dx_t", err));
    if (dmo)
        DFC_TRY(dfc_check_same_shape(model_output, d_model_output, op, "model_output", "d_model_output", err));
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1), out_m = m * (learned ? 2 : 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float recip = coefs->sqrt_recip_abar[b], recipm1 = coefs->sqrt_recipm1_abar[b];
        const float *eps = model_output->data + b * out_m;
        for (int64_t j = 0; j < m; j++) {
            const int64_t at = b * m + j;
            const float unclipped = recip * x_t->data[at] - recipm1 * eps[j];
            const float pass = (!clip || (unclipped >= -1.0f && unclipped <= 1.0f)) ? 1.0f : 0.0f;
            const float g = pass * d_pred_xstart->data[at];
            if (dmo)
                dmo[b * out_m + j] = -recipm1 * g;
            if (dx)
                dx[at] = recip * g;
        }
        if (dmo && learned) /* the variance channels do not reach pred_xstart */
            memset(dmo + b * out_m + m, 0, (size_t)m * sizeof(float));
    }
    return DFC_OK;
}

/* ---- the reverse step ---- */

dfc_status dfc_sample_step_check(const dfc_tensor *mean, const dfc_tensor *variance, const dfc_tensor *log_variance,
                                 const dfc_tensor *grad, const dfc_tensor *noise, const float *noise_weight,
                                 const dfc_tensor *x_prev, dfc_error *err)
{
    const char *op = "sample_step";
    DFC_TRY(dfc_check_ndim(mean, op, "mean", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(mean, log_variance, op, "mean", "log_variance", err));
    DFC_TRY(dfc_check_same_shape(mean, noise, op, "mean", "noise", err));
    DFC_TRY(dfc_check_same_shape(mean, x_prev, op, "mean", "x_prev", err));
    DFC_TRY(check_rows(op, "noise_weight", noise_weight, err));
    if (present(grad)) {
        DFC_TRY(dfc_check_same_shape(mean, grad, op, "mean", "grad", err));
        DFC_TRY(dfc_check_same_shape(mean, variance, op, "mean", "variance", err));
    }
    return DFC_OK;
}

dfc_status ref_sample_step(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                           const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                           const float *noise_weight, dfc_tensor *x_prev, dfc_error *err)
{
    DFC_TRY(dfc_sample_step_check(mean, variance, log_variance, grad, noise, noise_weight, x_prev, err));
    const int64_t n = mean->shape[0], m = dfc_inner_size(mean, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_sample_step_span(mean, variance, log_variance, grad, noise, noise_weight, x_prev, b, m, 0, m);
    return DFC_OK;
}

/* ---- per-row scale and axpy ---- */

/* y = alpha[b] x, or y += alpha[b] x when accumulate */
static dfc_status row_linear(dfc_backend *be, const char *op, const float *alpha, const dfc_tensor *x, dfc_tensor *y,
                             int accumulate, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    DFC_TRY(check_rows(op, "alpha", alpha, err));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t j = b * m; j < (b + 1) * m; j++)
            y->data[j] = accumulate ? y->data[j] + alpha[b] * x->data[j] : x->data[j] * alpha[b];
    return DFC_OK;
}

dfc_status ref_row_scale(dfc_backend *be, const dfc_tensor *x, const float *alpha, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_scale", alpha, x, y, 0, err);
}

dfc_status ref_row_axpy(dfc_backend *be, const float *alpha, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_axpy", alpha, x, y, 1, err);
}

/* ---- FastDiME's mask ---- */

/* a, b (N, C, H, W) and a per-pixel map (N, 1, H, W). */
static dfc_status check_pixel_map(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *map,
                                  const char *map_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    const int64_t shape[4] = {a->shape[0], 1, a->shape[2], a->shape[3]};
    return dfc_check_shape(map, op, map_name, 4, shape, err);
}

dfc_status ref_change_map(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(check_pixel_map("change_map", a, b, y, "y", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float *out = y->data + r * hw, max = 0.0f;
        for (int64_t k = 0; k < hw; k++) {
            float sum = 0.0f;
            for (int64_t ch = 0; ch < c; ch++) {
                const int64_t j = (r * c + ch) * hw + k;
                sum += fabsf((a->data[j] + 1.0f) / 2.0f - (b->data[j] + 1.0f) / 2.0f);
            }
            out[k] = sum;
            max = sum > max ? sum : max;
        }
        if (max > 0.0f)
            for (int64_t k = 0; k < hw; k++)
                out[k] /= max;
    }
    return DFC_OK;
}

dfc_status ref_masked_blend(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *mask,
                            float threshold, dfc_tensor *y, dfc_error *err)
{
    const char *op = "masked_blend";
    DFC_TRY(check_pixel_map(op, a, b, mask, "mask", err));
    DFC_TRY(dfc_check_same_shape(a, y, op, "a", "y", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t k = 0; k < hw; k++) {
                const int64_t j = (r * c + ch) * hw + k;
                const float keep = mask->data[r * hw + k] < threshold ? 1.0f : 0.0f;
                y->data[j] = a->data[j] * (1.0f - keep) + keep * b->data[j];
            }
    return DFC_OK;
}

/* ---- DiME's l1 / l2 distance terms ---- */

static dfc_status check_distance(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *per_row,
                                 const char *per_row_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    return dfc_check_shape(per_row, op, per_row_name, 1, a->shape, err);
}

/* ||a - b|| over the channels of pixel k of row r, in double. */
static double channel_norm(const float *a, const float *b, int64_t c, int64_t hw)
{
    double norm2 = 0.0;
    for (int64_t ch = 0; ch < c; ch++) {
        const double diff = (double)a[ch * hw] - b[ch * hw];
        norm2 += diff * diff;
    }
    return sqrt(norm2);
}

dfc_status ref_distance_penalty_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, float lambda_l1,
                                        float lambda_l2, dfc_tensor *loss, dfc_error *err)
{
    DFC_TRY(check_distance("distance_penalty", a, b, loss, "loss", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        double l1 = 0.0, l2 = 0.0;
        for (int64_t k = 0; k < hw; k++) {
            const int64_t at = r * c * hw + k;
            l2 += channel_norm(a->data + at, b->data + at, c, hw);
            for (int64_t ch = 0; ch < c; ch++)
                l1 += fabs((double)a->data[at + ch * hw] - b->data[at + ch * hw]);
        }
        loss->data[r] = (float)(lambda_l1 * l1 + lambda_l2 * l2);
    }
    return DFC_OK;
}

dfc_status ref_distance_penalty_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                         const dfc_tensor *b, float lambda_l1, float lambda_l2, dfc_tensor *da,
                                         dfc_error *err)
{
    const char *op = "distance_penalty_backward";
    DFC_TRY(check_distance(op, a, b, dloss, "dloss", err));
    DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const float scale = dloss->data[r];
        for (int64_t k = 0; k < hw; k++) {
            const int64_t at = r * c * hw + k;
            const double norm = channel_norm(a->data + at, b->data + at, c, hw);
            const float inv_norm = norm > 0.0 ? (float)(1.0 / norm) : 0.0f;
            for (int64_t ch = 0; ch < c; ch++) {
                const int64_t j = at + ch * hw;
                const float diff = a->data[j] - b->data[j];
                const float sign = (float)((diff > 0.0f) - (diff < 0.0f));
                da->data[j] = (lambda_l1 * sign + lambda_l2 * diff * inv_norm) * scale;
            }
        }
    }
    return DFC_OK;
}

/* ---- per-row checks: non-finite rows, the flip decision ---- */

dfc_status ref_nonfinite_rows(dfc_backend *be, dfc_tensor *x, int *nonfinite, dfc_error *err)
{
    const char *op = "nonfinite_rows";
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    DFC_TRY(check_rows(op, "nonfinite", nonfinite, err));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        float *row = x->data + b * m;
        int bad = 0;
        for (int64_t j = 0; j < m; j++)
            bad |= !isfinite(row[j]);
        nonfinite[b] = bad;
        if (bad)
            memset(row, 0, (size_t)m * sizeof(float));
    }
    return DFC_OK;
}

dfc_status ref_target_probability(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *prob,
                                  int *is_target, dfc_error *err)
{
    const char *op = "target_probability";
    DFC_TRY(dfc_check_class_targets(op, logits, targets, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
    DFC_TRY(dfc_check_shape(prob, op, "prob", 1, &n, err));
    DFC_TRY(check_rows(op, "is_target", is_target, err));
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *z = logits->data + b * k;
        prob->data[b] = (float)dfc_class_probability_row(z, k, targets[b]);
        is_target[b] = dfc_predicted_class_row(z, k) == targets[b];
    }
    return DFC_OK;
}

/* ---- the training loss's variational bound (guided-diffusion losses.py), in double ---- */

/* approx_standard_normal_cdf: 0.5 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))); *pdf gets its derivative */
static inline double approx_cdf(double u, double *pdf)
{
    double th = tanh(SQRT_2_OVER_PI * (u + 0.044715 * u * u * u));
    *pdf = 0.5 * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * u * u);
    return 0.5 * (1.0 + th);
}

/* discretized_gaussian_log_likelihood for one pixel x in [-1, 1] (bins of width 2/255) under N(mean, exp(2 ls));
 * *dls gets d logp / d ls. log(clamp(p, 1e-12)) passes no gradient below the clamp, as torch's clamp. */
static inline double discretized_gaussian_log_likelihood(double x, double mean, double ls, double *dls)
{
    double centered = x - mean, inv_stdv = exp(-ls);
    double plus_in = inv_stdv * (centered + 1.0 / 255.0), min_in = inv_stdv * (centered - 1.0 / 255.0);
    double pdf_plus, pdf_min;
    double cdf_plus = approx_cdf(plus_in, &pdf_plus), cdf_min = approx_cdf(min_in, &pdf_min);
    /* d plus_in / d ls = -plus_in, d min_in / d ls = -min_in */
    double d_cdf_plus = -pdf_plus * plus_in, d_cdf_min = -pdf_min * min_in;
    double p, dp;
    if (x < -0.999) { /* the lowest bin reaches to -inf */
        p = cdf_plus;
        dp = d_cdf_plus;
    } else if (x > 0.999) { /* the highest bin reaches to +inf */
        p = 1.0 - cdf_min;
        dp = -d_cdf_min;
    } else {
        p = cdf_plus - cdf_min;
        dp = d_cdf_plus - d_cdf_min;
    }
    if (p >= 1e-12) {
        *dls = dp / p;
        return log(p);
    }
    *dls = 0.0;
    return log(1e-12);
}

/* normal_kl(mean1, logvar1, mean2, logvar2); *dlogvar2 gets its derivative in logvar2 (the mean is frozen) */
static inline double normal_kl(double mean1, double logvar1, double mean2, double logvar2, double *dlogvar2)
{
    double ratio = exp(logvar1 - logvar2), dist = (mean1 - mean2) * (mean1 - mean2) * exp(-logvar2);
    *dlogvar2 = 0.5 * (1.0 - ratio - dist);
    return 0.5 * (-1.0 + logvar2 - logvar1 + ratio + dist);
}

/* One element's vb term and its derivative in v (before the mean over elements and / ln 2). */
static inline double vb_term(const dfc_vb_coefs *c, int64_t b, double eps, double v, double x0, double xt,
                             double *dterm_dv)
{
    const double min_log = c->min_log[b], max_log = c->max_log[b];
    const double coef1 = c->coef1[b], coef2 = c->coef2[b];
    double frac = (v + 1.0) / 2.0; /* not clamped, as guided-diffusion */
    double logvar = frac * max_log + (1.0 - frac) * min_log;
    /* frozen mean: p_mean_variance of the detached eps_hat, clip_denoised=False */
    double pred_x0 = c->sqrt_recip_abar[b] * xt - c->sqrt_recipm1_abar[b] * eps;
    double mean = coef1 * pred_x0 + coef2 * xt;
    double term, dterm;
    if (!c->decoder_nll[b]) { /* KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), q's log variance is min_log */
        double true_mean = coef1 * x0 + coef2 * xt;
        term = normal_kl(true_mean, min_log, mean, logvar, &dterm);
    } else { /* decoder NLL, log scale = logvar / 2 */
        double dls;
        term = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, &dls);
        dterm = -0.5 * dls;
    }
    *dterm_dv = dterm;
    return term;
}

static dfc_status check_vb(const char *op, const dfc_tensor *model_output, const dfc_tensor *x_start,
                           const dfc_tensor *x_t, const dfc_vb_coefs *c, dfc_error *err)
{
    DFC_TRY(dfc_model_output_check(op, model_output, x_start, "x_start", 1, err));
    DFC_TRY(dfc_check_same_shape(x_start, x_t, op, "x_start", "x_t", err));
    if (!c)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: coefs is missing", op);
    const void *arrays[] = {c->sqrt_recip_abar, c->sqrt_recipm1_abar, c->coef1,      c->coef2,
                            c->min_log,         c->max_log,           c->decoder_nll};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        DFC_TRY(check_rows(op, "of coefs", arrays[i], err));
    return DFC_OK;
}

dfc_status ref_diffusion_vb_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_start,
                                    const dfc_tensor *x_t, const dfc_vb_coefs *coefs, dfc_tensor *vb, dfc_error *err)
{
    const char *op = "diffusion_vb";
    DFC_TRY(check_vb(op, model_output, x_start, x_t, coefs, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
    DFC_TRY(dfc_check_shape(vb, op, "vb", 1, &n, err));
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *eps = model_output->data + b * 2 * m, *v = eps + m;
        const float *x0 = x_start->data + b * m, *xt = x_t->data + b * m;
        double sum = 0.0, unused;
        for (int64_t j = 0; j < m; j++)
            sum += vb_term(coefs, b, eps[j], v[j], x0[j], xt[j], &unused);
        vb->data[b] = (float)(coefs->scale * sum / ((double)m * LN2));
    }
    return DFC_OK;
}

dfc_status ref_diffusion_vb_backward(dfc_backend *be, const dfc_tensor *dvb, const dfc_tensor *model_output,
                                     const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_vb_coefs *coefs,
                                     dfc_tensor *d_v, dfc_error *err)
{
    const char *op = "diffusion_vb_backward";
    DFC_TRY(check_vb(op, model_output, x_start, x_t, coefs, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
    DFC_TRY(dfc_check_shape(dvb, op, "dvb", 1, &n, err));
    DFC_TRY(dfc_check_same_shape(x_start, d_v, op, "x_start", "d_v", err));
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *eps = model_output->data + b * 2 * m, *v = eps + m;
        const float *x0 = x_start->data + b * m, *xt = x_t->data + b * m;
        /* mean over elements, / ln 2, d logvar / d v = (max - min) / 2 */
        const double d_scale =
            (double)dvb->data[b] * coefs->scale * 0.5 * (coefs->max_log[b] - coefs->min_log[b]) / ((double)m * LN2);
        for (int64_t j = 0; j < m; j++) {
            double dterm;
            vb_term(coefs, b, eps[j], v[j], x0[j], xt[j], &dterm);
            d_v->data[b * m + j] = (float)(d_scale * dterm);
        }
    }
    return DFC_OK;
}

/* The diffusion ops that have a fast kernel, shared by the reference kernels (ref_diffusion.c, which defines the
 * checks) and the fast ones (cpu_diffusion.c): the argument checks, so both backends reject the same inputs with the
 * same messages, and the per-element arithmetic over a span [j0, j1) of row b's m values, so both compute the same
 * numbers (the reference runs whole rows, the fast kernels blocks of rows). */
#ifndef DIFFICE_DIFFUSION_ROWS_H
#define DIFFICE_DIFFUSION_ROWS_H

#include <math.h>

#include "../core/also_device.h"
#include "ops.h"

/* model_output must be (N, 2C, ...) for the DFC_OUTPUT_EPS_V* kinds and (N, C, ...) for DFC_OUTPUT_EPS, with x's
 * other dims (x named x_name in the message). */
dfc_status dfc_model_output_check(const char *op, const dfc_tensor *model_output, const dfc_tensor *x,
                                  const char *x_name, int output_kind, dfc_error *err);

dfc_status dfc_q_sample_check(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                              const float *sqrt_one_minus_abar, const dfc_tensor *x_t, dfc_error *err);

dfc_status dfc_p_mean_variance_check(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                     const dfc_posterior_coefs *coefs, int output_kind, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance,
                                     const dfc_tensor *pred_xstart, dfc_error *err);

dfc_status dfc_sample_step_check(const dfc_tensor *mean, const dfc_tensor *variance, const dfc_tensor *log_variance,
                                 const dfc_tensor *grad, const dfc_tensor *noise, const float *noise_weight,
                                 const dfc_tensor *x_prev, dfc_error *err);

/* out (N, ...) non-empty rows, keys present. */
dfc_status dfc_gaussian_noise_check(const uint64_t *keys, const dfc_tensor *out, dfc_error *err);

dfc_status dfc_p_mean_variance_backward_check(const dfc_tensor *d_pred_xstart, const dfc_tensor *model_output,
                                              const dfc_tensor *x_t, const dfc_posterior_coefs *coefs, int output_kind,
                                              const dfc_tensor *dx_t, const dfc_tensor *d_model_output, dfc_error *err);

/* The other diffusion ops' checks (ref_diffusion.c), shared with the CUDA kernels (csrc/cuda/diffusion.cu). */
dfc_status dfc_check_rows(const char *op, const char *name, const void *array, dfc_error *err);
dfc_status dfc_check_posterior(const char *op, const dfc_posterior_coefs *c, int output_kind, dfc_error *err);
/* a, b (N, C, H, W) and a per-pixel map (N, 1, H, W) */
dfc_status dfc_check_pixel_map(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *map,
                               const char *map_name, dfc_error *err);
/* a, b (N, C, H, W) and a per-row tensor (N) */
dfc_status dfc_check_distance(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *per_row,
                              const char *per_row_name, dfc_error *err);
dfc_status dfc_nonfinite_rows_check(const dfc_tensor *x, const int *nonfinite, dfc_error *err);
dfc_status dfc_target_probability_check(const dfc_tensor *logits, const int64_t *targets, const dfc_tensor *prob,
                                        const int *is_target, dfc_error *err);
/* also per_row (N) (vb or dvb) and d_v like x_start (the backward; NULL in the forward) */
dfc_status dfc_check_vb(const char *op, const dfc_tensor *model_output, const dfc_tensor *x_start,
                        const dfc_tensor *x_t, const dfc_vb_coefs *c, const dfc_tensor *per_row,
                        const char *per_row_name, const dfc_tensor *d_v, dfc_error *err);

static inline void dfc_q_sample_span(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                                     const float *sqrt_one_minus_abar, dfc_tensor *x_t, int64_t b, int64_t m,
                                     int64_t j0, int64_t j1)
{
    const float a = sqrt_abar[b], s = sqrt_one_minus_abar[b];
    for (int64_t j = b * m + j0; j < b * m + j1; j++)
        x_t->data[j] = a * x0->data[j] + s * noise->data[j];
}

/* variance, log_variance, pred_xstart: NULL when not wanted */
static inline void dfc_p_mean_variance_span(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                            const dfc_posterior_coefs *coefs, int output_kind, int clip, float *mean,
                                            float *variance, float *log_variance, float *pred_xstart, int64_t b,
                                            int64_t m, int64_t j0, int64_t j1)
{
    const float *eps = model_output->data + b * m * (output_kind ? 2 : 1);
    const float *v = output_kind == DFC_OUTPUT_EPS_V ? eps + m : NULL;
    const float *xs = x_t->data + b * m;
    const float recip = coefs->sqrt_recip_abar[b], recipm1 = coefs->sqrt_recipm1_abar[b];
    const float coef1 = coefs->coef1[b], coef2 = coefs->coef2[b];
    for (int64_t j = j0; j < j1; j++) {
        float lv, var;
        if (v) {
            float frac = (v[j] + 1.0f) / 2.0f; /* not clamped, as guided-diffusion */
            lv = frac * coefs->max_log[b] + (1.0f - frac) * coefs->min_log[b];
            var = expf(lv);
        } else {
            lv = coefs->log_variance[b];
            var = coefs->variance[b];
        }
        float x0 = recip * xs[j] - recipm1 * eps[j];
        if (clip)
            x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
        mean[b * m + j] = coef1 * x0 + coef2 * xs[j];
        if (variance)
            variance[b * m + j] = var;
        if (log_variance)
            log_variance[b * m + j] = lv;
        if (pred_xstart)
            pred_xstart[b * m + j] = x0;
    }
}

/* grad NULL (or its data NULL): unguided */
static inline void dfc_sample_step_span(const dfc_tensor *mean, const dfc_tensor *variance,
                                        const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                                        const float *noise_weight, dfc_tensor *x_prev, int64_t b, int64_t m, int64_t j0,
                                        int64_t j1)
{
    const int guided = grad && grad->data;
    const float w = noise_weight[b];
    for (int64_t j = b * m + j0; j < b * m + j1; j++) {
        float mu = mean->data[j];
        if (guided)
            mu = mu - variance->data[j] * grad->data[j]; /* DiME's condition_mean: descend the loss */
        x_prev->data[j] = mu + w * expf(0.5f * log_variance->data[j]) * noise->data[j];
    }
}

/* ---- one element's arithmetic that the CUDA kernels share (DFC_ALSO_DEVICE: arguments only, or coefficient
 * structs whose arrays are in the caller's memory) ---- */

#define DFC_SQRT_2_OVER_PI 0.79788456080286535588

/* ||a - b|| over the c channels (hw apart) of one pixel, in double. */
static DFC_ALSO_DEVICE inline double dfc_channel_diff_norm(const float *a, const float *b, int64_t c, int64_t hw)
{
    double norm2 = 0.0;
    for (int64_t ch = 0; ch < c; ch++) {
        const double diff = (double)a[ch * hw] - b[ch * hw];
        norm2 += diff * diff;
    }
    return sqrt(norm2);
}

/* approx_standard_normal_cdf: 0.5 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))); *pdf gets its derivative */
static DFC_ALSO_DEVICE inline double dfc_approx_cdf(double u, double *pdf)
{
    double th = tanh(DFC_SQRT_2_OVER_PI * (u + 0.044715 * u * u * u));
    *pdf = 0.5 * (1.0 - th * th) * DFC_SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * u * u);
    return 0.5 * (1.0 + th);
}

/* discretized_gaussian_log_likelihood for one pixel x in [-1, 1] (bins of width 2/255) under N(mean, exp(2 ls));
 * *dls gets d logp / d ls. log(clamp(p, 1e-12)) passes no gradient below the clamp, as torch's clamp. */
static DFC_ALSO_DEVICE inline double dfc_discretized_gaussian_log_likelihood(double x, double mean, double ls,
                                                                             double *dls)
{
    double centered = x - mean, inv_stdv = exp(-ls);
    double plus_in = inv_stdv * (centered + 1.0 / 255.0), min_in = inv_stdv * (centered - 1.0 / 255.0);
    double pdf_plus, pdf_min;
    double cdf_plus = dfc_approx_cdf(plus_in, &pdf_plus), cdf_min = dfc_approx_cdf(min_in, &pdf_min);
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
static DFC_ALSO_DEVICE inline double dfc_normal_kl(double mean1, double logvar1, double mean2, double logvar2,
                                                   double *dlogvar2)
{
    double ratio = exp(logvar1 - logvar2), dist = (mean1 - mean2) * (mean1 - mean2) * exp(-logvar2);
    *dlogvar2 = 0.5 * (1.0 - ratio - dist);
    return 0.5 * (-1.0 + logvar2 - logvar1 + ratio + dist);
}

/* One element's vb term and its derivative in v (before the mean over elements and / ln 2); c's arrays in the
 * caller's memory (host, or device for the CUDA kernels). */
static DFC_ALSO_DEVICE inline double dfc_vb_term(const dfc_vb_coefs *c, int64_t b, double eps, double v, double x0,
                                                 double xt, double *dterm_dv)
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
        term = dfc_normal_kl(true_mean, min_log, mean, logvar, &dterm);
    } else { /* decoder NLL, log scale = logvar / 2 */
        double dls;
        term = -dfc_discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, &dls);
        dterm = -0.5 * dls;
    }
    *dterm_dv = dterm;
    return term;
}

/* The data of an optional output, or NULL. */
static inline float *dfc_optional_data(dfc_tensor *t) { return t && t->data ? t->data : NULL; }

#endif

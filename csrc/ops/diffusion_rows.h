/* The diffusion ops that have a fast kernel, shared by the reference kernels (ref_diffusion.c, which defines the
 * checks) and the fast ones (cpu_diffusion.c): the argument checks, so both backends reject the same inputs with the
 * same messages, and the per-element arithmetic over a span [j0, j1) of row b's m values, so both compute the same
 * numbers (the reference runs whole rows, the fast kernels blocks of rows). */
#ifndef DIFFICE_DIFFUSION_ROWS_H
#define DIFFICE_DIFFUSION_ROWS_H

#include <math.h>

#include "ops.h"

/* model_output must be (N, 2C, ...) for the learned range and (N, C, ...) otherwise, with x's other dims (x named
 * x_name in the message). */
dfc_status dfc_model_output_check(const char *op, const dfc_tensor *model_output, const dfc_tensor *x,
                                  const char *x_name, int learned, dfc_error *err);

dfc_status dfc_q_sample_check(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                              const float *sqrt_one_minus_abar, const dfc_tensor *x_t, dfc_error *err);

dfc_status dfc_p_mean_variance_check(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                     const dfc_posterior_coefs *coefs, int learned, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance,
                                     const dfc_tensor *pred_xstart, dfc_error *err);

dfc_status dfc_sample_step_check(const dfc_tensor *mean, const dfc_tensor *variance, const dfc_tensor *log_variance,
                                 const dfc_tensor *grad, const dfc_tensor *noise, const float *noise_weight,
                                 const dfc_tensor *x_prev, dfc_error *err);

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
                                            const dfc_posterior_coefs *coefs, int learned, int clip, float *mean,
                                            float *variance, float *log_variance, float *pred_xstart, int64_t b,
                                            int64_t m, int64_t j0, int64_t j1)
{
    const float *eps = model_output->data + b * m * (learned ? 2 : 1);
    const float *v = learned ? eps + m : NULL;
    const float *xs = x_t->data + b * m;
    const float recip = coefs->sqrt_recip_abar[b], recipm1 = coefs->sqrt_recipm1_abar[b];
    const float coef1 = coefs->coef1[b], coef2 = coefs->coef2[b];
    for (int64_t j = j0; j < j1; j++) {
        float lv, var;
        if (learned) {
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

/* The data of an optional output, or NULL. */
static inline float *dfc_optional_data(dfc_tensor *t) { return t && t->data ? t->data : NULL; }

#endif

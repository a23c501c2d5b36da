/* Fast CPU kernels of the diffusion ops that touch every pixel of a step: the reference kernels parallelise over
 * rows (samples), which leaves cores idle for the sampler's small batches; these split each row into blocks too.
 * Same per-element arithmetic as ref_diffusion.c, so the results are identical. */
#include <math.h>

#include "cpu.h"
#include "diffusion_check.h"

#define BLOCK 4096 /* elements per task: large enough to amortise the scheduling, small enough to spread a row */

static int64_t blocks_of(int64_t m) { return (m + BLOCK - 1) / BLOCK; }

dfc_status cpu_q_sample(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                        const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err)
{
    DFC_TRY(dfc_q_sample_check(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, err));
    const int64_t n = x0->shape[0], m = dfc_inner_size(x0, 1), blocks = blocks_of(m);
    #pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++) {
            const float a = sqrt_abar[b], s = sqrt_one_minus_abar[b];
            const int64_t end = (k + 1) * BLOCK < m ? (k + 1) * BLOCK : m;
            const float *xs = x0->data + b * m, *ns = noise->data + b * m;
            float *out = x_t->data + b * m;
            for (int64_t j = k * BLOCK; j < end; j++)
                out[j] = a * xs[j] + s * ns[j];
        }
    return DFC_OK;
}

dfc_status cpu_p_mean_variance_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                       const dfc_posterior_coefs *coefs, int learned, int clip, dfc_tensor *mean,
                                       dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                       dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_check(model_output, x_t, coefs, learned, mean, variance, log_variance, pred_xstart,
                                      err));
    float *var_out = variance && variance->data ? variance->data : NULL;
    float *log_out = log_variance && log_variance->data ? log_variance->data : NULL;
    float *x0_out = pred_xstart && pred_xstart->data ? pred_xstart->data : NULL;
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1), blocks = blocks_of(m);
    #pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++) {
            const float *eps = model_output->data + b * m * (learned ? 2 : 1);
            const float *v = learned ? eps + m : NULL;
            const float *xs = x_t->data + b * m;
            const float recip = coefs->sqrt_recip_abar[b], recipm1 = coefs->sqrt_recipm1_abar[b];
            const float coef1 = coefs->coef1[b], coef2 = coefs->coef2[b];
            const int64_t end = (k + 1) * BLOCK < m ? (k + 1) * BLOCK : m;
            for (int64_t j = k * BLOCK; j < end; j++) {
                float lv, var;
                if (learned) {
                    float frac = (v[j] + 1.0f) / 2.0f;
                    lv = frac * coefs->max_log[b] + (1.0f - frac) * coefs->min_log[b];
                    var = expf(lv);
                } else {
                    lv = coefs->log_variance[b];
                    var = coefs->variance[b];
                }
                float x0 = recip * xs[j] - recipm1 * eps[j];
                if (clip)
                    x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
                mean->data[b * m + j] = coef1 * x0 + coef2 * xs[j];
                if (var_out)
                    var_out[b * m + j] = var;
                if (log_out)
                    log_out[b * m + j] = lv;
                if (x0_out)
                    x0_out[b * m + j] = x0;
            }
        }
    return DFC_OK;
}

dfc_status cpu_sample_step(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                           const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                           const float *noise_weight, dfc_tensor *x_prev, dfc_error *err)
{
    DFC_TRY(dfc_sample_step_check(mean, variance, log_variance, grad, noise, noise_weight, x_prev, err));
    const int guided = grad && grad->data;
    const int64_t n = mean->shape[0], m = dfc_inner_size(mean, 1), blocks = blocks_of(m);
    #pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++) {
            const float w = noise_weight[b];
            const int64_t end = b * m + ((k + 1) * BLOCK < m ? (k + 1) * BLOCK : m);
            for (int64_t j = b * m + k * BLOCK; j < end; j++) {
                float mu = mean->data[j];
                if (guided)
                    mu = mu - variance->data[j] * grad->data[j];
                x_prev->data[j] = mu + w * expf(0.5f * log_variance->data[j]) * noise->data[j];
            }
        }
    return DFC_OK;
}

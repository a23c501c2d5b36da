/* Fast CPU kernels of the diffusion ops that touch every pixel of a step: the reference kernels parallelise over
 * rows (samples), which leaves cores idle for the sampler's small batches; these split each row into blocks too.
 * The per-element arithmetic is diffusion_rows.h's, shared with the reference, so the results are identical. */
#include "../core/rng.h"
#include "cpu.h"
#include "diffusion_rows.h"

#define BLOCK 4096 /* elements per task: large enough to amortise the scheduling, small enough to spread a row */

static int64_t blocks_of(int64_t m) { return (m + BLOCK - 1) / BLOCK; }

static int64_t block_end(int64_t k, int64_t m) { return (k + 1) * BLOCK < m ? (k + 1) * BLOCK : m; }

dfc_status cpu_q_sample(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                        const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err)
{
    DFC_TRY(dfc_q_sample_check(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, err));
    const int64_t n = x0->shape[0], m = dfc_inner_size(x0, 1), blocks = blocks_of(m);
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++)
            dfc_q_sample_span(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, b, m, k * BLOCK, block_end(k, m));
    return DFC_OK;
}

/* BLOCK is a multiple of 4, so every block starts on a generator group. */
dfc_status cpu_gaussian_noise(dfc_backend *be, uint64_t seed, const uint64_t *keys, uint32_t stream, uint32_t iteration,
                              uint32_t step, uint32_t inner_step, dfc_tensor *out, dfc_error *err)
{
    DFC_TRY(dfc_gaussian_noise_check(keys, out, err));
    const int64_t n = out->shape[0], m = dfc_inner_size(out, 1), blocks = blocks_of(m);
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++) {
            const dfc_noise_stream s = {seed, keys[b], stream, iteration, step, inner_step};
            dfc_gaussian_noise_span(&s, out->data + b * m, k * BLOCK, block_end(k, m));
        }
    return DFC_OK;
}

dfc_status cpu_p_mean_variance_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                       const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *mean,
                                       dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                       dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_check(model_output, x_t, coefs, output_kind, mean, variance, log_variance, pred_xstart,
                                      err));
    float *var_out = dfc_optional_data(variance), *log_out = dfc_optional_data(log_variance);
    float *x0_out = dfc_optional_data(pred_xstart);
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1), blocks = blocks_of(m);
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++)
            dfc_p_mean_variance_span(model_output, x_t, coefs, output_kind, clip, mean->data, var_out, log_out, x0_out,
                                     b, m, k * BLOCK, block_end(k, m));
    return DFC_OK;
}

dfc_status cpu_sample_step(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                           const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                           const float *noise_weight, dfc_tensor *x_prev, dfc_error *err)
{
    DFC_TRY(dfc_sample_step_check(mean, variance, log_variance, grad, noise, noise_weight, x_prev, err));
    const int64_t n = mean->shape[0], m = dfc_inner_size(mean, 1), blocks = blocks_of(m);
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t k = 0; k < blocks; k++)
            dfc_sample_step_span(mean, variance, log_variance, grad, noise, noise_weight, x_prev, b, m, k * BLOCK,
                                 block_end(k, m));
    return DFC_OK;
}

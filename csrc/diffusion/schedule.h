/* Gaussian diffusion as openai/guided-diffusion defines it (gaussian_diffusion.py, respace.py): the beta schedule,
 * timestep respacing, every derived array in float64; q_sample, p_mean_variance and the reverse step gather each
 * row's coefficients (cast to float32, as _extract_into_tensor) and run the backend's ops (ops.h), which keep the
 * reference's float32 operation order, so results match PyTorch bit-closely. See docs/method.md section 2. */
#ifndef DIFFICE_SCHEDULE_H
#define DIFFICE_SCHEDULE_H

#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../ops/ops.h"

typedef enum {
    DFC_VAR_LEARNED_RANGE = 0, /* learn_sigma: the model's second half interpolates log beta~ .. log beta */
    DFC_VAR_FIXED_LARGE = 1,   /* [beta~_1, beta_1, ..., beta_{T-1}] (guided-diffusion's default without learn_sigma) */
    DFC_VAR_FIXED_SMALL = 2,   /* beta~ */
    /* a learn_sigma model's (eps, v) sampled with a fixed variance, v ignored: at coarse respacings the learned
     * range is wide at the last steps and guided samples get saturated blotches (docs/artefacts.md) */
    DFC_VAR_LEARNED_OUTPUT_FIXED_LARGE = 3,
    DFC_VAR_LEARNED_OUTPUT_FIXED_SMALL = 4,
} dfc_variance_type;

typedef struct dfc_diffusion {
    int original_steps; /* T of the training schedule (1000) */
    int num_timesteps;  /* respaced count K (400); indices i in [0, K) */
    dfc_variance_type variance_type;
    int64_t *timestep_map; /* (K) original timestep of respaced index i: what the model is given */
    /* (K) float64 arrays, rebuilt from the respaced betas exactly as GaussianDiffusion.__init__ does */
    double *betas, *alphas_cumprod, *alphas_cumprod_prev, *alphas_cumprod_next;
    double *sqrt_alphas_cumprod, *sqrt_one_minus_alphas_cumprod, *log_one_minus_alphas_cumprod;
    double *sqrt_recip_alphas_cumprod, *sqrt_recipm1_alphas_cumprod;
    double *posterior_variance, *posterior_log_variance_clipped;
    double *posterior_mean_coef1, *posterior_mean_coef2;
    double *log_betas;                           /* log(betas): the upper end of the learned range */
    double *fixed_variance, *fixed_log_variance; /* for the fixed variance types */
} dfc_diffusion;

/* schedule: "linear" or "cosine". respacing: "" (none), "K", or comma-separated section counts "a,b,c"
 * (also "ddimK" for DDIM's even stride), as guided-diffusion's space_timesteps. */
dfc_status dfc_diffusion_create(int steps, const char *schedule, const char *respacing, dfc_variance_type variance_type,
                                dfc_diffusion **out, dfc_error *err);
void dfc_diffusion_destroy(dfc_diffusion *d);

/* x_t = sqrt(abar_i) x0 + sqrt(1 - abar_i) noise; x0, noise, x_t (N, ...), indices (N) respaced. */
dfc_status dfc_diffusion_q_sample(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *x0, const int64_t *indices,
                                  const dfc_tensor *noise, dfc_tensor *x_t, dfc_error *err);

/* From the model output at respaced indices (N): mean, variance, log_variance, pred_xstart, all shaped like x_t.
 * model_output has 2C channels (eps, v) for the learned range and the LEARNED_OUTPUT types, C otherwise. clip
 * clamps pred_xstart to [-1, 1] before the posterior mean is formed. Any of the outputs but mean may be NULL. */
dfc_status dfc_diffusion_p_mean_variance(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *model_output,
                                         const dfc_tensor *x_t, const int64_t *indices, int clip, dfc_tensor *mean,
                                         dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                         dfc_error *err);

/* The gradient through pred_xstart = clip(sqrt(1/abar) x_t - sqrt(1/abar - 1) eps): dx_t and d_model_output (its
 * variance channels 0), either NULL, from d_pred_xstart (the x_t-gradient baseline's chain rule). */
dfc_status dfc_diffusion_pred_xstart_backward(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                              const dfc_tensor *model_output, const dfc_tensor *x_t,
                                              const int64_t *indices, int clip, dfc_tensor *dx_t,
                                              dfc_tensor *d_model_output, dfc_error *err);

/* x_{i-1} = mean - variance * grad + 1[i != 0] exp(log_variance / 2) noise: a reverse step, with the guidance
 * shift of DiME/Diff-ICE when grad is not NULL. All tensors shaped like x_t. */
dfc_status dfc_diffusion_sample_step(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance, const dfc_tensor *grad,
                                     const dfc_tensor *noise, const int64_t *indices, dfc_tensor *x_prev,
                                     dfc_error *err);

#endif

/* Optimiser state updates over flat float buffers: AdamW (torch.optim.AdamW), an exponential moving average of the
 * weights (guided-diffusion's update_ema) and gradient clipping by the global norm (torch's clip_grad_norm_).
 * A network's parameter buffer and its gradient buffer share one layout, so every update is a loop over n
 * floats; a caller whose parameters live in several buffers calls the update once per contiguous segment. */
#ifndef DIFFICE_OPTIM_H
#define DIFFICE_OPTIM_H

#include <stdint.h>

#include "../core/error.h"

typedef struct dfc_adamw_config {
    double lr;            /* 1e-4 in the Diff-ICE paper */
    double beta1, beta2;  /* torch defaults 0.9, 0.999 (guided-diffusion keeps them) */
    double eps;           /* torch default 1e-8 */
    double weight_decay;  /* decoupled: p *= 1 - lr * weight_decay before the Adam step (0.05 in the paper) */
} dfc_adamw_config;

/* Checks ranges as torch.optim.AdamW does (lr >= 0, eps >= 0, betas in [0, 1), weight_decay >= 0). */
dfc_status dfc_adamw_check(const dfc_adamw_config *cfg, dfc_error *err);

/* One AdamW step on n parameters: step is the 1-based count of this step (bias correction 1 - beta^step).
 * exp_avg and exp_avg_sq are the moment buffers (zero before the first step), laid out like param. */
void dfc_adamw_update(const dfc_adamw_config *cfg, int64_t step, float *param, const float *grad, float *exp_avg,
                      float *exp_avg_sq, int64_t n, int num_threads);

/* ema = rate * ema + (1 - rate) * param (guided-diffusion's update_ema). */
void dfc_ema_update(float *ema, const float *param, int64_t n, double rate, int num_threads);

/* Sum of squares of x, in double, summed in fixed chunks in a fixed order: the same result for any thread count
 * (training resumes bit for bit). */
double dfc_sum_squares(const float *x, int64_t n, int num_threads);

/* grad *= max_norm / (norm + 1e-6) when that factor is below 1, where norm is the global L2 norm
 * (torch.nn.utils.clip_grad_norm_). norm is taken over several segments by summing dfc_sum_squares first; this
 * scales one segment. */
void dfc_scale(float *x, int64_t n, float factor, int num_threads);

/* The clipping factor torch uses: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0 (clipping off). */
double dfc_clip_factor(double norm, double max_norm);

#endif

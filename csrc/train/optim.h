/* Optimiser steps over flat float buffers, sequenced from the op table's optimizer ops: AdamW (torch.optim.AdamW),
 * an exponential moving average of the weights (guided-diffusion's update_ema) and gradient clipping by the global
 * norm (torch's clip_grad_norm_). A network's parameter buffer and its gradient buffer share one layout, so each
 * update is one op over n floats; a caller whose parameters live in several buffers calls it once per contiguous
 * segment. The buffers are backend memory (host memory for the ref and cpu backends). */
#ifndef DIFFICE_OPTIM_H
#define DIFFICE_OPTIM_H

#include <stdint.h>

#include "../core/error.h"
#include "../ops/ops.h"

/* dfc_adamw_config and dfc_adamw_check (torch.optim.AdamW's ranges) are the adamw_step op's, in ops.h. */

/* One AdamW step on n parameters: step is the 1-based count of this step (bias correction 1 - beta^step).
 * exp_avg and exp_avg_sq are the moment buffers (zero before the first step), laid out like param. */
dfc_status dfc_adamw_update(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, float *param, const float *grad,
                            float *exp_avg, float *exp_avg_sq, int64_t n, dfc_error *err);

/* ema = rate * ema + (1 - rate) * param (guided-diffusion's update_ema). */
dfc_status dfc_ema_update(dfc_backend *be, float *ema, const float *param, int64_t n, double rate, dfc_error *err);

/* Clipping by the global L2 norm over several segments: *sum_squares += the sum of squares of one segment (in
 * double; the same for any thread count), then dfc_clip_scale on each segment. */
dfc_status dfc_add_sum_squares(dfc_backend *be, const float *x, int64_t n, double *sum_squares, dfc_error *err);

/* x *= clip factor min(1, max_norm / (norm + 1e-6)) where that is below 1 and norm is finite, as
 * torch.nn.utils.clip_grad_norm_; nothing when max_norm <= 0 (clipping off). */
dfc_status dfc_clip_scale(dfc_backend *be, float *x, int64_t n, double norm, double max_norm, dfc_error *err);

/* The clipping factor torch uses: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0 (clipping off). */
double dfc_clip_factor(double norm, double max_norm);

#endif

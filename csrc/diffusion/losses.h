/* The diffusion training loss of openai/guided-diffusion (gaussian_diffusion.py training_losses) for the
 * unconditional eps-predicting model: mse = mean over C, H, W of (noise - eps_hat)^2, plus, with a learned variance
 * (LEARNED_RANGE), the variational bound term vb in bits per dimension computed with the mean frozen (its gradient
 * reaches the variance channels v only): KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretized
 * Gaussian decoder NLL at t = 0. loss = mse + vb. Per-sample values and the gradient with respect to the model
 * output, which the UNet backward takes from there. The arithmetic runs in the backend's ops (mse, diffusion_vb). */
#ifndef DIFFICE_LOSSES_H
#define DIFFICE_LOSSES_H

#include "schedule.h"

typedef enum {
    DFC_LOSS_MSE = 0,          /* LossType.MSE: vb as is (guided-diffusion's default, rescale_learned_sigmas=False) */
    DFC_LOSS_RESCALED_MSE = 1, /* LossType.RESCALED_MSE: vb *= num_timesteps / 1000 */
} dfc_loss_type;

/* x_start, x_t, noise (N, C, H, W) with x_t = q_sample(x_start, indices, noise); model_output (N, 2C, H, W)
 * (eps_hat, v) for the learned range, (N, C, H, W) (eps_hat) for a fixed variance; indices (N) respaced indices.
 * Writes loss, mse and vb (N each; vb may be NULL, it is 0 for a fixed variance) and, when d_model_output is not
 * NULL (and its data not NULL), d (sum_b weights_b loss_b) / d model_output, shaped like model_output
 * (weights NULL: all 1). loss, mse and vb are backend memory (the ops write them); indices and weights are host
 * arrays. */
dfc_status dfc_diffusion_training_losses(const dfc_diffusion *d, dfc_backend *be, dfc_loss_type type,
                                         const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_tensor *noise,
                                         const int64_t *indices, const dfc_tensor *model_output, const float *weights,
                                         float *loss, float *mse, float *vb, dfc_tensor *d_model_output,
                                         dfc_error *err);

#endif

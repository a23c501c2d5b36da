/* Argument checks of the diffusion ops that have a fast kernel, shared by the reference kernels (ref_diffusion.c,
 * which defines them) and the fast ones (cpu_diffusion.c), so both backends reject the same inputs with the same
 * messages. */
#ifndef DIFFICE_DIFFUSION_CHECK_H
#define DIFFICE_DIFFUSION_CHECK_H

#include "ops.h"

dfc_status dfc_q_sample_check(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                              const float *sqrt_one_minus_abar, const dfc_tensor *x_t, dfc_error *err);

dfc_status dfc_p_mean_variance_check(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                     const dfc_posterior_coefs *coefs, int learned, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance,
                                     const dfc_tensor *pred_xstart, dfc_error *err);

dfc_status dfc_sample_step_check(const dfc_tensor *mean, const dfc_tensor *variance, const dfc_tensor *log_variance,
                                 const dfc_tensor *grad, const dfc_tensor *noise, const float *noise_weight,
                                 const dfc_tensor *x_prev, dfc_error *err);

#endif

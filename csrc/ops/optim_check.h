/* Argument checks of the optimizer ops, shared by the reference kernels (ref_optim.c), the fast ones (cpu_optim.c)
 * and the CUDA ones (csrc/cuda/optim.cu), so all backends reject the same inputs with the same messages. The checks
 * live in optim_check.c, which the CUDA plugin links too. */
#ifndef DIFFICE_OPTIM_CHECK_H
#define DIFFICE_OPTIM_CHECK_H

#include <math.h>

#include "../core/also_device.h"
#include "ops.h"

/* cfg in range (dfc_adamw_check), step >= 1, grad and both moments of param's shape. */
dfc_status dfc_adamw_step_check(const dfc_adamw_config *cfg, int64_t step, const dfc_tensor *param,
                                const dfc_tensor *grad, const dfc_tensor *exp_avg, const dfc_tensor *exp_avg_sq,
                                dfc_error *err);

/* rate in [0, 1], param of ema's shape. */
dfc_status dfc_ema_update_check(double rate, const dfc_tensor *ema, const dfc_tensor *param, dfc_error *err);

/* The float32 constants of one AdamW step, computed from the double hyperparameters as torch does (its scalars
 * are Python floats), so the reference and the fast kernel apply the same numbers. */
typedef struct dfc_adamw_constants {
    float decay; /* 1 - lr weight_decay */
    float one_minus_beta1;
    float beta2, one_minus_beta2;
    float neg_step_size;         /* -lr / (1 - beta1^step) */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^step) */
    float eps;
} dfc_adamw_constants;

dfc_adamw_constants dfc_adamw_constants_of(const dfc_adamw_config *cfg, int64_t step);

/* The element update every kernel runs, the CUDA one too (torch's _single_tensor_adamw, float32 tensor math). */
static DFC_ALSO_DEVICE inline void dfc_adamw_element(const dfc_adamw_constants *c, float *param, float grad,
                                                     float *exp_avg, float *exp_avg_sq)
{
    float p = *param * c->decay;                                         /* decoupled weight decay */
    float m = *exp_avg + c->one_minus_beta1 * (grad - *exp_avg);         /* lerp(m, g, 1 - beta1) */
    float v = *exp_avg_sq * c->beta2 + c->one_minus_beta2 * grad * grad; /* addcmul: value * t1 * t2 */
    float denom = sqrtf(v) / c->bias_correction2_sqrt + c->eps;
    *exp_avg = m;
    *exp_avg_sq = v;
    *param = p + c->neg_step_size * m / denom; /* addcdiv: value * t1 / t2 */
}

#endif

/* The optimizer ops' argument checks and AdamW's per-step constants (optim_check.h), in a file of their own so the
 * CUDA plugin links them without the reference kernels. */
#include <math.h>

#include "optim_check.h"

dfc_status dfc_adamw_check(const dfc_adamw_config *cfg, dfc_error *err)
{
    if (!(cfg->lr >= 0.0) || !isfinite(cfg->lr))
        return dfc_fail(err, DFC_ERR_VALUE, "AdamW: lr must be a finite number >= 0, got %g", cfg->lr);
    if (!(cfg->eps >= 0.0) || !isfinite(cfg->eps))
        return dfc_fail(err, DFC_ERR_VALUE, "AdamW: eps must be a finite number >= 0, got %g", cfg->eps);
    if (!(cfg->beta1 >= 0.0 && cfg->beta1 < 1.0) || !(cfg->beta2 >= 0.0 && cfg->beta2 < 1.0))
        return dfc_fail(err, DFC_ERR_VALUE, "AdamW: betas must be in [0, 1), got (%g, %g)", cfg->beta1, cfg->beta2);
    if (!(cfg->weight_decay >= 0.0) || !isfinite(cfg->weight_decay))
        return dfc_fail(err, DFC_ERR_VALUE, "AdamW: weight_decay must be a finite number >= 0, got %g",
                        cfg->weight_decay);
    return DFC_OK;
}

dfc_status dfc_adamw_step_check(const dfc_adamw_config *cfg, int64_t step, const dfc_tensor *param,
                                const dfc_tensor *grad, const dfc_tensor *exp_avg, const dfc_tensor *exp_avg_sq,
                                dfc_error *err)
{
    const char *op = "adamw_step";
    DFC_TRY(dfc_adamw_check(cfg, err));
    if (step < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: step must be >= 1 (the 1-based count of this step), got %lld", op,
                        (long long)step);
    DFC_TRY(dfc_check_same_shape(param, grad, op, "param", "grad", err));
    DFC_TRY(dfc_check_same_shape(param, exp_avg, op, "param", "exp_avg", err));
    return dfc_check_same_shape(param, exp_avg_sq, op, "param", "exp_avg_sq", err);
}

dfc_status dfc_ema_update_check(double rate, const dfc_tensor *ema, const dfc_tensor *param, dfc_error *err)
{
    if (!(rate >= 0.0 && rate <= 1.0))
        return dfc_fail(err, DFC_ERR_VALUE, "ema_update: rate must be in [0, 1], got %g", rate);
    return dfc_check_same_shape(ema, param, "ema_update", "ema", "param", err);
}

dfc_adamw_constants dfc_adamw_constants_of(const dfc_adamw_config *cfg, int64_t step)
{
    const double bias_correction1 = 1.0 - pow(cfg->beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(cfg->beta2, (double)step);
    dfc_adamw_constants c = {
        .decay = (float)(1.0 - cfg->lr * cfg->weight_decay),
        .one_minus_beta1 = (float)(1.0 - cfg->beta1),
        .beta2 = (float)cfg->beta2,
        .one_minus_beta2 = (float)(1.0 - cfg->beta2),
        .neg_step_size = (float)(-cfg->lr / bias_correction1),
        .bias_correction2_sqrt = (float)sqrt(bias_correction2),
        .eps = (float)cfg->eps,
    };
    return c;
}

/* Reference optimizer kernels: AdamW, the EMA of the weights, and the two halves of gradient clipping by the global
 * norm (sum of squares, scale). Plain serial loops; sums in double. */
#include <math.h>

#include "optim_check.h"
#include "ref.h"

dfc_status ref_adamw_step(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, dfc_tensor *param,
                          const dfc_tensor *grad, dfc_tensor *exp_avg, dfc_tensor *exp_avg_sq, dfc_error *err)
{
    (void)be;
    DFC_TRY(dfc_adamw_step_check(cfg, step, param, grad, exp_avg, exp_avg_sq, err));
    const dfc_adamw_constants c = dfc_adamw_constants_of(cfg, step);
    const int64_t n = dfc_numel(param);
    for (int64_t i = 0; i < n; i++)
        dfc_adamw_element(&c, &param->data[i], grad->data[i], &exp_avg->data[i], &exp_avg_sq->data[i]);
    return DFC_OK;
}

dfc_status ref_ema_update(dfc_backend *be, double rate, dfc_tensor *ema, const dfc_tensor *param, dfc_error *err)
{
    (void)be;
    DFC_TRY(dfc_ema_update_check(rate, ema, param, err));
    /* targ.mul_(rate).add_(src, alpha=1 - rate) */
    const float keep = (float)rate, take = (float)(1.0 - rate);
    const int64_t n = dfc_numel(ema);
    for (int64_t i = 0; i < n; i++)
        ema->data[i] = ema->data[i] * keep + take * param->data[i];
    return DFC_OK;
}

dfc_status ref_sum_squares(dfc_backend *be, const dfc_tensor *x, double *sum, dfc_error *err)
{
    (void)be;
    DFC_TRY(dfc_check_ndim(x, "sum_squares", "x", 1, DFC_MAX_DIMS, err));
    const int64_t n = dfc_numel(x);
    double total = 0.0;
    for (int64_t i = 0; i < n; i++)
        total += (double)x->data[i] * (double)x->data[i];
    *sum = total;
    return DFC_OK;
}

dfc_status ref_scale(dfc_backend *be, dfc_tensor *x, float factor, dfc_error *err)
{
    (void)be;
    DFC_TRY(dfc_check_ndim(x, "scale", "x", 1, DFC_MAX_DIMS, err));
    const int64_t n = dfc_numel(x);
    for (int64_t i = 0; i < n; i++)
        x->data[i] *= factor;
    return DFC_OK;
}

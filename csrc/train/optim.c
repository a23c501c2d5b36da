/* Optimiser steps as op-table calls on flat segments: no arithmetic here beyond the scalar clip factor. */
#include "optim.h"

#include <math.h>

dfc_status dfc_adamw_update(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, float *param, const float *grad,
                            float *exp_avg, float *exp_avg_sq, int64_t n, dfc_error *err)
{
    dfc_tensor p = dfc_tensor1(param, n), g = dfc_tensor1((float *)grad, n);
    dfc_tensor m = dfc_tensor1(exp_avg, n), v = dfc_tensor1(exp_avg_sq, n);
    return be->ops->adamw_step(be, cfg, step, &p, &g, &m, &v, err);
}

dfc_status dfc_ema_update(dfc_backend *be, float *ema, const float *param, int64_t n, double rate, dfc_error *err)
{
    dfc_tensor e = dfc_tensor1(ema, n), p = dfc_tensor1((float *)param, n);
    return be->ops->ema_update(be, rate, &e, &p, err);
}

dfc_status dfc_add_sum_squares(dfc_backend *be, const float *x, int64_t n, double *sum_squares, dfc_error *err)
{
    dfc_tensor t = dfc_tensor1((float *)x, n);
    double sum = 0.0;
    DFC_TRY(be->ops->sum_squares(be, &t, &sum, err));
    *sum_squares += sum;
    return DFC_OK;
}

dfc_status dfc_clip_scale(dfc_backend *be, float *x, int64_t n, double norm, double max_norm, dfc_error *err)
{
    const double factor = dfc_clip_factor(norm, max_norm);
    if (!(factor < 1.0) || !isfinite(norm))
        return DFC_OK;
    dfc_tensor t = dfc_tensor1(x, n);
    return be->ops->scale(be, &t, (float)factor, err);
}

double dfc_clip_factor(double norm, double max_norm)
{
    if (!(max_norm > 0.0))
        return 1.0;
    double factor = max_norm / (norm + 1e-6);
    return factor < 1.0 ? factor : 1.0;
}

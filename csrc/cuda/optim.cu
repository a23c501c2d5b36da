/* Optimizer ops on the CUDA backend: AdamW, the EMA of the weights and the sum of squares of gradient clipping.
 * Read against ref_optim.c: the same checks and the same element formula (optim_check.h's dfc_adamw_element, which
 * nvcc compiles for the device too). The sum of squares adds fixed chunks, then fixed groups of their partial sums,
 * through the backend scratch: the chunking depends on the element count only, so the result is the same double
 * for any launch configuration.
 *
 * Verified only on a GPU: the launches, and the read back of the sum (a synchronising copy on the backend's
 * stream). */
#include "cuda_backend.cuh"

extern "C" {
#include "../ops/optim_check.h"
}

dfc_status cuda_adamw_step(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, dfc_tensor *param,
                           const dfc_tensor *grad, dfc_tensor *exp_avg, dfc_tensor *exp_avg_sq, dfc_error *err)
{
    DFC_TRY(dfc_adamw_step_check(cfg, step, param, grad, exp_avg, exp_avg_sq, err));
    const dfc_adamw_constants c = dfc_adamw_constants_of(cfg, step);
    float *p = param->data, *m = exp_avg->data, *v = exp_avg_sq->data;
    const float *g = grad->data;
    return dfc_cuda_for_each(be, dfc_numel(param), "adamw_step", err,
                             [=] DFC_DEVICE(int64_t i) { dfc_adamw_element(&c, &p[i], g[i], &m[i], &v[i]); });
}

dfc_status cuda_ema_update(dfc_backend *be, double rate, dfc_tensor *ema, const dfc_tensor *param, dfc_error *err)
{
    DFC_TRY(dfc_ema_update_check(rate, ema, param, err));
    const float keep = (float)rate, take = (float)(1.0 - rate);
    float *e = ema->data;
    const float *p = param->data;
    return dfc_cuda_for_each(be, dfc_numel(ema), "ema_update", err,
                             [=] DFC_DEVICE(int64_t i) { e[i] = e[i] * keep + take * p[i]; });
}

/* Elements per chunk of the sum of squares, and partial sums per group of each later pass. */
#define SUM_GROUP 2048

static int64_t groups_of(int64_t n) { return (n + SUM_GROUP - 1) / SUM_GROUP; }

dfc_status cuda_sum_squares(dfc_backend *be, const dfc_tensor *x, double *sum, dfc_error *err)
{
    const char *op = "sum_squares";
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    const int64_t n = dfc_numel(x);
    /* the partial sums of every pass, one after the other: the last pass leaves one */
    int64_t partials = 0;
    for (int64_t count = groups_of(n); count > 0; count = count > 1 ? groups_of(count) : 0)
        partials += count;
    if (partials == 0) {
        *sum = 0.0;
        return DFC_OK;
    }
    void *scratch;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)partials * sizeof(double), &scratch, err));
    double *out = (double *)scratch;
    const float *xs = x->data;
    DFC_TRY(dfc_cuda_for_each(be, groups_of(n), op, err, [=] DFC_DEVICE(int64_t c) {
        const int64_t start = c * SUM_GROUP, end = start + SUM_GROUP < n ? start + SUM_GROUP : n;
        double s = 0.0;
        for (int64_t i = start; i < end; i++)
            s += (double)xs[i] * (double)xs[i];
        out[c] = s;
    }));
    for (int64_t count = groups_of(n); count > 1; count = groups_of(count)) {
        const double *in = out;
        out += count;
        DFC_TRY(dfc_cuda_for_each(be, groups_of(count), op, err, [=] DFC_DEVICE(int64_t c) {
            const int64_t start = c * SUM_GROUP, end = start + SUM_GROUP < count ? start + SUM_GROUP : count;
            double s = 0.0;
            for (int64_t i = start; i < end; i++)
                s += in[i];
            out[c] = s;
        }));
    }
    return dfc_cuda_read_back(be, sum, out, sizeof(double), err);
}

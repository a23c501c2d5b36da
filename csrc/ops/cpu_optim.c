/* Fast CPU optimizer kernels: the reference element formulas (optim_check.h) as OpenMP loops over independent
 * elements; the sum of squares adds fixed chunks in a fixed order, so it does not depend on the thread count. */
#include <math.h>

#include "cpu.h"
#include "optim_check.h"

/* Chunks of the deterministic sum of squares: their bounds depend on n only, not on the thread count. */
#define SUM_CHUNKS 64

dfc_status cpu_adamw_step(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, dfc_tensor *param,
                          const dfc_tensor *grad, dfc_tensor *exp_avg, dfc_tensor *exp_avg_sq, dfc_error *err)
{
    DFC_TRY(dfc_adamw_step_check(cfg, step, param, grad, exp_avg, exp_avg_sq, err));
    const dfc_adamw_constants c = dfc_adamw_constants_of(cfg, step);
    const int64_t n = dfc_numel(param);
    float *p = param->data, *m = exp_avg->data, *v = exp_avg_sq->data;
    const float *g = grad->data;
/* no `simd`: sqrtf may set errno, so compilers without -fno-math-errno cannot vectorise it (clang fails) */
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        dfc_adamw_element(&c, &p[i], g[i], &m[i], &v[i]);
    return DFC_OK;
}

dfc_status cpu_ema_update(dfc_backend *be, double rate, dfc_tensor *ema, const dfc_tensor *param, dfc_error *err)
{
    DFC_TRY(dfc_ema_update_check(rate, ema, param, err));
    const float keep = (float)rate, take = (float)(1.0 - rate);
    const int64_t n = dfc_numel(ema);
    float *e = ema->data;
    const float *p = param->data;
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        e[i] = e[i] * keep + take * p[i];
    return DFC_OK;
}

dfc_status cpu_sum_squares(dfc_backend *be, const dfc_tensor *x, double *sum, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, "sum_squares", "x", 1, DFC_MAX_DIMS, err));
    const int64_t n = dfc_numel(x);
    const float *xs = x->data;
    double partial[SUM_CHUNKS];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int c = 0; c < SUM_CHUNKS; c++) {
        const int64_t start = n * c / SUM_CHUNKS, end = n * (c + 1) / SUM_CHUNKS;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = start; i < end; i++)
            s += (double)xs[i] * (double)xs[i];
        partial[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < SUM_CHUNKS; c++)
        total += partial[c];
    *sum = total;
    return DFC_OK;
}

dfc_status cpu_scale(dfc_backend *be, dfc_tensor *x, float factor, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, "scale", "x", 1, DFC_MAX_DIMS, err));
    const int64_t n = dfc_numel(x);
    float *xs = x->data;
#pragma omp parallel for simd num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        xs[i] *= factor;
    return DFC_OK;
}

#include "optim.h"

#include <math.h>
#include <omp.h>

/* Chunks of the deterministic sum of squares: their bounds depend on n only, not on the thread count. */
#define SUM_CHUNKS 64

static int threads(int num_threads)
{
    return num_threads > 0 ? num_threads : omp_get_max_threads();
}

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

void dfc_adamw_update(const dfc_adamw_config *cfg, int64_t step, float *param, const float *grad, float *exp_avg,
                      float *exp_avg_sq, int64_t n, int num_threads)
{
    /* torch's _single_tensor_adamw: the scalars are Python floats (double), the tensor math is float32 */
    const float decay = (float)(1.0 - cfg->lr * cfg->weight_decay);
    const float one_minus_beta1 = (float)(1.0 - cfg->beta1);
    const float beta2 = (float)cfg->beta2, one_minus_beta2 = (float)(1.0 - cfg->beta2);
    const double bias_correction1 = 1.0 - pow(cfg->beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(cfg->beta2, (double)step);
    const float neg_step_size = (float)(-cfg->lr / bias_correction1);
    const float bias_correction2_sqrt = (float)sqrt(bias_correction2);
    const float eps = (float)cfg->eps;
    #pragma omp parallel for simd num_threads(threads(num_threads)) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        float p = param[i] * decay;                       /* decoupled weight decay */
        float m = exp_avg[i] + one_minus_beta1 * (g - exp_avg[i]); /* lerp(m, g, 1 - beta1) */
        float v = exp_avg_sq[i] * beta2 + one_minus_beta2 * g * g; /* addcmul: value * t1 * t2 */
        float denom = sqrtf(v) / bias_correction2_sqrt + eps;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p + neg_step_size * m / denom;                  /* addcdiv: value * t1 / t2 */
    }
}

void dfc_ema_update(float *ema, const float *param, int64_t n, double rate, int num_threads)
{
    /* targ.mul_(rate).add_(src, alpha=1 - rate) */
    const float keep = (float)rate, take = (float)(1.0 - rate);
    #pragma omp parallel for simd num_threads(threads(num_threads)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        ema[i] = ema[i] * keep + take * param[i];
}

double dfc_sum_squares(const float *x, int64_t n, int num_threads)
{
    /* a fixed number of chunks whose bounds depend on n only; partials added in chunk order */
    double partial[SUM_CHUNKS];
    #pragma omp parallel for num_threads(threads(num_threads)) schedule(static)
    for (int c = 0; c < SUM_CHUNKS; c++) {
        int64_t start = n * c / SUM_CHUNKS, end = n * (c + 1) / SUM_CHUNKS;
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int64_t i = start; i < end; i++)
            sum += (double)x[i] * (double)x[i];
        partial[c] = sum;
    }
    double total = 0.0;
    for (int c = 0; c < SUM_CHUNKS; c++)
        total += partial[c];
    return total;
}

void dfc_scale(float *x, int64_t n, float factor, int num_threads)
{
    #pragma omp parallel for simd num_threads(threads(num_threads)) schedule(static)
    for (int64_t i = 0; i < n; i++)
        x[i] *= factor;
}

double dfc_clip_factor(double norm, double max_norm)
{
    if (!(max_norm > 0.0))
        return 1.0;
    double factor = max_norm / (norm + 1e-6);
    return factor < 1.0 ? factor : 1.0;
}

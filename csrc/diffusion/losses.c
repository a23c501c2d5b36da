#include "losses.h"

#include <math.h>
#include <omp.h>

#define LN2 0.69314718055994530942
#define SQRT_2_OVER_PI 0.79788456080286535588

/* ---- guided-diffusion losses.py, in double, each with its derivative ---- */

/* approx_standard_normal_cdf: 0.5 (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))); *pdf gets its derivative */
static inline double approx_cdf(double u, double *pdf)
{
    double th = tanh(SQRT_2_OVER_PI * (u + 0.044715 * u * u * u));
    *pdf = 0.5 * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * u * u);
    return 0.5 * (1.0 + th);
}

/* discretized_gaussian_log_likelihood for one pixel x in [-1, 1] (bins of width 2/255) under N(mean, exp(2 ls));
 * *dls gets d logp / d ls. log(clamp(p, 1e-12)) passes no gradient below the clamp, as torch's clamp. */
static inline double discretized_gaussian_log_likelihood(double x, double mean, double ls, double *dls)
{
    double centered = x - mean, inv_stdv = exp(-ls);
    double plus_in = inv_stdv * (centered + 1.0 / 255.0), min_in = inv_stdv * (centered - 1.0 / 255.0);
    double pdf_plus, pdf_min;
    double cdf_plus = approx_cdf(plus_in, &pdf_plus), cdf_min = approx_cdf(min_in, &pdf_min);
    /* d plus_in / d ls = -plus_in, d min_in / d ls = -min_in */
    double d_cdf_plus = -pdf_plus * plus_in, d_cdf_min = -pdf_min * min_in;
    double p, dp;
    if (x < -0.999) {         /* the lowest bin reaches to -inf */
        p = cdf_plus;
        dp = d_cdf_plus;
    } else if (x > 0.999) {   /* the highest bin reaches to +inf */
        p = 1.0 - cdf_min;
        dp = -d_cdf_min;
    } else {
        p = cdf_plus - cdf_min;
        dp = d_cdf_plus - d_cdf_min;
    }
    if (p >= 1e-12) {
        *dls = dp / p;
        return log(p);
    }
    *dls = 0.0;
    return log(1e-12);
}

/* normal_kl(mean1, logvar1, mean2, logvar2); *dlogvar2 gets its derivative in logvar2 (the mean is frozen) */
static inline double normal_kl(double mean1, double logvar1, double mean2, double logvar2, double *dlogvar2)
{
    double ratio = exp(logvar1 - logvar2), dist = (mean1 - mean2) * (mean1 - mean2) * exp(-logvar2);
    *dlogvar2 = 0.5 * (1.0 - ratio - dist);
    return 0.5 * (-1.0 + logvar2 - logvar1 + ratio + dist);
}

/* ---- training_losses ---- */

static dfc_status check_inputs(const dfc_diffusion *d, const dfc_tensor *x_start, const dfc_tensor *x_t,
                               const dfc_tensor *noise, const int64_t *indices, const dfc_tensor *model_output,
                               const dfc_tensor *d_model_output, dfc_error *err)
{
    const char *op = "training_losses";
    DFC_TRY(dfc_check_ndim(x_start, op, "x_start", 2, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x_start, x_t, op, "x_start", "x_t", err));
    DFC_TRY(dfc_check_same_shape(x_start, noise, op, "x_start", "noise", err));
    int learned = d->variance_type == DFC_VAR_LEARNED_RANGE;
    int64_t out_shape[DFC_MAX_DIMS];
    for (int i = 0; i < x_start->ndim; i++)
        out_shape[i] = x_start->shape[i];
    out_shape[1] *= learned ? 2 : 1;
    if (dfc_check_shape(model_output, op, "model_output", x_start->ndim, out_shape, err) != DFC_OK) {
        dfc_error_prefix(err, "%s", learned ? "(learned sigma: 2C channels) " : "(fixed variance: C channels) ");
        return err ? err->code : DFC_ERR_SHAPE;
    }
    if (d_model_output && d_model_output->data)
        DFC_TRY(dfc_check_same_shape(model_output, d_model_output, op, "model_output", "d_model_output", err));
    for (int64_t b = 0; b < x_start->shape[0]; b++)
        if (indices[b] < 0 || indices[b] >= d->num_timesteps)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: timestep index %lld of sample %lld is outside [0, %d)", op,
                            (long long)indices[b], (long long)b, d->num_timesteps);
    return DFC_OK;
}

dfc_status dfc_diffusion_training_losses(const dfc_diffusion *d, dfc_loss_type type, const dfc_tensor *x_start,
                                         const dfc_tensor *x_t, const dfc_tensor *noise, const int64_t *indices,
                                         const dfc_tensor *model_output, const float *weights, float *loss,
                                         float *mse, float *vb, dfc_tensor *d_model_output, dfc_error *err)
{
    if (type != DFC_LOSS_MSE && type != DFC_LOSS_RESCALED_MSE)
        return dfc_fail(err, DFC_ERR_VALUE, "training_losses: unknown loss type %d", (int)type);
    DFC_TRY(check_inputs(d, x_start, x_t, noise, indices, model_output, d_model_output, err));
    const int learned = d->variance_type == DFC_VAR_LEARNED_RANGE;
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
    float *dout = d_model_output ? d_model_output->data : NULL;
    /* RESCALED_MSE scales vb by num_timesteps / 1000; plain MSE leaves it as is */
    const double vb_scale = type == DFC_LOSS_RESCALED_MSE ? d->num_timesteps / 1000.0 : 1.0;

    /* one sample per iteration: the sums are then the same for any thread count */
    #pragma omp parallel for schedule(static) num_threads(n < omp_get_max_threads() ? (int)n : omp_get_max_threads())
    for (int64_t b = 0; b < n; b++) {
        const int64_t i = indices[b];
        const double w = weights ? weights[b] : 1.0;
        const float *eps_hat = model_output->data + b * m * (learned ? 2 : 1);
        const float *v = learned ? eps_hat + m : NULL;
        const float *x0 = x_start->data + b * m, *xt = x_t->data + b * m, *eps = noise->data + b * m;
        float *d_eps = dout ? dout + b * m * (learned ? 2 : 1) : NULL;
        float *d_v = dout && learned ? d_eps + m : NULL;

        double mse_sum = 0.0;
        for (int64_t j = 0; j < m; j++) {
            double diff = (double)eps_hat[j] - (double)eps[j]; /* target: the noise (ModelMeanType.EPSILON) */
            mse_sum += diff * diff;
            if (d_eps)
                d_eps[j] = (float)(w * 2.0 * diff / (double)m);
        }
        double vb_sum = 0.0;
        if (learned) {
            const double min_log = d->posterior_log_variance_clipped[i], max_log = d->log_betas[i];
            const double coef1 = d->posterior_mean_coef1[i], coef2 = d->posterior_mean_coef2[i];
            const double recip = d->sqrt_recip_alphas_cumprod[i], recipm1 = d->sqrt_recipm1_alphas_cumprod[i];
            /* d vb / d v per unit of the per-element term: mean_flat, / ln 2, d logvar / d v = (max - min) / 2 */
            const double d_scale = w * vb_scale * 0.5 * (max_log - min_log) / ((double)m * LN2);
            for (int64_t j = 0; j < m; j++) {
                double frac = ((double)v[j] + 1.0) / 2.0; /* not clamped, as guided-diffusion */
                double logvar = frac * max_log + (1.0 - frac) * min_log;
                /* frozen mean: p_mean_variance of the detached eps_hat, clip_denoised=False */
                double pred_x0 = recip * xt[j] - recipm1 * eps_hat[j];
                double mean = coef1 * pred_x0 + coef2 * xt[j];
                double term, dterm;
                if (i > 0) { /* KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), q's log variance is min_log */
                    double true_mean = coef1 * x0[j] + coef2 * xt[j];
                    term = normal_kl(true_mean, min_log, mean, logvar, &dterm);
                } else {     /* decoder NLL, log scale = logvar / 2 */
                    double dls;
                    term = -discretized_gaussian_log_likelihood(x0[j], mean, 0.5 * logvar, &dls);
                    dterm = -0.5 * dls;
                }
                vb_sum += term;
                if (d_v)
                    d_v[j] = (float)(d_scale * dterm);
            }
        }
        double mse_b = mse_sum / (double)m, vb_b = vb_scale * vb_sum / ((double)m * LN2);
        mse[b] = (float)mse_b;
        if (vb)
            vb[b] = (float)vb_b;
        loss[b] = (float)(mse_b + vb_b);
    }
    return DFC_OK;
}

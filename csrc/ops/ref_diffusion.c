/* Reference kernels of the diffusion arithmetic (ops.h's last block): the sampler's per-row formulas in float32 with
 * guided-diffusion's operation order (its tests compare with PyTorch at ~1e-6), and the training loss's variational
 * bound in double. Rows (samples) are independent and run in parallel. */
#include <math.h>
#include <string.h>

#include "../core/rng.h"
#include "diffusion_rows.h"
#include "net_ops.h"
#include "ref.h"

#define LN2 0.69314718055994530942

/* ---- q_sample ---- */

dfc_status ref_q_sample(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                        const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err)
{
    DFC_TRY(dfc_q_sample_check(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, err));
    const int64_t n = x0->shape[0], m = dfc_inner_size(x0, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_q_sample_span(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, b, m, 0, m);
    return DFC_OK;
}

/* ---- gaussian_noise ---- */

dfc_status ref_gaussian_noise(dfc_backend *be, uint64_t seed, const uint64_t *keys, uint32_t stream, uint32_t iteration,
                              uint32_t step, uint32_t inner_step, dfc_tensor *out, dfc_error *err)
{
    DFC_TRY(dfc_gaussian_noise_check(keys, out, err));
    const int64_t n = out->shape[0], m = dfc_inner_size(out, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const dfc_noise_stream s = {seed, keys[b], stream, iteration, step, inner_step};
        dfc_gaussian_noise(&s, out->data + b * m, m);
    }
    return DFC_OK;
}

/* ---- p_mean_variance, forward and backward ---- */

dfc_status ref_p_mean_variance_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                       const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *mean,
                                       dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                       dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_check(model_output, x_t, coefs, output_kind, mean, variance, log_variance, pred_xstart,
                                      err));
    float *var_out = dfc_optional_data(variance), *log_out = dfc_optional_data(log_variance);
    float *x0_out = dfc_optional_data(pred_xstart);
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_p_mean_variance_span(model_output, x_t, coefs, output_kind, clip, mean->data, var_out, log_out, x0_out, b,
                                 m, 0, m);
    return DFC_OK;
}

dfc_status ref_p_mean_variance_backward(dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                        const dfc_tensor *model_output, const dfc_tensor *x_t,
                                        const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *dx_t,
                                        dfc_tensor *d_model_output, dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_backward_check(d_pred_xstart, model_output, x_t, coefs, output_kind, dx_t,
                                               d_model_output, err));
    float *dx = dfc_optional_data(dx_t), *dmo = dfc_optional_data(d_model_output);
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1), out_m = m * (output_kind ? 2 : 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float recip = coefs->sqrt_recip_abar[b], recipm1 = coefs->sqrt_recipm1_abar[b];
        const float *eps = model_output->data + b * out_m;
        for (int64_t j = 0; j < m; j++) {
            const int64_t at = b * m + j;
            const float unclipped = recip * x_t->data[at] - recipm1 * eps[j];
            const float pass = (!clip || (unclipped >= -1.0f && unclipped <= 1.0f)) ? 1.0f : 0.0f;
            const float g = pass * d_pred_xstart->data[at];
            if (dmo)
                dmo[b * out_m + j] = -recipm1 * g;
            if (dx)
                dx[at] = recip * g;
        }
        if (dmo && output_kind) /* the variance channels do not reach pred_xstart */
            memset(dmo + b * out_m + m, 0, (size_t)m * sizeof(float));
    }
    return DFC_OK;
}

/* ---- the reverse step ---- */

dfc_status ref_sample_step(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                           const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                           const float *noise_weight, dfc_tensor *x_prev, dfc_error *err)
{
    DFC_TRY(dfc_sample_step_check(mean, variance, log_variance, grad, noise, noise_weight, x_prev, err));
    const int64_t n = mean->shape[0], m = dfc_inner_size(mean, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        dfc_sample_step_span(mean, variance, log_variance, grad, noise, noise_weight, x_prev, b, m, 0, m);
    return DFC_OK;
}

/* ---- per-row scale and axpy ---- */

/* y = alpha[b] x, or y += alpha[b] x when accumulate */
static dfc_status row_linear(dfc_backend *be, const char *op, const float *alpha, const dfc_tensor *x, dfc_tensor *y,
                             int accumulate, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    DFC_TRY(dfc_check_rows(op, "alpha", alpha, err));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t j = b * m; j < (b + 1) * m; j++)
            y->data[j] = accumulate ? y->data[j] + alpha[b] * x->data[j] : x->data[j] * alpha[b];
    return DFC_OK;
}

dfc_status ref_row_scale(dfc_backend *be, const dfc_tensor *x, const float *alpha, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_scale", alpha, x, y, 0, err);
}

dfc_status ref_row_axpy(dfc_backend *be, const float *alpha, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    return row_linear(be, "row_axpy", alpha, x, y, 1, err);
}

/* ---- FastDiME's mask ---- */

dfc_status ref_change_map(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y, dfc_error *err)
{
    DFC_TRY(dfc_check_pixel_map("change_map", a, b, y, "y", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float *out = y->data + r * hw, max = 0.0f;
        for (int64_t k = 0; k < hw; k++) {
            float sum = 0.0f;
            for (int64_t ch = 0; ch < c; ch++) {
                const int64_t j = (r * c + ch) * hw + k;
                sum += fabsf((a->data[j] + 1.0f) / 2.0f - (b->data[j] + 1.0f) / 2.0f);
            }
            out[k] = sum;
            max = sum > max ? sum : max;
        }
        if (max > 0.0f)
            for (int64_t k = 0; k < hw; k++)
                out[k] /= max;
    }
    return DFC_OK;
}

dfc_status ref_masked_blend(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *mask,
                            float threshold, dfc_tensor *y, dfc_error *err)
{
    const char *op = "masked_blend";
    DFC_TRY(dfc_check_pixel_map(op, a, b, mask, "mask", err));
    DFC_TRY(dfc_check_same_shape(a, y, op, "a", "y", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++)
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t k = 0; k < hw; k++) {
                const int64_t j = (r * c + ch) * hw + k;
                const float keep = mask->data[r * hw + k] < threshold ? 1.0f : 0.0f;
                y->data[j] = a->data[j] * (1.0f - keep) + keep * b->data[j];
            }
    return DFC_OK;
}

/* ---- DiME's l1 / l2 distance terms ---- */

dfc_status ref_distance_penalty_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, float lambda_l1,
                                        float lambda_l2, dfc_tensor *loss, dfc_error *err)
{
    DFC_TRY(dfc_check_distance("distance_penalty", a, b, loss, "loss", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        double l1 = 0.0, l2 = 0.0;
        for (int64_t k = 0; k < hw; k++) {
            const int64_t at = r * c * hw + k;
            l2 += dfc_channel_diff_norm(a->data + at, b->data + at, c, hw);
            for (int64_t ch = 0; ch < c; ch++)
                l1 += fabs((double)a->data[at + ch * hw] - b->data[at + ch * hw]);
        }
        loss->data[r] = (float)(lambda_l1 * l1 + lambda_l2 * l2);
    }
    return DFC_OK;
}

dfc_status ref_distance_penalty_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                         const dfc_tensor *b, float lambda_l1, float lambda_l2, dfc_tensor *da,
                                         dfc_error *err)
{
    const char *op = "distance_penalty_backward";
    DFC_TRY(dfc_check_distance(op, a, b, dloss, "dloss", err));
    DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const float scale = dloss->data[r];
        for (int64_t k = 0; k < hw; k++) {
            const int64_t at = r * c * hw + k;
            const double norm = dfc_channel_diff_norm(a->data + at, b->data + at, c, hw);
            const float inv_norm = norm > 0.0 ? (float)(1.0 / norm) : 0.0f;
            for (int64_t ch = 0; ch < c; ch++) {
                const int64_t j = at + ch * hw;
                const float diff = a->data[j] - b->data[j];
                const float sign = (float)((diff > 0.0f) - (diff < 0.0f));
                da->data[j] = (lambda_l1 * sign + lambda_l2 * diff * inv_norm) * scale;
            }
        }
    }
    return DFC_OK;
}

/* ---- per-row checks: non-finite rows, the flip decision ---- */

dfc_status ref_nonfinite_rows(dfc_backend *be, dfc_tensor *x, int *nonfinite, dfc_error *err)
{
    DFC_TRY(dfc_nonfinite_rows_check(x, nonfinite, err));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        float *row = x->data + b * m;
        int bad = 0;
        for (int64_t j = 0; j < m; j++)
            bad |= !isfinite(row[j]);
        nonfinite[b] = bad;
        if (bad)
            memset(row, 0, (size_t)m * sizeof(float));
    }
    return DFC_OK;
}

dfc_status ref_target_probability(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *prob,
                                  int *is_target, dfc_error *err)
{
    DFC_TRY(dfc_target_probability_check(logits, targets, prob, is_target, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *z = logits->data + b * k;
        prob->data[b] = (float)dfc_class_probability_row(z, k, targets[b]);
        is_target[b] = dfc_predicted_class_row(z, k) == targets[b];
    }
    return DFC_OK;
}

/* ---- the training loss's variational bound (guided-diffusion losses.py), in double ---- */

dfc_status ref_diffusion_vb_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_start,
                                    const dfc_tensor *x_t, const dfc_vb_coefs *coefs, dfc_tensor *vb, dfc_error *err)
{
    const char *op = "diffusion_vb";
    DFC_TRY(dfc_check_vb(op, model_output, x_start, x_t, coefs, vb, "vb", NULL, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *eps = model_output->data + b * 2 * m, *v = eps + m;
        const float *x0 = x_start->data + b * m, *xt = x_t->data + b * m;
        double sum = 0.0, unused;
        for (int64_t j = 0; j < m; j++)
            sum += dfc_vb_term(coefs, b, eps[j], v[j], x0[j], xt[j], &unused);
        vb->data[b] = (float)(coefs->scale * sum / ((double)m * LN2));
    }
    return DFC_OK;
}

dfc_status ref_diffusion_vb_backward(dfc_backend *be, const dfc_tensor *dvb, const dfc_tensor *model_output,
                                     const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_vb_coefs *coefs,
                                     dfc_tensor *d_v, dfc_error *err)
{
    const char *op = "diffusion_vb_backward";
    DFC_TRY(dfc_check_vb(op, model_output, x_start, x_t, coefs, dvb, "dvb", d_v, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < n; b++) {
        const float *eps = model_output->data + b * 2 * m, *v = eps + m;
        const float *x0 = x_start->data + b * m, *xt = x_t->data + b * m;
        /* mean over elements, / ln 2, d logvar / d v = (max - min) / 2 */
        const double d_scale =
            (double)dvb->data[b] * coefs->scale * 0.5 * (coefs->max_log[b] - coefs->min_log[b]) / ((double)m * LN2);
        for (int64_t j = 0; j < m; j++) {
            double dterm;
            dfc_vb_term(coefs, b, eps[j], v[j], x0[j], xt[j], &dterm);
            d_v->data[b * m + j] = (float)(d_scale * dterm);
        }
    }
    return DFC_OK;
}

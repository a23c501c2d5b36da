/* The diffusion arithmetic on the CUDA backend (ops.h's last block): the sampler's per-row formulas in float32 and
 * the training loss's variational bound in double. Read against ref_diffusion.c and diffusion_rows.h: the same
 * checks, the same operation order per element (the span helpers there dereference host coefficient arrays, so the
 * bodies here are device copies of them), one index per element; the per-row host vectors are staged into scratch in
 * one call, the int flags that nonfinite_rows and target_probability return are read back from scratch. Sums over a
 * row go in two passes (rows.cuh).
 *
 * Verified only on a GPU: the launches (grid-stride, sizes), the host <-> device copies of the staged vectors and
 * flags, and the device math library's exp/log/tanh (the emulation uses the host libm; CUDA's are within 1-2 ulp). */
#include "rows.cuh"

extern "C" {
#include "../core/rng.h"
#include "../ops/diffusion_rows.h"
#include "../ops/net_ops.h"
}

#define LN2 0.69314718055994530942

/* ---- q_sample ---- */

dfc_status cuda_q_sample(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                         const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err)
{
    DFC_TRY(dfc_q_sample_check(x0, noise, sqrt_abar, sqrt_one_minus_abar, x_t, err));
    const int64_t n = x0->shape[0], m = dfc_inner_size(x0, 1);
    const void *pieces[2] = {sqrt_abar, sqrt_one_minus_abar};
    const size_t sizes[2] = {(size_t)n * sizeof(float), (size_t)n * sizeof(float)};
    void *staged[2];
    DFC_TRY(dfc_cuda_stage_host(be, 2, pieces, sizes, staged, 0, NULL, err));
    const float *a = (const float *)staged[0], *s = (const float *)staged[1];
    const float *x0s = x0->data, *noises = noise->data;
    float *xt = x_t->data;
    return dfc_cuda_for_each(be, n * m, "q_sample", err, [=] DFC_DEVICE(int64_t j) {
        const int64_t b = j / m;
        xt[j] = a[b] * x0s[j] + s[b] * noises[j];
    });
}

/* ---- p_mean_variance, forward and backward ---- */

/* dfc_posterior_coefs with its arrays in device memory. */
typedef struct posterior_rows {
    const float *sqrt_recip_abar, *sqrt_recipm1_abar, *coef1, *coef2, *min_log, *max_log, *variance, *log_variance;
} posterior_rows;

/* All eight arrays in one staging (the unused pair of the variance kind may be NULL and stays NULL). */
static dfc_status stage_posterior(dfc_backend *be, const dfc_posterior_coefs *c, int64_t n, posterior_rows *rows,
                                  dfc_error *err)
{
    const void *pieces[8] = {c->sqrt_recip_abar, c->sqrt_recipm1_abar, c->coef1,    c->coef2,
                             c->min_log,         c->max_log,           c->variance, c->log_variance};
    size_t sizes[8];
    for (int k = 0; k < 8; k++)
        sizes[k] = (size_t)n * sizeof(float);
    void *staged[8];
    DFC_TRY(dfc_cuda_stage_host(be, 8, pieces, sizes, staged, 0, NULL, err));
    const float *const *f = (const float *const *)staged;
    *rows = posterior_rows{f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]};
    return DFC_OK;
}

dfc_status cuda_p_mean_variance_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                        const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *mean,
                                        dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                        dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_check(model_output, x_t, coefs, output_kind, mean, variance, log_variance, pred_xstart,
                                      err));
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1);
    posterior_rows c;
    DFC_TRY(stage_posterior(be, coefs, n, &c, err));
    float *means = mean->data, *var_out = dfc_optional_data(variance), *log_out = dfc_optional_data(log_variance);
    float *x0_out = dfc_optional_data(pred_xstart);
    const float *mo = model_output->data, *xs = x_t->data;
    /* dfc_p_mean_variance_span's arithmetic for element j of row b */
    return dfc_cuda_for_each(be, n * m, "p_mean_variance", err, [=] DFC_DEVICE(int64_t at) {
        const int64_t b = at / m, j = at % m;
        const float *eps = mo + b * m * (output_kind ? 2 : 1);
        float lv, var;
        if (output_kind == DFC_OUTPUT_EPS_V) {
            float frac = (eps[m + j] + 1.0f) / 2.0f; /* not clamped, as guided-diffusion */
            lv = frac * c.max_log[b] + (1.0f - frac) * c.min_log[b];
            var = expf(lv);
        } else {
            lv = c.log_variance[b];
            var = c.variance[b];
        }
        float x0 = c.sqrt_recip_abar[b] * xs[at] - c.sqrt_recipm1_abar[b] * eps[j];
        if (clip)
            x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
        means[at] = c.coef1[b] * x0 + c.coef2[b] * xs[at];
        if (var_out)
            var_out[at] = var;
        if (log_out)
            log_out[at] = lv;
        if (x0_out)
            x0_out[at] = x0;
    });
}

dfc_status cuda_p_mean_variance_backward(dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                         const dfc_tensor *model_output, const dfc_tensor *x_t,
                                         const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *dx_t,
                                         dfc_tensor *d_model_output, dfc_error *err)
{
    DFC_TRY(dfc_p_mean_variance_backward_check(d_pred_xstart, model_output, x_t, coefs, output_kind, dx_t,
                                               d_model_output, err));
    const int64_t n = x_t->shape[0], m = dfc_inner_size(x_t, 1), out_m = m * (output_kind ? 2 : 1);
    posterior_rows c;
    DFC_TRY(stage_posterior(be, coefs, n, &c, err));
    float *dx = dfc_optional_data(dx_t), *dmo = dfc_optional_data(d_model_output);
    const float *mo = model_output->data, *xs = x_t->data, *g_in = d_pred_xstart->data;
    return dfc_cuda_for_each(be, n * m, "p_mean_variance_backward", err, [=] DFC_DEVICE(int64_t at) {
        const int64_t b = at / m, j = at % m;
        const float recip = c.sqrt_recip_abar[b], recipm1 = c.sqrt_recipm1_abar[b];
        const float unclipped = recip * xs[at] - recipm1 * mo[b * out_m + j];
        const float pass = (!clip || (unclipped >= -1.0f && unclipped <= 1.0f)) ? 1.0f : 0.0f;
        const float g = pass * g_in[at];
        if (dmo) {
            dmo[b * out_m + j] = -recipm1 * g;
            if (output_kind) /* the variance channels do not reach pred_xstart */
                dmo[b * out_m + m + j] = 0.0f;
        }
        if (dx)
            dx[at] = recip * g;
    });
}

/* ---- the reverse step ---- */

dfc_status cuda_sample_step(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                            const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                            const float *noise_weight, dfc_tensor *x_prev, dfc_error *err)
{
    DFC_TRY(dfc_sample_step_check(mean, variance, log_variance, grad, noise, noise_weight, x_prev, err));
    const int64_t n = mean->shape[0], m = dfc_inner_size(mean, 1);
    const void *pieces[1] = {noise_weight};
    const size_t sizes[1] = {(size_t)n * sizeof(float)};
    void *staged[1];
    DFC_TRY(dfc_cuda_stage_host(be, 1, pieces, sizes, staged, 0, NULL, err));
    const float *w = (const float *)staged[0], *means = mean->data, *logs = log_variance->data, *noises = noise->data;
    const float *grads = grad && grad->data ? grad->data : NULL, *vars = grads ? variance->data : NULL;
    float *out = x_prev->data;
    /* dfc_sample_step_span's arithmetic */
    return dfc_cuda_for_each(be, n * m, "sample_step", err, [=] DFC_DEVICE(int64_t j) {
        float mu = means[j];
        if (grads)
            mu = mu - vars[j] * grads[j]; /* DiME's condition_mean: descend the loss */
        out[j] = mu + w[j / m] * expf(0.5f * logs[j]) * noises[j];
    });
}

/* ---- the sampler's noise ---- */

/* One index per generator group of four normals (core/rng.h, the host generator's arithmetic): the keys are staged,
 * each group writes its own four values of its row. */
dfc_status cuda_gaussian_noise(dfc_backend *be, uint64_t seed, const uint64_t *keys, uint32_t stream,
                               uint32_t iteration, uint32_t step, uint32_t inner_step, dfc_tensor *out, dfc_error *err)
{
    DFC_TRY(dfc_gaussian_noise_check(keys, out, err));
    const int64_t n = out->shape[0], m = dfc_inner_size(out, 1), groups = (m + 3) / 4;
    const void *pieces[1] = {keys};
    const size_t sizes[1] = {(size_t)n * sizeof(uint64_t)};
    void *staged[1];
    DFC_TRY(dfc_cuda_stage_host(be, 1, pieces, sizes, staged, 0, NULL, err));
    const uint64_t *row_keys = (const uint64_t *)staged[0];
    float *data = out->data;
    return dfc_cuda_for_each(be, n * groups, "gaussian_noise", err, [=] DFC_DEVICE(int64_t g) {
        const int64_t b = g / groups, group = g % groups;
        float z[4];
        dfc_noise_group(dfc_noise_key(seed, row_keys[b], stream, iteration), group, step, inner_step, z);
        float *row = data + b * m;
        for (int64_t q = 0; q < 4 && 4 * group + q < m; q++)
            row[4 * group + q] = z[q];
    });
}

/* ---- FastDiME's mask ---- */

/* Three passes: per-pixel channel sums into y, the per-row maximum (chunks, then rows; a maximum is the same in any
 * order), the division. */
dfc_status cuda_change_map(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y, dfc_error *err)
{
    const char *op = "change_map";
    DFC_TRY(dfc_check_pixel_map(op, a, b, y, "y", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3], chunks = dfc_row_chunks(hw);
    float *peak = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n * chunks + n) * sizeof(float), (void **)&peak, err));
    float *chunk_peak = peak + n;
    const float *as = a->data, *bs = b->data;
    float *out = y->data;
    DFC_TRY(dfc_cuda_for_each(be, n * hw, op, err, [=] DFC_DEVICE(int64_t at) {
        const int64_t r = at / hw, k = at % hw;
        float sum = 0.0f;
        for (int64_t ch = 0; ch < c; ch++) {
            const int64_t j = (r * c + ch) * hw + k;
            sum += fabsf((as[j] + 1.0f) / 2.0f - (bs[j] + 1.0f) / 2.0f);
        }
        out[at] = sum;
    }));
    DFC_TRY(dfc_cuda_for_each(be, n * chunks, op, err, [=] DFC_DEVICE(int64_t i) {
        int64_t r, k0, k1;
        dfc_row_chunk(i, chunks, hw, &r, &k0, &k1);
        float max = 0.0f;
        for (int64_t k = k0; k < k1; k++)
            max = out[r * hw + k] > max ? out[r * hw + k] : max;
        chunk_peak[i] = max;
    }));
    DFC_TRY(dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t r) {
        float max = 0.0f;
        for (int64_t i = r * chunks; i < (r + 1) * chunks; i++)
            max = chunk_peak[i] > max ? chunk_peak[i] : max;
        peak[r] = max;
    }));
    return dfc_cuda_for_each(be, n * hw, op, err, [=] DFC_DEVICE(int64_t at) {
        const float max = peak[at / hw];
        if (max > 0.0f)
            out[at] /= max;
    });
}

dfc_status cuda_masked_blend(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *mask,
                             float threshold, dfc_tensor *y, dfc_error *err)
{
    const char *op = "masked_blend";
    DFC_TRY(dfc_check_pixel_map(op, a, b, mask, "mask", err));
    DFC_TRY(dfc_check_same_shape(a, y, op, "a", "y", err));
    const int64_t c = a->shape[1], hw = a->shape[2] * a->shape[3];
    const float *as = a->data, *bs = b->data, *masks = mask->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(a), op, err, [=] DFC_DEVICE(int64_t j) {
        const int64_t r = j / (c * hw), k = j % hw;
        const float keep = masks[r * hw + k] < threshold ? 1.0f : 0.0f;
        ys[j] = as[j] * (1.0f - keep) + keep * bs[j];
    });
}

/* ---- DiME's l1 / l2 distance terms ---- */

/* Partials (l1, l2) per chunk of a row's pixels, then per row. */
dfc_status cuda_distance_penalty_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, float lambda_l1,
                                         float lambda_l2, dfc_tensor *loss, dfc_error *err)
{
    const char *op = "distance_penalty";
    DFC_TRY(dfc_check_distance(op, a, b, loss, "loss", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3], chunks = dfc_row_chunks(hw);
    double *partials = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n * chunks) * 2 * sizeof(double), (void **)&partials, err));
    const float *as = a->data, *bs = b->data;
    float *out = loss->data;
    DFC_TRY(dfc_cuda_for_each(be, n * chunks, op, err, [=] DFC_DEVICE(int64_t i) {
        int64_t r, k0, k1;
        dfc_row_chunk(i, chunks, hw, &r, &k0, &k1);
        double l1 = 0.0, l2 = 0.0;
        for (int64_t k = k0; k < k1; k++) {
            const int64_t at = r * c * hw + k;
            l2 += dfc_channel_diff_norm(as + at, bs + at, c, hw);
            for (int64_t ch = 0; ch < c; ch++)
                l1 += fabs((double)as[at + ch * hw] - bs[at + ch * hw]);
        }
        partials[2 * i] = l1;
        partials[2 * i + 1] = l2;
    }));
    return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t r) {
        const double l1 = dfc_row_total(partials, r, chunks, 2, 0), l2 = dfc_row_total(partials, r, chunks, 2, 1);
        out[r] = (float)(lambda_l1 * l1 + lambda_l2 * l2);
    });
}

dfc_status cuda_distance_penalty_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                          const dfc_tensor *b, float lambda_l1, float lambda_l2, dfc_tensor *da,
                                          dfc_error *err)
{
    const char *op = "distance_penalty_backward";
    DFC_TRY(dfc_check_distance(op, a, b, dloss, "dloss", err));
    DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = a->shape[2] * a->shape[3];
    const float *as = a->data, *bs = b->data, *dl = dloss->data;
    float *das = da->data;
    return dfc_cuda_for_each(be, n * hw, op, err, [=] DFC_DEVICE(int64_t p) {
        const int64_t r = p / hw, at = r * c * hw + p % hw;
        const float scale = dl[r];
        const double norm = dfc_channel_diff_norm(as + at, bs + at, c, hw);
        const float inv_norm = norm > 0.0 ? (float)(1.0 / norm) : 0.0f;
        for (int64_t ch = 0; ch < c; ch++) {
            const int64_t j = at + ch * hw;
            const float diff = as[j] - bs[j];
            const float sign = (float)((diff > 0.0f) - (diff < 0.0f));
            das[j] = (lambda_l1 * sign + lambda_l2 * diff * inv_norm) * scale;
        }
    });
}

/* ---- per-row checks: non-finite rows, the flip decision ---- */

/* Flags per chunk, then per row (in scratch, read back into nonfinite), then the flagged rows zeroed. */
dfc_status cuda_nonfinite_rows(dfc_backend *be, dfc_tensor *x, int *nonfinite, dfc_error *err)
{
    const char *op = "nonfinite_rows";
    DFC_TRY(dfc_nonfinite_rows_check(x, nonfinite, err));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1), chunks = dfc_row_chunks(m);
    int *flags = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(n + n * chunks) * sizeof(int), (void **)&flags, err));
    int *chunk_flags = flags + n;
    float *xs = x->data;
    DFC_TRY(dfc_cuda_for_each(be, n * chunks, op, err, [=] DFC_DEVICE(int64_t i) {
        int64_t b, j0, j1;
        dfc_row_chunk(i, chunks, m, &b, &j0, &j1);
        int bad = 0;
        for (int64_t j = j0; j < j1; j++)
            bad |= !isfinite(xs[b * m + j]);
        chunk_flags[i] = bad;
    }));
    DFC_TRY(dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t b) {
        int bad = 0;
        for (int64_t i = b * chunks; i < (b + 1) * chunks; i++)
            bad |= chunk_flags[i];
        flags[b] = bad;
    }));
    DFC_TRY(dfc_cuda_for_each(be, n * m, op, err, [=] DFC_DEVICE(int64_t j) {
        if (flags[j / m])
            xs[j] = 0.0f;
    }));
    return dfc_cuda_read_back(be, nonfinite, flags, (size_t)n * sizeof(int), err);
}

/* One index per row (K logits). */
dfc_status cuda_target_probability(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets, dfc_tensor *prob,
                                   int *is_target, dfc_error *err)
{
    const char *op = "target_probability";
    DFC_TRY(dfc_target_probability_check(logits, targets, prob, is_target, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
    const void *pieces[1] = {targets};
    const size_t sizes[1] = {(size_t)n * sizeof(int64_t)};
    void *staged[1], *flags_mem = NULL;
    DFC_TRY(dfc_cuda_stage_host(be, 1, pieces, sizes, staged, (size_t)n * sizeof(int), &flags_mem, err));
    const int64_t *ys = (const int64_t *)staged[0];
    int *flags = (int *)flags_mem;
    const float *zs = logits->data;
    float *probs = prob->data;
    DFC_TRY(dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t b) {
        const float *z = zs + b * k;
        probs[b] = (float)dfc_class_probability_row(z, k, ys[b]);
        flags[b] = dfc_predicted_class_row(z, k) == ys[b];
    }));
    return dfc_cuda_read_back(be, is_target, flags, (size_t)n * sizeof(int), err);
}

/* ---- the training loss's variational bound (guided-diffusion losses.py), in double ---- */

/* coefs with its arrays staged into scratch (a copy that the kernels take by value), and extra_bytes of scratch
 * after them. */
static dfc_status stage_vb(dfc_backend *be, const dfc_vb_coefs *c, int64_t n, dfc_vb_coefs *device, size_t extra_bytes,
                           void **extra, dfc_error *err)
{
    const void *pieces[7] = {c->sqrt_recip_abar, c->sqrt_recipm1_abar, c->coef1,      c->coef2,
                             c->min_log,         c->max_log,           c->decoder_nll};
    size_t sizes[7];
    for (int k = 0; k < 6; k++)
        sizes[k] = (size_t)n * sizeof(double);
    sizes[6] = (size_t)n * sizeof(int);
    void *staged[7];
    DFC_TRY(dfc_cuda_stage_host(be, 7, pieces, sizes, staged, extra_bytes, extra, err));
    const double *const *d = (const double *const *)staged;
    *device = dfc_vb_coefs{d[0], d[1], d[2], d[3], d[4], d[5], (const int *)staged[6], c->scale};
    return DFC_OK;
}

/* sum += the vb term of item j of row r (rows of m values; model_output rows of 2m: eps, then v) */
struct vb_sum_term {
    dfc_vb_coefs coefs; /* device arrays */
    const float *mo, *x0, *xt;
    int64_t m;
    DFC_HOST_DEVICE void operator()(int64_t r, int64_t j, double *sum) const
    {
        const float *eps = mo + r * 2 * m;
        double unused;
        *sum += dfc_vb_term(&coefs, r, eps[j], eps[m + j], x0[r * m + j], xt[r * m + j], &unused);
    }
};

dfc_status cuda_diffusion_vb_forward(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_start,
                                     const dfc_tensor *x_t, const dfc_vb_coefs *coefs, dfc_tensor *vb, dfc_error *err)
{
    const char *op = "diffusion_vb";
    DFC_TRY(dfc_check_vb(op, model_output, x_start, x_t, coefs, vb, "vb", NULL, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
    dfc_vb_coefs c;
    void *partials = NULL;
    DFC_TRY(stage_vb(be, coefs, n, &c, (size_t)(n * dfc_row_chunks(m)) * sizeof(double), &partials, err));
    const vb_sum_term term = {c, model_output->data, x_start->data, x_t->data, m};
    return dfc_row_sums(be, n, m, term, (double *)partials, coefs->scale, (double)m * LN2, vb->data, op, err);
}

dfc_status cuda_diffusion_vb_backward(dfc_backend *be, const dfc_tensor *dvb, const dfc_tensor *model_output,
                                      const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_vb_coefs *coefs,
                                      dfc_tensor *d_v, dfc_error *err)
{
    const char *op = "diffusion_vb_backward";
    DFC_TRY(dfc_check_vb(op, model_output, x_start, x_t, coefs, dvb, "dvb", d_v, err));
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);
    dfc_vb_coefs c;
    DFC_TRY(stage_vb(be, coefs, n, &c, 0, NULL, err));
    const float *mo = model_output->data, *x0s = x_start->data, *xts = x_t->data, *dvbs = dvb->data;
    float *dvs = d_v->data;
    return dfc_cuda_for_each(be, n * m, op, err, [=] DFC_DEVICE(int64_t at) {
        const int64_t b = at / m, j = at % m;
        const float *eps = mo + b * 2 * m, *v = eps + m;
        /* mean over elements, / ln 2, d logvar / d v = (max - min) / 2 */
        const double d_scale = (double)dvbs[b] * c.scale * 0.5 * (c.max_log[b] - c.min_log[b]) / ((double)m * LN2);
        double dterm;
        dfc_vb_term(&c, b, eps[j], v[j], x0s[at], xts[at], &dterm);
        dvs[at] = (float)(d_scale * dterm);
    });
}

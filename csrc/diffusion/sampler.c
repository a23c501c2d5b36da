#include "sampler.h"

#include <math.h>
#include <string.h>
#include <time.h>

/* What each noise draw is for; with the iteration and step it keys the counter-based generator (rng.h). */
enum { STREAM_Q_SAMPLE = 1, STREAM_STEP = 2, STREAM_DIME_CHAIN = 3, STREAM_MASK_Q_SAMPLE = 4 };

typedef struct pass {
    const dfc_sampler_config *cfg;
    const dfc_net *denoiser; /* conditioned on the timesteps: the UNet */
    const dfc_diffusion *d;
    const dfc_guidance *g;
    dfc_backend *be;
    dfc_arena *steps;        /* the pass's buffers, then one step's, reset after it (per-row host arrays too) */
    dfc_arena *scratch;      /* the denoiser's skips and block intermediates, then the guidance's tapes */
    const dfc_tensor *x_all; /* the original inputs (N, C, H, W) */
    const uint64_t *keys;    /* (N) */
    int iteration;
    int lambda_index;
    int64_t n;           /* active rows in this pass */
    const int64_t *rows; /* their positions in the original batch */
    int64_t channels, height, width, m;
    dfc_progress_fn progress;
    void *progress_user;
    dfc_sampler_outputs *out;
    int64_t batch;      /* N */
    uint64_t *row_keys; /* (n) host memory: the active rows' sample keys, for the noise */
    float *prob_host;   /* (n) host memory: target probabilities read back for the per-row bookkeeping */
} pass;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The noise of the active rows, drawn by the backend where the noise tensor lives (core/rng.h's generator, keyed
 * by each row's sample key: a row's noise does not depend on the other rows). */
static dfc_status fill_noise(const pass *p, int stream, int step, int inner, dfc_tensor *noise, dfc_error *err)
{
    for (int64_t b = 0; b < p->n; b++)
        p->row_keys[b] = p->keys[p->rows[b]];
    return p->be->ops->gaussian_noise(p->be, p->cfg->seed, p->row_keys, (uint32_t)stream, (uint32_t)p->iteration,
                                      (uint32_t)step, (uint32_t)inner, noise, err);
}

/* Moves whole rows of m floats: dst row dst_rows[b] <- src row src_rows[b] for b < n (a NULL rows array: b itself).
 * copy is one of the backend's memory functions (copy, copy_from_host or copy_to_host: the same signature), which
 * says on which side each of dst and src lives. */
typedef dfc_status (*row_copy_fn)(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err);

static dfc_status copy_rows(const pass *p, row_copy_fn copy, float *dst, const int64_t *dst_rows, const float *src,
                            const int64_t *src_rows, dfc_error *err)
{
    for (int64_t b = 0; b < p->n; b++) {
        const int64_t to = dst_rows ? dst_rows[b] : b, from = src_rows ? src_rows[b] : b;
        DFC_TRY(copy(p->be, dst + to * p->m, src + from * p->m, (size_t)p->m * sizeof(float), err));
    }
    return DFC_OK;
}

/* The model's output at respaced index i and the posterior it implies. With tape non-NULL the UNet keeps its
 * activations for a VJP (the x_t-gradient baseline). */
typedef struct step_state {
    dfc_tensor model_out, mean, variance, log_variance, x0;
    dfc_tensor timesteps; /* (n) the denoiser's conditioning input: index i's original timestep, every row */
    int64_t *indices;     /* (n) host: i, every row */
    void *tape;
} step_state;

static dfc_status denoise(const pass *p, const dfc_tensor *z, int64_t i, int keep_tape, step_state *s, dfc_error *err)
{
    s->indices = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(int64_t), err);
    s->timesteps = dfc_arena_tensor(p->steps, 1, &p->n, err);
    s->mean = dfc_alloc_like(p->steps, z, err);
    s->variance = dfc_alloc_like(p->steps, z, err);
    s->log_variance = dfc_alloc_like(p->steps, z, err);
    s->x0 = dfc_alloc_like(p->steps, z, err);
    if (!s->indices || !s->timesteps.data || !s->mean.data || !s->variance.data || !s->log_variance.data || !s->x0.data)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    for (int64_t b = 0; b < p->n; b++)
        s->indices[b] = i;
    DFC_TRY(p->be->ops->fill(p->be, (float)p->d->timestep_map[i], &s->timesteps, err));
    s->tape = NULL;
    DFC_TRY(dfc_net_forward(p->denoiser, p->be, p->steps, keep_tape ? NULL : p->scratch, z, &s->timesteps,
                            keep_tape ? &s->tape : NULL, &s->model_out, err));
    p->out->unet_evaluations += p->n;
    return dfc_diffusion_p_mean_variance(p->d, p->be, &s->model_out, z, s->indices, p->cfg->clip, &s->mean,
                                         &s->variance, &s->log_variance, &s->x0, err);
}

/* z <- mean + 1[i != 0] sigma noise (unguided), or mean - variance g + ... (guided) */
static dfc_status reverse_step(const pass *p, const step_state *s, const dfc_tensor *grad, int stream, int step,
                               int inner, dfc_tensor *z, dfc_error *err)
{
    dfc_tensor noise = dfc_alloc_like(p->steps, z, err);
    DFC_CHECK_ALLOC(noise);
    DFC_TRY(fill_noise(p, stream, step, inner, &noise, err));
    return dfc_diffusion_sample_step(p->d, p->be, &s->mean, &s->variance, &s->log_variance, grad, &noise, s->indices, z,
                                     err);
}

/* The guiding gradient at x_for_grad (x0_hat, or FastDiME's previous estimate, or DiME's chain result). */
static dfc_status guidance_gradient(const pass *p, const dfc_tensor *x_for_grad, int64_t i, dfc_tensor *grad,
                                    dfc_error *err)
{
    float *lambda_c = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(float), err);
    /* loss_c, loss_p: the guidance's output tensors (backend memory) */
    float *loss_c = dfc_arena_alloc(p->steps, (size_t)p->n * sizeof(float), err);
    float *loss_p = dfc_arena_alloc(p->steps, (size_t)p->n * sizeof(float), err);
    float *inv_sqrt_abar = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(float), err);
    if (!lambda_c || !loss_c || !loss_p || !inv_sqrt_abar)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    for (int64_t b = 0; b < p->n; b++) {
        lambda_c[b] = p->cfg->lambda_c[p->lambda_index];
        inv_sqrt_abar[b] = (float)(1.0 / p->d->sqrt_alphas_cumprod[i]);
    }
    /* The guidance's working memory (the classifier's and Lp's tapes) comes from scratch, which the denoiser's
     * skips leave empty between its calls: the two share that memory instead of adding up. */
    const dfc_arena_mark scratch_mark = dfc_arena_get_mark(p->scratch);
    dfc_status st = p->g->loss_and_grad(p->g->ctx, p->be, p->scratch, x_for_grad, p->rows, lambda_c, p->cfg->lambda_p,
                                        grad, loss_c, loss_p, err);
    dfc_arena_reset(p->scratch, scratch_mark);
    DFC_TRY(st);
    if (p->cfg->scale_grads || p->cfg->method == DFC_METHOD_DIME) {
        /* the gradient at the clean image stands in for the one at the noisy z: divide by sqrt(abar) */
        DFC_TRY(p->be->ops->row_scale(p->be, grad, inv_sqrt_abar, grad, err));
    }
    return DFC_OK;
}

/* DiME's l1/l2 terms on the noisy z against the original x: l1 sum |z - x|, l2 sum over pixels of the
 * channel-wise norm ||z - x||; their gradient is added to grad. */
static dfc_status add_noisy_distance_terms(const pass *p, const dfc_tensor *z, const dfc_tensor *x_orig,
                                           dfc_tensor *grad, dfc_error *err)
{
    const float l1 = p->cfg->lambda_l1, l2 = p->cfg->lambda_l2;
    if (l1 == 0.0f && l2 == 0.0f)
        return DFC_OK;
    dfc_tensor ones = dfc_arena_tensor(p->steps, 1, &p->n, err), dz = dfc_alloc_like(p->steps, z, err);
    DFC_CHECK_ALLOC(ones);
    DFC_CHECK_ALLOC(dz);
    DFC_TRY(p->be->ops->fill(p->be, 1.0f, &ones, err));
    DFC_TRY(p->be->ops->distance_penalty_backward(p->be, &ones, z, x_orig, l1, l2, &dz, err));
    return p->be->ops->binary_forward(p->be, DFC_BINARY_ADD, grad, &dz, grad, err);
}

/* The x_t-gradient baseline: g_z = d L(x0_hat(z)) / dz through the clip and the UNet:
 * x0 = recip z - recipm1 eps(z), so g_z = mask (recip g - J_eps^T (recipm1 g)), mask = 1 where x0 was not clipped. */
static dfc_status chain_through_unet(const pass *p, const dfc_tensor *z, const step_state *s, dfc_tensor *grad,
                                     dfc_error *err)
{
    dfc_tensor v = dfc_alloc_like(p->steps, &s->model_out, err);
    dfc_tensor dz = dfc_alloc_like(p->steps, z, err);
    DFC_CHECK_ALLOC(v);
    DFC_CHECK_ALLOC(dz);
    /* grad <- mask recip g (the direct path), v <- -mask recipm1 g (the eps channels; v's are 0) */
    DFC_TRY(dfc_diffusion_pred_xstart_backward(p->d, p->be, grad, &s->model_out, z, s->indices, p->cfg->clip, grad, &v,
                                               err));
    DFC_TRY(dfc_net_backward(p->denoiser, p->be, p->steps, s->tape, &v, &dz, NULL, err));
    return p->be->ops->binary_forward(p->be, DFC_BINARY_ADD, grad, &dz, grad, err);
}

/* FastDiME's self-optimised mask: B = 1 where the dilated, per-sample normalised |x0_hat - x| is below the
 * threshold (1 keeps the original). */
static dfc_status fastdime_mask(const pass *p, const dfc_tensor *x0, const dfc_tensor *x_in, dfc_tensor *dilated,
                                dfc_error *err)
{
    dfc_tensor m = dfc_alloc4(p->steps, p->n, 1, p->height, p->width, err);
    DFC_CHECK_ALLOC(m);
    DFC_TRY(p->be->ops->change_map(p->be, x0, x_in, &m, err));
    int k = p->cfg->mask_dilation, pad = (k - 1) / 2;
    dfc_pool2d_params pool = {k, k, 1, 1, pad, pad};
    return p->be->ops->max_pool2d_forward(p->be, &m, pool, dilated, err);
}

/* a <- a (1 - keep) + keep b with keep = [dilated mask < threshold] per pixel (broadcast over channels) */
static dfc_status blend_keep(const pass *p, dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *dilated,
                             dfc_error *err)
{
    return p->be->ops->masked_blend(p->be, a, b, dilated, p->cfg->mask_threshold, a, err);
}

/* DiME's clean estimate: an unguided reverse chain from z (at index i - 1) to 0. */
static dfc_status dime_chain(const pass *p, const dfc_tensor *z, int64_t i, int step, dfc_tensor *x_c, dfc_error *err)
{
    DFC_TRY(dfc_copy_tensor(p->be, x_c, z, err));
    for (int64_t j = i - 1; j >= 0; j--) {
        dfc_arena_mark mark = dfc_arena_get_mark(p->steps);
        step_state s;
        DFC_TRY(denoise(p, x_c, j, 0, &s, err));
        DFC_TRY(reverse_step(p, &s, NULL, STREAM_DIME_CHAIN, step, (int)j, x_c, err));
        dfc_arena_reset(p->steps, mark);
    }
    return DFC_OK;
}

/* Marks rows that became non-finite (first step only) and resets them to 0 so nothing downstream sees NaN;
 * other rows are untouched (every op works per sample). */
static dfc_status check_finite(const pass *p, dfc_tensor *z, int step, dfc_error *err)
{
    int *bad = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(int), err);
    if (!bad)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    DFC_TRY(p->be->ops->nonfinite_rows(p->be, z, bad, err));
    for (int64_t b = 0; b < p->n; b++) {
        int *mark = &p->out->nonfinite_step[(int64_t)p->iteration * p->batch + p->rows[b]];
        if (bad[b] && *mark < 0)
            *mark = step;
    }
    return DFC_OK;
}

/* z and x0 after this step, into the caller's (host) step records at this pass's rows. */
static dfc_status record_step(const pass *p, int step, const dfc_tensor *z, const dfc_tensor *x0, dfc_error *err)
{
    if (!p->out->steps_xt || !p->out->steps_x0)
        return DFC_OK;
    int64_t base = ((int64_t)p->iteration * p->cfg->tau + step) * p->batch * p->m;
    row_copy_fn to_host = p->be->iface->copy_to_host;
    DFC_TRY(copy_rows(p, to_host, p->out->steps_xt + base, p->rows, z->data, NULL, err));
    return copy_rows(p, to_host, p->out->steps_x0 + base, p->rows, x0->data, NULL, err);
}

/* classify_first_step: the classifier's verdict on x0_hat at the first reverse step of iteration 1's first lambda_c
 * pass (every image is in it), the estimate the first guided gradient is taken at: a diagnostic for runs whose
 * classifier already calls the barely denoised inputs the target (wrong preprocessing, target or classifier). */
static dfc_status classify_first_step(const pass *p, const dfc_tensor *x0, dfc_error *err)
{
    if (!p->cfg->classify_first_step || p->iteration != 0 || p->lambda_index != 0 || !p->out->first_step_prob ||
        !p->out->first_step_target)
        return DFC_OK;
    float *prob = dfc_arena_alloc(p->steps, (size_t)p->n * sizeof(float), err);
    int *is_target = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(int), err);
    if (!prob || !is_target)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    DFC_TRY(p->g->classify(p->g->ctx, p->be, p->steps, x0, p->rows, prob, is_target, err));
    DFC_TRY(p->be->iface->copy_to_host(p->be, p->prob_host, prob, (size_t)p->n * sizeof(float), err));
    for (int64_t b = 0; b < p->n; b++) {
        p->out->first_step_prob[p->rows[b]] = p->prob_host[b];
        p->out->first_step_target[p->rows[b]] = is_target[b];
    }
    return DFC_OK;
}

/* One guided reverse process from x_in (the rows of this pass) to z. */
static dfc_status run_pass(const pass *p, const dfc_tensor *x_in, dfc_tensor *z, dfc_error *err)
{
    const dfc_sampler_config *cfg = p->cfg;
    /* the pass's buffers, below every step's mark */
    dfc_tensor x_c = dfc_alloc_like(p->steps, z, err), x_orig = dfc_alloc_like(p->steps, z, err);
    dfc_tensor dilated = dfc_alloc4(p->steps, p->n, 1, p->height, p->width, err); /* FastDiME's mask */
    DFC_CHECK_ALLOC(x_c);
    DFC_CHECK_ALLOC(x_orig);
    DFC_CHECK_ALLOC(dilated);
    DFC_TRY(copy_rows(p, p->be->iface->copy, x_orig.data, NULL, p->x_all->data, p->rows, err));
    DFC_TRY(dfc_copy_tensor(p->be, &x_c, x_in, err));
    int mask_active = 0;

    /* z_tau = q_sample(x_in, tau) */
    {
        dfc_arena_mark mark = dfc_arena_get_mark(p->steps);
        dfc_tensor noise = dfc_alloc_like(p->steps, z, err);
        int64_t *indices = dfc_arena_host_alloc(p->steps, (size_t)p->n * sizeof(int64_t), err);
        DFC_CHECK_ALLOC(noise);
        if (!indices)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        DFC_TRY(fill_noise(p, STREAM_Q_SAMPLE, 0, 0, &noise, err));
        for (int64_t b = 0; b < p->n; b++)
            indices[b] = cfg->tau;
        DFC_TRY(dfc_diffusion_q_sample(p->d, p->be, x_in, indices, &noise, z, err));
        dfc_arena_reset(p->steps, mark);
    }
    const int xt = cfg->method == DFC_METHOD_DIFF_ICE_XT;
    for (int step = 0; step < cfg->tau; step++) {
        const int64_t i = cfg->tau - 1 - step;
        dfc_arena_mark mark = dfc_arena_get_mark(p->steps);
        step_state s;
        DFC_TRY(denoise(p, z, i, xt, &s, err));
        if (step == 0)
            DFC_TRY(classify_first_step(p, &s.x0, err));
        dfc_tensor grad = dfc_alloc_like(p->steps, z, err);
        DFC_CHECK_ALLOC(grad);
        const dfc_tensor *at = (cfg->grad_at_previous || cfg->method == DFC_METHOD_DIME) ? &x_c : &s.x0;
        DFC_TRY(guidance_gradient(p, at, i, &grad, err));
        if (xt)
            DFC_TRY(chain_through_unet(p, z, &s, &grad, err));
        DFC_TRY(add_noisy_distance_terms(p, z, &x_orig, &grad, err));
        DFC_TRY(reverse_step(p, &s, &grad, STREAM_STEP, step, 0, z, err));
        if (cfg->method == DFC_METHOD_DIME) {
            if (i > 0)
                DFC_TRY(dime_chain(p, z, i, step, &x_c, err));
        } else if (cfg->grad_at_previous) {
            DFC_TRY(dfc_copy_tensor(p->be, &x_c, &s.x0, err));
        }
        if (cfg->method == DFC_METHOD_FASTDIME && step >= cfg->mask_warmup) {
            /* q_sample at index i although z is now at i - 1: FastDiME's off-by-one, kept as upstream */
            DFC_TRY(fastdime_mask(p, &s.x0, x_in, &dilated, err));
            mask_active = 1;
            dfc_tensor noise = dfc_alloc_like(p->steps, z, err), x_noisy = dfc_alloc_like(p->steps, z, err);
            DFC_CHECK_ALLOC(noise);
            DFC_CHECK_ALLOC(x_noisy);
            DFC_TRY(fill_noise(p, STREAM_MASK_Q_SAMPLE, step, 0, &noise, err));
            DFC_TRY(dfc_diffusion_q_sample(p->d, p->be, x_in, s.indices, &noise, &x_noisy, err));
            DFC_TRY(blend_keep(p, &x_c, x_in, &dilated, err));
            DFC_TRY(blend_keep(p, z, &x_noisy, &dilated, err));
        }
        DFC_TRY(check_finite(p, z, step, err));
        DFC_TRY(record_step(p, step, z, &s.x0, err));
        dfc_arena_reset(p->steps, mark);
        if (p->progress && p->progress(p->progress_user, p->iteration, p->lambda_index, step + 1, cfg->tau, (int)p->n))
            return dfc_fail(err, DFC_ERR_INTERRUPTED, "sampler: interrupted at iteration %d, step %d", p->iteration + 1,
                            step + 1);
    }
    if (mask_active)
        return blend_keep(p, z, x_in, &dilated, err);
    return DFC_OK;
}

dfc_status dfc_sampler_validate(const dfc_sampler_config *cfg, const dfc_diffusion *d, dfc_error *err)
{
    const char *op = "sampler";
    if (cfg->method < DFC_METHOD_DIFF_ICE || cfg->method > DFC_METHOD_FASTDIME)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown method %d", op, (int)cfg->method);
    if (cfg->iterations < 1 || cfg->iterations > DFC_SAMPLER_MAX_ITERATIONS)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: iterations must be in [1, %d], got %d", op, DFC_SAMPLER_MAX_ITERATIONS,
                        cfg->iterations);
    if (cfg->tau < 1 || cfg->tau >= d->num_timesteps)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: tau must be in [1, %d) (the respaced steps), got %d", op,
                        d->num_timesteps, cfg->tau);
    if (cfg->num_lambdas < 1 || cfg->num_lambdas > DFC_MAX_LAMBDAS)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: between 1 and %d lambda_c values are needed, got %d", op,
                        DFC_MAX_LAMBDAS, cfg->num_lambdas);
    for (int k = 0; k < cfg->num_lambdas; k++)
        if (!isfinite(cfg->lambda_c[k]) || cfg->lambda_c[k] < 0.0f)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: lambda_c[%d] = %g must be finite and >= 0", op, k,
                            (double)cfg->lambda_c[k]);
    if (!isfinite(cfg->lambda_p) || cfg->lambda_p < 0.0f || !isfinite(cfg->lambda_l1) || cfg->lambda_l1 < 0.0f ||
        !isfinite(cfg->lambda_l2) || cfg->lambda_l2 < 0.0f)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: lambda_p, lambda_l1 and lambda_l2 must be finite and >= 0", op);
    if (cfg->method == DFC_METHOD_FASTDIME) {
        if (cfg->mask_dilation < 1 || cfg->mask_dilation % 2 == 0 || cfg->mask_dilation > 255)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: mask_dilation must be odd and in [1, 255], got %d", op,
                            cfg->mask_dilation);
        if (!(cfg->mask_threshold >= 0.0f && cfg->mask_threshold <= 1.0f))
            return dfc_fail(err, DFC_ERR_VALUE, "%s: mask_threshold must be in [0, 1]", op);
    }
    return DFC_OK;
}

dfc_status dfc_sampler_run(const dfc_sampler_config *cfg, const dfc_net *denoiser, const dfc_diffusion *d,
                           const dfc_guidance *guidance, dfc_backend *be, dfc_arena *work, dfc_arena *scratch,
                           const dfc_tensor *x, const uint64_t *sample_keys, dfc_progress_fn progress,
                           void *progress_user, dfc_sampler_outputs *out, dfc_error *err)
{
    DFC_TRY(dfc_sampler_validate(cfg, d, err));
    DFC_TRY(dfc_check_ndim(x, "sampler", "x", 4, 4, err));
    if (!dfc_net_is_conditioned(denoiser) || denoiser->num_outputs != 1)
        return dfc_fail(err, DFC_ERR_VALUE, "sampler: the denoiser (%s) must take timesteps and give one output",
                        denoiser->vt->kind);
    if (x->shape[1] != denoiser->in_channels)
        return dfc_fail(err, DFC_ERR_SHAPE, "sampler: x has %lld channels, the %s takes %d", (long long)x->shape[1],
                        denoiser->vt->kind, denoiser->in_channels);
    if ((work && !dfc_arena_usable_by(work, be)) || (scratch && !dfc_arena_usable_by(scratch, be)))
        return dfc_fail(err, DFC_ERR_VALUE, "sampler: the arenas given hold memory the %s backend cannot use",
                        dfc_backend_name(be));
    const int64_t n = x->shape[0], m = dfc_inner_size(x, 1), L = cfg->iterations;
    for (int64_t j = 0; j < L * n; j++)
        out->nonfinite_step[j] = -1;
    out->unet_evaluations = 0;

    /* In the backend's memory: work, the call's buffers at its bottom and above them one reverse step's tensors
     * (reset after each); scratch, the denoiser's and the guidance's working memory. On their host sides
     * (dfc_arena_host_alloc): row lists, flags, per-row factors and the staging of noise before it is copied in and
     * of probabilities read back. The caller's arenas (kept between calls, so a call reuses the memory the last one
     * obtained) are left as they were found; without them the call makes and frees its own. */
    dfc_arena own_work, own_scratch;
    const int own = !work || !scratch;
    if (own) {
        dfc_arena_init_backend(&own_work, be, 0, 0); /* be->memory_limit bounds them */
        dfc_arena_init_backend(&own_scratch, be, 0, 0);
        work = &own_work;
        scratch = &own_scratch;
    }
    const dfc_arena_mark work_entry = dfc_arena_get_mark(work), scratch_entry = dfc_arena_get_mark(scratch);
    work->peak = work->in_use;
    scratch->peak = scratch->in_use;
    dfc_status st = DFC_OK;
    float *prob = dfc_arena_alloc(work, (size_t)n * sizeof(float), err); /* the guidance's output tensor */
    int64_t *all_rows = dfc_arena_host_alloc(work, (size_t)n * sizeof(int64_t), err);
    int64_t *active = dfc_arena_host_alloc(work, (size_t)n * sizeof(int64_t), err);
    int *is_target = dfc_arena_host_alloc(work, (size_t)n * sizeof(int), err);
    uint64_t *row_keys = dfc_arena_host_alloc(work, (size_t)n * sizeof(uint64_t), err);
    float *prob_host = dfc_arena_host_alloc(work, (size_t)n * sizeof(float), err);
    if (!all_rows || !active || !prob || !is_target || !row_keys || !prob_host) {
        st = err && err->code ? err->code : DFC_ERR_NOMEM;
        goto done;
    }
    const dfc_arena_mark call_buffers = dfc_arena_get_mark(work);
    for (int64_t b = 0; b < n; b++)
        all_rows[b] = b;
    if ((st = guidance->classify(guidance->ctx, be, work, x, all_rows, prob, is_target, err)) != DFC_OK)
        goto done;
    if ((st = be->iface->copy_to_host(be, out->prob_target, prob, (size_t)n * sizeof(float), err)) != DFC_OK)
        goto done;
    if (out->input_is_target)
        memcpy(out->input_is_target, is_target, (size_t)n * sizeof(int));
    dfc_arena_reset(work, call_buffers);

    for (int l = 0; l < L; l++) {
        double t0 = now_seconds();
        /* the first iteration starts from x, the others from the previous one's result (in the caller's memory) */
        const float *iteration_in = l == 0 ? x->data : out->counterfactuals + (int64_t)(l - 1) * n * m;
        row_copy_fn gather = l == 0 ? be->iface->copy : be->iface->copy_from_host;
        float *iteration_out = out->counterfactuals + (int64_t)l * n * m;
        int64_t num_active = n;
        for (int64_t b = 0; b < n; b++)
            active[b] = b;
        for (int k = 0; k < cfg->num_lambdas && num_active > 0; k++) {
            pass p = {cfg,           denoiser,    d,           guidance,    be,       work,
                      scratch,       x,           sample_keys, l,           k,        num_active,
                      active,        x->shape[1], x->shape[2], x->shape[3], m,        progress,
                      progress_user, out,         n,           row_keys,    prob_host};
            const int64_t shape[4] = {num_active, x->shape[1], x->shape[2], x->shape[3]};
            dfc_tensor z = dfc_arena_tensor(work, 4, shape, err);
            dfc_tensor pass_in = dfc_arena_tensor(work, 4, shape, err);
            if (!z.data || !pass_in.data) {
                st = err && err->code ? err->code : DFC_ERR_NOMEM;
                goto done;
            }
            /* a row's mark describes the result kept for it, this pass's: an earlier lambda's non-finite pass is
             * replaced by this one (its valid counterfactual must not be left out as non-finite) */
            for (int64_t b = 0; b < num_active; b++)
                out->nonfinite_step[(int64_t)l * n + active[b]] = -1;
            if ((st = copy_rows(&p, gather, pass_in.data, NULL, iteration_in, active, err)) != DFC_OK ||
                (st = run_pass(&p, &pass_in, &z, err)) != DFC_OK ||
                (st = guidance->classify(guidance->ctx, be, work, &z, active, prob, is_target, err)) != DFC_OK ||
                (st = copy_rows(&p, be->iface->copy_to_host, iteration_out, active, z.data, NULL, err)) != DFC_OK ||
                (st = be->iface->copy_to_host(be, prob_host, prob, (size_t)num_active * sizeof(float), err)) != DFC_OK)
                goto done;
            int64_t still = 0;
            for (int64_t b = 0; b < num_active; b++) {
                int64_t row = active[b];
                out->prob_target[(int64_t)(l + 1) * n + row] = prob_host[b];
                out->lambda_used[(int64_t)l * n + row] = cfg->lambda_c[k];
                out->flipped[(int64_t)l * n + row] = is_target[b];
                if (!is_target[b])
                    active[still++] = row;
            }
            num_active = still;
            dfc_arena_reset(work, call_buffers);
        }
        out->iteration_seconds[l] = now_seconds() - t0;
    }
done:
    /* backend memory (host sides not counted) */
    out->peak_bytes = (work->peak - work_entry.in_use) + (scratch->peak - scratch_entry.in_use);
    if (own) {
        dfc_arena_free(work);
        dfc_arena_free(scratch);
    } else {
        dfc_arena_reset(work, work_entry);
        dfc_arena_reset(scratch, scratch_entry);
    }
    return st;
}

dfc_status dfc_sampler_run_from_host(const dfc_sampler_config *cfg, const dfc_net *denoiser, const dfc_diffusion *d,
                                     const dfc_guidance *guidance, dfc_backend *be, dfc_arena *work, dfc_arena *scratch,
                                     const dfc_tensor *x_host, const uint64_t *sample_keys, dfc_progress_fn progress,
                                     void *progress_user, dfc_sampler_outputs *out, dfc_error *err)
{
    DFC_TRY(dfc_net_sync(denoiser, be, err));
    dfc_tensor x = *x_host;
    if (!(x.data = be->iface->alloc(be, (size_t)dfc_numel(&x) * sizeof(float), err)))
        return err->code;
    dfc_status st = dfc_copy_tensor_from_host(be, &x, x_host, err);
    if (st == DFC_OK)
        st = dfc_sampler_run(cfg, denoiser, d, guidance, be, work, scratch, &x, sample_keys, progress, progress_user,
                             out, err);
    be->iface->free(be, x.data);
    return st;
}

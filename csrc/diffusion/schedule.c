#include "schedule.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RESPACING_SECTIONS 64
#define PI 3.14159265358979323846

/* ---- schedules (guided-diffusion get_named_beta_schedule) ---- */

static void linear_betas(int steps, double *betas)
{
    /* scale = 1000 / T keeps the schedule comparable across step counts */
    double scale = 1000.0 / steps, start = scale * 0.0001, end = scale * 0.02;
    for (int i = 0; i < steps; i++) /* np.linspace(start, end, steps) */
        betas[i] = steps == 1 ? start : start + (end - start) * i / (double)(steps - 1);
    if (steps > 1)
        betas[steps - 1] = end;
}

static double cosine_alpha_bar(double t)
{
    double v = cos((t + 0.008) / 1.008 * PI / 2.0);
    return v * v;
}

static void cosine_betas(int steps, double *betas)
{
    for (int i = 0; i < steps; i++) {
        double b = 1.0 - cosine_alpha_bar((i + 1) / (double)steps) / cosine_alpha_bar(i / (double)steps);
        betas[i] = b < 0.999 ? b : 0.999; /* max_beta from betas_for_alpha_bar */
    }
}

/* ---- respacing (respace.py space_timesteps); keep[j] = 1 for kept original steps ---- */

static dfc_status parse_int(const char *s, size_t len, int *out)
{
    if (len == 0 || len > 9)
        return DFC_ERR_VALUE;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return DFC_ERR_VALUE;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return DFC_OK;
}

static dfc_status space_timesteps(int steps, const char *respacing, unsigned char *keep, dfc_error *err)
{
    if (respacing == NULL || respacing[0] == '\0') {
        memset(keep, 1, (size_t)steps);
        return DFC_OK;
    }
    memset(keep, 0, (size_t)steps);
    if (strncmp(respacing, "ddim", 4) == 0) {
        int desired;
        if (parse_int(respacing + 4, strlen(respacing + 4), &desired) != DFC_OK)
            return dfc_fail(err, DFC_ERR_VALUE, "diffusion: cannot parse respacing '%s'", respacing);
        for (int stride = 1; stride < steps; stride++) {
            if ((steps + stride - 1) / stride == desired) {
                for (int t = 0; t < steps; t += stride)
                    keep[t] = 1;
                return DFC_OK;
            }
        }
        return dfc_fail(err, DFC_ERR_VALUE, "diffusion: cannot create exactly %d steps with an integer stride from %d",
                        desired, steps);
    }
    int counts[MAX_RESPACING_SECTIONS], sections = 0;
    for (const char *p = respacing;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (sections == MAX_RESPACING_SECTIONS || parse_int(p, len, &counts[sections]) != DFC_OK)
            return dfc_fail(err, DFC_ERR_VALUE,
                            "diffusion: respacing must be 'K', 'a,b,...' or 'ddimK' with positive integers, got '%s'",
                            respacing);
        sections++;
        if (!comma)
            break;
        p = comma + 1;
    }
    int size_per = steps / sections, extra = steps % sections, start = 0;
    for (int s = 0; s < sections; s++) {
        int size = size_per + (s < extra ? 1 : 0);
        int count = counts[s];
        if (count < 1 || count > size)
            return dfc_fail(err, DFC_ERR_VALUE, "diffusion: cannot divide a section of %d steps into %d", size, count);
        double stride = count <= 1 ? 1.0 : (double)(size - 1) / (double)(count - 1);
        double cur = 0.0;
        for (int k = 0; k < count; k++) {
            /* Python's round() rounds half to even, as nearbyint does in the default rounding mode */
            keep[start + (int)nearbyint(cur)] = 1;
            cur += stride;
        }
        start += size;
    }
    return DFC_OK;
}

/* ---- construction ---- */

/* Every float64 table of d, for allocating and freeing them together. */
#define DIFFUSION_TABLES 16
static void diffusion_tables(dfc_diffusion *d, double **tables[DIFFUSION_TABLES])
{
    double **all[DIFFUSION_TABLES] = {&d->betas,
                                      &d->alphas_cumprod,
                                      &d->alphas_cumprod_prev,
                                      &d->alphas_cumprod_next,
                                      &d->sqrt_alphas_cumprod,
                                      &d->sqrt_one_minus_alphas_cumprod,
                                      &d->log_one_minus_alphas_cumprod,
                                      &d->sqrt_recip_alphas_cumprod,
                                      &d->sqrt_recipm1_alphas_cumprod,
                                      &d->posterior_variance,
                                      &d->posterior_log_variance_clipped,
                                      &d->posterior_mean_coef1,
                                      &d->posterior_mean_coef2,
                                      &d->log_betas,
                                      &d->fixed_variance,
                                      &d->fixed_log_variance};
    memcpy(tables, all, sizeof all);
}

void dfc_diffusion_destroy(dfc_diffusion *d)
{
    if (!d)
        return;
    free(d->timestep_map);
    double **arrays[DIFFUSION_TABLES];
    diffusion_tables(d, arrays);
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(*arrays[i]);
    free(d);
}

dfc_status dfc_diffusion_create(int steps, const char *schedule, const char *respacing, dfc_variance_type variance_type,
                                dfc_diffusion **out, dfc_error *err)
{
    *out = NULL;
    if (steps < 2 || steps > 1000000)
        return dfc_fail(err, DFC_ERR_VALUE, "diffusion: steps must be in [2, 1000000], got %d", steps);
    if ((int)variance_type < (int)DFC_VAR_LEARNED_RANGE || (int)variance_type > (int)DFC_VAR_LEARNED_OUTPUT_FIXED_SMALL)
        return dfc_fail(err, DFC_ERR_VALUE, "diffusion: unknown variance type %d", (int)variance_type);
    dfc_status st = DFC_OK;
    double *base_betas = malloc((size_t)steps * sizeof(double));
    unsigned char *keep = malloc((size_t)steps);
    dfc_diffusion *d = calloc(1, sizeof *d);
    if (!base_betas || !keep || !d) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "diffusion: out of memory");
        goto done;
    }
    if (strcmp(schedule, "linear") == 0)
        linear_betas(steps, base_betas);
    else if (strcmp(schedule, "cosine") == 0)
        cosine_betas(steps, base_betas);
    else {
        st = dfc_fail(err, DFC_ERR_VALUE, "diffusion: schedule must be 'linear' or 'cosine', got '%s'", schedule);
        goto done;
    }
    if ((st = space_timesteps(steps, respacing, keep, err)) != DFC_OK)
        goto done;
    int k = 0;
    for (int j = 0; j < steps; j++)
        k += keep[j];
    if (k < 2) {
        st = dfc_fail(err, DFC_ERR_VALUE, "diffusion: respacing '%s' keeps %d step(s); at least 2 are needed",
                      respacing, k);
        goto done;
    }
    d->original_steps = steps;
    d->num_timesteps = k;
    d->variance_type = variance_type;
    d->timestep_map = malloc((size_t)k * sizeof(int64_t));
    double **arrays[DIFFUSION_TABLES];
    diffusion_tables(d, arrays);
    int all_allocated = d->timestep_map != NULL;
    for (size_t a = 0; a < sizeof arrays / sizeof arrays[0]; a++) {
        *arrays[a] = malloc((size_t)k * sizeof(double));
        all_allocated = all_allocated && *arrays[a];
    }
    if (!all_allocated) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "diffusion: out of memory");
        goto done;
    }
    /* SpacedDiffusion: new beta_i = 1 - abar_j / abar_(previous kept j), from the base cumulative products */
    double base_abar = 1.0, last_kept_abar = 1.0;
    for (int j = 0, i = 0; j < steps; j++) {
        base_abar *= 1.0 - base_betas[j];
        if (keep[j]) {
            d->betas[i] = 1.0 - base_abar / last_kept_abar;
            last_kept_abar = base_abar;
            d->timestep_map[i++] = j;
        }
    }
    /* GaussianDiffusion.__init__, in the same float64 operations */
    double abar = 1.0;
    for (int i = 0; i < k; i++) {
        abar *= 1.0 - d->betas[i];
        d->alphas_cumprod[i] = abar;
    }
    for (int i = 0; i < k; i++) {
        double ac = d->alphas_cumprod[i], beta = d->betas[i];
        double prev = i == 0 ? 1.0 : d->alphas_cumprod[i - 1];
        d->alphas_cumprod_prev[i] = prev;
        d->alphas_cumprod_next[i] = i + 1 < k ? d->alphas_cumprod[i + 1] : 0.0;
        d->sqrt_alphas_cumprod[i] = sqrt(ac);
        d->sqrt_one_minus_alphas_cumprod[i] = sqrt(1.0 - ac);
        d->log_one_minus_alphas_cumprod[i] = log(1.0 - ac);
        d->sqrt_recip_alphas_cumprod[i] = sqrt(1.0 / ac);
        d->sqrt_recipm1_alphas_cumprod[i] = sqrt(1.0 / ac - 1.0);
        d->posterior_variance[i] = beta * (1.0 - prev) / (1.0 - ac);
        d->posterior_mean_coef1[i] = beta * sqrt(prev) / (1.0 - ac);
        d->posterior_mean_coef2[i] = (1.0 - prev) * sqrt(1.0 - beta) / (1.0 - ac);
        d->log_betas[i] = log(beta);
    }
    for (int i = 0; i < k; i++) {
        /* beta~_0 = 0, so index 0 reuses beta~_1 ("clipped") */
        double pv = i == 0 ? d->posterior_variance[1] : d->posterior_variance[i];
        d->posterior_log_variance_clipped[i] = log(pv);
        if (variance_type == DFC_VAR_FIXED_LARGE || variance_type == DFC_VAR_LEARNED_OUTPUT_FIXED_LARGE) {
            d->fixed_variance[i] = i == 0 ? d->posterior_variance[1] : d->betas[i];
            d->fixed_log_variance[i] = log(d->fixed_variance[i]);
        } else {
            d->fixed_variance[i] = d->posterior_variance[i];
            d->fixed_log_variance[i] = d->posterior_log_variance_clipped[i];
        }
    }
    *out = d;
    d = NULL;
done:
    free(base_betas);
    free(keep);
    dfc_diffusion_destroy(d);
    return st;
}

/* ---- per-sample math: each row's coefficients gathered here, the arithmetic in the backend's ops ---- */

static dfc_status check_indices(const dfc_diffusion *d, const int64_t *indices, int64_t n, const char *op,
                                dfc_error *err)
{
    for (int64_t b = 0; b < n; b++)
        if (indices[b] < 0 || indices[b] >= d->num_timesteps)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: timestep index %lld of sample %lld is outside [0, %d)", op,
                            (long long)indices[b], (long long)b, d->num_timesteps);
    return DFC_OK;
}

/* count float arrays of n entries in one block (free the first); NULL with err set when out of memory */
static float *row_arrays(int64_t n, int count, const char *op, dfc_error *err)
{
    float *block = malloc((size_t)(n > 0 ? n : 1) * (size_t)count * sizeof(float));
    if (!block)
        dfc_fail(err, DFC_ERR_NOMEM, "%s: out of memory", op);
    return block;
}

/* _extract_into_tensor: the float64 table entry of each row's timestep, cast to float32 */
static void gather_rows(const double *table, const int64_t *indices, int64_t n, float *out)
{
    for (int64_t b = 0; b < n; b++)
        out[b] = (float)table[indices[b]];
}

dfc_status dfc_diffusion_q_sample(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *x0, const int64_t *indices,
                                  const dfc_tensor *noise, dfc_tensor *x_t, dfc_error *err)
{
    const char *op = "q_sample";
    DFC_TRY(dfc_check_ndim(x0, op, "x0", 1, DFC_MAX_DIMS, err));
    const int64_t n = x0->shape[0];
    DFC_TRY(check_indices(d, indices, n, op, err));
    float *a = row_arrays(n, 2, op, err), *s = a + n;
    if (!a)
        return err ? err->code : DFC_ERR_NOMEM;
    gather_rows(d->sqrt_alphas_cumprod, indices, n, a);
    gather_rows(d->sqrt_one_minus_alphas_cumprod, indices, n, s);
    dfc_status st = be->ops->q_sample(be, x0, noise, a, s, x_t, err);
    free(a);
    return st;
}

/* What the model outputs and which variance the step takes (ops.h's DFC_OUTPUT_*) */
static int output_kind(const dfc_diffusion *d)
{
    switch (d->variance_type) {
    case DFC_VAR_LEARNED_RANGE: return DFC_OUTPUT_EPS_V;
    case DFC_VAR_LEARNED_OUTPUT_FIXED_LARGE:
    case DFC_VAR_LEARNED_OUTPUT_FIXED_SMALL: return DFC_OUTPUT_EPS_V_FIXED;
    default: return DFC_OUTPUT_EPS;
    }
}

/* The coefficients p_mean_variance needs at each row's timestep, in `block` (8 n floats). */
static dfc_posterior_coefs posterior_coefs(const dfc_diffusion *d, const int64_t *indices, int64_t n, float *block)
{
    const double *tables[8] = {d->sqrt_recip_alphas_cumprod,
                               d->sqrt_recipm1_alphas_cumprod,
                               d->posterior_mean_coef1,
                               d->posterior_mean_coef2,
                               d->posterior_log_variance_clipped,
                               d->log_betas,
                               d->fixed_variance,
                               d->fixed_log_variance};
    for (int k = 0; k < 8; k++)
        gather_rows(tables[k], indices, n, block + k * n);
    dfc_posterior_coefs c = {block,         block + n,     block + 2 * n, block + 3 * n,
                             block + 4 * n, block + 5 * n, block + 6 * n, block + 7 * n};
    return c;
}

/* Checks x_t and the indices, then gathers the coefficients p_mean_variance needs into *block (8 n floats, for the
 * caller to free) viewed by *c. */
static dfc_status gather_posterior(const dfc_diffusion *d, const dfc_tensor *x_t, const int64_t *indices,
                                   const char *op, float **block, dfc_posterior_coefs *c, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x_t, op, "x_t", 2, DFC_MAX_DIMS, err));
    const int64_t n = x_t->shape[0];
    DFC_TRY(check_indices(d, indices, n, op, err));
    if (!(*block = row_arrays(n, 8, op, err)))
        return err ? err->code : DFC_ERR_NOMEM;
    *c = posterior_coefs(d, indices, n, *block);
    return DFC_OK;
}

dfc_status dfc_diffusion_p_mean_variance(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *model_output,
                                         const dfc_tensor *x_t, const int64_t *indices, int clip, dfc_tensor *mean,
                                         dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                         dfc_error *err)
{
    float *block;
    dfc_posterior_coefs c;
    DFC_TRY(gather_posterior(d, x_t, indices, "p_mean_variance", &block, &c, err));
    dfc_status st = be->ops->p_mean_variance_forward(be, model_output, x_t, &c, output_kind(d), clip, mean, variance,
                                                     log_variance, pred_xstart, err);
    free(block);
    return st;
}

dfc_status dfc_diffusion_pred_xstart_backward(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                              const dfc_tensor *model_output, const dfc_tensor *x_t,
                                              const int64_t *indices, int clip, dfc_tensor *dx_t,
                                              dfc_tensor *d_model_output, dfc_error *err)
{
    float *block;
    dfc_posterior_coefs c;
    DFC_TRY(gather_posterior(d, x_t, indices, "p_mean_variance_backward", &block, &c, err));
    dfc_status st = be->ops->p_mean_variance_backward(be, d_pred_xstart, model_output, x_t, &c, output_kind(d), clip,
                                                      dx_t, d_model_output, err);
    free(block);
    return st;
}

dfc_status dfc_diffusion_sample_step(const dfc_diffusion *d, dfc_backend *be, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance, const dfc_tensor *grad,
                                     const dfc_tensor *noise, const int64_t *indices, dfc_tensor *x_prev,
                                     dfc_error *err)
{
    const char *op = "sample_step";
    DFC_TRY(dfc_check_ndim(mean, op, "mean", 2, DFC_MAX_DIMS, err));
    const int64_t n = mean->shape[0];
    DFC_TRY(check_indices(d, indices, n, op, err));
    float *noise_weight = row_arrays(n, 1, op, err);
    if (!noise_weight)
        return err ? err->code : DFC_ERR_NOMEM;
    for (int64_t b = 0; b < n; b++)
        noise_weight[b] = indices[b] != 0 ? 1.0f : 0.0f; /* no noise at the last step */
    dfc_status st = be->ops->sample_step(be, mean, variance, log_variance, grad, noise, noise_weight, x_prev, err);
    free(noise_weight);
    return st;
}

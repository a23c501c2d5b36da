/* Fast CPU group norm: OpenMP over (sample, group) blocks, which are contiguous in NCHW memory.
 * Forward: one statistics pass (shifted sums in double, so no cancellation when |mean| >> std) and one fused
 * normalise-scale-shift pass. Backward: one pass for the per-channel sums of dy and dy (x - mean), one fused dx
 * pass; dgamma/dbeta are reduced per channel from those sums afterwards, so no thread writes a shared total.
 * The reference kernels in ref_norm.c are the oracle; both check arguments through norm_check.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "fast_math.h"
#include "norm_check.h"
#include "ref.h"

/* Mean and biased variance in one vectorisable pass: sums of (x - x[0]) and its square in double. Shifting by a
 * sample of the data keeps the shifted mean of the order of the std, so E[d^2] - E[d]^2 does not cancel. */
/* Mean and biased variance of count values from s1, s2: the sums of (x - shift) and its square. */
static void moments_from_shifted_sums(double s1, double s2, int64_t count, double shift, double *mean_out,
                                      double *var_out)
{
    const double m1 = s1 / (double)count;
    const double var = s2 / (double)count - m1 * m1;
    *var_out = var > 0.0 ? var : 0.0;
    *mean_out = shift + m1;
}

static void shifted_moments(const float *xs, int64_t count, double *mean_out, double *var_out)
{
    const double shift = xs[0];
    double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t i = 0; i < count; i++) {
        const double d = (double)xs[i] - shift;
        s1 += d;
        s2 += d * d;
    }
    moments_from_shifted_sums(s1, s2, count, shift, mean_out, var_out);
}

/* Mean and 1/sqrt(var + eps) of count contiguous values. */
static void block_stats(const float *xs, int64_t count, double eps, double *mean_out, double *rstd_out)
{
    double var;
    shifted_moments(xs, count, mean_out, &var);
    *rstd_out = 1.0 / sqrt(var + eps);
}

DFC_VECTOR_CLONES
dfc_status cpu_group_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                  int groups, float eps, dfc_tensor *y, dfc_tensor *mean, dfc_tensor *rstd,
                                  dfc_error *err)
{
    const char *op = "group_norm";
    DFC_TRY(dfc_group_norm_check(op, x, gamma, beta, mean, rstd, groups, eps, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    const int64_t cpg = c / groups, count = cpg * inner, blocks = n * groups;
    const float *gs = dfc_present(gamma) ? gamma->data : NULL, *bs = dfc_present(beta) ? beta->data : NULL;
    float *means = dfc_present(mean) ? mean->data : NULL, *rstds = dfc_present(rstd) ? rstd->data : NULL;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const float *xb = x->data + blk * count;
        float *yb = y->data + blk * count;
        double m, r;
        block_stats(xb, count, eps, &m, &r);
        const int64_t c0 = (blk % groups) * cpg;
        const float mf = (float)m;
        for (int64_t cc = 0; cc < cpg; cc++) {
            /* (x - mean) first: folding mean into the shift would cancel when |mean| >> std. */
            const double scale_d = r * (gs ? gs[c0 + cc] : 1.0f);
            const float scale = (float)scale_d;
            const float shift = (float)((bs ? bs[c0 + cc] : 0.0) + ((double)mf - m) * scale_d); /* mf's rounding */
            const float *xc = xb + cc * inner;
            float *yc = yb + cc * inner;
#pragma omp simd
            for (int64_t i = 0; i < inner; i++)
                yc[i] = (xc[i] - mf) * scale + shift;
        }
        if (means) {
            means[blk] = mf;
            rstds[blk] = (float)r;
        }
    }
    return DFC_OK;
}

/* With xhat = (x - m) r, g = gamma_c dy and M values per group:
 *   dx = r (g - mean(g) - xhat mean(g xhat)) = (r gamma_c) dy + B (x - m) + C,
 *   B = -r^3 sum(g (x - m)) / M,  C = -r sum(g) / M;
 * sum(g) and sum(g (x - m)) come from the per-channel sums S_dy[n, c] and S_dyx[n, c] = sum dy (x - m), which also
 * give dbeta_c = sum_n S_dy[n, c] and dgamma_c = sum_n r_n S_dyx[n, c]. */
DFC_VECTOR_CLONES
dfc_status cpu_group_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma,
                                   const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps,
                                   dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    const char *op = "group_norm_backward";
    DFC_TRY(dfc_group_norm_check(op, x, gamma, NULL, mean, rstd, groups, eps, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    DFC_TRY(dfc_norm_grads_check(op, x, dx, dgamma, dbeta, err));
    const int64_t cpg = c / groups, count = cpg * inner, blocks = n * groups;
    const float *gs = dfc_present(gamma) ? gamma->data : NULL;
    const float *means = dfc_present(mean) ? mean->data : NULL, *rstds = dfc_present(rstd) ? rstd->data : NULL;
    float *dxs = dfc_present(dx) ? dx->data : NULL;
    float *dgs = dfc_present(dgamma) ? dgamma->data : NULL, *dbs = dfc_present(dbeta) ? dbeta->data : NULL;

    /* Scratch: S_dy and S_dyx per (sample, channel), r per (sample, group). */
    double *sum_dy = malloc((size_t)(2 * n * c + blocks) * sizeof(double));
    if (!sum_dy)
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate %lld doubles of scratch", op,
                        (long long)(2 * n * c + blocks));
    double *sum_dyx = sum_dy + n * c, *block_rstd = sum_dyx + n * c;

#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        const float *xb = x->data + blk * count, *dyb = dy->data + blk * count;
        double m, r;
        if (means) {
            m = means[blk];
            r = rstds[blk];
        } else {
            block_stats(xb, count, eps, &m, &r);
        }
        block_rstd[blk] = r;
        const int64_t s = blk / groups, c0 = (blk % groups) * cpg;
        double group_g = 0.0, group_gx = 0.0;
        for (int64_t cc = 0; cc < cpg; cc++) {
            const float *xc = xb + cc * inner, *dyc = dyb + cc * inner;
            double s_dy = 0.0, s_dyx = 0.0;
#pragma omp simd reduction(+ : s_dy, s_dyx)
            for (int64_t i = 0; i < inner; i++) {
                s_dy += dyc[i];
                s_dyx += (double)dyc[i] * ((double)xc[i] - m);
            }
            sum_dy[s * c + c0 + cc] = s_dy;
            sum_dyx[s * c + c0 + cc] = s_dyx;
            const double g = gs ? gs[c0 + cc] : 1.0;
            group_g += g * s_dy;
            group_gx += g * s_dyx;
        }
        if (!dxs)
            continue;
        const float mf = (float)m;
        const double coef_x_d = -r * r * r * group_gx / (double)count;
        const float coef_x = (float)coef_x_d;
        const float coef_c = (float)(-r * group_g / (double)count + coef_x_d * ((double)mf - m)); /* mf's rounding */
        float *dxb = dxs + blk * count;
        for (int64_t cc = 0; cc < cpg; cc++) {
            const float coef_dy = (float)(r * (gs ? gs[c0 + cc] : 1.0f));
            const float *xc = xb + cc * inner, *dyc = dyb + cc * inner;
            float *dxc = dxb + cc * inner;
#pragma omp simd
            for (int64_t i = 0; i < inner; i++)
                dxc[i] = coef_dy * dyc[i] + coef_x * (xc[i] - mf) + coef_c;
        }
    }

    if (dgs || dbs) {
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t ch = 0; ch < c; ch++) {
            double dg = 0.0, db = 0.0;
            for (int64_t s = 0; s < n; s++) {
                dg += block_rstd[s * groups + ch / cpg] * sum_dyx[s * c + ch];
                db += sum_dy[s * c + ch];
            }
            if (dgs)
                dgs[ch] = (float)dg;
            if (dbs)
                dbs[ch] = (float)db;
        }
    }
    free(sum_dy);
    return DFC_OK;
}

/* ---- group norm, scale-shift and SiLU in one pass, NCHW or NHWC (group_norm_act_forward) ---- */

/* Pixels per work item of the apply pass: while one channel at a time is written with a stride (NCHW -> NHWC), the
 * tile's rows (every channel of 32 pixels) stay in the first cache levels. */
#define GN_ACT_TILE 32

/* Per (image, channel): the mean and biased variance of x over the image's pixels, into stats[2 (b c + ch)] and
 * [2 (b c + ch) + 1], from sums in double of x - x[first pixel] (as block_stats: no cancellation). NHWC images are
 * summed in `parts` pixel ranges per image whose partial sums land in scratch (n parts 2c doubles). */
DFC_VECTOR_CLONES
static void channel_stats(const dfc_tensor *x, int x_nhwc, int threads, int64_t parts, double *scratch, double *stats)
{
    const int64_t n = x->shape[0], c = x->shape[1], pixels = x->shape[2] * x->shape[3];
    const float *xs = x->data;
    if (!x_nhwc) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t nc = 0; nc < n * c; nc++)
            shifted_moments(xs + nc * pixels, pixels, &stats[2 * nc], &stats[2 * nc + 1]);
        return;
    }
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n; b++)
        for (int64_t part = 0; part < parts; part++) {
            double *s1 = scratch + (b * parts + part) * 2 * c, *s2 = s1 + c;
            for (int64_t ch = 0; ch < 2 * c; ch++)
                s1[ch] = 0.0;
            const float *shift = xs + b * pixels * c; /* the image's first pixel, for every part */
            for (int64_t p = pixels * part / parts; p < pixels * (part + 1) / parts; p++) {
                const float *row = xs + (b * pixels + p) * c;
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) {
                    const double d = (double)row[ch] - shift[ch];
                    s1[ch] += d;
                    s2[ch] += d * d;
                }
            }
        }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t nc = 0; nc < n * c; nc++) {
        const int64_t b = nc / c, ch = nc % c;
        double s1 = 0.0, s2 = 0.0;
        for (int64_t part = 0; part < parts; part++) {
            s1 += scratch[(b * parts + part) * 2 * c + ch];
            s2 += scratch[(b * parts + part) * 2 * c + c + ch];
        }
        moments_from_shifted_sums(s1, s2, pixels, xs[b * pixels * c + ch], &stats[2 * nc], &stats[2 * nc + 1]);
    }
}

/* Pixels [p0, p1) of one image (xi, yi: its first element in x and y), every channel:
 * y = act((x - off) mul + plus) with per-channel coefficients. */
DFC_VECTOR_CLONES
static void group_norm_act_tile(const float *xi, float *yi, int64_t c, int64_t pixels, int64_t p0, int64_t p1,
                                int x_nhwc, int y_nhwc, int silu, const float *off, const float *mul, const float *plus)
{
    if (x_nhwc && y_nhwc) {
        for (int64_t p = p0; p < p1; p++) {
            const float *xr = xi + p * c;
            float *yr = yi + p * c;
            if (silu) { /* two loops: a select between the branches would keep gcc from vectorising (fast_math.h) */
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++) {
                    const float v = (xr[ch] - off[ch]) * mul[ch] + plus[ch];
                    yr[ch] = v * dfc_sigmoidf(v);
                }
            } else {
#pragma omp simd
                for (int64_t ch = 0; ch < c; ch++)
                    yr[ch] = (xr[ch] - off[ch]) * mul[ch] + plus[ch];
            }
        }
        return;
    }
    float v[GN_ACT_TILE];
    const int64_t count = p1 - p0;
    for (int64_t ch = 0; ch < c; ch++) {
        const float o = off[ch], m = mul[ch], a = plus[ch];
        if (x_nhwc) {
            const float *xc = xi + p0 * c + ch;
            for (int64_t i = 0; i < count; i++)
                v[i] = xc[i * c];
        } else {
            const float *xc = xi + ch * pixels + p0;
#pragma omp simd
            for (int64_t i = 0; i < count; i++)
                v[i] = xc[i];
        }
        if (silu) {
#pragma omp simd
            for (int64_t i = 0; i < count; i++) {
                const float t = (v[i] - o) * m + a;
                v[i] = t * dfc_sigmoidf(t);
            }
        } else {
#pragma omp simd
            for (int64_t i = 0; i < count; i++)
                v[i] = (v[i] - o) * m + a;
        }
        if (y_nhwc) {
            float *yc = yi + p0 * c + ch;
            for (int64_t i = 0; i < count; i++)
                yc[i * c] = v[i];
        } else {
            float *yc = yi + ch * pixels + p0;
#pragma omp simd
            for (int64_t i = 0; i < count; i++)
                yc[i] = v[i];
        }
    }
}

/* Statistics per channel (channel_stats), combined per group: mean_g = mean of the channels' means (plus add),
 * var_g = mean of their variances plus the variance of their means. Each channel's steps fold into
 * y = act((x - off) mul + plus) with off = mean_g - add (in float; plus absorbs its rounding), mul = rstd gamma
 * (1 + scale), plus = beta (1 + scale) + shift; then one pass over pixel tiles writes y in its layout. */
dfc_status cpu_group_norm_act_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *add,
                                      const dfc_tensor *gamma, const dfc_tensor *beta, const dfc_tensor *ss, int groups,
                                      float eps, int silu, int x_nhwc, int y_nhwc, dfc_tensor *y, dfc_error *err)
{
    const char *op = "group_norm_act";
    DFC_TRY(dfc_group_norm_act_check(op, x, add, gamma, beta, ss, groups, eps, x_nhwc, y_nhwc, y, err));
    const int64_t n = x->shape[0], c = x->shape[1], pixels = x->shape[2] * x->shape[3], cpg = c / groups;
    const int threads = be->num_threads > 0 ? be->num_threads : 1;
    const int64_t parts = x_nhwc ? threads : 0;
    const float *gs = dfc_present(gamma) ? gamma->data : NULL, *bs = dfc_present(beta) ? beta->data : NULL;
    const float *adds = dfc_present(add) ? add->data : NULL, *sss = dfc_present(ss) ? ss->data : NULL;
    /* stats (n c 2), the NHWC partial sums (n parts 2c), then off, mul, plus (n c each, as floats) */
    const size_t doubles = (size_t)(n * c * 2 + n * parts * 2 * c);
    double *scratch = malloc(doubles * sizeof(double) + (size_t)(3 * n * c) * sizeof(float));
    if (!scratch)
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate the statistics of %lld channels", op,
                        (long long)(n * c));
    double *stats = scratch;
    float *off = (float *)(scratch + doubles), *mul = off + n * c, *plus = mul + n * c;
    channel_stats(x, x_nhwc, threads, parts, scratch + n * c * 2, stats);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < n * groups; blk++) {
        const int64_t b = blk / groups, c0 = (blk % groups) * cpg;
        double mean = 0.0, var = 0.0, spread = 0.0;
        for (int64_t ch = c0; ch < c0 + cpg; ch++) {
            mean += stats[2 * (b * c + ch)] + (adds ? adds[b * c + ch] : 0.0f);
            var += stats[2 * (b * c + ch) + 1];
        }
        mean /= (double)cpg;
        for (int64_t ch = c0; ch < c0 + cpg; ch++) {
            const double d = stats[2 * (b * c + ch)] + (adds ? adds[b * c + ch] : 0.0f) - mean;
            spread += d * d;
        }
        const double rstd = 1.0 / sqrt((var + spread) / (double)cpg + eps);
        for (int64_t ch = c0; ch < c0 + cpg; ch++) {
            const int64_t k = b * c + ch;
            const double grow = sss ? 1.0 + (double)sss[b * 2 * c + ch] : 1.0;
            const double offset = mean - (adds ? adds[k] : 0.0f), m = rstd * (gs ? gs[ch] : 1.0f) * grow;
            off[k] = (float)offset;
            mul[k] = (float)m;
            plus[k] = (float)((bs ? bs[ch] : 0.0f) * grow + (sss ? sss[b * 2 * c + c + ch] : 0.0f) +
                              ((double)off[k] - offset) * m);
        }
    }
    const int64_t tiles = (pixels + GN_ACT_TILE - 1) / GN_ACT_TILE, image = c * pixels;
    if (x->data == y->data && x_nhwc != y_nhwc) {
        /* y overwrites x in another layout: each image goes through a buffer of one image, then into place */
        float *buffer = malloc((size_t)image * sizeof *buffer);
        if (!buffer) {
            free(scratch);
            return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate a buffer of one image (%lld values)", op,
                            (long long)image);
        }
        for (int64_t b = 0; b < n; b++) {
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t t = 0; t < tiles; t++) {
                const int64_t p0 = t * GN_ACT_TILE, p1 = p0 + GN_ACT_TILE < pixels ? p0 + GN_ACT_TILE : pixels;
                group_norm_act_tile(x->data + b * image, buffer, c, pixels, p0, p1, x_nhwc, y_nhwc, silu, off + b * c,
                                    mul + b * c, plus + b * c);
            }
            memcpy(y->data + b * image, buffer, (size_t)image * sizeof *buffer);
        }
        free(buffer);
    } else {
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
        for (int64_t b = 0; b < n; b++)
            for (int64_t t = 0; t < tiles; t++) {
                const int64_t p0 = t * GN_ACT_TILE, p1 = p0 + GN_ACT_TILE < pixels ? p0 + GN_ACT_TILE : pixels;
                group_norm_act_tile(x->data + b * image, y->data + b * image, c, pixels, p0, p1, x_nhwc, y_nhwc, silu,
                                    off + b * c, mul + b * c, plus + b * c);
            }
    }
    free(scratch);
    return DFC_OK;
}

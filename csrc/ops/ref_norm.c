/* Reference normalisation kernels: group norm (training form, per-sample statistics) and batch norm
 * (inference form, running statistics). Statistics and reductions accumulate in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "norm_check.h"
#include "ref.h"

/* ---- group norm ---- */

/* Mean and 1/sqrt(biased variance + eps) of `count` contiguous values, two passes in double. */
static void group_stats(const float *xs, int64_t count, double eps, double *mean_out, double *rstd_out)
{
    double sum = 0.0;
    for (int64_t i = 0; i < count; i++)
        sum += xs[i];
    const double mean = sum / (double)count;
    double sq = 0.0;
    for (int64_t i = 0; i < count; i++) {
        double d = xs[i] - mean;
        sq += d * d;
    }
    *mean_out = mean;
    *rstd_out = 1.0 / sqrt(sq / (double)count + eps);
}

/* y = (x - mean_g) rstd_g gamma_c + beta_c over each (sample, group) block of C/groups channels. */
dfc_status ref_group_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
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
        group_stats(xb, count, eps, &m, &r);
        const int64_t c0 = (blk % groups) * cpg;
        for (int64_t cc = 0; cc < cpg; cc++) {
            const double g = gs ? gs[c0 + cc] : 1.0, b = bs ? bs[c0 + cc] : 0.0;
            for (int64_t i = cc * inner; i < (cc + 1) * inner; i++)
                yb[i] = (float)((xb[i] - m) * r * g + b);
        }
        if (means) {
            means[blk] = (float)m;
            rstds[blk] = (float)r;
        }
    }
    return DFC_OK;
}

/* Offset of element (n, c, p) of an (N, C, P) image batch stored NCHW or NHWC. */
static int64_t image_offset(int nhwc, int64_t n, int64_t c, int64_t p, int64_t channels, int64_t pixels)
{
    return nhwc ? (n * pixels + p) * channels + c : (n * channels + c) * pixels + p;
}

/* Per (sample, group): h = x + add, two-pass statistics in double, then each output from its own formula. */
dfc_status ref_group_norm_act_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *add,
                                      const dfc_tensor *gamma, const dfc_tensor *beta, const dfc_tensor *ss, int groups,
                                      float eps, int silu, int x_nhwc, int y_nhwc, dfc_tensor *y, dfc_error *err)
{
    const char *op = "group_norm_act";
    DFC_TRY(dfc_group_norm_act_check(op, x, add, gamma, beta, ss, groups, eps, x_nhwc, y_nhwc, y, err));
    const int64_t n = x->shape[0], c = x->shape[1], pixels = x->shape[2] * x->shape[3], cpg = c / groups;
    const float *gs = dfc_present(gamma) ? gamma->data : NULL, *bs = dfc_present(beta) ? beta->data : NULL;
    const float *adds = dfc_present(add) ? add->data : NULL, *sss = dfc_present(ss) ? ss->data : NULL;
    float *copy = NULL; /* x's values, when y overwrites them in another layout */
    if (x->data == y->data && x_nhwc != y_nhwc) {
        copy = malloc((size_t)dfc_numel(x) * sizeof *copy);
        if (!copy)
            return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate a copy of x", op);
        memcpy(copy, x->data, (size_t)dfc_numel(x) * sizeof *copy);
    }
    const float *xs = copy ? copy : x->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t blk = 0; blk < n * groups; blk++) {
        const int64_t b = blk / groups, c0 = (blk % groups) * cpg;
        double sum = 0.0, sq = 0.0;
        for (int64_t cc = c0; cc < c0 + cpg; cc++) {
            const double a = adds ? adds[b * c + cc] : 0.0;
            for (int64_t p = 0; p < pixels; p++)
                sum += (double)xs[image_offset(x_nhwc, b, cc, p, c, pixels)] + a;
        }
        const double mean = sum / (double)(cpg * pixels);
        for (int64_t cc = c0; cc < c0 + cpg; cc++) {
            const double a = adds ? adds[b * c + cc] : 0.0;
            for (int64_t p = 0; p < pixels; p++) {
                const double d = (double)xs[image_offset(x_nhwc, b, cc, p, c, pixels)] + a - mean;
                sq += d * d;
            }
        }
        const double rstd = 1.0 / sqrt(sq / (double)(cpg * pixels) + eps);
        for (int64_t cc = c0; cc < c0 + cpg; cc++) {
            const double a = adds ? adds[b * c + cc] : 0.0, g = gs ? gs[cc] : 1.0, bt = bs ? bs[cc] : 0.0;
            const double scale = sss ? sss[b * 2 * c + cc] : 0.0, shift = sss ? sss[b * 2 * c + c + cc] : 0.0;
            for (int64_t p = 0; p < pixels; p++) {
                const double h = (double)xs[image_offset(x_nhwc, b, cc, p, c, pixels)] + a;
                double v = ((h - mean) * rstd * g + bt) * (1.0 + scale) + shift;
                if (silu)
                    v = v / (1.0 + exp(-v));
                y->data[image_offset(y_nhwc, b, cc, p, c, pixels)] = (float)v;
            }
        }
    }
    free(copy);
    return DFC_OK;
}

/* With xhat = (x - mean) rstd and g = dy gamma, over each group of M values:
 *   dx = rstd (g - mean(g) - xhat mean(g xhat)),  dgamma_c = sum dy xhat,  dbeta_c = sum dy.
 * Three plain loops: statistics per (sample, group), dx per (sample, group), dgamma/dbeta per channel. */
dfc_status ref_group_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma,
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
    float *dxs = dfc_present(dx) ? dx->data : NULL;
    float *dgs = dfc_present(dgamma) ? dgamma->data : NULL, *dbs = dfc_present(dbeta) ? dbeta->data : NULL;

    double *stats = malloc((size_t)blocks * 2 * sizeof *stats); /* mean, rstd per (sample, group) */
    if (!stats)
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate %lld statistics", op, (long long)blocks * 2);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
        if (dfc_present(mean)) {
            stats[2 * blk] = mean->data[blk];
            stats[2 * blk + 1] = rstd->data[blk];
        } else {
            group_stats(x->data + blk * count, count, eps, &stats[2 * blk], &stats[2 * blk + 1]);
        }
    }

    if (dxs) {
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t blk = 0; blk < blocks; blk++) {
            const float *xb = x->data + blk * count, *dyb = dy->data + blk * count;
            float *dxb = dxs + blk * count;
            const double m = stats[2 * blk], r = stats[2 * blk + 1];
            const int64_t c0 = (blk % groups) * cpg;
            double sum_g = 0.0, sum_g_xhat = 0.0;
            for (int64_t cc = 0; cc < cpg; cc++) {
                const double g = gs ? gs[c0 + cc] : 1.0;
                for (int64_t i = cc * inner; i < (cc + 1) * inner; i++) {
                    sum_g += dyb[i] * g;
                    sum_g_xhat += dyb[i] * g * (xb[i] - m) * r;
                }
            }
            const double mean_g = sum_g / (double)count, mean_g_xhat = sum_g_xhat / (double)count;
            for (int64_t cc = 0; cc < cpg; cc++) {
                const double g = gs ? gs[c0 + cc] : 1.0;
                for (int64_t i = cc * inner; i < (cc + 1) * inner; i++) {
                    const double xhat = (xb[i] - m) * r;
                    dxb[i] = (float)(r * (dyb[i] * g - mean_g - xhat * mean_g_xhat));
                }
            }
        }
    }

    if (dgs || dbs) {
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t ch = 0; ch < c; ch++) {
            double sum_dy = 0.0, sum_dy_xhat = 0.0;
            for (int64_t s = 0; s < n; s++) {
                const int64_t blk = s * groups + ch / cpg, off = (s * c + ch) * inner;
                const double m = stats[2 * blk], r = stats[2 * blk + 1];
                for (int64_t i = 0; i < inner; i++) {
                    sum_dy += dy->data[off + i];
                    sum_dy_xhat += dy->data[off + i] * (x->data[off + i] - m) * r;
                }
            }
            if (dgs)
                dgs[ch] = (float)sum_dy_xhat;
            if (dbs)
                dbs[ch] = (float)sum_dy;
        }
    }
    free(stats);
    return DFC_OK;
}

/* ---- batch norm (inference) ---- */

static dfc_status check_batch_norm(const char *op, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                   const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps,
                                   dfc_error *err)
{
    DFC_TRY(dfc_batch_norm_check_shapes(op, x, gamma, beta, running_mean, running_var, eps, err));
    return dfc_batch_norm_check_var(op, running_var->data, x->shape[1], eps, err);
}

dfc_status ref_batch_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                  const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps,
                                  dfc_tensor *y, dfc_error *err)
{
    const char *op = "batch_norm";
    DFC_TRY(check_batch_norm(op, x, gamma, beta, running_mean, running_var, eps, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    const float *gs = dfc_present(gamma) ? gamma->data : NULL, *bs = dfc_present(beta) ? beta->data : NULL;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t nc = 0; nc < n * c; nc++) {
        const int64_t ch = nc % c;
        const double inv = 1.0 / sqrt((double)running_var->data[ch] + eps);
        const double g = gs ? gs[ch] : 1.0, b = bs ? bs[ch] : 0.0, m = running_mean->data[ch];
        const float *xp = x->data + nc * inner;
        float *yp = y->data + nc * inner;
        for (int64_t i = 0; i < inner; i++)
            yp[i] = (float)((xp[i] - m) * inv * g + b);
    }
    return DFC_OK;
}

/* Running statistics are constants: dx = dy gamma inv, dgamma_c = sum dy (x - mean) inv, dbeta_c = sum dy. */
dfc_status ref_batch_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma,
                                   const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps,
                                   dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    const char *op = "batch_norm_backward";
    DFC_TRY(check_batch_norm(op, x, gamma, NULL, running_mean, running_var, eps, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    DFC_TRY(dfc_norm_grads_check(op, x, dx, dgamma, dbeta, err));
    const float *gs = dfc_present(gamma) ? gamma->data : NULL;
    float *dxs = dfc_present(dx) ? dx->data : NULL;
    float *dgs = dfc_present(dgamma) ? dgamma->data : NULL, *dbs = dfc_present(dbeta) ? dbeta->data : NULL;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t ch = 0; ch < c; ch++) {
        const double inv = 1.0 / sqrt((double)running_var->data[ch] + eps);
        const double g = gs ? gs[ch] : 1.0, m = running_mean->data[ch];
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int64_t s = 0; s < n; s++) {
            const int64_t off = (s * c + ch) * inner;
            const float *xp = x->data + off, *dyp = dy->data + off;
            for (int64_t i = 0; i < inner; i++) {
                sum_dy += dyp[i];
                sum_dy_xhat += dyp[i] * (xp[i] - m) * inv;
                if (dxs)
                    dxs[off + i] = (float)(dyp[i] * g * inv);
            }
        }
        if (dgs)
            dgs[ch] = (float)sum_dy_xhat;
        if (dbs)
            dbs[ch] = (float)sum_dy;
    }
    return DFC_OK;
}

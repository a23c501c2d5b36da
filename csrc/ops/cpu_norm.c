/* Fast CPU group norm: OpenMP over (sample, group) blocks, which are contiguous in NCHW memory.
 * Forward: one statistics pass (shifted sums in double, so no cancellation when |mean| >> std) and one fused
 * normalise-scale-shift pass. Backward: one pass for the per-channel sums of dy and dy (x - mean), one fused dx
 * pass; dgamma/dbeta are reduced per channel from those sums afterwards, so no thread writes a shared total.
 * The reference kernels in ref_norm.c are the oracle; both check arguments through norm_check.h. */
#include <math.h>
#include <stdlib.h>

#include "cpu.h"
#include "fast_math.h"
#include "norm_check.h"
#include "ref.h"

/* Mean and 1/sqrt(var + eps) in one vectorisable pass: sums of (x - x[0]) and its square in double. Shifting by a
 * sample of the data keeps the shifted mean of the order of the std, so E[d^2] - E[d]^2 does not cancel. */
static void block_stats(const float *xs, int64_t count, double eps, double *mean_out, double *rstd_out)
{
    const double shift = xs[0];
    double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t i = 0; i < count; i++) {
        const double d = (double)xs[i] - shift;
        s1 += d;
        s2 += d * d;
    }
    const double m1 = s1 / (double)count;
    double var = s2 / (double)count - m1 * m1;
    var = var > 0.0 ? var : 0.0;
    *mean_out = shift + m1;
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

/* Norm-family ops on the CUDA backend: group norm, batch norm (inference form), scale-shift, per-plane
 * standardisation, softmax over any axis, broadcast add/mul and the timestep embedding. Read against ref_norm.c,
 * ref_scale_shift.c, ref_net.c, ref_elementwise.c and ref_attention.c: the same argument checks (norm_check.h,
 * softmax_row.h), the same operation order and accumulation types (double where the reference sums in double).
 *
 * Reductions are deterministic. Where an output has a modest number of inputs (softmax rows, scale-shift planes,
 * the broadcast sums of binary_backward, which must equal scale_shift's bit for bit) it is one index with an inner
 * loop in the reference's order: the same numbers as the reference. The statistics of group norm and
 * standardisation (C/G*H*W values per block) and the per-channel gradient sums of the norms (N*H*W values) take
 * two passes through the scratch: partial sums per chunk of DFC_NORM_CHUNK values, then one index per output
 * summing its chunks in order (double sums, so within ~1e-16 relative of the reference's single running sum).
 *
 * Verified only on a GPU: the launches and their sizes, the scratch between kernels, the read-backs that feed the
 * host-side checks (batch norm's running_var, standardisation's constant planes), and the device maths: double
 * sqrt is correctly rounded on both sides, but CUDA's double exp is within 1 ulp and float cosf/sinf within 2 ulp of
 * the host's (the plugin is built with -fmad=false, so no multiply-add is fused into an fma). scale_shift's float
 * product is also rounded with __fmul_rn, as PyTorch's mul-then-add, whatever the build flags.
 * Not tuned yet: the one-index-per-output loops (scale-shift planes, broadcast sums) serialise H*W values per
 * thread, which a GPU at 256x256 will feel; chunking them would change their rounding, which the scale-shift tests
 * compare bit for bit with binary_backward's. */
#include <stdio.h>
#include <stdlib.h>

#include "cuda_backend.cuh"

extern "C" {
#include "../ops/net_ops.h"
#include "../ops/norm_check.h"
#include "../ops/softmax_row.h"
}

/* Values per chunk of the two-pass sums: large enough that the second pass is short, small enough for many
 * threads per block of group norm. */
#define DFC_NORM_CHUNK 1024

static inline int64_t chunk_count(int64_t count) { return (count + DFC_NORM_CHUNK - 1) / DFC_NORM_CHUNK; }

/* First pass: for each of `rows` rows of `count` values, two sums per chunk, partials[2 (row chunks + chunk) +
 * {0, 1}], with terms(row, i, s0, s1) adding value i of the row to them. */
template <class Terms>
static dfc_status chunk_sums(dfc_backend *be, const char *op, int64_t rows, int64_t count, double *partials,
                             dfc_error *err, Terms terms)
{
    const int64_t chunks = chunk_count(count);
    return dfc_cuda_for_each(be, rows * chunks, op, err, [=] DFC_DEVICE(int64_t k) {
        const int64_t row = k / chunks, begin = (k % chunks) * DFC_NORM_CHUNK;
        const int64_t end = begin + DFC_NORM_CHUNK < count ? begin + DFC_NORM_CHUNK : count;
        double s0 = 0.0, s1 = 0.0;
        for (int64_t i = begin; i < end; i++)
            terms(row, i, s0, s1);
        partials[2 * k] = s0;
        partials[2 * k + 1] = s1;
    });
}

/* Second pass: a row's chunk sums added in order. */
static DFC_HOST_DEVICE inline void sum_chunks(const double *partials, int64_t row, int64_t chunks, double *s0,
                                              double *s1)
{
    double a = 0.0, b = 0.0;
    for (int64_t k = row * chunks; k < (row + 1) * chunks; k++) {
        a += partials[2 * k];
        b += partials[2 * k + 1];
    }
    *s0 = a;
    *s1 = b;
}

/* Second pass, for both sums: means[2 row + {0, 1}] = the row's sums / count. */
static dfc_status chunk_means(dfc_backend *be, const char *op, int64_t rows, int64_t count, const double *partials,
                              double *means, dfc_error *err)
{
    const int64_t chunks = chunk_count(count);
    return dfc_cuda_for_each(be, rows, op, err, [=] DFC_DEVICE(int64_t row) {
        double s0, s1;
        sum_chunks(partials, row, chunks, &s0, &s1);
        means[2 * row] = s0 / (double)count;
        means[2 * row + 1] = s1 / (double)count;
    });
}

/* Mean and biased variance of `blocks` blocks of `count` values each, value(b, i) giving value i of block b (in
 * double), two passes in double as the reference's group_stats / plane_moments: stats[2 b] = mean, stats[2 b + 1] =
 * sum (value - mean)^2 / count. partials: 2 blocks chunk_count(count) doubles. */
template <class Value>
static dfc_status block_moments(dfc_backend *be, const char *op, int64_t blocks, int64_t count, double *stats,
                                double *partials, dfc_error *err, Value value)
{
    const int64_t chunks = chunk_count(count);
    DFC_TRY(chunk_sums(be, op, blocks, count, partials, err,
                       [=] DFC_DEVICE(int64_t b, int64_t i, double &sum, double &) { sum += value(b, i); }));
    DFC_TRY(dfc_cuda_for_each(be, blocks, op, err, [=] DFC_DEVICE(int64_t b) {
        double sum, unused;
        sum_chunks(partials, b, chunks, &sum, &unused);
        stats[2 * b] = sum / (double)count;
    }));
    DFC_TRY(
        chunk_sums(be, op, blocks, count, partials, err, [=] DFC_DEVICE(int64_t b, int64_t i, double &sq, double &) {
            const double d = value(b, i) - stats[2 * b];
            sq += d * d;
        }));
    return dfc_cuda_for_each(be, blocks, op, err, [=] DFC_DEVICE(int64_t b) {
        double sq, unused;
        sum_chunks(partials, b, chunks, &sq, &unused);
        stats[2 * b + 1] = sq / (double)count;
    });
}

/* block_moments of contiguous blocks of x. */
static dfc_status contiguous_moments(dfc_backend *be, const char *op, const float *xs, int64_t blocks, int64_t count,
                                     double *stats, double *partials, dfc_error *err)
{
    return block_moments(be, op, blocks, count, stats, partials, err,
                         [=] DFC_DEVICE(int64_t b, int64_t i) -> double { return xs[b * count + i]; });
}

/* dgamma_c = sum dy (x - m) r and dbeta_c = sum dy over the samples and positions of channel c, where
 * centre(s, ch, m, r) gives plane (s, ch)'s mean and inverse deviation; partials: 2 N C chunk_count(inner)
 * doubles. Either output may be NULL. */
template <class Centre>
static dfc_status channel_grads(dfc_backend *be, const char *op, const float *dys, const float *xs, int64_t n,
                                int64_t c, int64_t inner, double *partials, float *dgs, float *dbs, dfc_error *err,
                                Centre centre)
{
    if (!dgs && !dbs)
        return DFC_OK;
    const int64_t chunks = chunk_count(inner);
    DFC_TRY(chunk_sums(be, op, n * c, inner, partials, err,
                       [=] DFC_DEVICE(int64_t p, int64_t i, double &sum_dy, double &sum_dy_xhat) {
                           double m, r;
                           centre(p / c, p % c, m, r);
                           const int64_t off = p * inner + i;
                           sum_dy += dys[off];
                           sum_dy_xhat += dys[off] * (xs[off] - m) * r;
                       }));
    return dfc_cuda_for_each(be, c, op, err, [=] DFC_DEVICE(int64_t ch) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (int64_t s = 0; s < n; s++) {
            double a, b;
            sum_chunks(partials, s * c + ch, chunks, &a, &b);
            sum_dy += a;
            sum_dy_xhat += b;
        }
        if (dgs)
            dgs[ch] = (float)sum_dy_xhat;
        if (dbs)
            dbs[ch] = (float)sum_dy;
    });
}

/* ---- group norm ---- */

/* Per (sample, group) block: stats[2 blk] = mean, stats[2 blk + 1] = 1/sqrt(var + eps), from x or from the saved
 * mean and rstd when given. */
static dfc_status group_stats(dfc_backend *be, const char *op, const dfc_tensor *x, const dfc_tensor *mean,
                              const dfc_tensor *rstd, int64_t blocks, int64_t count, double eps, double *stats,
                              double *partials, dfc_error *err)
{
    if (dfc_present(mean)) {
        const float *ms = mean->data, *rs = rstd->data;
        return dfc_cuda_for_each(be, blocks, op, err, [=] DFC_DEVICE(int64_t b) {
            stats[2 * b] = ms[b];
            stats[2 * b + 1] = rs[b];
        });
    }
    DFC_TRY(contiguous_moments(be, op, x->data, blocks, count, stats, partials, err));
    return dfc_cuda_for_each(be, blocks, op, err,
                             [=] DFC_DEVICE(int64_t b) { stats[2 * b + 1] = 1.0 / sqrt(stats[2 * b + 1] + eps); });
}

/* y = (x - mean_g) rstd_g gamma_c + beta_c over each (sample, group) block of C/groups channels. */
dfc_status cuda_group_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma,
                                   const dfc_tensor *beta, int groups, float eps, dfc_tensor *y, dfc_tensor *mean,
                                   dfc_tensor *rstd, dfc_error *err)
{
    const char *op = "group_norm";
    DFC_TRY(dfc_group_norm_check(op, x, gamma, beta, mean, rstd, groups, eps, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t c = x->shape[1], inner = dfc_inner_size(x, 2);
    const int64_t cpg = c / groups, count = cpg * inner, blocks = x->shape[0] * groups;
    void *scratch;
    DFC_TRY(
        dfc_cuda_scratch(be, (size_t)(2 * blocks + 2 * blocks * chunk_count(count)) * sizeof(double), &scratch, err));
    double *stats = (double *)scratch, *partials = stats + 2 * blocks;
    DFC_TRY(group_stats(be, op, x, NULL, NULL, blocks, count, eps, stats, partials, err));
    if (dfc_present(mean)) {
        float *ms = mean->data, *rs = rstd->data;
        DFC_TRY(dfc_cuda_for_each(be, blocks, op, err, [=] DFC_DEVICE(int64_t b) {
            ms[b] = (float)stats[2 * b];
            rs[b] = (float)stats[2 * b + 1];
        }));
    }
    const float *xs = x->data, *gs = dfc_present(gamma) ? gamma->data : NULL;
    const float *bs = dfc_present(beta) ? beta->data : NULL;
    float *ys = y->data;
    const int64_t g = groups;
    return dfc_cuda_for_each(be, blocks * count, op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t blk = i / count, ch = (blk % g) * cpg + (i % count) / inner;
        const double m = stats[2 * blk], r = stats[2 * blk + 1];
        const double gv = gs ? gs[ch] : 1.0, bv = bs ? bs[ch] : 0.0;
        ys[i] = (float)((xs[i] - m) * r * gv + bv);
    });
}

/* With xhat = (x - mean) rstd and g = dy gamma, over each group of M values:
 *   dx = rstd (g - mean(g) - xhat mean(g xhat)),  dgamma_c = sum dy xhat,  dbeta_c = sum dy.
 * dgamma and dbeta first (from dy), then the per-block sums and dx. */
dfc_status cuda_group_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma,
                                    const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps,
                                    dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    const char *op = "group_norm_backward";
    DFC_TRY(dfc_group_norm_check(op, x, gamma, NULL, mean, rstd, groups, eps, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    DFC_TRY(dfc_norm_grads_check(op, x, dx, dgamma, dbeta, err));
    const int64_t cpg = c / groups, count = cpg * inner, blocks = n * groups, g = groups;
    /* stats and block sums (2 per block each), then partials shared by the passes (each consumes them in turn) */
    const int64_t block_partials = 2 * blocks * chunk_count(count), plane_partials = 2 * n * c * chunk_count(inner);
    const int64_t partial_len = block_partials > plane_partials ? block_partials : plane_partials;
    void *scratch;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(4 * blocks + partial_len) * sizeof(double), &scratch, err));
    double *stats = (double *)scratch, *block_sums = stats + 2 * blocks, *partials = block_sums + 2 * blocks;
    DFC_TRY(group_stats(be, op, x, mean, rstd, blocks, count, eps, stats, partials, err));

    const float *xs = x->data, *dys = dy->data, *gs = dfc_present(gamma) ? gamma->data : NULL;
    DFC_TRY(channel_grads(be, op, dys, xs, n, c, inner, partials, dfc_present(dgamma) ? dgamma->data : NULL,
                          dfc_present(dbeta) ? dbeta->data : NULL, err,
                          [=] DFC_DEVICE(int64_t s, int64_t ch, double &m, double &r) {
                              const int64_t blk = s * g + ch / cpg;
                              m = stats[2 * blk];
                              r = stats[2 * blk + 1];
                          }));
    if (!dfc_present(dx))
        return DFC_OK;
    float *dxs = dx->data;
    DFC_TRY(chunk_sums(be, op, blocks, count, partials, err,
                       [=] DFC_DEVICE(int64_t blk, int64_t i, double &sum_g, double &sum_g_xhat) {
                           const double gv = gs ? gs[(blk % g) * cpg + i / inner] : 1.0;
                           const double m = stats[2 * blk], r = stats[2 * blk + 1];
                           const float dyv = dys[blk * count + i], xv = xs[blk * count + i];
                           sum_g += dyv * gv;
                           sum_g_xhat += dyv * gv * (xv - m) * r;
                       }));
    DFC_TRY(chunk_means(be, op, blocks, count, partials, block_sums, err));
    return dfc_cuda_for_each(be, blocks * count, op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t blk = i / count;
        const double gv = gs ? gs[(blk % g) * cpg + (i % count) / inner] : 1.0;
        const double m = stats[2 * blk], r = stats[2 * blk + 1];
        const double xhat = (xs[i] - m) * r;
        dxs[i] = (float)(r * (dys[i] * gv - block_sums[2 * blk] - xhat * block_sums[2 * blk + 1]));
    });
}

/* ---- batch norm (inference) ---- */

/* The reference's checks; running_var is read back to the host for its positivity check. */
static dfc_status check_batch_norm(dfc_backend *be, const char *op, const dfc_tensor *x, const dfc_tensor *gamma,
                                   const dfc_tensor *beta, const dfc_tensor *running_mean,
                                   const dfc_tensor *running_var, float eps, dfc_error *err)
{
    DFC_TRY(dfc_batch_norm_check_shapes(op, x, gamma, beta, running_mean, running_var, eps, err));
    const int64_t c = x->shape[1];
    float *var = (float *)malloc((size_t)(c > 0 ? c : 1) * sizeof(float));
    if (!var)
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate %lld floats for running_var", op, (long long)c);
    dfc_status st = dfc_cuda_read_back(be, var, running_var->data, (size_t)c * sizeof(float), err);
    if (st == DFC_OK)
        st = dfc_batch_norm_check_var(op, var, c, eps, err);
    free(var);
    return st;
}

dfc_status cuda_batch_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma,
                                   const dfc_tensor *beta, const dfc_tensor *running_mean,
                                   const dfc_tensor *running_var, float eps, dfc_tensor *y, dfc_error *err)
{
    const char *op = "batch_norm";
    DFC_TRY(check_batch_norm(be, op, x, gamma, beta, running_mean, running_var, eps, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t c = x->shape[1], inner = dfc_inner_size(x, 2);
    const float *xs = x->data, *gs = dfc_present(gamma) ? gamma->data : NULL;
    const float *bs = dfc_present(beta) ? beta->data : NULL, *rm = running_mean->data, *rv = running_var->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(x), op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t ch = (i / inner) % c;
        const double inv = 1.0 / sqrt((double)rv[ch] + eps);
        const double gv = gs ? gs[ch] : 1.0, bv = bs ? bs[ch] : 0.0, m = rm[ch];
        ys[i] = (float)((xs[i] - m) * inv * gv + bv);
    });
}

/* Running statistics are constants: dx = dy gamma inv, dgamma_c = sum dy (x - mean) inv, dbeta_c = sum dy. */
dfc_status cuda_batch_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *gamma,
                                    const dfc_tensor *running_mean, const dfc_tensor *running_var, float eps,
                                    dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta, dfc_error *err)
{
    const char *op = "batch_norm_backward";
    DFC_TRY(check_batch_norm(be, op, x, gamma, NULL, running_mean, running_var, eps, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int64_t n = x->shape[0], c = x->shape[1], inner = dfc_inner_size(x, 2);
    DFC_TRY(dfc_norm_grads_check(op, x, dx, dgamma, dbeta, err));
    const float *xs = x->data, *dys = dy->data, *gs = dfc_present(gamma) ? gamma->data : NULL;
    const float *rm = running_mean->data, *rv = running_var->data;
    void *scratch;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(2 * n * c * chunk_count(inner)) * sizeof(double), &scratch, err));
    DFC_TRY(channel_grads(be, op, dys, xs, n, c, inner, (double *)scratch, dfc_present(dgamma) ? dgamma->data : NULL,
                          dfc_present(dbeta) ? dbeta->data : NULL, err,
                          [=] DFC_DEVICE(int64_t, int64_t ch, double &m, double &r) {
                              m = rm[ch];
                              r = 1.0 / sqrt((double)rv[ch] + eps);
                          }));
    if (!dfc_present(dx))
        return DFC_OK;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, dfc_numel(x), op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t ch = (i / inner) % c;
        const double inv = 1.0 / sqrt((double)rv[ch] + eps), gv = gs ? gs[ch] : 1.0;
        dxs[i] = (float)(dys[i] * gv * inv);
    });
}

/* ---- scale-shift (guided-diffusion's use_scale_shift_norm) ---- */

/* The float product rounded on its own, as PyTorch's mul then add: never fused into an fma by nvcc. */
static DFC_HOST_DEVICE inline float mul_rounded(float a, float b)
{
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

dfc_status cuda_scale_shift_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *ss, dfc_tensor *y,
                                    dfc_error *err)
{
    const char *op = "scale_shift";
    DFC_TRY(dfc_scale_shift_check(op, x, ss, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t c = x->shape[1], inner = dfc_inner_size(x, 2);
    const float *xs = x->data, *sss = ss->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(x), op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t p = i / inner, row = (p / c) * 2 * c, ch = p % c;
        const float one_plus_scale = 1.0f + sss[row + ch];
        ys[i] = mul_rounded(xs[i], one_plus_scale) + sss[row + c + ch];
    });
}

/* Offset of element (n, c, p) of an (N, C, P) image batch stored NCHW or NHWC (ref_norm.c's image_offset). */
static DFC_HOST_DEVICE inline int64_t image_offset(int nhwc, int64_t n, int64_t c, int64_t p, int64_t channels,
                                                   int64_t pixels)
{
    return nhwc ? (n * pixels + p) * channels + c : (n * channels + c) * pixels + p;
}

/* The shape of a group_norm_act call, as its kernels need it. */
typedef struct gn_act_shape {
    int64_t groups, cpg, channels, pixels;
    int x_nhwc;
} gn_act_shape;

/* h = x + add of value j (channel-major within the group, as the reference's loops) of (sample, group) block blk. */
static DFC_HOST_DEVICE inline double gn_act_input(const float *xs, const float *adds, gn_act_shape s, int64_t blk,
                                                  int64_t j)
{
    const int64_t b = blk / s.groups, ch = (blk % s.groups) * s.cpg + j / s.pixels;
    const double a = adds ? adds[b * s.channels + ch] : 0.0;
    return (double)xs[image_offset(s.x_nhwc, b, ch, j % s.pixels, s.channels, s.pixels)] + a;
}

/* GroupNorm + the time embedding's add or scale-shift + SiLU in one pass over y, NCHW or NHWC in and out, as
 * ref_norm.c's ref_group_norm_act_forward: h = x + add; mean and variance of each (sample, group) block in double
 * (two passes of chunk sums); each output from the double formula, rounded once. y may alias x; in place across
 * layouts, x is first copied into the scratch. */
dfc_status cuda_group_norm_act_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *add,
                                       const dfc_tensor *gamma, const dfc_tensor *beta, const dfc_tensor *ss,
                                       int groups, float eps, int silu, int x_nhwc, int y_nhwc, dfc_tensor *y,
                                       dfc_error *err)
{
    const char *op = "group_norm_act";
    DFC_TRY(dfc_group_norm_act_check(op, x, add, gamma, beta, ss, groups, eps, x_nhwc, y_nhwc, y, err));
    const int64_t n = x->shape[0], c = x->shape[1], pixels = x->shape[2] * x->shape[3];
    const gn_act_shape shape = {groups, c / groups, c, pixels, x_nhwc};
    const int64_t count = shape.cpg * pixels, blocks = n * groups, chunks = chunk_count(count);
    const size_t copy_bytes = x->data == y->data && x_nhwc != y_nhwc ? (size_t)dfc_numel(x) * sizeof(float) : 0;
    void *scratch;
    DFC_TRY(
        dfc_cuda_scratch(be, (size_t)(2 * blocks + 2 * blocks * chunks) * sizeof(double) + copy_bytes, &scratch, err));
    double *stats = (double *)scratch, *partials = stats + 2 * blocks;
    const float *xs = x->data;
    if (copy_bytes) {
        float *copy = (float *)(partials + 2 * blocks * chunks);
        DFC_TRY(be->iface->copy(be, copy, x->data, copy_bytes, err));
        xs = copy;
    }
    const float *adds = dfc_present(add) ? add->data : NULL, *sss = dfc_present(ss) ? ss->data : NULL;
    const float *gs = dfc_present(gamma) ? gamma->data : NULL, *bs = dfc_present(beta) ? beta->data : NULL;
    DFC_TRY(block_moments(be, op, blocks, count, stats, partials, err,
                          [=] DFC_DEVICE(int64_t blk, int64_t j) { return gn_act_input(xs, adds, shape, blk, j); }));
    DFC_TRY(dfc_cuda_for_each(be, blocks, op, err, [=] DFC_DEVICE(int64_t blk) {
        stats[2 * blk + 1] = 1.0 / sqrt(stats[2 * blk + 1] + eps);
    }));
    float *ys = y->data;
    const int yn = y_nhwc;
    return dfc_cuda_for_each(be, dfc_numel(x), op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t image = c * pixels, b = i / image, rest = i % image;
        const int64_t ch = yn ? rest % c : rest / pixels, p = yn ? rest / c : rest % pixels;
        const int64_t blk = b * shape.groups + ch / shape.cpg;
        const double a = adds ? adds[b * c + ch] : 0.0, g = gs ? gs[ch] : 1.0, bt = bs ? bs[ch] : 0.0;
        const double scale = sss ? sss[b * 2 * c + ch] : 0.0, shift = sss ? sss[b * 2 * c + c + ch] : 0.0;
        const double h = (double)xs[image_offset(shape.x_nhwc, b, ch, p, c, pixels)] + a;
        double v = ((h - stats[2 * blk]) * stats[2 * blk + 1] * g + bt) * (1.0 + scale) + shift;
        if (silu)
            v = v / (1.0 + exp(-v));
        ys[i] = (float)v;
    });
}

/* dss per (n, c) plane, one index each summing in the reference's order (the same numbers as binary_backward's
 * broadcast sums); then dx, which may alias dy. */
dfc_status cuda_scale_shift_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *ss,
                                     dfc_tensor *dx, dfc_tensor *dss, dfc_error *err)
{
    const char *op = "scale_shift_backward";
    DFC_TRY(dfc_scale_shift_check(op, x, ss, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int want_dx = dfc_present(dx), want_dss = dfc_present(dss);
    if (want_dx)
        DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    if (want_dss)
        DFC_TRY(dfc_check_same_shape(ss, dss, op, "ss", "dss", err));
    const int64_t c = x->shape[1], planes = x->shape[0] * c, inner = dfc_inner_size(x, 2);
    const float *dys = dy->data, *xs = x->data, *sss = ss->data;
    if (want_dss) {
        float *dsss = dss->data;
        DFC_TRY(dfc_cuda_for_each(be, planes, op, err, [=] DFC_DEVICE(int64_t p) {
            const int64_t row = (p / c) * 2 * c, ch = p % c;
            const float *dyp = dys + p * inner, *xp = xs + p * inner;
            double sum_scale = 0.0, sum_shift = 0.0;
            for (int64_t j = 0; j < inner; j++) {
                sum_scale += (double)dyp[j] * xp[j];
                sum_shift += (double)dyp[j];
            }
            dsss[row + ch] = (float)sum_scale;
            dsss[row + c + ch] = (float)sum_shift;
        }));
    }
    if (!want_dx)
        return DFC_OK;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, planes * inner, op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t p = i / inner;
        const float one_plus_scale = 1.0f + sss[(p / c) * 2 * c + p % c];
        dxs[i] = dys[i] * one_plus_scale;
    });
}

/* ---- per-plane standardisation ---- */

/* stats[2 p] = mean, stats[2 p + 1] = population std of each (n, c) plane of x (N, C, H, W), as the reference's
 * plane_moments; partials: 2 planes chunk_count(H W) doubles. */
static dfc_status plane_moments(dfc_backend *be, const char *op, const dfc_tensor *x, double *stats, double *partials,
                                dfc_error *err)
{
    const int64_t planes = x->shape[0] * x->shape[1], m = x->shape[2] * x->shape[3];
    DFC_TRY(contiguous_moments(be, op, x->data, planes, m, stats, partials, err));
    return dfc_cuda_for_each(be, planes, op, err,
                             [=] DFC_DEVICE(int64_t p) { stats[2 * p + 1] = sqrt(stats[2 * p + 1]); });
}

dfc_status cuda_standardize_forward(dfc_backend *be, const dfc_tensor *x, float scale, dfc_tensor *y, dfc_error *err)
{
    const char *op = "standardize";
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t planes = x->shape[0] * x->shape[1], m = x->shape[2] * x->shape[3];
    void *scratch;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(2 * planes + 2 * planes * chunk_count(m)) * sizeof(double), &scratch, err));
    double *stats = (double *)scratch;
    DFC_TRY(plane_moments(be, op, x, stats, stats + 2 * planes, err));
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, planes * m, op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t p = i / m;
        const double s = scale / dfc_standardize_divisor(stats[2 * p + 1]);
        ys[i] = (float)(((double)xs[i] - stats[2 * p]) * s);
    });
}

/* With xh = (x - mean) / std: dx = (scale / std) (dy - mean(dy) - xh mean(dy xh)), as for a layer norm (std the
 * divisor: 1 on a constant plane, where xh = 0). */
dfc_status cuda_standardize_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, float scale,
                                     dfc_tensor *dx, dfc_error *err)
{
    const char *op = "standardize_backward";
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(dy, x, op, "dy", "x", err));
    DFC_TRY(dfc_check_same_shape(dx, x, op, "dx", "x", err));
    const int64_t planes = x->shape[0] * x->shape[1], m = x->shape[2] * x->shape[3];
    /* plane_moments' stats, then per-plane means of dy and dy xh, then the partials */
    void *scratch;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(4 * planes + 2 * planes * chunk_count(m)) * sizeof(double), &scratch, err));
    double *stats = (double *)scratch, *plane_sums = stats + 2 * planes, *partials = plane_sums + 2 * planes;
    DFC_TRY(plane_moments(be, op, x, stats, partials, err));
    const float *xs = x->data, *dys = dy->data;
    float *dxs = dx->data;
    DFC_TRY(chunk_sums(be, op, planes, m, partials, err,
                       [=] DFC_DEVICE(int64_t p, int64_t i, double &sum_dy, double &sum_dy_xh) {
                           const double rstd = 1.0 / dfc_standardize_divisor(stats[2 * p + 1]);
                           sum_dy += dys[p * m + i];
                           sum_dy_xh += dys[p * m + i] * ((double)xs[p * m + i] - stats[2 * p]) * rstd;
                       }));
    DFC_TRY(chunk_means(be, op, planes, m, partials, plane_sums, err));
    return dfc_cuda_for_each(be, planes * m, op, err, [=] DFC_DEVICE(int64_t i) {
        const int64_t p = i / m;
        const double rstd = 1.0 / dfc_standardize_divisor(stats[2 * p + 1]), xh = ((double)xs[i] - stats[2 * p]) * rstd;
        dxs[i] = (float)(scale * rstd * ((double)dys[i] - plane_sums[2 * p] - xh * plane_sums[2 * p + 1]));
    });
}

/* ---- softmax over one axis: one index per (outer, inner) row of k values, inner apart ---- */

dfc_status cuda_softmax_forward(dfc_backend *be, const dfc_tensor *x, int axis, dfc_tensor *y, dfc_error *err)
{
    const char *op = "softmax";
    dfc_softmax_axis s = {0, 0, 0};
    DFC_TRY(dfc_softmax_layout(op, x, axis, &s, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t k = s.k, inner = s.inner;
    const float *xs = x->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, s.outer * inner, op, err, [=] DFC_DEVICE(int64_t r) {
        const int64_t base = (r / inner) * k * inner + r % inner;
        const float *xr = xs + base;
        dfc_softmax_strided_row(xr, ys + base, k, inner);
    });
}

/* dx = y (dy - sum_j dy_j y_j), along the axis. */
dfc_status cuda_softmax_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *y, int axis, dfc_tensor *dx,
                                 dfc_error *err)
{
    const char *op = "softmax_backward";
    dfc_softmax_axis s = {0, 0, 0};
    DFC_TRY(dfc_softmax_layout(op, y, axis, &s, err));
    DFC_TRY(dfc_check_same_shape(y, dy, op, "y", "dy", err));
    DFC_TRY(dfc_check_same_shape(y, dx, op, "y", "dx", err));
    const int64_t k = s.k, inner = s.inner;
    const float *ys = y->data, *dys = dy->data;
    float *dxs = dx->data;
    return dfc_cuda_for_each(be, s.outer * inner, op, err, [=] DFC_DEVICE(int64_t r) {
        const int64_t base = (r / inner) * k * inner + r % inner;
        const float *yr = ys + base, *dyr = dys + base;
        float *dxr = dxs + base;
        double dot = 0.0;
        for (int64_t j = 0; j < k; j++)
            dot += (double)dyr[j * inner] * yr[j * inner];
        for (int64_t j = 0; j < k; j++)
            dxr[j * inner] = (float)(yr[j * inner] * (dyr[j * inner] - dot));
    });
}

/* ---- broadcast add / mul ---- */

/* b's flat index for a's flat index i (a right-aligned to 4 dims, b's strides 0 on broadcast dims). */
static DFC_HOST_DEVICE inline int64_t broadcast_index(const dfc_broadcast_dims &bd, int64_t i)
{
    int64_t j = 0;
    for (int d = DFC_MAX_DIMS - 1; d >= 0; d--) {
        j += (i % bd.a[d]) * bd.b_stride[d];
        i /= bd.a[d];
    }
    return j;
}

dfc_status cuda_binary_forward(dfc_backend *be, dfc_binary kind, const dfc_tensor *a, const dfc_tensor *b,
                               dfc_tensor *y, dfc_error *err)
{
    const char *op = dfc_binary_name(kind);
    dfc_broadcast_dims bd = {};
    DFC_TRY(dfc_binary_check_kind(kind, err));
    DFC_TRY(dfc_binary_check_broadcast(op, a, b, &bd, err));
    DFC_TRY(dfc_check_same_shape(a, y, op, "a", "y", err));
    const float *as = a->data, *bs = b->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(a), op, err, [=] DFC_DEVICE(int64_t i) {
        const float bv = bs[broadcast_index(bd, i)];
        ys[i] = kind == DFC_BINARY_ADD ? as[i] + bv : as[i] * bv;
    });
}

/* add: da = dy, db = sum dy;  mul: da = dy b, db = sum dy a; sums over b's broadcast dims in double, one index per
 * element of b looping over the a-indices that map to it in the reference's order (the same numbers). db is
 * computed first (from dy), so da may alias dy. */
dfc_status cuda_binary_backward(dfc_backend *be, dfc_binary kind, const dfc_tensor *dy, const dfc_tensor *a,
                                const dfc_tensor *b, dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    char op[32];
    snprintf(op, sizeof op, "%s_backward", dfc_binary_name(kind));
    dfc_broadcast_dims bd = {};
    DFC_TRY(dfc_binary_check_kind(kind, err));
    DFC_TRY(dfc_binary_check_broadcast(op, a, b, &bd, err));
    DFC_TRY(dfc_check_same_shape(a, dy, op, "a", "dy", err));
    if (dfc_present(da))
        DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    if (dfc_present(db))
        DFC_TRY(dfc_check_same_shape(b, db, op, "b", "db", err));
    const float *dys = dy->data, *as = a->data, *bs = b->data;
    if (dfc_present(db)) {
        float *dbs = db->data;
        DFC_TRY(dfc_cuda_for_each(be, dfc_numel(b), op, err, [=] DFC_DEVICE(int64_t e) {
            const int64_t *sh = bd.a, *bsh = bd.b;
            const int64_t as0 = sh[1] * sh[2] * sh[3], as1 = sh[2] * sh[3], as2 = sh[3]; /* a's strides */
            const int64_t rep0 = bsh[0] == 1 ? sh[0] : 1, rep1 = bsh[1] == 1 ? sh[1] : 1;
            const int64_t rep2 = bsh[2] == 1 ? sh[2] : 1, rep3 = bsh[3] == 1 ? sh[3] : 1;
            const int64_t j0 = e / (bsh[1] * bsh[2] * bsh[3]), j1 = (e / (bsh[2] * bsh[3])) % bsh[1];
            const int64_t j2 = (e / bsh[3]) % bsh[2], j3 = e % bsh[3];
            const int64_t base = j0 * as0 + j1 * as1 + j2 * as2 + j3;
            double sum = 0.0;
            for (int64_t k0 = 0; k0 < rep0; k0++)
                for (int64_t k1 = 0; k1 < rep1; k1++)
                    for (int64_t k2 = 0; k2 < rep2; k2++)
                        for (int64_t k3 = 0; k3 < rep3; k3++) {
                            const int64_t i = base + k0 * as0 + k1 * as1 + k2 * as2 + k3;
                            sum += kind == DFC_BINARY_ADD ? (double)dys[i] : (double)dys[i] * as[i];
                        }
            dbs[e] = (float)sum;
        }));
    }
    if (!dfc_present(da))
        return DFC_OK;
    float *das = da->data;
    return dfc_cuda_for_each(be, dfc_numel(a), op, err, [=] DFC_DEVICE(int64_t i) {
        das[i] = kind == DFC_BINARY_ADD ? dys[i] : dys[i] * bs[broadcast_index(bd, i)];
    });
}

/* ---- timestep embedding ---- */

/* guided-diffusion nn.timestep_embedding in float32, operation for operation as ref_timestep_embedding: one index
 * per (sample, frequency) writing the cos and sin columns, and the zero column when dim is odd. */
dfc_status cuda_timestep_embedding(dfc_backend *be, const dfc_tensor *t, float max_period, dfc_tensor *y,
                                   dfc_error *err)
{
    const char *op = "timestep_embedding";
    DFC_TRY(dfc_timestep_embedding_check(op, t, max_period, y, err));
    const int64_t dim = y->shape[1], half = dim / 2, cols = half + dim % 2;
    const float neg_log_period = (float)(-log((double)max_period));
    const float *ts = t->data;
    float *ys = y->data;
    return dfc_cuda_for_each(be, y->shape[0] * cols, op, err, [=] DFC_DEVICE(int64_t k) {
        const int64_t n = k / cols, i = k % cols;
        float *row = ys + n * dim;
        if (i == half) { /* odd dim: the zero column */
            row[dim - 1] = 0.0f;
            return;
        }
        const float exponent = neg_log_period * (float)i / (float)half;
        const float freq = (float)exp((double)exponent);
        const float arg = ts[n] * freq;
        row[i] = cosf(arg);
        row[half + i] = sinf(arg);
    });
}

/* 3x3 convolutions with stride 1 and padding 1 by Winograd's F(4x4, 3x3) (Lavin and Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2016): each 4x4 block of outputs comes from a 6x6 input tile as
 * Y = A^T [(G g G^T) . (B^T d B)] A, 36 products per output block and input-output channel pair where the direct
 * convolution makes 144, so the 36 matrix products (tiles x Ci) (Ci x Co) that carry the work are 4x smaller than
 * the direct convolution's. oneDNN 3.2 has no Winograd kernel for AVX2; these shapes are most of the UNet's
 * arithmetic. (F(2x2, 3x3), 2.25x fewer products but 4 transformed values per output and channel where F(4x4)
 * has 2.25, was slower than F(4x4) at every shape measured and slower than the direct kernel below 96 channels:
 * benchmarks/RESULTS.md.)
 *
 * Blocks of tiles run on one thread each, through three steps in that thread's cache-sized buffers:
 * the input transform (vectorised over channels: NHWC keeps each pixel's channels contiguous), 36
 * single-threaded sgemm calls (oneDNN's, which run on the calling thread inside a parallel region), the output
 * transform plus bias into y, NCHW or NHWC. The weights' transform U = G g G^T is made once per call. An NCHW x
 * goes image by image through an NHWC copy (the reorder oneDNN's direct kernel would make as well).
 *
 * Accuracy: the interpolation points 0, 1, -1, 1/2, -2 (and infinity) give about 3x less rounding error in fp32
 * than Lavin and Gray's 0, +-1, +-2 (Barabasz et al., "Error analysis and improving the accuracy of Winograd
 * convolution for deep neural networks", 2020); the weights' transform is computed in double and rounded once.
 * With 32-512 channels the error is 1.3-5e-6 of the output's scale against 0.5-2.2e-6 for the direct kernel
 * (benchmarks/winograd.py; tests/test_ops_conv.py holds both to 1e-5 of PyTorch in float64). */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oneapi/dnnl/dnnl.h>

#include "cpu.h"
#include "fast_math.h"

/* Tiles per block: V (36 x tiles x Ci) and M (36 x tiles x Co) take about 2 MB per thread, between 64 and 1024
 * tiles (longer matrix products amortise oneDNN's packing of U). 2 MB against 8 MB: 15-45% off at 32-128 channels
 * and 224x288, about the same at 256 channels and 112x144 (benchmarks/RESULTS.md, 2026-12-07). */
static int64_t block_cap(int64_t ci_n, int64_t co_n)
{
    const int64_t cap = ((int64_t)2 << 20) / (36 * 4 * (ci_n + co_n));
    return cap < 64 ? 64 : cap > 1024 ? 1024 : cap;
}

/* Where F(4x4) pays (benchmarks/winograd.py on 2 threads, batches 1 and 4; benchmarks/RESULTS.md, 2026-12-07):
 * 32 or more channels in and out and at least 60 tiles per image (28x36, 63 tiles: 0.4-0.85x the direct kernel's
 * time from 48 channels, 0.8-1.2x at 32; from 36x44, 99 tiles, 0.35-0.75x at 32-256 channels). Below: 16
 * channels, 1.1-4x the direct kernel's time up to 112x144; 14x18 (20 tiles), 0.8-1.5x. The choice follows from one
 * image's shape: the path, and so the rounding, must not depend on the batch.
 * DIFFICE_WINOGRAD_ALWAYS=1 takes Winograd wherever the geometry allows, to measure where it pays
 * (benchmarks/winograd.py); DIFFICE_NO_WINOGRAD=1 never. Both are read at each call, so a run can compare the
 * kernels in one process. */
enum { MIN_CHANNELS = 32, MIN_TILES = 60 };

int dfc_winograd_applies(const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *y, dfc_conv2d_params p)
{
    const int64_t ci = x->shape[1], co = y->shape[1], h = x->shape[2], w = x->shape[3];
    if (getenv("DIFFICE_NO_WINOGRAD"))
        return 0;
    const int geometry = weight->shape[2] == 3 && weight->shape[3] == 3 && p.stride_h == 1 && p.stride_w == 1 &&
                         p.pad_h == 1 && p.pad_w == 1 && y->shape[2] == h && y->shape[3] == w;
    if (!geometry || getenv("DIFFICE_WINOGRAD_ALWAYS"))
        return geometry;
    return ci >= MIN_CHANNELS && co >= MIN_CHANNELS && ((h + 3) / 4) * ((w + 3) / 4) >= MIN_TILES;
}

/* out[r * out_stride + o] = (G g)[r] for o < n, g = (g0[o], g1[o], g2[o]): one column or row of n kernels,
 * G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1]. A loop over kernels with a
 * pointer per value, which gcc vectorises (one kernel at a time, 9 loads 9 floats apart, stayed scalar). */
static inline void g_step(const double *restrict g0, const double *restrict g1, const double *restrict g2,
                          double *restrict out, int64_t out_stride, int64_t n)
{
#pragma GCC ivdep
    for (int64_t o = 0; o < n; o++) {
        out[o] = g0[o];
        out[out_stride + o] = (g0[o] + g1[o] + g2[o]) / 3;
        out[2 * out_stride + o] = (g1[o] - g0[o] - g2[o]) / 3;
        out[3 * out_stride + o] = -(16 * g0[o] + 8 * g1[o] + 4 * g2[o]) / 15;
        out[4 * out_stride + o] = (g0[o] - 2 * g1[o] + 4 * g2[o]) / 15;
        out[5 * out_stride + o] = g2[o];
    }
}

/* Per output channel, the weights' transform needs its 9 taps, t = G g (18 values) and one row of U (6), in
 * double: co_n times this per thread. It fits in a thread's block buffers, which are at least 36 x 64 x co_n floats
 * (block_cap) and unused until the blocks start. */
enum { WEIGHT_SCRATCH_DOUBLES = 9 + 18 + 6 };

/* U's rows for input channel i from taps[k * co_n + o] = tap k of the kernel from i to output channel o;
 * t (18 co_n) and rows (6 co_n) are scratch */
DFC_VECTOR_CLONES
static void transform_kernels(const double *taps, int64_t ci_n, int64_t co_n, int64_t i, double *t, double *rows,
                              float *u)
{
    for (int c = 0; c < 3; c++) /* columns: t[3 r + c] = (G g[., c])[r] */
        g_step(taps + c * co_n, taps + (3 + c) * co_n, taps + (6 + c) * co_n, t + c * co_n, 3 * co_n, co_n);
    for (int r = 0; r < 6; r++) { /* rows: U[6 r + c] = (t[r, .] G^T)[c], rounded once */
        g_step(t + 3 * r * co_n, t + (3 * r + 1) * co_n, t + (3 * r + 2) * co_n, rows, co_n, co_n);
        for (int c = 0; c < 6; c++) {
            float *dst = u + ((int64_t)(6 * r + c) * ci_n + i) * co_n;
            for (int64_t o = 0; o < co_n; o++)
                dst[o] = (float)rows[c * co_n + o];
        }
    }
}

/* U[xi][i][o] = (G g G^T)[r][c], xi = 6 r + c, g the 3x3 kernel from input channel i to output channel o of the
 * convolution computed: weight[o, i] for a forward one; for the input gradient (transposed), weight[i, o] turned by
 * 180 degrees (dx = dy correlated with the flipped kernels). weight is (w_out, w_in, 3, 3); scratch holds
 * WEIGHT_SCRATCH_DOUBLES co_n doubles per thread. */
static void transform_weights(const float *w, int64_t w_out, int64_t w_in, int transposed, float *u, double *scratch,
                              int threads)
{
    const int64_t ci_n = transposed ? w_out : w_in, co_n = transposed ? w_in : w_out;
    /* per input channel, its kernels' taps gathered tap-major (o innermost: U's 36 planes are then written in runs
     * along their rows) */
#pragma omp parallel num_threads(threads)
    {
        double *taps = scratch;
#ifdef _OPENMP
        taps += omp_get_thread_num() * WEIGHT_SCRATCH_DOUBLES * co_n;
#endif
#pragma omp for schedule(static)
        for (int64_t i = 0; i < ci_n; i++) {
            for (int64_t o = 0; o < co_n; o++) {
                const float *kernel = transposed ? w + (i * w_in + o) * 9 : w + (o * w_in + i) * 9;
                for (int k = 0; k < 9; k++)
                    taps[k * co_n + o] = kernel[transposed ? 8 - k : k];
            }
            transform_kernels(taps, ci_n, co_n, i, taps + 9 * co_n, taps + 27 * co_n, u);
        }
    }
}

/* V[xi][k][ci] = (B^T d B)[i][j] for tile k of the block, d its 6x6 input patch (zero outside the image),
 * xi = 6 i + j, B^T = [1 -3/2 -2 3/2 1 0; 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0; 0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0;
 * 0 1 -3/2 -2 3/2 1].
 * The transforms run as loops over channels, each step (six values to six, or to four) one loop with a pointer
 * per value: gcc vectorises these, where a loop over channels around the whole 6x6 transform (36 temporaries per
 * channel) stayed scalar. Same operations in the same order per value, so the same bits. */
#define TRANSFORM_CHANNELS 64 /* channels per pass: the 36 intermediate rows (9 KB) stay in L1 */

/* out[r * out_stride + i] = (B^T d)[r] for i < n, d = (d0[i], ..., d5[i]) */
static inline void bt_step(const float *restrict d0, const float *restrict d1, const float *restrict d2,
                           const float *restrict d3, const float *restrict d4, const float *restrict d5,
                           float *restrict out, int64_t out_stride, int64_t n)
{
#pragma GCC ivdep
    for (int64_t i = 0; i < n; i++) {
        out[i] = d0[i] + d4[i] - 2.0f * d2[i] + 1.5f * (d3[i] - d1[i]);
        out[out_stride + i] = d4[i] - d1[i] + 0.5f * d2[i] + 2.5f * d3[i];
        out[2 * out_stride + i] = d1[i] + d4[i] - 2.5f * d2[i] + 0.5f * d3[i];
        out[3 * out_stride + i] = d4[i] - d2[i] + 2.0f * (d3[i] - d1[i]);
        out[4 * out_stride + i] = d4[i] - d2[i] + 0.5f * (d1[i] - d3[i]);
        out[5 * out_stride + i] = d1[i] + d5[i] - 2.0f * d3[i] + 1.5f * (d4[i] - d2[i]);
    }
}

DFC_VECTOR_CLONES
static void transform_input(const float *xi, int64_t h, int64_t w, int64_t ci_n, int64_t tiles_w, int64_t t0,
                            int64_t count, int64_t cap, const float *zeros, float *v)
{
    const int64_t plane = cap * ci_n; /* V's stride between the 36 matrices */
    float t[36 * TRANSFORM_CHANNELS]; /* t = B^T d: t[(6 r + c) * TRANSFORM_CHANNELS + channel] */
    const int64_t tn = TRANSFORM_CHANNELS;
    for (int64_t k = 0; k < count; k++) {
        const int64_t tile = t0 + k, y0 = (tile / tiles_w) * 4 - 1, x0 = (tile % tiles_w) * 4 - 1;
        const float *d[6][6];
        for (int r = 0; r < 6; r++)
            for (int c = 0; c < 6; c++) {
                const int64_t yy = y0 + r, xx = x0 + c;
                d[r][c] = yy >= 0 && yy < h && xx >= 0 && xx < w ? xi + (yy * w + xx) * ci_n : zeros;
            }
        for (int64_t c0 = 0; c0 < ci_n; c0 += tn) {
            const int64_t n = ci_n - c0 < tn ? ci_n - c0 : tn;
            for (int c = 0; c < 6; c++) /* columns: t[., c] = B^T d[., c] */
                bt_step(d[0][c] + c0, d[1][c] + c0, d[2][c] + c0, d[3][c] + c0, d[4][c] + c0, d[5][c] + c0, t + c * tn,
                        6 * tn, n);
            float *out = v + k * ci_n + c0;
            for (int r = 0; r < 6; r++) { /* rows: V[6 r + .] = t[r, .] B */
                const float *row = t + 6 * r * tn;
                bt_step(row, row + tn, row + 2 * tn, row + 3 * tn, row + 4 * tn, row + 5 * tn, out + 6 * r * plane,
                        plane, n);
            }
        }
    }
}

/* y's 4x4 block of each tile = A^T s A + bias, s[xi] = M[xi][k][co],
 * A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1]. First into pixels: 4 rows of 4 count pixels
 * (the block's tiles side by side), each pixel's channels contiguous; then into y (store_block). */

/* out[r * out_stride + i] = (A^T s)[r] + add[i] for i < n, s = (s0[i], ..., s5[i]); add is the bias or zeros
 * (one loop for both: with `bias ? bias[i] : 0` gcc makes a masked load, which took 3/4 of the time on AMD) */
static inline void at_step(const float *restrict s0, const float *restrict s1, const float *restrict s2,
                           const float *restrict s3, const float *restrict s4, const float *restrict s5,
                           const float *restrict add, float *restrict out, int64_t out_stride, int64_t n)
{
#pragma GCC ivdep
    for (int64_t i = 0; i < n; i++) {
        const float plus = s1[i] + s2[i], minus = s1[i] - s2[i];
        out[i] = (s0[i] + plus + s3[i] + s4[i]) + add[i];
        out[out_stride + i] = (minus + 0.5f * s3[i] - 2.0f * s4[i]) + add[i];
        out[2 * out_stride + i] = (plus + 0.25f * s3[i] + 4.0f * s4[i]) + add[i];
        out[3 * out_stride + i] = (minus + 0.125f * s3[i] - 8.0f * s4[i] + s5[i]) + add[i];
    }
}

/* bias: co_n values or NULL; zeros: co_n zeros */
DFC_VECTOR_CLONES
static void transform_output(const float *s, const float *bias, const float *zeros, int64_t co_n, int64_t count,
                             int64_t cap, float *pixels)
{
    const int64_t plane = cap * co_n, row_floats = 4 * count * co_n;
    float t[24 * TRANSFORM_CHANNELS]; /* t = A^T s: t[(6 r + c) * TRANSFORM_CHANNELS + channel], r < 4 */
    const int64_t tn = TRANSFORM_CHANNELS;
    for (int64_t k = 0; k < count; k++) {
        for (int64_t c0 = 0; c0 < co_n; c0 += tn) {
            const int64_t n = co_n - c0 < tn ? co_n - c0 : tn;
            const float *in = s + k * co_n + c0;
            for (int c = 0; c < 6; c++) /* columns: t[., c] = A^T s[., c] */
                at_step(in + c * plane, in + (6 + c) * plane, in + (12 + c) * plane, in + (18 + c) * plane,
                        in + (24 + c) * plane, in + (30 + c) * plane, zeros, t + c * tn, 6 * tn, n);
            const float *add = (bias ? bias : zeros) + c0;
            float *out = pixels + 4 * k * co_n + c0;
            for (int r = 0; r < 4; r++) { /* rows: pixels of row r = t[r, .] A + bias */
                const float *row = t + 6 * r * tn;
                at_step(row, row + tn, row + 2 * tn, row + 3 * tn, row + 4 * tn, row + 5 * tn, add,
                        out + r * row_floats, co_n, n);
            }
        }
    }
}

/* The block's pixels into y, keeping those inside the image (the last row or column of tiles may stick out).
 * NHWC: a copy per pixel; NCHW: per channel, each row segment of a run of tiles in one tile row is written
 * contiguously (storing a pixel's channels one by one, a plane apart, costs a TLB miss per value). */
static void store_block(const float *pixels, int64_t h, int64_t w, int64_t co_n, int64_t tiles_w, int64_t t0,
                        int64_t count, int y_nhwc, float *yi)
{
    const int64_t row_floats = 4 * count * co_n;
    for (int64_t k = 0; k < count;) { /* runs of tiles in one tile row */
        const int64_t tile = t0 + k, ty = tile / tiles_w, tx = tile % tiles_w;
        const int64_t run = tiles_w - tx < count - k ? tiles_w - tx : count - k;
        const int64_t x0 = 4 * tx, width = 4 * run < w - x0 ? 4 * run : w - x0;
        for (int r = 0; r < 4 && 4 * ty + r < h; r++) {
            const float *src = pixels + r * row_floats + 4 * k * co_n;
            const int64_t at = (4 * ty + r) * w + x0;
            if (y_nhwc) {
                memcpy(yi + at * co_n, src, (size_t)(width * co_n) * sizeof *src);
            } else {
                for (int64_t co = 0; co < co_n; co++) {
                    float *dst = yi + co * h * w + at;
                    for (int64_t px = 0; px < width; px++)
                        dst[px] = src[px * co_n + co];
                }
            }
        }
        k += run;
    }
}

static int64_t thread_floats_of(int64_t ci_n, int64_t co_n)
{
    const int64_t cap = block_cap(ci_n, co_n);
    return 36 * cap * (ci_n + co_n) + 16 * cap * co_n + (ci_n > co_n ? ci_n : co_n); /* V, M, pixels, zeros */
}

/* image (C, P) -> out (P, C), in blocks that keep both sides' lines in cache. */
static void transpose_to_nhwc(const float *image, int64_t c_n, int64_t pixels, float *out, int threads)
{
    enum { BLOCK = 32 };
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int64_t p0 = 0; p0 < pixels; p0 += BLOCK)
        for (int64_t c0 = 0; c0 < c_n; c0 += BLOCK)
            for (int64_t p = p0; p < p0 + BLOCK && p < pixels; p++)
                for (int64_t c = c0; c < c0 + BLOCK && c < c_n; c++)
                    out[p * c_n + c] = image[c * pixels + p];
}

/* Images [first, first + count) of x (NHWC at xs) through the three steps, their blocks shared by the threads. */
static int winograd_images(const float *xs, int64_t first, int64_t count_images, int64_t h, int64_t w, int64_t ci_n,
                           int64_t co_n, const float *u, const float *bias, int y_nhwc, float *ys, float *per_thread,
                           int threads)
{
    const int64_t tiles_w = (w + 3) / 4, tiles = ((h + 3) / 4) * tiles_w;
    /* blocks of at most cap tiles and at least 4 per image (for the threads' balance at batch 1), from the image's
     * shape alone: a tile's row in its sgemm, and so its rounding, is then the same at any batch size and thread
     * count (an image's features do not depend on the batch it is in: tests/test_metrics.py) */
    const int64_t cap = block_cap(ci_n, co_n);
    int64_t blocks = (tiles + cap - 1) / cap;
    blocks = blocks < 4 ? (tiles < 4 ? tiles : 4) : blocks;
    const int64_t block_tiles = (tiles + blocks - 1) / blocks;
    blocks = (tiles + block_tiles - 1) / block_tiles;
    const int64_t thread_floats = thread_floats_of(ci_n, co_n);
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        /* oneDNN's sgemm runs on the calling thread only inside an active parallel region; a team of one is not
         * active, and a multi-threaded sgemm may split the sum over Ci: one thread, whatever the team's size */
        omp_set_num_threads(1);
#endif
        float *v = per_thread + tid * thread_floats, *m = v + 36 * cap * ci_n;
        float *pixels = m + 36 * cap * co_n, *zeros = pixels + 16 * cap * co_n;
        memset(zeros, 0, (size_t)(ci_n > co_n ? ci_n : co_n) * sizeof *zeros);
#pragma omp for schedule(dynamic)
        for (int64_t job = 0; job < count_images * blocks; job++) {
            const int64_t b = job / blocks, t0 = (job % blocks) * block_tiles;
            const int64_t count = tiles - t0 < block_tiles ? tiles - t0 : block_tiles;
            transform_input(xs + b * h * w * ci_n, h, w, ci_n, tiles_w, t0, count, cap, zeros, v);
            for (int xi = 0; xi < 36; xi++)
                if (dnnl_sgemm('N', 'N', count, co_n, ci_n, 1.0f, v + xi * cap * ci_n, ci_n, u + xi * ci_n * co_n, co_n,
                               0.0f, m + xi * cap * co_n, co_n) != dnnl_success) {
#pragma omp atomic write
                    failed = 1;
                }
            transform_output(m, bias, zeros, co_n, count, cap, pixels);
            store_block(pixels, h, w, co_n, tiles_w, t0, count, y_nhwc, ys + (first + b) * h * w * co_n);
        }
    }
    return failed;
}

dfc_status dfc_winograd_conv2d(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, int transposed,
                               const dfc_tensor *bias, int x_nhwc, int y_nhwc, dfc_tensor *y, dfc_error *err)
{
    const int64_t n = x->shape[0], ci_n = x->shape[1], h = x->shape[2], w = x->shape[3], co_n = y->shape[1];
    const int threads = be->num_threads > 0 ? be->num_threads : 1;
    /* U, each thread's buffers, and one NCHW image made NHWC, in the backend's workspace */
    const int64_t copy_floats = x_nhwc ? 0 : ci_n * h * w;
    void *scratch;
    DFC_TRY(dfc_cpu_workspace(
        be, (size_t)(36 * ci_n * co_n + threads * thread_floats_of(ci_n, co_n) + copy_floats) * sizeof(float), &scratch,
        err));
    float *u = scratch, *per_thread = u + 36 * ci_n * co_n;
    /* the block buffers are the weights' transform's scratch first (WEIGHT_SCRATCH_DOUBLES) */
    transform_weights(weight->data, weight->shape[0], weight->shape[1], transposed, u, (double *)per_thread, threads);
    const float *bs = bias ? bias->data : NULL;
    int failed = 0;
    if (x_nhwc) {
        failed = winograd_images(x->data, 0, n, h, w, ci_n, co_n, u, bs, y_nhwc, y->data, per_thread, threads);
    } else { /* image by image through an NHWC copy (the reorder a direct convolution would make as well) */
        float *copy = per_thread + threads * thread_floats_of(ci_n, co_n);
        for (int64_t b = 0; b < n && !failed; b++) {
            transpose_to_nhwc(x->data + b * ci_n * h * w, ci_n, h * w, copy, threads);
            failed = winograd_images(copy, b, 1, h, w, ci_n, co_n, u, bs, y_nhwc, y->data, per_thread, threads);
        }
    }
    if (failed)
        return dfc_fail(err, DFC_ERR_BACKEND, "%s: oneDNN's sgemm failed in the Winograd convolution",
                        transposed ? "conv2d_backward_input" : "conv2d_forward");
    return DFC_OK;
}

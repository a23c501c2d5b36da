/* 3x3 convolutions with stride 1 and padding 1 by Winograd's F(2x2, 3x3) (Lavin and Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 block of outputs comes from a 4x4 input tile
 * as Y = A^T [(G g G^T) . (B^T d B)] A, 16 products per output block and input-output channel pair where the direct
 * convolution makes 36, so the 16 matrix products (tiles x Ci) (Ci x Co) that carry the work are 2.25x smaller
 * than the direct convolution's. oneDNN 3.2 has no Winograd kernel for AVX2; these shapes are most of the UNet's
 * arithmetic.
 *
 * Blocks of tiles run on one thread each, through three steps in that thread's cache-sized buffers:
 * the input transform (additions only, vectorised over channels: NHWC keeps each pixel's channels contiguous), 16
 * single-threaded sgemm calls (oneDNN's, which run on the calling thread inside a parallel region), the output
 * transform plus bias into y, NCHW or NHWC. The weights' transform U = G g G^T is made once per call. An NCHW x
 * goes image by image through an NHWC copy (the reorder oneDNN's direct kernel would make as well).
 * Accuracy: the transforms' constants are 0, +-1 and 1/2, so F(2x2, 3x3) stays within a few float roundings of
 * the direct sum (tests/test_ops_conv.py compares with PyTorch at the op tolerance). */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oneapi/dnnl/dnnl.h>

#include "cpu.h"
#include "fast_math.h"

/* Tiles per block: V (16 x tiles x Ci) and M (16 x tiles x Co) take about 8 MB per thread (they stay in the
 * last-level cache), between 64 and 1024 tiles (longer matrix products amortise oneDNN's packing of U). */
static int64_t block_cap(int64_t ci_n, int64_t co_n)
{
    const int64_t cap = ((int64_t)8 << 20) / (16 * 4 * (ci_n + co_n));
    return cap < 64 ? 64 : cap > 1024 ? 1024 : cap;
}

/* Fewer tiles per image than channels (a deep level: 252 tiles of 28x36, 512 channels) leave the matrix products
 * too thin to pay for the weights' transform and the packing of U in every product: oneDNN's direct kernel is then
 * as fast or faster (measured, benchmarks/RESULTS.md). */
int dfc_winograd_applies(const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *y, dfc_conv2d_params p)
{
    const int64_t ci = x->shape[1], co = y->shape[1], h = x->shape[2], w = x->shape[3];
    const int64_t tiles = ((h + 1) / 2) * ((w + 1) / 2); /* per image: the path must not depend on the batch */
    if (getenv("DIFFICE_NO_WINOGRAD")) /* read at each call, so a run can compare both in one process */
        return 0;
    return weight->shape[2] == 3 && weight->shape[3] == 3 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 1 &&
           p.pad_w == 1 && y->shape[2] == h && y->shape[3] == w && ci >= 8 && co >= 8 && h >= 2 && w >= 2 &&
           tiles >= (ci > co ? ci : co);
}

/* U[xi][i][o] = (G g G^T)[r][c], xi = 4 r + c, G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1], g the 3x3 kernel from
 * input channel i to output channel o of the convolution computed: weight[o, i] for a forward one; for the input
 * gradient (transposed), weight[i, o] turned by 180 degrees (dx = dy correlated with the flipped kernels). weight
 * is (w_out, w_in, 3, 3). */
static void transform_weights(const float *w, int64_t w_out, int64_t w_in, int transposed, float *u, int threads)
{
    const int64_t ci_n = transposed ? w_out : w_in, co_n = transposed ? w_in : w_out;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t a = 0; a < w_out; a++)
        for (int64_t b = 0; b < w_in; b++) {
            const float *kernel = w + (a * w_in + b) * 9;
            float g[9];
            for (int k = 0; k < 9; k++)
                g[k] = kernel[transposed ? 8 - k : k];
            const int64_t i = transposed ? a : b, o = transposed ? b : a;
            float t[4][3]; /* G g */
            for (int c = 0; c < 3; c++) {
                t[0][c] = g[c];
                t[1][c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
                t[2][c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
                t[3][c] = g[6 + c];
            }
            for (int r = 0; r < 4; r++) {
                const float v[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]), 0.5f * (t[r][0] - t[r][1] + t[r][2]),
                                    t[r][2]};
                for (int c = 0; c < 4; c++)
                    u[((int64_t)(4 * r + c) * ci_n + i) * co_n + o] = v[c];
            }
        }
}

/* V[xi][k][ci] = (B^T d B)[i][j] for tile k of the block, d its 4x4 input patch (zero outside the image),
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. */
DFC_VECTOR_CLONES
static void transform_input(const float *xi, int64_t h, int64_t w, int64_t ci_n, int64_t tiles_w, int64_t t0,
                            int64_t count, int64_t cap, const float *zeros, float *v)
{
    const int64_t plane = cap * ci_n; /* V's stride between the 16 matrices */
    for (int64_t k = 0; k < count; k++) {
        const int64_t tile = t0 + k, y0 = (tile / tiles_w) * 2 - 1, x0 = (tile % tiles_w) * 2 - 1;
        const float *d[4][4];
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) {
                const int64_t yy = y0 + r, xx = x0 + c;
                d[r][c] = yy >= 0 && yy < h && xx >= 0 && xx < w ? xi + (yy * w + xx) * ci_n : zeros;
            }
        float *out = v + k * ci_n;
#pragma omp simd
        for (int64_t ci = 0; ci < ci_n; ci++) {
            float t[4][4]; /* B^T d */
            for (int c = 0; c < 4; c++) {
                t[0][c] = d[0][c][ci] - d[2][c][ci];
                t[1][c] = d[1][c][ci] + d[2][c][ci];
                t[2][c] = d[2][c][ci] - d[1][c][ci];
                t[3][c] = d[1][c][ci] - d[3][c][ci];
            }
            for (int r = 0; r < 4; r++) {
                out[(4 * r + 0) * plane + ci] = t[r][0] - t[r][2];
                out[(4 * r + 1) * plane + ci] = t[r][1] + t[r][2];
                out[(4 * r + 2) * plane + ci] = t[r][2] - t[r][1];
                out[(4 * r + 3) * plane + ci] = t[r][1] - t[r][3];
            }
        }
    }
}

/* y's 2x2 block of each tile = A^T m A + bias, A^T = [1 1 1 0; 0 1 -1 -1], m[xi] = M[xi][k][co], first into
 * pixels: two rows of 2 count pixels (the block's tiles side by side), each pixel's channels contiguous; then into
 * y, keeping the pixels inside the image (the last row or column of tiles may stick out). NHWC: a copy per pixel;
 * NCHW: per channel, each row segment of a run of tiles in one tile row is written contiguously (storing a
 * pixel's channels one by one, a plane apart, costs a TLB miss per value). */
DFC_VECTOR_CLONES
static void transform_output(const float *m, const float *bias, int64_t h, int64_t w, int64_t co_n, int64_t tiles_w,
                             int64_t t0, int64_t count, int64_t cap, int y_nhwc, float *yi, float *pixels)
{
    const int64_t plane = cap * co_n, row = 2 * count * co_n;
    for (int64_t k = 0; k < count; k++) {
        const float *in = m + k * co_n;
        float *out = pixels + 2 * k * co_n;
#pragma omp simd
        for (int64_t co = 0; co < co_n; co++) {
            float s[2][4]; /* A^T m */
            for (int c = 0; c < 4; c++) {
                const float m0 = in[c * plane + co], m1 = in[(4 + c) * plane + co];
                const float m2 = in[(8 + c) * plane + co], m3 = in[(12 + c) * plane + co];
                s[0][c] = m0 + m1 + m2;
                s[1][c] = m1 - m2 - m3;
            }
            const float b = bias ? bias[co] : 0.0f;
            for (int r = 0; r < 2; r++) {
                out[r * row + co] = s[r][0] + s[r][1] + s[r][2] + b;
                out[r * row + co_n + co] = s[r][1] - s[r][2] - s[r][3] + b;
            }
        }
    }
    for (int64_t k = 0; k < count;) { /* runs of tiles in one tile row */
        const int64_t tile = t0 + k, ty = tile / tiles_w, tx = tile % tiles_w;
        const int64_t run = tiles_w - tx < count - k ? tiles_w - tx : count - k;
        const int64_t x0 = 2 * tx, width = 2 * run < w - x0 ? 2 * run : w - x0;
        for (int r = 0; r < 2 && 2 * ty + r < h; r++) {
            const float *src = pixels + r * row + 2 * k * co_n;
            const int64_t at = (2 * ty + r) * w + x0;
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
    return 16 * cap * (ci_n + co_n) + 4 * cap * co_n + ci_n;
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
    const int64_t tiles_w = (w + 1) / 2, tiles = ((h + 1) / 2) * tiles_w;
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
        float *v = per_thread + tid * thread_floats, *m = v + 16 * cap * ci_n;
        float *pixels = m + 16 * cap * co_n, *zeros = pixels + 4 * cap * co_n;
        memset(zeros, 0, (size_t)ci_n * sizeof *zeros);
#pragma omp for schedule(dynamic)
        for (int64_t job = 0; job < count_images * blocks; job++) {
            const int64_t b = job / blocks, t0 = (job % blocks) * block_tiles;
            const int64_t count = tiles - t0 < block_tiles ? tiles - t0 : block_tiles;
            transform_input(xs + b * h * w * ci_n, h, w, ci_n, tiles_w, t0, count, cap, zeros, v);
            for (int xi = 0; xi < 16; xi++)
                if (dnnl_sgemm('N', 'N', count, co_n, ci_n, 1.0f, v + xi * cap * ci_n, ci_n, u + xi * ci_n * co_n, co_n,
                               0.0f, m + xi * cap * co_n, co_n) != dnnl_success) {
#pragma omp atomic write
                    failed = 1;
                }
            transform_output(m, bias, h, w, co_n, tiles_w, t0, count, cap, y_nhwc, ys + (first + b) * h * w * co_n,
                             pixels);
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
        be, (size_t)(16 * ci_n * co_n + threads * thread_floats_of(ci_n, co_n) + copy_floats) * sizeof(float), &scratch,
        err));
    float *u = scratch, *per_thread = u + 16 * ci_n * co_n;
    transform_weights(weight->data, weight->shape[0], weight->shape[1], transposed, u, threads);
    const float *bs = bias ? bias->data : NULL;
    int failed = 0;
    if (x_nhwc) {
        failed = winograd_images(x->data, 0, n, h, w, ci_n, co_n, u, bs, y_nhwc, y->data, per_thread, threads);
    } else { /* image by image through an NHWC copy (the reorder a direct convolution would make too) */
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

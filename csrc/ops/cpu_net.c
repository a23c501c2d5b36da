/* Fast CPU normalised feature distance: the reference walks one position at a time down the channels (a stride of
 * hw floats per step); here a work item is TILE consecutive positions of one sample, so every channel step reads
 * TILE contiguous floats, and the items of a sample run in parallel (a sample's feature map is large, N small).
 * The reference kernel in ref_net.c is the oracle. */
#include <math.h>

#include "cpu.h"
#include "net_ops.h"

#define TILE 64
#define CHUNK_TILES 256 /* tiles whose partial sums sit on the stack at once */

typedef struct {
    int64_t q0, q1;
} tile_span;

static tile_span tile_of(int64_t t, int64_t hw)
{
    tile_span s = {t * TILE, t * TILE + TILE < hw ? t * TILE + TILE : hw};
    return s;
}

/* 1 / (|f[:, q]| + eps) for the tile's positions of one sample (c channels hw apart); norm[] keeps |f| itself. */
static void tile_norms(const float *f, int64_t c, int64_t hw, tile_span s, double *norm, double *inv)
{
    for (int64_t q = s.q0; q < s.q1; q++)
        norm[q - s.q0] = 0.0;
    for (int64_t ch = 0; ch < c; ch++) {
        const float *fp = f + ch * hw;
        for (int64_t q = s.q0; q < s.q1; q++)
            norm[q - s.q0] += (double)fp[q] * fp[q];
    }
    for (int64_t q = s.q0; q < s.q1; q++) {
        norm[q - s.q0] = sqrt(norm[q - s.q0]);
        inv[q - s.q0] = 1.0 / (norm[q - s.q0] + DFC_NORMALIZE_EPS);
    }
}

dfc_status cpu_normalized_distance_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss,
                                           dfc_error *err)
{
    const char *op = "normalized_distance";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, loss, "loss", NULL, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2), tiles = (hw + TILE - 1) / TILE;
    for (int64_t i = 0; i < n; i++) {
        const float *ap = a->data + i * c * hw, *bp = b->data + i * c * hw;
        double sum = 0.0, partial[CHUNK_TILES]; /* per-tile sums added in order: the same loss for any thread count */
        for (int64_t t0 = 0; t0 < tiles; t0 += CHUNK_TILES) {
            const int64_t t1 = t0 + CHUNK_TILES < tiles ? t0 + CHUNK_TILES : tiles;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
            for (int64_t t = t0; t < t1; t++) {
                const tile_span s = tile_of(t, hw);
                double na[TILE], ia[TILE], nb[TILE], ib[TILE], acc = 0.0;
                tile_norms(ap, c, hw, s, na, ia);
                tile_norms(bp, c, hw, s, nb, ib);
                for (int64_t ch = 0; ch < c; ch++)
                    for (int64_t q = s.q0; q < s.q1; q++) {
                        const double d = ap[ch * hw + q] * ia[q - s.q0] - bp[ch * hw + q] * ib[q - s.q0];
                        acc += d * d;
                    }
                partial[t - t0] = acc;
            }
            for (int64_t t = t0; t < t1; t++)
                sum += partial[t - t0];
        }
        loss->data[i] = (float)(sum / (double)hw);
    }
    return DFC_OK;
}

/* da = g / re - a (g . a) / (r re^2) with g = 2 dloss (a^ - b^) / hw (ref_net.c has the derivation's terms). */
dfc_status cpu_normalized_distance_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                            const dfc_tensor *b, dfc_tensor *da, dfc_error *err)
{
    const char *op = "normalized_distance_backward";
    DFC_TRY(dfc_check_normalized_distance(op, a, b, dloss, "dloss", da, err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2), tiles = (hw + TILE - 1) / TILE;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t item = 0; item < n * tiles; item++) {
        const int64_t i = item / tiles;
        const tile_span s = tile_of(item % tiles, hw);
        const float *ap = a->data + i * c * hw, *bp = b->data + i * c * hw;
        float *dp = da->data + i * c * hw;
        const double scale = 2.0 * dloss->data[i] / (double)hw;
        double na[TILE], ia[TILE], nb[TILE], ib[TILE], dot[TILE] = {0};
        tile_norms(ap, c, hw, s, na, ia);
        tile_norms(bp, c, hw, s, nb, ib);
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t q = s.q0; q < s.q1; q++)
                dot[q - s.q0] +=
                    scale * (ap[ch * hw + q] * ia[q - s.q0] - bp[ch * hw + q] * ib[q - s.q0]) * ap[ch * hw + q];
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t q = s.q0; q < s.q1; q++) {
                const int64_t j = q - s.q0;
                const double g = scale * (ap[ch * hw + q] * ia[j] - bp[ch * hw + q] * ib[j]);
                const double radial = na[j] > 0.0 ? ap[ch * hw + q] * dot[j] * ia[j] * ia[j] / na[j] : 0.0;
                dp[ch * hw + q] = (float)(g * ia[j] - radial);
            }
    }
    return DFC_OK;
}

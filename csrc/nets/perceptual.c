#include "perceptual.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NORMALIZE_EPS 1e-10   /* MONAI's normalize_tensor */
#define TILE 64               /* positions per work item: channel loops then read TILE contiguous floats */

struct dfc_perceptual {
    const dfc_net *net;
    dfc_perceptual_variant variant;
    float weight;
    int has_reference;
    int64_t ref_shape[4];                 /* the reference image's shape */
    dfc_tensor ref[DFC_NET_MAX_OUTPUTS];  /* its features (channel-normalised for NORMALIZED), in ref_data */
    float *ref_data;
};

dfc_status dfc_perceptual_create(const dfc_net *net, dfc_perceptual_variant variant, float weight,
                                 dfc_perceptual **out, dfc_error *err)
{
    *out = NULL;
    if (variant != DFC_PERCEPTUAL_MSE && variant != DFC_PERCEPTUAL_NORMALIZED)
        return dfc_fail(err, DFC_ERR_VALUE, "PerceptualLoss: unknown variant %d", (int)variant);
    if (!isfinite(weight))
        return dfc_fail(err, DFC_ERR_VALUE, "PerceptualLoss: weight must be finite, got %g", (double)weight);
    dfc_perceptual *p = calloc(1, sizeof *p);
    if (!p)
        return dfc_fail(err, DFC_ERR_NOMEM, "PerceptualLoss: out of memory");
    p->net = net;
    p->variant = variant;
    p->weight = weight;
    *out = p;
    return DFC_OK;
}

void dfc_perceptual_destroy(dfc_perceptual *p)
{
    if (!p)
        return;
    free(p->ref_data);
    free(p);
}

int dfc_perceptual_has_reference(const dfc_perceptual *p) { return p->has_reference; }

static dfc_status check_image(const dfc_perceptual *p, const dfc_tensor *x, const char *op, const char *name,
                              dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, name, 4, 4, err));
    if (x->shape[1] != p->net->in_channels)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s has %lld channels, the feature network takes %d", op, name,
                        (long long)x->shape[1], p->net->in_channels);
    return DFC_OK;
}

/* Per-position channel norms of f (N, C, hw): rnorm[n * hw + q] = sqrt(sum_c f[n, c, q]^2). */
static void channel_norms(int threads, const dfc_tensor *f, float *rnorm)
{
    const int64_t n = f->shape[0], c = f->shape[1], hw = dfc_inner_size(f, 2), tiles = (hw + TILE - 1) / TILE;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < n * tiles; item++) {
        const int64_t i = item / tiles, q0 = (item % tiles) * TILE, q1 = q0 + TILE < hw ? q0 + TILE : hw;
        double acc[TILE] = {0};
        for (int64_t ch = 0; ch < c; ch++) {
            const float *fp = f->data + (i * c + ch) * hw;
            for (int64_t q = q0; q < q1; q++)
                acc[q - q0] += (double)fp[q] * fp[q];
        }
        for (int64_t q = q0; q < q1; q++)
            rnorm[i * hw + q] = (float)sqrt(acc[q - q0]);
    }
}

/* f^ = f / (|f|_channels + eps), in place. */
static void normalize_channels(int threads, dfc_tensor *f, const float *rnorm)
{
    const int64_t n = f->shape[0], c = f->shape[1], hw = dfc_inner_size(f, 2);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < n * c; row++) {
        const float *r = rnorm + (row / c) * hw;
        float *fp = f->data + row * hw;
        for (int64_t q = 0; q < hw; q++)
            fp[q] = (float)(fp[q] / ((double)r[q] + NORMALIZE_EPS));
    }
}

/* NORMALIZED variant of one layer: loss[n] += w mean_q sum_c (f^a - f^b)^2 and, if df is set, its gradient with
 * respect to fa. With r = |fa| and g = dL/df^a = 2 w (f^a - f^b) / hw:
 * df = g / (r + eps) - fa (g . fa) / (r (r + eps)^2); the second term is 0 where r = 0 (then fa = 0). */
static dfc_status normalized_layer(dfc_backend *be, float weight, const dfc_tensor *fa, const dfc_tensor *fb_hat,
                                   dfc_arena *arena, double *loss, dfc_tensor *df, dfc_error *err)
{
    const int threads = be->num_threads;
    const int64_t n = fa->shape[0], c = fa->shape[1], hw = dfc_inner_size(fa, 2), tiles = (hw + TILE - 1) / TILE;
    dfc_tensor rnorm = dfc_alloc2(arena, n, hw, err);
    DFC_CHECK_ALLOC(rnorm);
    double *partial = dfc_arena_alloc(arena, (size_t)(n * tiles) * sizeof(double), err);
    if (!partial)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    channel_norms(threads, fa, rnorm.data);
    const double scale = 2.0 * weight / (double)hw;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t item = 0; item < n * tiles; item++) {
        const int64_t i = item / tiles, q0 = (item % tiles) * TILE, q1 = q0 + TILE < hw ? q0 + TILE : hw;
        const float *r = rnorm.data + i * hw;
        double dot[TILE] = {0}, sum = 0.0;
        for (int64_t ch = 0; ch < c; ch++) {
            const int64_t off = (i * c + ch) * hw;
            for (int64_t q = q0; q < q1; q++) {
                const double d = fa->data[off + q] / ((double)r[q] + NORMALIZE_EPS) - fb_hat->data[off + q];
                sum += d * d;
                dot[q - q0] += scale * d * fa->data[off + q];
            }
        }
        partial[item] = weight * sum / (double)hw;
        if (!df)
            continue;
        for (int64_t ch = 0; ch < c; ch++) {
            const int64_t off = (i * c + ch) * hw;
            for (int64_t q = q0; q < q1; q++) {
                const double re = (double)r[q] + NORMALIZE_EPS;
                const double g = scale * (fa->data[off + q] / re - fb_hat->data[off + q]);
                const double radial = r[q] > 0.0f ? fa->data[off + q] * dot[q - q0] / ((double)r[q] * re * re) : 0.0;
                df->data[off + q] = (float)(g / re - radial);
            }
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < tiles; t++)
            loss[i] += partial[i * tiles + t];
    return DFC_OK;
}

/* MSE variant of one layer, with the mse op: loss[n] += w mean (fa - fb)^2, df = w 2 (fa - fb) / M. */
static dfc_status mse_layer(dfc_backend *be, float weight, const dfc_tensor *fa, const dfc_tensor *fb,
                            dfc_arena *arena, double *loss, dfc_tensor *df, dfc_error *err)
{
    const int64_t n = fa->shape[0];
    dfc_tensor layer_loss = dfc_arena_tensor(arena, 1, &n, err), dloss = dfc_arena_tensor(arena, 1, &n, err);
    DFC_CHECK_ALLOC(layer_loss);
    DFC_CHECK_ALLOC(dloss);
    DFC_TRY(be->ops->mse_forward(be, fa, fb, &layer_loss, err));
    for (int64_t i = 0; i < n; i++) {
        loss[i] += (double)weight * layer_loss.data[i];
        dloss.data[i] = weight;
    }
    return df ? be->ops->mse_backward(be, &dloss, fa, fb, df, NULL, err) : DFC_OK;
}

static void reset_both(dfc_arena *arena, dfc_arena_mark am, dfc_arena *scratch, dfc_arena_mark sm)
{
    dfc_arena_reset(arena, am);
    if (scratch)
        dfc_arena_reset(scratch, sm);
}

dfc_status dfc_perceptual_set_reference(dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                        const dfc_tensor *b, dfc_error *err)
{
    DFC_TRY(check_image(p, b, "PerceptualLoss.set_reference", "b", err));
    const dfc_net *net = p->net;
    dfc_arena_mark am = dfc_arena_get_mark(arena), sm = scratch ? dfc_arena_get_mark(scratch) : am;
    dfc_tensor feats[DFC_NET_MAX_OUTPUTS];
    float *data = NULL;
    dfc_status st = net->vt->forward(net, be, arena, scratch, b, NULL, feats, err);
    int64_t total = 0;
    for (int k = 0; st == DFC_OK && k < net->num_outputs; k++)
        total += dfc_numel(&feats[k]);
    if (st == DFC_OK && !(data = malloc((size_t)(total > 0 ? total : 1) * sizeof(float))))
        st = dfc_fail(err, DFC_ERR_NOMEM, "PerceptualLoss.set_reference: cannot allocate %lld floats",
                      (long long)total);
    dfc_tensor ref[DFC_NET_MAX_OUTPUTS];
    int64_t offset = 0;
    for (int k = 0; st == DFC_OK && k < net->num_outputs; k++) {
        ref[k] = feats[k];
        ref[k].data = data + offset;
        offset += dfc_numel(&feats[k]);
        memcpy(ref[k].data, feats[k].data, (size_t)dfc_numel(&feats[k]) * sizeof(float));
        if (p->variant == DFC_PERCEPTUAL_NORMALIZED) {
            dfc_tensor rnorm = dfc_alloc2(arena, ref[k].shape[0], dfc_inner_size(&ref[k], 2), err);
            if (!rnorm.data) {
                st = err && err->code ? err->code : DFC_ERR_NOMEM;
                break;
            }
            channel_norms(be->num_threads, &ref[k], rnorm.data);
            normalize_channels(be->num_threads, &ref[k], rnorm.data);
        }
    }
    reset_both(arena, am, scratch, sm);
    if (st != DFC_OK) {
        free(data);
        return st;
    }
    free(p->ref_data);
    p->ref_data = data;
    memcpy(p->ref, ref, sizeof ref);
    memcpy(p->ref_shape, b->shape, sizeof p->ref_shape);
    p->has_reference = 1;
    return DFC_OK;
}

dfc_status dfc_perceptual_loss(const dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                               const dfc_tensor *a, dfc_tensor *loss, dfc_tensor *da, dfc_error *err)
{
    const char *op = "PerceptualLoss.loss";
    if (!p->has_reference)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: no reference (call set_reference first)", op);
    DFC_TRY(check_image(p, a, op, "a", err));
    if (memcmp(a->shape, p->ref_shape, sizeof p->ref_shape) != 0) {
        char got[64], want[64];
        dfc_tensor ref_image = {NULL, 4, {p->ref_shape[0], p->ref_shape[1], p->ref_shape[2], p->ref_shape[3]}};
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: a has shape %s but the reference has shape %s", op,
                        dfc_shape_str(a, got, sizeof got), dfc_shape_str(&ref_image, want, sizeof want));
    }
    DFC_TRY(dfc_check_shape(loss, op, "loss", 1, a->shape, err));
    if (da)
        DFC_TRY(dfc_check_shape(da, op, "da", 4, a->shape, err));
    const dfc_net *net = p->net;
    const int64_t n = a->shape[0];
    dfc_arena_mark am = dfc_arena_get_mark(arena), sm = scratch ? dfc_arena_get_mark(scratch) : am;
    dfc_tensor feats[DFC_NET_MAX_OUTPUTS], dfeats[DFC_NET_MAX_OUTPUTS];
    void *tape = NULL;
    double *total = dfc_arena_alloc(arena, (size_t)n * sizeof(double), err);
    dfc_status st = total ? DFC_OK : (err && err->code ? err->code : DFC_ERR_NOMEM);
    if (st == DFC_OK) {
        memset(total, 0, (size_t)n * sizeof(double));
        st = net->vt->forward(net, be, arena, da ? NULL : scratch, a, da ? &tape : NULL, feats, err);
    }
    for (int k = 0; st == DFC_OK && k < net->num_outputs; k++) {
        dfc_tensor *df = NULL;
        if (da) {
            dfeats[k] = dfc_alloc_like(arena, &feats[k], err);
            if (!dfeats[k].data) {
                st = err && err->code ? err->code : DFC_ERR_NOMEM;
                break;
            }
            df = &dfeats[k];
        }
        if (p->variant == DFC_PERCEPTUAL_MSE)
            st = mse_layer(be, p->weight, &feats[k], &p->ref[k], arena, total, df, err);
        else
            st = normalized_layer(be, p->weight, &feats[k], &p->ref[k], arena, total, df, err);
    }
    if (st == DFC_OK && da)
        st = net->vt->backward(net, be, arena, tape, dfeats, da, NULL, err);
    if (st == DFC_OK)
        for (int64_t i = 0; i < n; i++)
            loss->data[i] = (float)total[i];
    reset_both(arena, am, scratch, sm);
    return st;
}

/* ---- pixel losses ---- */

dfc_status dfc_pixel_loss(dfc_backend *be, dfc_pixel_loss_kind kind, const dfc_tensor *a, const dfc_tensor *b,
                          dfc_tensor *loss, dfc_tensor *da, dfc_error *err)
{
    const char *op = "pixel_loss";
    if (kind != DFC_PIXEL_L1 && kind != DFC_PIXEL_L2 && kind != DFC_PIXEL_L2_CHANNEL_NORM)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown kind %d", op, (int)kind);
    DFC_TRY(dfc_check_ndim(a, op, "a", 2, 4, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    DFC_TRY(dfc_check_shape(loss, op, "loss", 1, a->shape, err));
    if (da)
        DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    const int64_t n = a->shape[0], c = a->shape[1], hw = dfc_inner_size(a, 2), per_sample = c * hw;
    float *ds = da ? da->data : NULL;
    #pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *ap = a->data + i * per_sample, *bp = b->data + i * per_sample;
        float *dp = ds ? ds + i * per_sample : NULL;
        double sum = 0.0;
        if (kind == DFC_PIXEL_L2_CHANNEL_NORM) {
            for (int64_t q = 0; q < hw; q++) {
                double sq = 0.0;
                for (int64_t ch = 0; ch < c; ch++) {
                    const double d = (double)ap[ch * hw + q] - bp[ch * hw + q];
                    sq += d * d;
                }
                const double norm = sqrt(sq);
                sum += norm;
                for (int64_t ch = 0; dp && ch < c; ch++)
                    dp[ch * hw + q] = norm > 0.0 ? (float)(((double)ap[ch * hw + q] - bp[ch * hw + q]) / norm) : 0.0f;
            }
        } else {
            for (int64_t j = 0; j < per_sample; j++) {
                const double d = (double)ap[j] - bp[j];
                if (kind == DFC_PIXEL_L1) {
                    sum += fabs(d);
                    if (dp)
                        dp[j] = d > 0.0 ? 1.0f : d < 0.0 ? -1.0f : 0.0f;
                } else {
                    sum += d * d;
                    if (dp)
                        dp[j] = (float)(2.0 * d);
                }
            }
        }
        loss->data[i] = (float)sum;
    }
    return DFC_OK;
}

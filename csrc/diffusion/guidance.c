/* The sampler's guiding loss from diffice's own networks, entirely in C:
 *   loss = sum_b lambda_c[b] Lc(f(x0_b), y_b) + lambda_p Lp(x0_b, x_b),
 * f any dfc_net whose first output is logits, Lc cross-entropy or DiME's logit form (class_loss.h), Lp a perceptual
 * loss (perceptual.h) against the ORIGINAL images. The perceptual reference follows the rows of the current pass
 * (all images, then the ones retrying with the next lambda_c): its features are computed once per pass. */
#include "guidance.h"

#include <stdlib.h>
#include <string.h>

struct dfc_model_guidance {
    const dfc_net *classifier;
    dfc_class_loss_kind kind;
    dfc_perceptual *perceptual; /* borrowed, may be NULL */
    int64_t n, m;               /* images and values per image of the original batch */
    int64_t shape[4];
    dfc_backend *be;         /* borrowed: the one backend the guidance runs on, whose memory x is */
    float *x;                /* the original batch (n, m), backend memory */
    int64_t *targets;        /* (n) */
    int64_t *reference_rows; /* the rows whose features the perceptual loss holds; count < 0: none */
    int64_t reference_count;
};

dfc_status dfc_model_guidance_create(const dfc_net *classifier, dfc_class_loss_kind kind, dfc_perceptual *perceptual,
                                     dfc_backend *be, const dfc_tensor *x, const int64_t *targets,
                                     dfc_model_guidance **out, dfc_error *err)
{
    *out = NULL;
    DFC_TRY(dfc_check_ndim(x, "guidance", "x", 4, 4, err));
    DFC_TRY(dfc_net_sync(classifier, be, err)); /* the run's start: the classifier's current values, on be */
    if (x->shape[1] != classifier->in_channels)
        return dfc_fail(err, DFC_ERR_SHAPE, "guidance: images have %lld channels, the classifier takes %d",
                        (long long)x->shape[1], classifier->in_channels);
    dfc_model_guidance *g = calloc(1, sizeof *g);
    if (!g)
        return dfc_fail(err, DFC_ERR_NOMEM, "guidance: out of memory");
    g->classifier = classifier;
    g->kind = kind;
    g->perceptual = perceptual;
    g->n = x->shape[0];
    g->m = dfc_inner_size(x, 1);
    memcpy(g->shape, x->shape, sizeof g->shape);
    g->be = be;
    g->targets = malloc((size_t)g->n * sizeof(int64_t));
    g->reference_rows = malloc((size_t)g->n * sizeof(int64_t));
    g->reference_count = -1;
    if (!g->targets || !g->reference_rows) {
        dfc_model_guidance_destroy(g);
        return dfc_fail(err, DFC_ERR_NOMEM, "guidance: out of memory");
    }
    const size_t bytes = (size_t)(g->n * g->m) * sizeof(float);
    dfc_status st = DFC_ERR_NOMEM;
    if ((g->x = be->iface->alloc(be, bytes, err)))
        st = be->iface->copy_from_host(be, g->x, x->data, bytes, err);
    else if (err && err->code)
        st = err->code;
    if (st != DFC_OK) {
        dfc_error_prefix(err, "guidance: ");
        dfc_model_guidance_destroy(g);
        return st;
    }
    memcpy(g->targets, targets, (size_t)g->n * sizeof(int64_t));
    *out = g;
    return DFC_OK;
}

void dfc_model_guidance_destroy(dfc_model_guidance *g)
{
    if (!g)
        return;
    if (g->x)
        g->be->iface->free(g->be, g->x);
    free(g->targets);
    free(g->reference_rows);
    free(g);
}

/* The original images of these rows. */
static dfc_status gather(const dfc_model_guidance *g, dfc_backend *be, const int64_t *rows, int64_t count,
                         dfc_arena *arena, dfc_tensor *out, dfc_error *err)
{
    int64_t shape[4] = {count, g->shape[1], g->shape[2], g->shape[3]};
    *out = dfc_arena_tensor(arena, 4, shape, err);
    DFC_CHECK_ALLOC(*out);
    for (int64_t b = 0; b < count; b++) {
        if (rows[b] < 0 || rows[b] >= g->n)
            return dfc_fail(err, DFC_ERR_VALUE, "guidance: row %lld is outside the batch of %lld", (long long)rows[b],
                            (long long)g->n);
        DFC_TRY(be->iface->copy(be, out->data + b * g->m, g->x + rows[b] * g->m, (size_t)g->m * sizeof(float), err));
    }
    return DFC_OK;
}

/* Makes the perceptual loss compare with the original images of these rows. */
static dfc_status use_reference_rows(dfc_model_guidance *g, dfc_backend *be, dfc_arena *arena, const int64_t *rows,
                                     int64_t count, dfc_error *err)
{
    if (g->reference_count == count && memcmp(g->reference_rows, rows, (size_t)count * sizeof(int64_t)) == 0)
        return DFC_OK;
    dfc_arena_mark mark = dfc_arena_get_mark(arena);
    dfc_tensor b;
    dfc_status st = gather(g, be, rows, count, arena, &b, err);
    if (st == DFC_OK)
        st = dfc_perceptual_set_reference(g->perceptual, be, arena, NULL, &b, err); /* the features' working memory */
    dfc_arena_reset(arena, mark);
    if (st != DFC_OK) {
        g->reference_count = -1;
        return st;
    }
    memcpy(g->reference_rows, rows, (size_t)count * sizeof(int64_t));
    g->reference_count = count;
    return DFC_OK;
}

/* The guidance's memory (its images, the perceptual reference) is its backend's: it runs there only. */
static dfc_status check_backend(const dfc_model_guidance *g, const dfc_backend *be, dfc_error *err)
{
    if (be != g->be)
        return dfc_fail(err, DFC_ERR_VALUE, "guidance: made for backend '%s', called with another ('%s')",
                        dfc_backend_name(g->be), dfc_backend_name(be));
    return DFC_OK;
}

static dfc_status gather_targets(const dfc_model_guidance *g, const int64_t *rows, int64_t count, dfc_arena *arena,
                                 int64_t **out, dfc_error *err)
{
    *out = dfc_arena_host_alloc(arena, (size_t)count * sizeof(int64_t), err);
    if (!*out)
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    for (int64_t b = 0; b < count; b++)
        (*out)[b] = g->targets[rows[b]];
    return DFC_OK;
}

dfc_status dfc_model_guidance_loss_and_grad(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x0,
                                            const int64_t *rows, const float *lambda_c, float lambda_p,
                                            dfc_tensor *grad, float *loss_class, float *loss_perceptual, dfc_error *err)
{
    dfc_model_guidance *g = ctx;
    DFC_TRY(check_backend(g, be, err));
    const int64_t n = x0->shape[0];
    int64_t *targets;
    DFC_TRY(gather_targets(g, rows, n, arena, &targets, err));
    /* classifier: forward with a tape, Lc and its gradient per sample, scaled by that sample's lambda_c; its tape
     * is released before the perceptual loss makes its own (the two never coexist, as in PyTorch's autograd) */
    const dfc_arena_mark before_classifier = dfc_arena_get_mark(arena);
    dfc_tensor outputs[DFC_NET_MAX_OUTPUTS], douts[DFC_NET_MAX_OUTPUTS] = {{0}};
    void *tape = NULL;
    DFC_TRY(dfc_net_forward(g->classifier, be, arena, NULL, x0, NULL, &tape, outputs, err));
    const dfc_tensor *logits = &outputs[0];
    if (logits->ndim != 2 || logits->shape[0] != n)
        return dfc_fail(err, DFC_ERR_SHAPE, "guidance: the classifier's first output must be logits (N, classes)");
    dfc_tensor loss = dfc_tensor1(loss_class, n), dlogits = dfc_alloc_like(arena, logits, err);
    DFC_CHECK_ALLOC(dlogits);
    DFC_TRY(dfc_classification_loss(be, g->kind, logits, targets, &loss, &dlogits, err));
    DFC_TRY(be->ops->row_scale(be, &dlogits, lambda_c, &dlogits, err));
    douts[0] = dlogits;
    DFC_TRY(dfc_net_backward(g->classifier, be, arena, tape, douts, grad, NULL, err));
    dfc_arena_reset(arena, before_classifier);
    /* perceptual fidelity to the original images */
    DFC_TRY(be->iface->zero(be, loss_perceptual, (size_t)n * sizeof(float), err));
    if (g->perceptual && lambda_p != 0.0f) {
        DFC_TRY(use_reference_rows(g, be, arena, rows, n, err));
        dfc_tensor lp = dfc_tensor1(loss_perceptual, n), dp = dfc_alloc_like(arena, x0, err);
        DFC_CHECK_ALLOC(dp);
        float *lambda_p_rows = dfc_arena_host_alloc(arena, (size_t)n * sizeof(float), err);
        if (!lambda_p_rows)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        for (int64_t b = 0; b < n; b++)
            lambda_p_rows[b] = lambda_p;
        DFC_TRY(dfc_perceptual_loss(g->perceptual, be, arena, NULL, x0, &lp, &dp, err));
        DFC_TRY(be->ops->row_axpy(be, lambda_p_rows, &dp, grad, err));
    }
    return DFC_OK;
}

dfc_status dfc_model_guidance_classify(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x,
                                       const int64_t *rows, float *prob_target, int *is_target, dfc_error *err)
{
    dfc_model_guidance *g = ctx;
    DFC_TRY(check_backend(g, be, err));
    const int64_t n = x->shape[0];
    dfc_tensor outputs[DFC_NET_MAX_OUTPUTS];
    DFC_TRY(dfc_net_forward(g->classifier, be, arena, NULL, x, NULL, NULL, outputs, err));
    const dfc_tensor *logits = &outputs[0];
    if (logits->ndim != 2 || logits->shape[0] != n)
        return dfc_fail(err, DFC_ERR_SHAPE, "guidance: the classifier's first output must be logits (N, classes)");
    const int64_t k = logits->shape[1];
    int64_t *targets;
    DFC_TRY(gather_targets(g, rows, n, arena, &targets, err));
    for (int64_t b = 0; b < n; b++)
        if (targets[b] < 0 || targets[b] >= (k == 1 ? 2 : k))
            return dfc_fail(err, DFC_ERR_VALUE,
                            "guidance: target %lld of image %lld is not a class of the "
                            "classifier (%lld logits)",
                            (long long)targets[b], (long long)rows[b], (long long)k);
    dfc_tensor prob = dfc_tensor1(prob_target, n);
    return be->ops->target_probability(be, logits, targets, &prob, is_target, err);
}

dfc_guidance dfc_model_guidance_interface(dfc_model_guidance *g)
{
    dfc_guidance iface = {g, dfc_model_guidance_loss_and_grad, dfc_model_guidance_classify};
    return iface;
}

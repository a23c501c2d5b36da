#include "perceptual.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct dfc_perceptual {
    const dfc_net *net;
    dfc_perceptual_variant variant;
    float weight;
    int has_reference;
    int64_t ref_shape[4];                /* the reference image's shape */
    dfc_tensor ref[DFC_NET_MAX_OUTPUTS]; /* its features, in ref_data */
    float *ref_data;                     /* backend memory of ref_backend (NULL: no reference) */
    dfc_backend *ref_backend;            /* the set_reference call's; borrowed */
};

static void free_reference(dfc_perceptual *p)
{
    if (p->ref_data)
        p->ref_backend->iface->free(p->ref_backend, p->ref_data);
    p->ref_data = NULL;
    p->ref_backend = NULL;
}

dfc_status dfc_perceptual_create(const dfc_net *net, dfc_perceptual_variant variant, float weight, dfc_perceptual **out,
                                 dfc_error *err)
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
    free_reference(p);
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

/* One layer: loss += w layer_loss(fa, fb) per sample and, if df is set, df = w d layer_loss / dfa.
 * weight holds w (1) and dweight w (N): the backward's dloss. */
static dfc_status add_layer(dfc_backend *be, dfc_perceptual_variant variant, const dfc_tensor *fa, const dfc_tensor *fb,
                            const dfc_tensor *weight, const dfc_tensor *dweight, dfc_tensor *layer_loss,
                            dfc_tensor *loss, dfc_tensor *df, dfc_error *err)
{
    const int mse = variant == DFC_PERCEPTUAL_MSE;
    DFC_TRY(mse ? be->ops->mse_forward(be, fa, fb, layer_loss, err)
                : be->ops->normalized_distance_forward(be, fa, fb, layer_loss, err));
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_MUL, layer_loss, weight, layer_loss, err));
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, loss, layer_loss, loss, err));
    if (!df)
        return DFC_OK;
    return mse ? be->ops->mse_backward(be, dweight, fa, fb, df, NULL, err)
               : be->ops->normalized_distance_backward(be, dweight, fa, fb, df, err);
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
    DFC_TRY(dfc_net_sync(net, be, err)); /* the run's start: the network's current values, on be */
    dfc_arena_mark am = dfc_arena_get_mark(arena), sm = scratch ? dfc_arena_get_mark(scratch) : am;
    dfc_tensor feats[DFC_NET_MAX_OUTPUTS];
    float *data = NULL;
    dfc_status st = dfc_net_forward(net, be, arena, scratch, b, NULL, NULL, feats, err);
    int64_t total = 0;
    for (int k = 0; st == DFC_OK && k < net->num_outputs; k++)
        total += dfc_numel(&feats[k]);
    if (st == DFC_OK && !(data = be->iface->alloc(be, (size_t)(total > 0 ? total : 1) * sizeof(float), err))) {
        st = err && err->code ? err->code : DFC_ERR_NOMEM;
        dfc_error_prefix(err, "PerceptualLoss.set_reference: ");
    }
    dfc_tensor ref[DFC_NET_MAX_OUTPUTS];
    int64_t offset = 0;
    for (int k = 0; st == DFC_OK && k < net->num_outputs; k++) {
        ref[k] = feats[k];
        ref[k].data = data + offset;
        offset += dfc_numel(&feats[k]);
        st = dfc_copy_tensor(be, &ref[k], &feats[k], err);
    }
    /* finished before the reference and the arenas are handed on: a later call may run on another backend of the
     * same memory (another stream), which nothing else orders after this one */
    if (st == DFC_OK)
        st = be->iface->synchronize(be, err);
    reset_both(arena, am, scratch, sm);
    if (st != DFC_OK) {
        be->iface->free(be, data);
        return st;
    }
    free_reference(p);
    p->ref_data = data;
    p->ref_backend = be;
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
    if (!dfc_backend_same_memory(p->ref_backend, be))
        return dfc_fail(err, DFC_ERR_VALUE,
                        "%s: the reference is in the memory of backend '%s', not '%s' (call "
                        "set_reference with this backend)",
                        op, dfc_backend_name(p->ref_backend), dfc_backend_name(be));
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
    const int64_t one = 1;
    dfc_tensor weight = dfc_arena_tensor(arena, 1, &one, err), dweight = dfc_arena_tensor(arena, 1, &n, err);
    dfc_tensor layer_loss = dfc_arena_tensor(arena, 1, &n, err);
    dfc_status st =
        weight.data && dweight.data && layer_loss.data ? DFC_OK : (err && err->code ? err->code : DFC_ERR_NOMEM);
    if (st == DFC_OK)
        st = be->ops->fill(be, p->weight, &weight, err);
    if (st == DFC_OK)
        st = be->ops->fill(be, p->weight, &dweight, err);
    if (st == DFC_OK)
        st = be->ops->fill(be, 0.0f, loss, err);
    if (st == DFC_OK)
        st = dfc_net_forward(net, be, arena, da ? NULL : scratch, a, NULL, da ? &tape : NULL, feats, err);
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
        st = add_layer(be, p->variant, &feats[k], &p->ref[k], &weight, &dweight, &layer_loss, loss, df, err);
    }
    if (st == DFC_OK && da)
        st = dfc_net_backward(net, be, arena, tape, dfeats, da, NULL, err);
    reset_both(arena, am, scratch, sm);
    return st;
}

dfc_status dfc_perceptual_set_reference_from_host(dfc_perceptual *p, dfc_backend *be, dfc_arena *arena,
                                                  dfc_arena *scratch, dfc_tensor *b, dfc_error *err)
{
    dfc_arena_mark mark = dfc_arena_get_mark(arena);
    dfc_status st = dfc_input_into_arena(be, arena, b, err);
    if (st == DFC_OK)
        st = dfc_perceptual_set_reference(p, be, arena, scratch, b, err);
    dfc_arena_reset(arena, mark);
    return st;
}

dfc_status dfc_perceptual_loss_from_host(const dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                         dfc_tensor *a, dfc_tensor *loss, dfc_tensor *da, dfc_error *err)
{
    dfc_tensor loss_be, da_be;
    DFC_TRY(dfc_input_into_arena(be, arena, a, err));
    DFC_TRY(dfc_output_in_arena(arena, loss, &loss_be, err));
    DFC_TRY(dfc_output_in_arena(arena, da, &da_be, err));
    DFC_TRY(dfc_perceptual_loss(p, be, arena, scratch, a, &loss_be, da->data ? &da_be : NULL, err));
    DFC_TRY(dfc_copy_tensor_to_host(be, loss, &loss_be, err));
    return da->data ? dfc_copy_tensor_to_host(be, da, &da_be, err) : DFC_OK;
}

/* SonoNet-k as a dfc_net: structure, parameter names and outputs are described in sononet.h. */
#include "sononet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUM_BLOCKS 5
#define NUM_FEATURE_UNITS 13 /* conv + BN + ReLU units of the feature extractor */
#define NUM_UNITS 15         /* ... and the two of the adaptation layer */

static const int BLOCK_LAYERS[NUM_BLOCKS] = {2, 2, 3, 3, 3};
static const int BLOCK_WIDTH[NUM_BLOCKS] = {1, 2, 4, 8, 8}; /* times k */
static const dfc_pool2d_params POOL2 = {2, 2, 2, 2, 0, 0};

/* conv (no bias) -> batch norm -> [ReLU] -> [2x2/2 max pool] */
typedef struct conv_unit {
    dfc_conv_layer conv;
    dfc_batch_norm_layer bn;
    int relu;
    int pool_after;
} conv_unit;

typedef struct sononet {
    dfc_net base; /* first member: a sononet is a dfc_net */
    dfc_sononet_config cfg;
    conv_unit units[NUM_UNITS];
} sononet;

/* What the backward needs of one unit: its input, the conv output (the BN input), the ReLU output (whose sign is
 * the ReLU's derivative and which the pool saw). */
typedef struct unit_tape {
    dfc_tensor x, conv_out, act;
} unit_tape;

typedef struct sononet_tape {
    dfc_tensor input; /* the caller's x (standardisation backward) */
    dfc_tensor logits, cam, features;
    unit_tape units[NUM_UNITS];
} sononet_tape;

/* SonoNet's input standardisation: y = 255 (x - mean) / std per (n, c) plane (the standardize op) */
#define STANDARDIZE_SCALE 255.0f

/* ---- structure: walked twice by dfc_param_set_build (b->owner: the sononet), registering then binding ---- */

/* conv at `conv_prefix` + BN at `bn_prefix` (PyTorch Sequential indices) */
static void build_unit(dfc_param_builder *b, conv_unit *u, int cin, int cout, int kernel, const char *conv_prefix,
                       const char *bn_prefix)
{
    int64_t wshape[4] = {cout, cin, kernel, kernel}, cshape[1] = {cout};
    u->conv.weight = dfc_builder_param(b, 4, wshape, "%s.weight", conv_prefix);
    u->conv.bias = (dfc_tensor){NULL, 1, {cout, 1, 1, 1}};
    u->conv.p = (dfc_conv2d_params){.stride_h = 1, .stride_w = 1, .pad_h = kernel / 2, .pad_w = kernel / 2};
    u->bn.weight = dfc_builder_param(b, 1, cshape, "%s.weight", bn_prefix);
    u->bn.bias = dfc_builder_param(b, 1, cshape, "%s.bias", bn_prefix);
    u->bn.running_mean = dfc_builder_param(b, 1, cshape, "%s.running_mean", bn_prefix);
    u->bn.running_var = dfc_builder_param(b, 1, cshape, "%s.running_var", bn_prefix);
    u->bn.eps = DFC_SONONET_BN_EPS;
}

static void build(dfc_param_builder *b)
{
    sononet *s = b->owner;
    const dfc_sononet_config *c = &s->cfg;
    char conv_name[DFC_PARAM_NAME_LEN], bn_name[DFC_PARAM_NAME_LEN];
    int cin = c->in_channels, i = 0;
    for (int block = 0; block < NUM_BLOCKS; block++) {
        int width = BLOCK_WIDTH[block] * c->k;
        for (int layer = 0; layer < BLOCK_LAYERS[block]; layer++, i++) {
            conv_unit *u = &s->units[i];
            snprintf(conv_name, sizeof conv_name, "features.%d.%d.0", block, layer);
            snprintf(bn_name, sizeof bn_name, "features.%d.%d.1", block, layer);
            build_unit(b, u, cin, width, 3, conv_name, bn_name);
            u->relu = 1;
            u->pool_after = block < NUM_BLOCKS - 1 && layer == BLOCK_LAYERS[block] - 1;
            cin = width;
        }
    }
    build_unit(b, &s->units[i], 8 * c->k, 4 * c->k, 1, "adaption.0", "adaption.1");
    s->units[i++].relu = 1;
    build_unit(b, &s->units[i], 4 * c->k, c->num_classes, 1, "adaption.3", "adaption.4");
    s->units[i].relu = 0;
}

/* ---- inference memory ---- */

/* Without a tape, each op's output goes to the arena its input is not in, and the input's arena is then reset to
 * where it stood when the forward began: only an op's input and output are alive, not the whole chain. With a
 * tape (or no scratch arena) nothing is released. */
typedef struct flow {
    dfc_arena *arenas[2];
    dfc_arena_mark marks[2];
    int cur; /* the arena holding the current input */
    int release;
} flow;

static dfc_arena *flow_out(const flow *f) { return f->release ? f->arenas[1 - f->cur] : f->arenas[0]; }

static void flow_advance(flow *f)
{
    if (!f->release)
        return;
    dfc_arena_reset(f->arenas[f->cur], f->marks[f->cur]);
    f->cur = 1 - f->cur;
}

/* ---- forward and backward of a unit ---- */

static dfc_status unit_forward(dfc_backend *be, const conv_unit *u, flow *f, dfc_tensor *h, unit_tape *t,
                               dfc_error *err)
{
    dfc_tensor conv_out, act;
    DFC_TRY(dfc_conv_layer_forward(be, &u->conv, h, flow_out(f), &conv_out, err));
    flow_advance(f);
    DFC_TRY(dfc_batch_norm_layer_forward(be, &u->bn, &conv_out, flow_out(f), &act, err));
    flow_advance(f);
    if (u->relu)
        DFC_TRY(be->ops->activation_forward(be, DFC_ACT_RELU, &act, &act, err));
    if (t) {
        t->x = *h;
        t->conv_out = conv_out;
        t->act = act;
    }
    *h = act;
    if (u->pool_after) {
        dfc_tensor pooled =
            dfc_alloc4(flow_out(f), act.shape[0], act.shape[1], act.shape[2] / 2, act.shape[3] / 2, err);
        DFC_CHECK_ALLOC(pooled);
        DFC_TRY(be->ops->max_pool2d_forward(be, &act, POOL2, &pooled, err));
        flow_advance(f);
        *h = pooled;
    }
    return DFC_OK;
}

/* dout: gradient of the unit's output (after the pool, if any), ours to overwrite when dout_owned (not the
 * caller's); dx (allocated here) only when want_dx. */
static dfc_status unit_backward(dfc_backend *be, const conv_unit *u, const unit_tape *t, const dfc_tensor *dout,
                                int dout_owned, dfc_arena *arena, dfc_grad_target g, int want_dx, dfc_tensor *dx,
                                dfc_error *err)
{
    dfc_tensor dact = *dout, dconv;
    int own = dout_owned;
    if (u->pool_after) {
        dact = dfc_alloc_like(arena, &t->act, err);
        DFC_CHECK_ALLOC(dact);
        DFC_TRY(be->ops->max_pool2d_backward(be, dout, &t->act, POOL2, &dact, err));
        own = 1;
    }
    if (u->relu) {
        /* ReLU's derivative [x > 0] equals [relu(x) > 0], so the saved output stands in for its input */
        dfc_tensor dpre = dact;
        if (!own) {
            dpre = dfc_alloc_like(arena, &t->act, err);
            DFC_CHECK_ALLOC(dpre);
        }
        DFC_TRY(be->ops->activation_backward(be, DFC_ACT_RELU, &dact, &t->act, &dpre, err));
        dact = dpre;
    }
    DFC_TRY(dfc_batch_norm_layer_backward(be, &u->bn, &t->conv_out, &dact, arena, &dconv, g, err));
    return dfc_conv_layer_backward(be, &u->conv, &t->x, &dconv, arena, want_dx ? dx : NULL, g, err);
}

/* unit_backward in a dfc_result_scope: of what it makes only dx (when wanted) stays. */
static dfc_status unit_backward_released(dfc_backend *be, const conv_unit *u, const unit_tape *t,
                                         const dfc_tensor *dout, int dout_owned, dfc_arena *arena, dfc_grad_target g,
                                         int want_dx, dfc_tensor *dx, dfc_error *err)
{
    dfc_result_scope scope;
    DFC_TRY(dfc_result_scope_begin(arena, want_dx ? &t->x : NULL, &scope, err));
    dfc_tensor d;
    dfc_status st = unit_backward(be, u, t, dout, dout_owned, arena, g, want_dx, &d, err);
    return dfc_result_scope_end(be, arena, &scope, st, &d, dx, err);
}

/* ---- the network ---- */

static dfc_status check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const sononet *s = (const sononet *)net;
    const char *op = "SonoNet.forward";
    DFC_TRY(dfc_check_image_input(x, op, "network", s->cfg.in_channels, err));
    if (x->shape[0] < 1 || x->shape[2] < 16 || x->shape[3] < 16)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: x is %lld images of %lldx%lld; SonoNet needs at least one image of "
                        "16x16 or more (four 2x2 pools)",
                        op, (long long)x->shape[0], (long long)x->shape[2], (long long)x->shape[3]);
    return DFC_OK;
}

static dfc_status sononet_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                  const dfc_tensor *x, void **tape_out, dfc_tensor *outputs, dfc_error *err)
{
    const sononet *s = (const sononet *)net;
    DFC_TRY(check_input(net, x, err));
    sononet_tape *tape = NULL;
    if (tape_out) {
        scratch = NULL; /* the backward needs every intermediate */
        tape = dfc_arena_host_alloc(arena, sizeof *tape, err);
        if (!tape)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        memset(tape, 0, sizeof *tape);
        tape->input = *x;
        *tape_out = tape;
    }
    flow f = {{arena, scratch ? scratch : arena},
              {dfc_arena_get_mark(arena), dfc_arena_get_mark(scratch ? scratch : arena)},
              1,
              scratch != NULL};
    dfc_tensor h = *x;
    if (s->cfg.standardize) {
        dfc_tensor y = dfc_alloc_like(flow_out(&f), x, err);
        DFC_CHECK_ALLOC(y);
        DFC_TRY(be->ops->standardize_forward(be, x, STANDARDIZE_SCALE, &y, err));
        flow_advance(&f);
        h = y;
    }
    for (int i = 0; i < NUM_FEATURE_UNITS; i++)
        DFC_TRY(unit_forward(be, &s->units[i], &f, &h, tape ? &tape->units[i] : NULL, err));
    if (f.release && f.cur == 1) { /* the features are an output: they must live in arena */
        dfc_tensor kept = dfc_alloc_like(arena, &h, err);
        DFC_CHECK_ALLOC(kept);
        DFC_TRY(dfc_copy_tensor(be, &kept, &h, err));
        h = kept;
    }
    f.release = 0; /* the adaptation layer is small: everything after this stays in arena */
    dfc_tensor features = h;
    for (int i = NUM_FEATURE_UNITS; i < NUM_UNITS; i++)
        DFC_TRY(unit_forward(be, &s->units[i], &f, &h, tape ? &tape->units[i] : NULL, err));
    dfc_tensor logits = dfc_alloc2(arena, h.shape[0], h.shape[1], err);
    DFC_CHECK_ALLOC(logits);
    DFC_TRY(be->ops->global_avg_pool_forward(be, &h, &logits, err));
    outputs[0] = logits;
    outputs[1] = h;
    outputs[2] = features;
    if (tape) {
        tape->logits = logits;
        tape->cam = h;
        tape->features = features;
    }
    return DFC_OK;
}

static dfc_status check_gradient(const dfc_tensor *d, const dfc_tensor *out, const char *name, dfc_error *err)
{
    return d->data ? dfc_check_shape(d, "SonoNet.backward", name, out->ndim, out->shape, err) : DFC_OK;
}

static dfc_status sononet_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                   const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const sononet *s = (const sononet *)net;
    const sononet_tape *tape = tape_ptr;
    if (!tape)
        return dfc_fail(err, DFC_ERR_VALUE, "SonoNet.backward: no tape (run the forward with a tape first)");
    const dfc_tensor *dlogits = &douts[0], *dcam = &douts[1], *dfeatures = &douts[2];
    DFC_TRY(check_gradient(dlogits, &tape->logits, "dlogits", err));
    DFC_TRY(check_gradient(dcam, &tape->cam, "dcam", err));
    DFC_TRY(check_gradient(dfeatures, &tape->features, "dfeatures", err));
    if (dx)
        DFC_TRY(dfc_check_shape(dx, "SonoNet.backward", "dx", 4, tape->input.shape, err));
    if (grads) /* every entry is written: running statistics (and unreached layers) get zero */
        DFC_TRY(dfc_zero_floats(be, grads, net->params.total, err));
    dfc_grad_target g = {&net->params, grads};

    dfc_tensor dh = {0};
    int dh_owned = 1;
    if (dlogits->data || dcam->data) {
        dfc_tensor dmap = dfc_alloc_like(arena, &tape->cam, err);
        DFC_CHECK_ALLOC(dmap);
        if (dlogits->data) {
            DFC_TRY(be->ops->global_avg_pool_backward(be, dlogits, &dmap, err));
            if (dcam->data)
                DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dmap, dcam, &dmap, err));
        } else {
            DFC_TRY(dfc_copy_tensor(be, &dmap, dcam, err));
        }
        dh = dmap;
        for (int i = NUM_UNITS - 1; i >= NUM_FEATURE_UNITS; i--)
            DFC_TRY(unit_backward_released(be, &s->units[i], &tape->units[i], &dh, 1, arena, g, 1, &dh, err));
        if (dfeatures->data)
            DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dh, dfeatures, &dh, err));
    } else if (dfeatures->data) {
        dh = *dfeatures;
        dh_owned = 0;
    } else { /* no output contributes */
        return dx ? dfc_zero_floats(be, dx->data, dfc_numel(dx), err) : DFC_OK;
    }
    for (int i = NUM_FEATURE_UNITS - 1; i >= 0; i--) {
        DFC_TRY(
            unit_backward_released(be, &s->units[i], &tape->units[i], &dh, dh_owned, arena, g, i > 0 || dx, &dh, err));
        dh_owned = 1;
    }
    if (!dx)
        return DFC_OK;
    if (s->cfg.standardize)
        return be->ops->standardize_backward(be, &dh, &tape->input, STANDARDIZE_SCALE, dx, err);
    return dfc_copy_tensor(be, dx, &dh, err);
}

static void sononet_destroy(dfc_net *net)
{
    if (!net)
        return;
    dfc_param_set_free(&net->params);
    free(net);
}

static const dfc_net_vtable SONONET_VTABLE = {.kind = "sononet",
                                              .forward = sononet_forward,
                                              .backward = sononet_backward,
                                              .check_input = check_input,
                                              .destroy = sononet_destroy};

dfc_status dfc_sononet_create(const dfc_sononet_config *cfg, dfc_net **out, dfc_error *err)
{
    *out = NULL;
    if (cfg->k < 1 || cfg->in_channels < 1 || cfg->num_classes < 1)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "SonoNet config: k (%d), in_channels (%d) and num_classes (%d) must be "
                        "positive",
                        cfg->k, cfg->in_channels, cfg->num_classes);
    if (cfg->k > (1 << 20) || cfg->in_channels > (1 << 20) || cfg->num_classes > (1 << 20))
        return dfc_fail(err, DFC_ERR_VALUE, "SonoNet config: k, in_channels and num_classes must be at most 2^20");
    sononet *s = calloc(1, sizeof *s);
    if (!s)
        return dfc_fail(err, DFC_ERR_NOMEM, "SonoNet: out of memory");
    s->cfg = *cfg;
    s->cfg.standardize = cfg->standardize != 0;
    s->base.vt = &SONONET_VTABLE;
    s->base.num_outputs = 3;
    s->base.output_names[0] = "logits";
    s->base.output_names[1] = "cam";
    s->base.output_names[2] = "features";
    s->base.in_channels = cfg->in_channels;
    dfc_status st = dfc_param_set_build(&s->base.params, build, s, err);
    if (st != DFC_OK) {
        sononet_destroy(&s->base);
        return st;
    }
    *out = &s->base;
    return DFC_OK;
}

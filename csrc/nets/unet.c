#include "unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GN_GROUPS 32 /* guided-diffusion normalization(): GroupNorm32(32, C) */
#define GN_EPS 1e-5f /* PyTorch's GroupNorm default, which GroupNorm32 keeps */
#define MAX_LAYERS_PER_BLOCK 3
#define MAX_RES_BLOCKS 16
#define MAX_INPUT_BLOCKS (1 + DFC_UNET_MAX_LEVELS * (MAX_RES_BLOCKS + 1)) /* the stem, res blocks and downsamples */

/* ---- structure ---- */

typedef enum { LAYER_CONV, LAYER_RES, LAYER_ATTN, LAYER_DOWN, LAYER_UP } layer_kind;

typedef struct resblock {
    int cin, cout;
    int updown; /* -1: avg-pool down, +1: nearest up, 0: none */
    dfc_group_norm_layer in_norm;
    dfc_conv_layer in_conv;
    dfc_linear_layer emb;
    dfc_group_norm_layer out_norm;
    dfc_conv_layer out_conv;
    int has_skip_conv;
    dfc_conv_layer skip_conv;
} resblock;

typedef struct attnblock {
    int channels, heads;
    dfc_group_norm_layer norm;
    dfc_conv_layer qkv, proj;
} attnblock;

typedef struct layer {
    layer_kind kind;
    dfc_conv_layer conv; /* LAYER_CONV (stem), LAYER_DOWN (3x3 stride 2), LAYER_UP (after nearest x2) */
    resblock res;
    attnblock attn;
} layer;

typedef struct block {
    int first, count;  /* layers [first, first + count) */
    int skip_channels; /* output blocks: channels of the skip concatenated before the block */
} block;

typedef struct dfc_unet {
    dfc_net base; /* params, outputs, vtable */
    dfc_unet_config cfg;
    dfc_linear_layer time_linear1, time_linear2;
    layer *layers;
    int num_layers;
    block *input_blocks, *output_blocks, middle;
    int num_input_blocks, num_output_blocks;
    dfc_group_norm_layer out_norm;
    dfc_conv_layer out_conv;
} dfc_unet;

/* The structure is walked twice by dfc_param_set_build (b->owner: the dfc_unet), registering then binding, in
 * guided-diffusion's module order, which is also its state_dict order. */
static dfc_group_norm_layer build_norm(dfc_param_builder *b, int channels, const char *prefix)
{
    int64_t shape[1] = {channels};
    dfc_group_norm_layer l = {dfc_builder_param(b, 1, shape, "%s.weight", prefix),
                              dfc_builder_param(b, 1, shape, "%s.bias", prefix), GN_GROUPS, GN_EPS};
    return l;
}

static dfc_conv_layer build_conv(dfc_param_builder *b, int cin, int cout, int kernel, int stride, int ndim,
                                 const char *prefix)
{
    int64_t wshape[4] = {cout, cin, kernel, kernel}, bshape[1] = {cout};
    dfc_conv_layer l;
    memset(&l, 0, sizeof l); /* NCHW: p.x_nhwc = p.y_nhwc = 0 */
    l.weight = dfc_builder_param(b, ndim, wshape, "%s.weight", prefix);
    l.bias = dfc_builder_param(b, 1, bshape, "%s.bias", prefix);
    l.p.stride_h = l.p.stride_w = stride;
    l.p.pad_h = l.p.pad_w = kernel / 2;
    return l;
}

static dfc_linear_layer build_linear(dfc_param_builder *b, int in, int out, const char *prefix)
{
    int64_t wshape[2] = {out, in}, bshape[1] = {out};
    dfc_linear_layer l = {dfc_builder_param(b, 2, wshape, "%s.weight", prefix),
                          dfc_builder_param(b, 1, bshape, "%s.bias", prefix)};
    return l;
}

static layer *next_layer(dfc_param_builder *b, layer_kind kind)
{
    dfc_unet *u = b->owner;
    layer *l = &u->layers[u->num_layers++];
    if (!b->binding) {
        memset(l, 0, sizeof *l);
        l->kind = kind;
    }
    return l;
}

static void add_resblock(dfc_param_builder *b, int cin, int cout, int updown, const char *prefix)
{
    char name[DFC_PARAM_NAME_LEN];
    const dfc_unet_config *c = &((const dfc_unet *)b->owner)->cfg;
    layer *l = next_layer(b, LAYER_RES);
    resblock *r = &l->res;
    r->cin = cin;
    r->cout = cout;
    r->updown = updown;
    snprintf(name, sizeof name, "%s.in_layers.0", prefix);
    r->in_norm = build_norm(b, cin, name);
    snprintf(name, sizeof name, "%s.in_layers.2", prefix);
    r->in_conv = build_conv(b, cin, cout, 3, 1, 4, name);
    snprintf(name, sizeof name, "%s.emb_layers.1", prefix);
    r->emb = build_linear(b, 4 * c->model_channels, c->use_scale_shift_norm ? 2 * cout : cout, name);
    snprintf(name, sizeof name, "%s.out_layers.0", prefix);
    r->out_norm = build_norm(b, cout, name);
    snprintf(name, sizeof name, "%s.out_layers.3", prefix);
    r->out_conv = build_conv(b, cout, cout, 3, 1, 4, name);
    r->has_skip_conv = cin != cout;
    if (r->has_skip_conv) {
        snprintf(name, sizeof name, "%s.skip_connection", prefix);
        r->skip_conv = build_conv(b, cin, cout, 1, 1, 4, name);
    }
}

static void add_attention(dfc_param_builder *b, int channels, int num_heads, const char *prefix)
{
    char name[DFC_PARAM_NAME_LEN];
    const dfc_unet_config *c = &((const dfc_unet *)b->owner)->cfg;
    layer *l = next_layer(b, LAYER_ATTN);
    attnblock *a = &l->attn;
    a->channels = channels;
    a->heads = c->num_head_channels > 0 ? channels / c->num_head_channels : num_heads;
    snprintf(name, sizeof name, "%s.norm", prefix);
    a->norm = build_norm(b, channels, name);
    snprintf(name, sizeof name, "%s.qkv", prefix);
    a->qkv = build_conv(b, channels, 3 * channels, 1, 1, 3, name); /* Conv1d: weight (3C, C, 1) */
    snprintf(name, sizeof name, "%s.proj_out", prefix);
    a->proj = build_conv(b, channels, channels, 1, 1, 3, name);
}

static void add_conv_layer(dfc_param_builder *b, layer_kind kind, int cin, int cout, int stride, const char *prefix)
{
    layer *l = next_layer(b, kind);
    l->conv = build_conv(b, cin, cout, 3, stride, 4, prefix);
}

static void build(dfc_param_builder *b)
{
    dfc_unet *u = b->owner;
    const dfc_unet_config *c = &u->cfg;
    char prefix[DFC_PARAM_NAME_LEN];
    u->num_layers = 0; /* next_layer counts the layers again on each pass */
    int mc = c->model_channels;
    u->time_linear1 = build_linear(b, mc, 4 * mc, "time_embed.0");
    u->time_linear2 = build_linear(b, 4 * mc, 4 * mc, "time_embed.2");

    int skip_stack[MAX_INPUT_BLOCKS], depth = 0;
    int ch = c->level_channels[0], nb = 0;
    /* input blocks */
    u->input_blocks[nb].first = u->num_layers;
    add_conv_layer(b, LAYER_CONV, c->in_channels, ch, 1, "input_blocks.0.0");
    u->input_blocks[nb].count = 1;
    skip_stack[depth++] = ch;
    nb++;
    for (int level = 0; level < c->num_levels; level++) {
        for (int r = 0; r < c->num_res_blocks; r++) {
            u->input_blocks[nb].first = u->num_layers;
            snprintf(prefix, sizeof prefix, "input_blocks.%d.0", nb);
            add_resblock(b, ch, c->level_channels[level], 0, prefix);
            ch = c->level_channels[level];
            if (c->attention[level]) {
                snprintf(prefix, sizeof prefix, "input_blocks.%d.1", nb);
                add_attention(b, ch, c->num_heads, prefix);
            }
            u->input_blocks[nb].count = u->num_layers - u->input_blocks[nb].first;
            skip_stack[depth++] = ch;
            nb++;
        }
        if (level != c->num_levels - 1) {
            u->input_blocks[nb].first = u->num_layers;
            snprintf(prefix, sizeof prefix, "input_blocks.%d.0", nb);
            if (c->resblock_updown)
                add_resblock(b, ch, ch, -1, prefix);
            else {
                snprintf(prefix, sizeof prefix, "input_blocks.%d.0.op", nb);
                add_conv_layer(b, LAYER_DOWN, ch, ch, 2, prefix);
            }
            u->input_blocks[nb].count = 1;
            skip_stack[depth++] = ch;
            nb++;
        }
    }
    u->num_input_blocks = nb;
    /* middle block */
    u->middle.first = u->num_layers;
    add_resblock(b, ch, ch, 0, "middle_block.0");
    add_attention(b, ch, c->num_heads, "middle_block.1");
    add_resblock(b, ch, ch, 0, "middle_block.2");
    u->middle.count = 3;
    /* output blocks */
    int heads_up = c->num_heads_upsample > 0 ? c->num_heads_upsample : c->num_heads;
    nb = 0;
    for (int level = c->num_levels - 1; level >= 0; level--) {
        for (int i = 0; i <= c->num_res_blocks; i++) {
            int skip = skip_stack[--depth];
            block *blk = &u->output_blocks[nb];
            blk->first = u->num_layers;
            blk->skip_channels = skip;
            int k = 0;
            snprintf(prefix, sizeof prefix, "output_blocks.%d.%d", nb, k++);
            add_resblock(b, ch + skip, c->level_channels[level], 0, prefix);
            ch = c->level_channels[level];
            if (c->attention[level]) {
                snprintf(prefix, sizeof prefix, "output_blocks.%d.%d", nb, k++);
                add_attention(b, ch, heads_up, prefix);
            }
            if (level > 0 && i == c->num_res_blocks) {
                snprintf(prefix, sizeof prefix, "output_blocks.%d.%d", nb, k++);
                if (c->resblock_updown)
                    add_resblock(b, ch, ch, +1, prefix);
                else {
                    snprintf(prefix + strlen(prefix), sizeof prefix - strlen(prefix), ".conv");
                    add_conv_layer(b, LAYER_UP, ch, ch, 1, prefix);
                }
            }
            blk->count = u->num_layers - blk->first;
            nb++;
        }
    }
    u->num_output_blocks = nb;
    u->out_norm = build_norm(b, ch, "out.0");
    u->out_conv = build_conv(b, ch, c->out_channels, 3, 1, 4, "out.2");
}

static dfc_status validate_config(const dfc_unet_config *c, dfc_error *err)
{
    const char *op = "UNet config";
    if (c->in_channels < 1 || c->out_channels < 1 || c->model_channels < 1 || c->num_res_blocks < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: in/out/model channels and num_res_blocks must be positive", op);
    if (c->num_levels < 1 || c->num_levels > DFC_UNET_MAX_LEVELS || c->num_res_blocks > MAX_RES_BLOCKS)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: %d levels (1..%d) and %d res blocks (1..%d) per level", op,
                        c->num_levels, DFC_UNET_MAX_LEVELS, c->num_res_blocks, MAX_RES_BLOCKS);
    for (int l = 0; l < c->num_levels; l++) {
        int ch = c->level_channels[l];
        if (ch < GN_GROUPS || ch % GN_GROUPS)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: level %d has %d channels; GroupNorm32 needs a multiple of 32", op,
                            l, ch);
        if (c->attention[l] || l == c->num_levels - 1) {
            int heads[2] = {c->num_heads, c->num_heads_upsample > 0 ? c->num_heads_upsample : c->num_heads};
            for (int h = 0; h < 2; h++) {
                int divisor = c->num_head_channels > 0 ? c->num_head_channels : heads[h];
                if (divisor < 1 || ch % divisor)
                    return dfc_fail(err, DFC_ERR_VALUE,
                                    "%s: attention at level %d: %d channels do not split into %s %d", op, l, ch,
                                    c->num_head_channels > 0 ? "heads of" : "heads:", divisor);
            }
        }
    }
    if (c->model_channels % 2)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: model_channels must be even, got %d", op, c->model_channels);
    return DFC_OK;
}

static void unet_destroy(dfc_net *net)
{
    dfc_unet *u = (dfc_unet *)net;
    if (!u)
        return;
    dfc_param_set_free(&u->base.params);
    free(u->layers);
    free(u->input_blocks);
    free(u->output_blocks);
    free(u);
}

static const dfc_net_vtable UNET_VTABLE;

dfc_status dfc_unet_create(const dfc_unet_config *cfg, dfc_net **out, dfc_error *err)
{
    *out = NULL;
    DFC_TRY(validate_config(cfg, err));
    dfc_unet *u = calloc(1, sizeof *u);
    if (!u)
        return dfc_fail(err, DFC_ERR_NOMEM, "UNet: out of memory");
    u->cfg = *cfg;
    u->base.vt = &UNET_VTABLE;
    u->base.num_outputs = 1;
    u->base.output_names[0] = "model_output";
    u->base.in_channels = cfg->in_channels;
    int levels = cfg->num_levels, nrb = cfg->num_res_blocks;
    int max_layers = 4 + (levels * nrb + levels) * 2 + 3 + levels * (nrb + 1) * 3;
    u->layers = calloc((size_t)max_layers, sizeof *u->layers);
    u->input_blocks = calloc((size_t)(1 + levels * nrb + levels), sizeof *u->input_blocks);
    u->output_blocks = calloc((size_t)(levels * (nrb + 1)), sizeof *u->output_blocks);
    if (!u->layers || !u->input_blocks || !u->output_blocks) {
        unet_destroy(&u->base);
        return dfc_fail(err, DFC_ERR_NOMEM, "UNet: out of memory");
    }
    dfc_status st = dfc_param_set_build(&u->base.params, build, u, err);
    if (st != DFC_OK) {
        unet_destroy(&u->base);
        return st;
    }
    *out = &u->base;
    return DFC_OK;
}

/* ---- forward and backward, layer by layer ---- */

/* What a layer's backward needs from its forward. */
typedef struct layer_tape {
    dfc_tensor x; /* the layer's input */
    /* resblock */
    dfc_tensor in_mean, in_rstd, h1, a1r, xr, h2, e, out_mean, out_rstd, n2, h3, a3;
    /* attention: GN statistics and output hn, qkv, attention output a */
    dfc_tensor mean, rstd, hn, qkv, a;
    /* up layer: upsampled input */
    dfc_tensor xu;
} layer_tape;

typedef struct unet_tape {
    layer_tape *layers;
    dfc_tensor x, temb, l1, l1_act, emb, emb_act;
    dfc_tensor head_x, head_mean, head_rstd, head_n, head_a;
} unet_tape;

static dfc_status silu_new(dfc_backend *be, const dfc_tensor *x, dfc_arena *arena, dfc_tensor *y, dfc_error *err)
{
    return dfc_activation_new(be, DFC_ACT_SILU, x, arena, y, err);
}

static dfc_status silu_backward_new(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_arena *arena,
                                    dfc_tensor *dx, dfc_error *err)
{
    return dfc_activation_backward_new(be, DFC_ACT_SILU, dy, x, arena, dx, err);
}

/* guided-diffusion's up/down resampling inside ResBlocks: nearest x2 or 2x2 average pooling. */
static const dfc_pool2d_params POOL2 = {2, 2, 2, 2, 0, 0};

/* y: (N, C, 2H, 2W) up, (N, C, H/2, W/2) down. */
static dfc_status resample_into(dfc_backend *be, int updown, const dfc_tensor *x, dfc_tensor *y, dfc_error *err)
{
    if (updown > 0)
        return be->ops->upsample_nearest2x_forward(be, x, y, err);
    return be->ops->avg_pool2d_forward(be, x, POOL2, y, err);
}

static dfc_status resample_new(dfc_backend *be, int updown, const dfc_tensor *x, dfc_arena *arena, dfc_tensor *y,
                               dfc_error *err)
{
    const int64_t h = updown > 0 ? 2 * x->shape[2] : x->shape[2] / 2,
                  w = updown > 0 ? 2 * x->shape[3] : x->shape[3] / 2;
    *y = dfc_alloc4(arena, x->shape[0], x->shape[1], h, w, err);
    DFC_CHECK_ALLOC(*y);
    return resample_into(be, updown, x, y, err);
}

static dfc_status resample_backward_new(dfc_backend *be, int updown, const dfc_tensor *dy, const dfc_tensor *x,
                                        dfc_arena *arena, dfc_tensor *dx, dfc_error *err)
{
    *dx = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*dx);
    if (updown > 0)
        return be->ops->upsample_nearest2x_backward(be, dy, dx, err);
    return be->ops->avg_pool2d_backward(be, dy, POOL2, dx, err);
}

/* GroupNorm (+ add or scale-shift) + SiLU of x into y without saving statistics, x and y in the given layouts. */
static dfc_status norm_act(dfc_backend *be, const dfc_group_norm_layer *l, const dfc_tensor *x, const dfc_tensor *add,
                           const dfc_tensor *ss, int x_nhwc, int y_nhwc, dfc_tensor *y, dfc_error *err)
{
    return be->ops->group_norm_act_forward(be, x, add, &l->weight, &l->bias, ss, l->groups, l->eps, 1, x_nhwc, y_nhwc,
                                           y, err);
}

/* Without a tape (s NULL) nothing is kept for a backward, so the block holds as few buffers as the order of its ops
 * allows: the norms (fused with the SiLUs and the embedding's add or scale-shift) run in place, the second conv
 * writes into the output (the residual sum is the same in either order), the skip conv into the normalised input
 * once that is dead, and an input the caller no longer needs (consume_x: an output block's concatenation) feeds the
 * skip conv first and is then normalised in place. Where the backend's convolutions take NHWC (iface->conv_nhwc)
 * the normalised activations are written NHWC for the conv that reads them and in_conv's output stays NHWC for
 * out_norm: one layout change per block (out_conv's NCHW output) instead of a reorder around each conv's input and
 * output. The results are the same numbers as with a tape, to rounding. */
static dfc_status resblock_forward_no_tape(dfc_backend *be, const resblock *r, const dfc_tensor *x, int consume_x,
                                           const dfc_tensor *emb_act, dfc_arena *arena, dfc_arena *out_arena,
                                           dfc_tensor *out, dfc_error *err)
{
    consume_x = consume_x && r->has_skip_conv && !r->updown && r->cin >= r->cout;
    const int nhwc = be->iface->conv_nhwc, h1_nhwc = nhwc && !r->updown; /* resampling reads NCHW */
    dfc_tensor h1 = *x, a1r, xr = *x, h2, e, skip;
    if (consume_x) {
        DFC_TRY(dfc_conv_layer_forward(be, &r->skip_conv, x, out_arena, out, err));
    } else {
        h1 = dfc_alloc_like(arena, x, err);
        DFC_CHECK_ALLOC(h1);
    }
    DFC_TRY(norm_act(be, &r->in_norm, x, NULL, NULL, 0, h1_nhwc, &h1, err));
    if (r->updown)
        DFC_TRY(resample_new(be, r->updown, &h1, arena, &a1r, err));
    else
        a1r = h1;
    DFC_TRY(dfc_conv_layer_forward_layout(be, &r->in_conv, &a1r, h1_nhwc, nhwc, NULL, arena, &h2, err));
    if (r->updown) { /* the resampled input takes the resampled activation's place, now that in_conv has read it */
        xr = dfc_tensor4(a1r.data, x->shape[0], x->shape[1], a1r.shape[2], a1r.shape[3]);
        DFC_TRY(resample_into(be, r->updown, x, &xr, err));
    }
    DFC_TRY(dfc_linear_layer_forward(be, &r->emb, emb_act, arena, &e, err));
    const int scale_shift = r->emb.weight.shape[0] == 2 * r->cout;
    DFC_TRY(norm_act(be, &r->out_norm, &h2, scale_shift ? NULL : &e, scale_shift ? &e : NULL, nhwc, nhwc, &h2, err));
    const dfc_tensor *spare = r->updown ? NULL : &h1; /* dead once in_conv has read it */
    if (consume_x) {                                  /* out holds the skip: out = skip + out_conv(h2) */
        dfc_tensor h4;
        DFC_TRY(dfc_conv_layer_forward_layout(be, &r->out_conv, &h2, nhwc, 0, spare, arena, &h4, err));
        return be->ops->binary_forward(be, DFC_BINARY_ADD, out, &h4, out, err);
    }
    DFC_TRY(dfc_conv_layer_forward_layout(be, &r->out_conv, &h2, nhwc, 0, NULL, out_arena, out, err));
    if (r->has_skip_conv)
        DFC_TRY(dfc_conv_layer_forward_reusing(be, &r->skip_conv, &xr, spare, arena, &skip, err));
    else
        skip = xr;
    return be->ops->binary_forward(be, DFC_BINARY_ADD, out, &skip, out, err);
}

/* Intermediates come from arena, the output from out_arena (the same arena when a tape keeps everything). */
static dfc_status resblock_forward(dfc_backend *be, const resblock *r, const dfc_tensor *x, int consume_x,
                                   const dfc_tensor *emb_act, dfc_arena *arena, dfc_arena *out_arena, layer_tape *s,
                                   dfc_tensor *out, dfc_error *err)
{
    if (!s)
        return resblock_forward_no_tape(be, r, x, consume_x, emb_act, arena, out_arena, out, err);
    dfc_tensor h1, a1, a1r, xr, h2, e, h3, a3, skip;
    dfc_tensor in_mean, in_rstd, out_mean, out_rstd, n2 = {0};
    DFC_TRY(dfc_group_norm_layer_forward(be, &r->in_norm, x, arena, &h1, &in_mean, &in_rstd, err));
    DFC_TRY(silu_new(be, &h1, arena, &a1, err));
    if (r->updown) {
        DFC_TRY(resample_new(be, r->updown, &a1, arena, &a1r, err));
        DFC_TRY(resample_new(be, r->updown, x, arena, &xr, err));
    } else {
        a1r = a1;
        xr = *x;
    }
    DFC_TRY(dfc_conv_layer_forward(be, &r->in_conv, &a1r, arena, &h2, err));
    DFC_TRY(dfc_linear_layer_forward(be, &r->emb, emb_act, arena, &e, err));
    int64_t n = h2.shape[0], c = r->cout;
    if (r->emb.weight.shape[0] == 2 * c) {
        /* scale-shift norm: h = GN(h) (1 + scale) + shift, [scale | shift] = e */
        DFC_TRY(dfc_group_norm_layer_forward(be, &r->out_norm, &h2, arena, &n2, &out_mean, &out_rstd, err));
        h3 = dfc_alloc_like(arena, &n2, err);
        DFC_CHECK_ALLOC(h3);
        DFC_TRY(be->ops->scale_shift_forward(be, &n2, &e, &h3, err));
    } else {
        /* additive: h = GN(h + emb) */
        dfc_tensor e4 = dfc_tensor4(e.data, n, c, 1, 1), h2e;
        DFC_TRY(dfc_add_new(be, &h2, &e4, arena, &h2e, err));
        DFC_TRY(dfc_group_norm_layer_forward(be, &r->out_norm, &h2e, arena, &h3, &out_mean, &out_rstd, err));
        h2 = h2e; /* the out norm's input, for the backward */
    }
    DFC_TRY(silu_new(be, &h3, arena, &a3, err));
    /* out = out_conv(a3) + skip, summed in out's memory: the backward needs neither term (the skip conv's output is
     * released at once) */
    DFC_TRY(dfc_conv_layer_forward(be, &r->out_conv, &a3, out_arena, out, err));
    const dfc_arena_mark before_skip = dfc_arena_get_mark(arena);
    if (r->has_skip_conv)
        DFC_TRY(dfc_conv_layer_forward(be, &r->skip_conv, &xr, arena, &skip, err));
    else
        skip = xr;
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, out, &skip, out, err));
    dfc_arena_reset(arena, before_skip);
    s->x = *x;
    s->in_mean = in_mean;
    s->in_rstd = in_rstd;
    s->h1 = h1;
    s->a1r = a1r;
    s->xr = xr;
    s->h2 = h2;
    s->e = e;
    s->out_mean = out_mean;
    s->out_rstd = out_rstd;
    s->n2 = n2;
    s->h3 = h3;
    s->a3 = a3;
    return DFC_OK;
}

/* d_emb_act: accumulated gradient of silu(emb) over all resblocks, or NULL when parameter gradients are off. */
static dfc_status resblock_backward(dfc_backend *be, const resblock *r, const layer_tape *s, const dfc_tensor *dout,
                                    const dfc_tensor *emb_act, dfc_arena *arena, dfc_grad_target g,
                                    dfc_tensor *d_emb_act, dfc_tensor *dx, dfc_error *err)
{
    int64_t n = s->h2.shape[0], c = r->cout;
    dfc_tensor da3, dh3, dh2, de, da1r, da1, dh1, dx_norm, dxr;
    DFC_TRY(dfc_conv_layer_backward(be, &r->out_conv, &s->a3, dout, arena, &da3, g, err));
    DFC_TRY(silu_backward_new(be, &da3, &s->h3, arena, &dh3, err));
    de = dfc_alloc2(arena, n, r->emb.weight.shape[0], err);
    DFC_CHECK_ALLOC(de);
    if (r->emb.weight.shape[0] == 2 * c) {
        /* h3 = n2 (1 + scale) + shift: dn2 = dh3 (1 + scale), de = [sum_hw dh3 n2 | sum_hw dh3] */
        dfc_tensor dn2 = dfc_alloc_like(arena, &s->n2, err);
        DFC_CHECK_ALLOC(dn2);
        DFC_TRY(be->ops->scale_shift_backward(be, &dh3, &s->n2, &s->e, &dn2, &de, err));
        DFC_TRY(dfc_group_norm_layer_backward(be, &r->out_norm, &s->h2, &s->out_mean, &s->out_rstd, &dn2, arena, &dh2,
                                              g, err));
    } else {
        /* h3 = GN(h2 + e): the gradient of the sum goes to both */
        DFC_TRY(dfc_group_norm_layer_backward(be, &r->out_norm, &s->h2, &s->out_mean, &s->out_rstd, &dh3, arena, &dh2,
                                              g, err));
        dfc_tensor de4 = dfc_tensor4(de.data, n, c, 1, 1);
        DFC_TRY(be->ops->binary_backward(be, DFC_BINARY_ADD, &dh2, &s->h2, &de4, NULL, &de4, err));
    }
    if (g.grads || d_emb_act) {
        dfc_tensor d_emb_part;
        DFC_TRY(dfc_linear_layer_backward(be, &r->emb, emb_act, &de, arena, d_emb_act ? &d_emb_part : NULL, g, err));
        if (d_emb_act)
            DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, d_emb_act, &d_emb_part, d_emb_act, err));
    }
    DFC_TRY(dfc_conv_layer_backward(be, &r->in_conv, &s->a1r, &dh2, arena, &da1r, g, err));
    if (r->updown)
        DFC_TRY(resample_backward_new(be, r->updown, &da1r, &s->h1, arena, &da1, err));
    else
        da1 = da1r;
    DFC_TRY(silu_backward_new(be, &da1, &s->h1, arena, &dh1, err));
    DFC_TRY(
        dfc_group_norm_layer_backward(be, &r->in_norm, &s->x, &s->in_mean, &s->in_rstd, &dh1, arena, &dx_norm, g, err));
    /* skip path: d(skip(xr)) = dout */
    if (r->has_skip_conv)
        DFC_TRY(dfc_conv_layer_backward(be, &r->skip_conv, &s->xr, dout, arena, &dxr, g, err));
    else
        dxr = *dout;
    dfc_tensor dx_skip;
    if (r->updown)
        DFC_TRY(resample_backward_new(be, r->updown, &dxr, &s->x, arena, &dx_skip, err));
    else
        dx_skip = dxr;
    return dfc_add_new(be, &dx_norm, &dx_skip, arena, dx, err);
}

static dfc_tensor as_sequence(const dfc_tensor *x)
{
    return dfc_tensor3(x->data, x->shape[0], x->shape[1], dfc_inner_size(x, 2));
}

static dfc_status attention_forward(dfc_backend *be, const dfc_unet *u, const attnblock *ab, const dfc_tensor *x,
                                    dfc_arena *arena, dfc_arena *out_arena, layer_tape *s, dfc_tensor *out,
                                    dfc_error *err)
{
    dfc_tensor xs = as_sequence(x), hn, mean, rstd, qkv, a;
    DFC_TRY(dfc_group_norm_layer_forward(be, &ab->norm, &xs, arena, &hn, &mean, &rstd, err));
    DFC_TRY(dfc_conv_layer_forward(be, &ab->qkv, &hn, arena, &qkv, err));
    a = dfc_alloc_like(arena, &xs, err);
    DFC_CHECK_ALLOC(a);
    DFC_TRY(be->ops->attention_forward(be, &qkv, ab->heads, u->cfg.legacy_attention, &a, err));
    dfc_tensor y; /* x + proj(a), summed in y's memory: the backward needs neither term */
    DFC_TRY(dfc_conv_layer_forward(be, &ab->proj, &a, out_arena, &y, err));
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &y, &xs, &y, err));
    *out = *x;
    out->data = y.data;
    if (s) {
        s->x = xs;
        s->mean = mean;
        s->rstd = rstd;
        s->hn = hn;
        s->qkv = qkv;
        s->a = a;
    }
    return DFC_OK;
}

static dfc_status attention_backward(dfc_backend *be, const dfc_unet *u, const attnblock *ab, const layer_tape *s,
                                     const dfc_tensor *dout, dfc_arena *arena, dfc_grad_target g, dfc_tensor *dx,
                                     dfc_error *err)
{
    dfc_tensor dys = as_sequence(dout), da, dqkv, dhn, dxn;
    DFC_TRY(dfc_conv_layer_backward(be, &ab->proj, &s->a, &dys, arena, &da, g, err));
    dqkv = dfc_alloc_like(arena, &s->qkv, err);
    DFC_CHECK_ALLOC(dqkv);
    DFC_TRY(be->ops->attention_backward(be, &da, &s->qkv, ab->heads, u->cfg.legacy_attention, &dqkv, err));
    DFC_TRY(dfc_conv_layer_backward(be, &ab->qkv, &s->hn, &dqkv, arena, &dhn, g, err));
    DFC_TRY(dfc_group_norm_layer_backward(be, &ab->norm, &s->x, &s->mean, &s->rstd, &dhn, arena, &dxn, g, err));
    dfc_tensor sum;
    DFC_TRY(dfc_add_new(be, &dxn, &dys, arena, &sum, err));
    *dx = *dout;
    dx->data = sum.data;
    return DFC_OK;
}

/* consume_x: the caller no longer needs x, so a layer without a tape may overwrite it. */
static dfc_status layer_forward(dfc_backend *be, const dfc_unet *u, const layer *l, const dfc_tensor *x, int consume_x,
                                const dfc_tensor *emb_act, dfc_arena *arena, dfc_arena *out_arena, layer_tape *s,
                                dfc_tensor *out, dfc_error *err)
{
    switch (l->kind) {
    case LAYER_RES: return resblock_forward(be, &l->res, x, consume_x, emb_act, arena, out_arena, s, out, err);
    case LAYER_ATTN: return attention_forward(be, u, &l->attn, x, arena, out_arena, s, out, err);
    case LAYER_CONV:
    case LAYER_DOWN:
        if (s)
            s->x = *x;
        return dfc_conv_layer_forward(be, &l->conv, x, out_arena, out, err);
    case LAYER_UP: {
        dfc_tensor xu;
        DFC_TRY(resample_new(be, +1, x, arena, &xu, err));
        if (s) {
            s->x = *x;
            s->xu = xu;
        }
        return dfc_conv_layer_forward(be, &l->conv, &xu, out_arena, out, err);
    }
    }
    return dfc_fail(err, DFC_ERR_VALUE, "UNet: unknown layer kind %d", (int)l->kind);
}

static dfc_status layer_backward(dfc_backend *be, const dfc_unet *u, const layer *l, const layer_tape *s,
                                 const dfc_tensor *dout, const dfc_tensor *emb_act, dfc_arena *arena, dfc_grad_target g,
                                 dfc_tensor *d_emb_act, dfc_tensor *dx, dfc_error *err)
{
    switch (l->kind) {
    case LAYER_RES: return resblock_backward(be, &l->res, s, dout, emb_act, arena, g, d_emb_act, dx, err);
    case LAYER_ATTN: return attention_backward(be, u, &l->attn, s, dout, arena, g, dx, err);
    case LAYER_CONV:
    case LAYER_DOWN: return dfc_conv_layer_backward(be, &l->conv, &s->x, dout, arena, dx, g, err);
    case LAYER_UP: {
        dfc_tensor dxu;
        DFC_TRY(dfc_conv_layer_backward(be, &l->conv, &s->xu, dout, arena, &dxu, g, err));
        return resample_backward_new(be, +1, &dxu, &s->x, arena, dx, err);
    }
    }
    return dfc_fail(err, DFC_ERR_VALUE, "UNet: unknown layer kind %d", (int)l->kind);
}

/* A block's layers in order: the last one's output from out_arena, the other layers' outputs and every intermediate
 * from work, released when the block is done; with work NULL (a tape, which keeps everything for the backward, or a
 * caller without scratch) all from out_arena. consume_x: x is not needed after the block (an output block's
 * concatenation); the inputs of its layers after the first never are. */
static dfc_status block_forward(dfc_backend *be, const dfc_unet *u, const block *blk, const dfc_tensor *x,
                                int consume_x, const dfc_tensor *emb_act, dfc_arena *out_arena, dfc_arena *work,
                                unet_tape *tape, dfc_tensor *out, dfc_error *err)
{
    dfc_arena *tmp = work ? work : out_arena;
    dfc_arena_mark mark = dfc_arena_get_mark(tmp);
    dfc_tensor h = *x;
    dfc_status st = DFC_OK;
    for (int i = blk->first; i < blk->first + blk->count && st == DFC_OK; i++) {
        dfc_tensor next;
        st = layer_forward(be, u, &u->layers[i], &h, consume_x || i > blk->first, emb_act, tmp,
                           i == blk->first + blk->count - 1 ? out_arena : tmp, tape ? &tape->layers[i] : NULL, &next,
                           err);
        h = next;
    }
    if (work)
        dfc_arena_reset(work, mark);
    *out = h;
    return st;
}

static dfc_status block_backward(dfc_backend *be, const dfc_unet *u, const block *blk, const unet_tape *tape,
                                 const dfc_tensor *dout, dfc_arena *arena, dfc_grad_target g, dfc_tensor *d_emb_act,
                                 dfc_tensor *dx, dfc_error *err)
{
    dfc_tensor dh = *dout;
    for (int i = blk->first + blk->count - 1; i >= blk->first; i--) {
        dfc_tensor next;
        DFC_TRY(layer_backward(be, u, &u->layers[i], &tape->layers[i], &dh, &tape->emb_act, arena, g, d_emb_act, &next,
                               err));
        dh = next;
    }
    *dx = dh;
    return DFC_OK;
}

/* block_backward in a dfc_result_scope: of what it makes only dx (the block input's gradient) stays. */
static dfc_status block_backward_released(dfc_backend *be, const dfc_unet *u, const block *blk, const unet_tape *tape,
                                          const dfc_tensor *dout, dfc_arena *arena, dfc_grad_target g,
                                          dfc_tensor *d_emb_act, dfc_tensor *dx, dfc_error *err)
{
    dfc_result_scope scope;
    DFC_TRY(dfc_result_scope_begin(arena, &tape->layers[blk->first].x, &scope, err));
    dfc_tensor d;
    dfc_status st = block_backward(be, u, blk, tape, dout, arena, g, d_emb_act, &d, err);
    return dfc_result_scope_end(be, arena, &scope, st, &d, dx, err);
}

static dfc_status check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const dfc_unet *u = (const dfc_unet *)net;
    const char *op = "UNet.forward";
    DFC_TRY(dfc_check_image_input(x, op, "model", u->cfg.in_channels, err));
    int64_t divisor = (int64_t)1 << (u->cfg.num_levels - 1);
    if (x->shape[2] % divisor || x->shape[3] % divisor)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: x is %lldx%lld; with %d levels height and width must be multiples of "
                        "%lld",
                        op, (long long)x->shape[2], (long long)x->shape[3], u->cfg.num_levels, (long long)divisor);
    return DFC_OK;
}

/* An output block's input: the running activation h and the skip of the matching input block, by channel. */
static dfc_status concat_skip(dfc_backend *be, const dfc_tensor *h, const dfc_tensor *skip, dfc_arena *arena,
                              dfc_tensor *cat, dfc_error *err)
{
    *cat = dfc_alloc4(arena, h->shape[0], h->shape[1] + skip->shape[1], h->shape[2], h->shape[3], err);
    DFC_CHECK_ALLOC(*cat);
    const dfc_tensor *parts[2] = {h, skip};
    return be->ops->concat_channels(be, parts, 2, cat, err);
}

/* The blocks and the head without a tape, each buffer released after its last reader (as PyTorch's reference counts
 * do): scratch holds the stack of skips, pushed by the input blocks and popped by the output blocks, with the
 * running activation on top; arena, above the time embedding, holds one block's working memory at a time (an
 * output block's concatenation and intermediates) and then y. Keeping every block's output to the end of the call
 * held most of a forward's memory. y is the same numbers either way; scratch is back at its mark on return. */
static dfc_status forward_no_tape(dfc_backend *be, const dfc_unet *u, const dfc_tensor *x, const dfc_tensor *emb_act,
                                  dfc_arena *arena, dfc_arena *scratch, dfc_tensor *y, dfc_error *err)
{
    const dfc_arena_mark entry = dfc_arena_get_mark(scratch);
    dfc_arena_mark below_skip[MAX_INPUT_BLOCKS];
    dfc_tensor skips[MAX_INPUT_BLOCKS];
    dfc_tensor h = *x;
    for (int b = 0; b < u->num_input_blocks; b++) {
        below_skip[b] = dfc_arena_get_mark(scratch);
        DFC_TRY(block_forward(be, u, &u->input_blocks[b], &h, 0, emb_act, scratch, arena, NULL, &h, err));
        skips[b] = h;
    }
    DFC_TRY(block_forward(be, u, &u->middle, &h, 0, emb_act, scratch, arena, NULL, &h, err));
    for (int b = 0; b < u->num_output_blocks; b++) {
        const int k = u->num_input_blocks - 1 - b;
        const dfc_arena_mark cat_mark = dfc_arena_get_mark(arena);
        dfc_tensor cat;
        DFC_TRY(concat_skip(be, &h, &skips[k], arena, &cat, err));
        dfc_arena_reset(scratch, below_skip[k]); /* pops skip k and h, which live on in cat */
        DFC_TRY(block_forward(be, u, &u->output_blocks[b], &cat, 1, emb_act, scratch, arena, NULL, &h, err));
        dfc_arena_reset(arena, cat_mark);
    }
    dfc_tensor a = dfc_alloc_like(scratch, &h, err);
    DFC_CHECK_ALLOC(a);
    const int nhwc = be->iface->conv_nhwc;
    DFC_TRY(norm_act(be, &u->out_norm, &h, NULL, NULL, 0, nhwc, &a, err));
    /* the head's last conv, into arena */
    dfc_status st = dfc_conv_layer_forward_layout(be, &u->out_conv, &a, nhwc, 0, NULL, arena, y, err);
    dfc_arena_reset(scratch, entry);
    return st;
}

/* outputs[0] = UNet(x, t): the model output (N, out_channels, H, W) from arena. Without a tape, block intermediates
 * and the decoder's running activation go to scratch (reset to its mark on return) when there is one; a tape keeps
 * everything in arena. t: the original timesteps (N). */
static dfc_status unet_forward_conditioned(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                           const dfc_tensor *x, const dfc_tensor *t, void **tape_out,
                                           dfc_tensor *outputs, dfc_error *err)
{
    const dfc_unet *u = (const dfc_unet *)net;
    if (tape_out)
        scratch = NULL; /* the backward needs every intermediate */
    DFC_TRY(check_input(net, x, err));
    int64_t n = x->shape[0];
    unet_tape *tape = NULL;
    if (tape_out) {
        tape = dfc_arena_host_alloc(arena, sizeof *tape, err);
        layer_tape *layers = dfc_arena_host_alloc(arena, (size_t)u->num_layers * sizeof *layers, err);
        if (!tape || !layers)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        memset(tape, 0, sizeof *tape);
        memset(layers, 0, (size_t)u->num_layers * sizeof *layers);
        tape->layers = layers;
        tape->x = *x;
        *tape_out = tape;
    }
    /* time embedding: Linear(mc -> 4mc), SiLU, Linear(4mc -> 4mc); each resblock applies SiLU(emb) first */
    int mc = u->cfg.model_channels;
    dfc_tensor temb = dfc_alloc2(arena, n, mc, err), l1, l1_act, emb, emb_act;
    DFC_CHECK_ALLOC(temb);
    DFC_TRY(be->ops->timestep_embedding(be, t, 10000.0f, &temb, err));
    DFC_TRY(dfc_linear_layer_forward(be, &u->time_linear1, &temb, arena, &l1, err));
    DFC_TRY(silu_new(be, &l1, arena, &l1_act, err));
    DFC_TRY(dfc_linear_layer_forward(be, &u->time_linear2, &l1_act, arena, &emb, err));
    DFC_TRY(silu_new(be, &emb, arena, &emb_act, err));

    dfc_tensor *y = &outputs[0];
    if (scratch)
        return forward_no_tape(be, u, x, &emb_act, arena, scratch, y, err);
    dfc_tensor skips[MAX_INPUT_BLOCKS];
    dfc_tensor h = *x;
    for (int b = 0; b < u->num_input_blocks; b++) {
        DFC_TRY(block_forward(be, u, &u->input_blocks[b], &h, 0, &emb_act, arena, NULL, tape, &h, err));
        skips[b] = h;
    }
    DFC_TRY(block_forward(be, u, &u->middle, &h, 0, &emb_act, arena, NULL, tape, &h, err));
    for (int b = 0; b < u->num_output_blocks; b++) {
        const dfc_tensor *skip = &skips[u->num_input_blocks - 1 - b];
        dfc_tensor cat;
        DFC_TRY(concat_skip(be, &h, skip, arena, &cat, err));
        DFC_TRY(block_forward(be, u, &u->output_blocks[b], &cat, 0, &emb_act, arena, NULL, tape, &h, err));
    }
    /* head: GN, SiLU, conv */
    dfc_tensor hn, mean, rstd, a;
    DFC_TRY(dfc_group_norm_layer_forward(be, &u->out_norm, &h, arena, &hn, &mean, &rstd, err));
    DFC_TRY(silu_new(be, &hn, arena, &a, err));
    DFC_TRY(dfc_conv_layer_forward(be, &u->out_conv, &a, arena, y, err));
    if (tape) {
        tape->temb = temb;
        tape->l1 = l1;
        tape->l1_act = l1_act;
        tape->emb = emb;
        tape->emb_act = emb_act;
        tape->head_x = h;
        tape->head_mean = mean;
        tape->head_rstd = rstd;
        tape->head_n = hn;
        tape->head_a = a;
    }
    return DFC_OK;
}

/* Without its timesteps the UNet cannot run: dfc_net_forward passes them to the conditioned forward. */
static dfc_status unet_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                               const dfc_tensor *x, void **tape, dfc_tensor *outputs, dfc_error *err)
{
    return dfc_net_forward(net, be, arena, scratch, x, NULL, tape, outputs, err);
}

/* From the tape of a conditioned forward and dy = douts[0] = dL/d(model output): dx = dL/dx (if not NULL, caller
 * allocated) and, if grads is not NULL, dL/dparams into grads (parameter-buffer layout; every entry is written). */
static dfc_status unet_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const dfc_unet *u = (const dfc_unet *)net;
    const unet_tape *tape = tape_ptr;
    const dfc_tensor *dy = &douts[0];
    if (!tape)
        return dfc_fail(err, DFC_ERR_VALUE, "UNet.backward: no tape (run the forward with a tape first)");
    if (!dy->data)
        return dfc_fail(err, DFC_ERR_VALUE, "UNet.backward: no gradient for its output");
    int64_t n = tape->x.shape[0];
    int64_t want[4] = {n, u->cfg.out_channels, tape->x.shape[2], tape->x.shape[3]};
    DFC_TRY(dfc_check_shape(dy, "UNet.backward", "dy", 4, want, err));
    if (dx)
        DFC_TRY(dfc_check_shape(dx, "UNet.backward", "dx", 4, tape->x.shape, err));
    dfc_grad_target g = {&u->base.params, grads};
    dfc_tensor d_emb_act = {0}, *d_emb = NULL;
    if (grads) {
        d_emb_act = dfc_arena_zeros(arena, 2, tape->emb_act.shape, err);
        DFC_CHECK_ALLOC(d_emb_act);
        d_emb = &d_emb_act;
    }
    /* head */
    dfc_tensor da, dhn, dh;
    DFC_TRY(dfc_conv_layer_backward(be, &u->out_conv, &tape->head_a, dy, arena, &da, g, err));
    DFC_TRY(silu_backward_new(be, &da, &tape->head_n, arena, &dhn, err));
    DFC_TRY(dfc_group_norm_layer_backward(be, &u->out_norm, &tape->head_x, &tape->head_mean, &tape->head_rstd, &dhn,
                                          arena, &dh, g, err));
    /* Blocks, last first. Each block's input gradient goes to buffers made before the block runs, so everything
     * else its backward makes is released when it is done (a mark and a reset) instead of piling up on the tape.
     * Output blocks split their input gradient into h's and the skip's. */
    dfc_tensor dskips[MAX_INPUT_BLOCKS];
    for (int b = u->num_output_blocks - 1; b >= 0; b--) {
        const block *blk = &u->output_blocks[b];
        const dfc_tensor *cat = &tape->layers[blk->first].x;
        const int64_t ch = cat->shape[1] - blk->skip_channels;
        dfc_tensor *dskip = &dskips[u->num_input_blocks - 1 - b];
        dfc_tensor dpart = dfc_alloc4(arena, n, ch, cat->shape[2], cat->shape[3], err);
        DFC_CHECK_ALLOC(dpart);
        *dskip = dfc_alloc4(arena, n, blk->skip_channels, cat->shape[2], cat->shape[3], err);
        DFC_CHECK_ALLOC(*dskip);
        const dfc_arena_mark mark = dfc_arena_get_mark(arena);
        dfc_tensor dcat, *parts[2] = {&dpart, dskip};
        DFC_TRY(block_backward(be, u, blk, tape, &dh, arena, g, d_emb, &dcat, err));
        DFC_TRY(be->ops->split_channels(be, &dcat, parts, 2, err));
        dfc_arena_reset(arena, mark);
        dh = dpart;
    }
    DFC_TRY(block_backward_released(be, u, &u->middle, tape, &dh, arena, g, d_emb, &dh, err));
    /* input blocks, last first: each output also fed an output block through the skip */
    for (int b = u->num_input_blocks - 1; b >= 0; b--) {
        DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dskips[b], &dh, &dskips[b], err)); /* dh + dskip */
        DFC_TRY(block_backward_released(be, u, &u->input_blocks[b], tape, &dskips[b], arena, g, d_emb, &dh, err));
    }
    if (dx) /* a one-part concat: the copy goes through the op table, wherever the backend keeps the data */
        DFC_TRY(be->ops->concat_channels(be, (const dfc_tensor *const[]){&dh}, 1, dx, err));
    if (grads) {
        /* time embedding: emb_act = silu(emb), emb = L2(silu(L1(temb))) */
        dfc_tensor demb, dl1_act, dl1;
        DFC_TRY(silu_backward_new(be, &d_emb_act, &tape->emb, arena, &demb, err));
        DFC_TRY(dfc_linear_layer_backward(be, &u->time_linear2, &tape->l1_act, &demb, arena, &dl1_act, g, err));
        DFC_TRY(silu_backward_new(be, &dl1_act, &tape->l1, arena, &dl1, err));
        DFC_TRY(dfc_linear_layer_backward(be, &u->time_linear1, &tape->temb, &dl1, arena, NULL, g, err));
    }
    return DFC_OK;
}

static const dfc_net_vtable UNET_VTABLE = {.kind = "unet",
                                           .forward = unet_forward,
                                           .backward = unet_backward,
                                           .check_input = check_input,
                                           .destroy = unet_destroy,
                                           .forward_conditioned = unet_forward_conditioned};

#include "segmenter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS DFC_SEGMENTER_MAX_LEVELS

/* ---- structure ---- */

/* [conv3x3, GroupNorm, ReLU] x 2 (PyTorch nn.Sequential indices 0, 1, 2 and 3, 4, 5). */
typedef struct double_conv {
    dfc_conv_layer conv1, conv2;
    dfc_group_norm_layer norm1, norm2;
} double_conv;

/* nearest x2, conv3x3, then DoubleConv over [skip, up]. */
typedef struct up_block {
    dfc_conv_layer conv;
    double_conv block;
} up_block;

typedef struct segmenter {
    dfc_net base; /* first member: a segmenter is a dfc_net */
    dfc_segmenter_config cfg;
    double_conv encoder[MAX_LEVELS];
    up_block decoder[MAX_LEVELS - 1];
    dfc_conv_layer head;
} segmenter;

static const char *const OUTPUT_NAMES[] = {"logits"};
static const dfc_pool2d_params POOL2 = {2, 2, 2, 2, 0, 0};

/* Walked twice by dfc_param_set_build (b->owner: the segmenter), in state_dict order. */
static dfc_conv_layer build_conv(dfc_param_builder *b, int cin, int cout, int kernel, int bias, const char *prefix)
{
    int64_t wshape[4] = {cout, cin, kernel, kernel}, bshape[1] = {cout};
    dfc_conv_layer l;
    memset(&l, 0, sizeof l);
    l.weight = dfc_builder_param(b, 4, wshape, "%s.weight", prefix);
    if (bias)
        l.bias = dfc_builder_param(b, 1, bshape, "%s.bias", prefix);
    l.p.stride_h = l.p.stride_w = 1;
    l.p.pad_h = l.p.pad_w = kernel / 2;
    return l;
}

static dfc_group_norm_layer build_norm(dfc_param_builder *b, int channels, const char *prefix)
{
    int64_t shape[1] = {channels};
    const segmenter *s = b->owner;
    dfc_group_norm_layer l = {dfc_builder_param(b, 1, shape, "%s.weight", prefix),
                              dfc_builder_param(b, 1, shape, "%s.bias", prefix), s->cfg.groups, DFC_SEGMENTER_GN_EPS};
    return l;
}

static double_conv build_double_conv(dfc_param_builder *b, int cin, int cout, const char *prefix)
{
    char name[DFC_PARAM_NAME_LEN];
    double_conv d;
    snprintf(name, sizeof name, "%s.0", prefix);
    d.conv1 = build_conv(b, cin, cout, 3, 0, name);
    snprintf(name, sizeof name, "%s.1", prefix);
    d.norm1 = build_norm(b, cout, name);
    snprintf(name, sizeof name, "%s.3", prefix);
    d.conv2 = build_conv(b, cout, cout, 3, 0, name);
    snprintf(name, sizeof name, "%s.4", prefix);
    d.norm2 = build_norm(b, cout, name);
    return d;
}

static int level_width(const dfc_segmenter_config *c, int level) { return c->width << level; }

static void build(dfc_param_builder *b)
{
    segmenter *s = b->owner;
    const dfc_segmenter_config *c = &s->cfg;
    char prefix[DFC_PARAM_NAME_LEN];
    for (int l = 0; l < c->levels; l++) {
        snprintf(prefix, sizeof prefix, "encoder.%d", l);
        int cin = l == 0 ? c->in_channels : level_width(c, l - 1);
        s->encoder[l] = build_double_conv(b, cin, level_width(c, l), prefix);
    }
    for (int j = 0; j < c->levels - 1; j++) {
        int l = c->levels - 2 - j, w = level_width(c, l);
        snprintf(prefix, sizeof prefix, "decoder.%d.conv", j);
        s->decoder[j].conv = build_conv(b, level_width(c, l + 1), w, 3, 0, prefix);
        snprintf(prefix, sizeof prefix, "decoder.%d.block", j);
        s->decoder[j].block = build_double_conv(b, 2 * w, w, prefix);
    }
    s->head = build_conv(b, c->width, c->classes, 1, 1, "head");
}

static dfc_status validate_config(const dfc_segmenter_config *c, dfc_error *err)
{
    const char *op = "Segmenter config";
    if (c->in_channels < 1 || c->classes < 1 || c->width < 1)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: in_channels (%d), classes (%d) and width (%d) must be positive", op,
                        c->in_channels, c->classes, c->width);
    if (c->levels < 1 || c->levels > MAX_LEVELS)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: levels is %d; 1..%d are supported", op, c->levels, MAX_LEVELS);
    if ((int64_t)c->width << (c->levels - 1) > (1 << 20))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: width %d at %d levels is too wide", op, c->width, c->levels);
    if (c->groups < 1 || c->width % c->groups)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: GroupNorm groups (%d) must divide width (%d)", op, c->groups,
                        c->width);
    return DFC_OK;
}

static const dfc_net_vtable SEGMENTER_VT;

static void segmenter_destroy(dfc_net *net)
{
    segmenter *s = (segmenter *)net;
    dfc_param_set_free(&s->base.params);
    free(s);
}

dfc_status dfc_segmenter_create(const dfc_segmenter_config *cfg, dfc_net **out, dfc_error *err)
{
    *out = NULL;
    DFC_TRY(validate_config(cfg, err));
    segmenter *s = calloc(1, sizeof *s);
    if (!s)
        return dfc_fail(err, DFC_ERR_NOMEM, "Segmenter: out of memory");
    s->base.vt = &SEGMENTER_VT;
    s->base.num_outputs = 1;
    s->base.output_names[0] = OUTPUT_NAMES[0];
    s->base.in_channels = cfg->in_channels;
    s->cfg = *cfg;
    dfc_status st = dfc_param_set_build(&s->base.params, build, s, err);
    if (st != DFC_OK) {
        segmenter_destroy(&s->base);
        return st;
    }
    *out = &s->base;
    return DFC_OK;
}

const dfc_segmenter_config *dfc_segmenter_get_config(const dfc_net *net) { return &((const segmenter *)net)->cfg; }

/* ---- forward and backward ---- */

/* What a DoubleConv's backward needs. ReLU is applied in place on the GroupNorm output: relu(v) > 0 exactly when
 * v > 0, so the ReLU's output serves as its backward's mask and the GroupNorm output need not be kept. The first
 * activation a1 = ReLU(GN(c1)) is not kept either: the backward remakes it (with its statistics) from c1. */
typedef struct double_conv_tape {
    dfc_tensor x, c1, c2, mean2, rstd2, a2;
} double_conv_tape;

/* A decoder level's upsampled input and its up conv's output are not kept: the backward remakes the first from the
 * level's input (on the tape as the level before's output), and the second lives on in the concatenation. */
typedef struct segmenter_tape {
    dfc_tensor x;
    double_conv_tape enc[MAX_LEVELS], dec[MAX_LEVELS - 1];
    dfc_tensor head_x;
} segmenter_tape;

static dfc_status norm_relu(dfc_backend *be, const dfc_group_norm_layer *norm, const dfc_tensor *x, dfc_arena *arena,
                            dfc_tensor *y, dfc_tensor *mean, dfc_tensor *rstd, dfc_error *err)
{
    DFC_TRY(dfc_group_norm_layer_forward(be, norm, x, arena, y, mean, rstd, err));
    return be->ops->activation_forward(be, DFC_ACT_RELU, y, y, err);
}

/* Intermediates come from arena, the output from out_arena. c2 is made before a1, so a1 is on top of arena and
 * released once conv2 has read it. */
static dfc_status double_conv_forward(dfc_backend *be, const double_conv *d, const dfc_tensor *x, dfc_arena *arena,
                                      dfc_arena *out_arena, double_conv_tape *t, dfc_tensor *out, dfc_error *err)
{
    dfc_tensor c1, mean1, rstd1, a1, c2, mean2, rstd2;
    DFC_TRY(dfc_conv_layer_forward(be, &d->conv1, x, arena, &c1, err));
    dfc_tensor c2_shape = dfc_conv_layer_output_shape(&d->conv2, &c1);
    dfc_tensor c2_buffer = dfc_alloc_like(arena, &c2_shape, err);
    DFC_CHECK_ALLOC(c2_buffer);
    const dfc_arena_mark activation = dfc_arena_get_mark(arena);
    DFC_TRY(norm_relu(be, &d->norm1, &c1, arena, &a1, &mean1, &rstd1, err));
    DFC_TRY(dfc_conv_layer_forward_reusing(be, &d->conv2, &a1, &c2_buffer, arena, &c2, err));
    dfc_arena_reset(arena, activation);
    DFC_TRY(norm_relu(be, &d->norm2, &c2, out_arena, out, &mean2, &rstd2, err));
    if (t) {
        double_conv_tape saved = {*x, c1, c2, mean2, rstd2, *out};
        *t = saved;
    }
    return DFC_OK;
}

/* dx may be NULL (the network's first layer when no input gradient is wanted). */
static dfc_status double_conv_backward(dfc_backend *be, const double_conv *d, const double_conv_tape *t,
                                       const dfc_tensor *dout, dfc_arena *arena, dfc_grad_target g, dfc_tensor *dx,
                                       dfc_error *err)
{
    dfc_tensor a1, mean1, rstd1, dn2, dc2, da1, dn1, dc1;
    DFC_TRY(norm_relu(be, &d->norm1, &t->c1, arena, &a1, &mean1, &rstd1, err));
    DFC_TRY(dfc_activation_backward_new(be, DFC_ACT_RELU, dout, &t->a2, arena, &dn2, err));
    DFC_TRY(dfc_group_norm_layer_backward(be, &d->norm2, &t->c2, &t->mean2, &t->rstd2, &dn2, arena, &dc2, g, err));
    DFC_TRY(dfc_conv_layer_backward(be, &d->conv2, &a1, &dc2, arena, &da1, g, err));
    DFC_TRY(dfc_activation_backward_new(be, DFC_ACT_RELU, &da1, &a1, arena, &dn1, err));
    DFC_TRY(dfc_group_norm_layer_backward(be, &d->norm1, &t->c1, &mean1, &rstd1, &dn1, arena, &dc1, g, err));
    return dfc_conv_layer_backward(be, &d->conv1, &t->x, &dc1, arena, dx, g, err);
}

static dfc_status check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const segmenter *s = (const segmenter *)net;
    const char *op = "Segmenter.forward";
    DFC_TRY(dfc_check_image_input(x, op, "segmenter", s->cfg.in_channels, err));
    int64_t divisor = (int64_t)1 << (s->cfg.levels - 1);
    if (x->shape[2] < divisor || x->shape[3] < divisor || x->shape[2] % divisor || x->shape[3] % divisor)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: x is %lldx%lld; with %d levels height and width must be positive multiples of %lld", op,
                        (long long)x->shape[2], (long long)x->shape[3], s->cfg.levels, (long long)divisor);
    return DFC_OK;
}

/* Without a tape each level's intermediates live in scratch, released when the level is done; only level outputs
 * (the skips and the decoder's running activation) go to arena. With a tape everything stays in arena. */
static dfc_status segmenter_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                    const dfc_tensor *x, void **tape_out, dfc_tensor *outputs, dfc_error *err)
{
    const segmenter *s = (const segmenter *)net;
    const dfc_segmenter_config *c = &s->cfg;
    DFC_TRY(check_input(net, x, err));
    segmenter_tape *tape = NULL;
    if (tape_out) {
        scratch = NULL; /* the backward needs every intermediate */
        tape = dfc_arena_host_alloc(arena, sizeof *tape, err);
        if (!tape)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        memset(tape, 0, sizeof *tape);
        tape->x = *x;
        *tape_out = tape;
    }
    dfc_arena *tmp = scratch ? scratch : arena;
    dfc_tensor skips[MAX_LEVELS], h = *x;
    for (int l = 0; l < c->levels; l++) {
        dfc_arena_mark mark = dfc_arena_get_mark(tmp);
        dfc_tensor in = h;
        if (l > 0) {
            in = dfc_alloc4(tmp, h.shape[0], h.shape[1], h.shape[2] / 2, h.shape[3] / 2, err);
            DFC_CHECK_ALLOC(in);
            DFC_TRY(be->ops->max_pool2d_forward(be, &h, POOL2, &in, err));
        }
        DFC_TRY(double_conv_forward(be, &s->encoder[l], &in, tmp, arena, tape ? &tape->enc[l] : NULL, &h, err));
        if (scratch)
            dfc_arena_reset(scratch, mark);
        skips[l] = h;
    }
    for (int j = 0; j < c->levels - 1; j++) {
        const up_block *u = &s->decoder[j];
        const dfc_tensor *skip = &skips[c->levels - 2 - j];
        dfc_arena_mark mark = dfc_arena_get_mark(tmp);
        /* the concatenation first: the upsampled input and the up conv's output above it go once it is made */
        dfc_tensor hu = dfc_tensor4(NULL, h.shape[0], h.shape[1], 2 * h.shape[2], 2 * h.shape[3]), up;
        dfc_tensor up_shape = dfc_conv_layer_output_shape(&u->conv, &hu);
        dfc_tensor cat = dfc_alloc4(tmp, up_shape.shape[0], skip->shape[1] + up_shape.shape[1], up_shape.shape[2],
                                    up_shape.shape[3], err);
        DFC_CHECK_ALLOC(cat);
        const dfc_arena_mark up_path = dfc_arena_get_mark(tmp);
        hu = dfc_alloc_like(tmp, &hu, err);
        DFC_CHECK_ALLOC(hu);
        DFC_TRY(be->ops->upsample_nearest2x_forward(be, &h, &hu, err));
        DFC_TRY(dfc_conv_layer_forward(be, &u->conv, &hu, tmp, &up, err));
        const dfc_tensor *parts[2] = {skip, &up};
        DFC_TRY(be->ops->concat_channels(be, parts, 2, &cat, err));
        dfc_arena_reset(tmp, up_path);
        DFC_TRY(double_conv_forward(be, &u->block, &cat, tmp, arena, tape ? &tape->dec[j] : NULL, &h, err));
        if (scratch)
            dfc_arena_reset(scratch, mark);
    }
    if (tape)
        tape->head_x = h;
    return dfc_conv_layer_forward(be, &s->head, &h, arena, &outputs[0], err);
}

static dfc_status segmenter_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                     const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const segmenter *s = (const segmenter *)net;
    const segmenter_tape *tape = tape_ptr;
    const dfc_segmenter_config *c = &s->cfg;
    const char *op = "Segmenter.backward";
    if (!tape)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: no tape (run the forward with a tape first)", op);
    int64_t n = tape->x.shape[0];
    int64_t want[4] = {n, c->classes, tape->x.shape[2], tape->x.shape[3]};
    if (dx)
        DFC_TRY(dfc_check_shape(dx, op, "dx", 4, tape->x.shape, err));
    if (!douts[0].data) { /* the only output does not contribute: every gradient is zero */
        if (dx)
            DFC_TRY(dfc_zero_floats(be, dx->data, dfc_numel(dx), err));
        return dfc_zero_floats(be, grads, net->params.total, err);
    }
    DFC_TRY(dfc_check_shape(&douts[0], op, "dlogits", 4, want, err));
    dfc_grad_target g = {&net->params, grads};
    /* Each block's input gradient goes to a buffer made before the block runs, so everything else the block makes
     * is released when it is done (a mark and a reset) instead of piling up on the tape. */
    dfc_tensor dh;
    DFC_TRY(dfc_conv_layer_backward(be, &s->head, &tape->head_x, &douts[0], arena, &dh, g, err));
    /* decoder, last first; each splits its input gradient into the skip's and the up path's */
    dfc_tensor dskips[MAX_LEVELS];
    for (int j = c->levels - 2; j >= 0; j--) {
        const up_block *u = &s->decoder[j];
        const dfc_tensor *cat = &tape->dec[j].x;
        const dfc_tensor *h_in = j > 0 ? &tape->dec[j - 1].a2 : &tape->enc[c->levels - 1].a2; /* the level's input */
        const int l = c->levels - 2 - j;
        const int64_t w = cat->shape[1] / 2;
        dskips[l] = dfc_alloc4(arena, n, w, cat->shape[2], cat->shape[3], err);
        DFC_CHECK_ALLOC(dskips[l]);
        dfc_tensor dh_in = dfc_alloc_like(arena, h_in, err);
        DFC_CHECK_ALLOC(dh_in);
        const dfc_arena_mark block = dfc_arena_get_mark(arena);
        dfc_tensor hu = dfc_alloc4(arena, n, h_in->shape[1], 2 * h_in->shape[2], 2 * h_in->shape[3], err);
        DFC_CHECK_ALLOC(hu);
        DFC_TRY(be->ops->upsample_nearest2x_forward(be, h_in, &hu, err));
        dfc_tensor dcat, dhu, dup = dfc_alloc4(arena, n, w, cat->shape[2], cat->shape[3], err);
        DFC_CHECK_ALLOC(dup);
        DFC_TRY(double_conv_backward(be, &u->block, &tape->dec[j], &dh, arena, g, &dcat, err));
        dfc_tensor *parts[2] = {&dskips[l], &dup};
        DFC_TRY(be->ops->split_channels(be, &dcat, parts, 2, err));
        DFC_TRY(dfc_conv_layer_backward(be, &u->conv, &hu, &dup, arena, &dhu, g, err));
        DFC_TRY(be->ops->upsample_nearest2x_backward(be, &dhu, &dh_in, err));
        dfc_arena_reset(arena, block);
        dh = dh_in;
    }
    /* encoder, deepest first: level l's output fed level l + 1 (through the pool) and decoder level l (the skip) */
    for (int l = c->levels - 1; l >= 0; l--) {
        dfc_tensor dout = dh, din, dh_in = {0};
        if (l > 0) {
            dh_in = dfc_alloc_like(arena, &tape->enc[l - 1].a2, err); /* level l - 1's output, the pool's input */
            DFC_CHECK_ALLOC(dh_in);
        }
        const dfc_arena_mark block = dfc_arena_get_mark(arena);
        if (l < c->levels - 1)
            DFC_TRY(dfc_add_new(be, &dh, &dskips[l], arena, &dout, err));
        if (l == 0) {
            DFC_TRY(double_conv_backward(be, &s->encoder[0], &tape->enc[0], &dout, arena, g, dx ? &din : NULL, err));
            if (dx)
                DFC_TRY(dfc_copy_tensor(be, dx, &din, err));
            dfc_arena_reset(arena, block);
            break;
        }
        DFC_TRY(double_conv_backward(be, &s->encoder[l], &tape->enc[l], &dout, arena, g, &din, err));
        DFC_TRY(be->ops->max_pool2d_backward(be, &din, &tape->enc[l - 1].a2, POOL2, &dh_in, err));
        dfc_arena_reset(arena, block);
        dh = dh_in;
    }
    return DFC_OK;
}

static const dfc_net_vtable SEGMENTER_VT = {.kind = "segmenter",
                                            .forward = segmenter_forward,
                                            .backward = segmenter_backward,
                                            .check_input = check_input,
                                            .destroy = segmenter_destroy};

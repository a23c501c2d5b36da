#include "resnet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- structure ---- */

typedef struct block {
    int bottleneck; /* 3 convs (1x1, 3x3, 1x1 x4) instead of 2 (3x3, 3x3) */
    int has_downsample;
    dfc_conv_layer conv[3];
    dfc_batch_norm_layer bn[3];
    dfc_conv_layer ds_conv;     /* downsample.0 (1x1, the block's stride) */
    dfc_batch_norm_layer ds_bn; /* downsample.1 */
} block;

typedef struct dfc_resnet {
    dfc_net base; /* first: a dfc_resnet is a dfc_net */
    dfc_resnet_config cfg;
    /* input normalisation: normalised channel c = in_scale[c] * x[in_src[c]] + in_shift[c] (host values, copied
     * into backend memory by each call) */
    float in_scale[3], in_shift[3];
    int in_src[3];
    dfc_conv_layer conv1;
    dfc_batch_norm_layer bn1;
    block *blocks;
    int num_blocks;
    int stage_first[DFC_RESNET_STAGES], stage_count[DFC_RESNET_STAGES]; /* blocks of layer1..4 (stem: none) */
    int last_stage;                         /* deepest tapped stage: nothing after it is computed */
    int output_of_stage[DFC_RESNET_STAGES]; /* output index of a tapped stage, -1 otherwise */
} dfc_resnet;

static const char *const STAGE_NAMES[DFC_RESNET_STAGES] = {"stem", "layer1", "layer2", "layer3", "layer4"};

/* Blocks per stage and block type of each depth (torchvision's resnet18 .. resnet152). */
static int depth_layout(int depth, int counts[4], int *bottleneck)
{
    static const int table[5][5] = {
        {18, 2, 2, 2, 2}, {34, 3, 4, 6, 3}, {50, 3, 4, 6, 3}, {101, 3, 4, 23, 3}, {152, 3, 8, 36, 3}};
    for (int i = 0; i < 5; i++)
        if (table[i][0] == depth) {
            memcpy(counts, &table[i][1], 4 * sizeof(int));
            *bottleneck = depth >= 50;
            return 1;
        }
    return 0;
}

/* Walked twice by dfc_param_set_build (b->owner: the dfc_resnet), in state_dict order. */
static dfc_conv_layer build_conv(dfc_param_builder *b, int cin, int cout, int kernel, int stride, const char *prefix)
{
    int64_t wshape[4] = {cout, cin, kernel, kernel}, bshape[1] = {cout};
    dfc_conv_layer l;
    const dfc_resnet *r = b->owner;
    memset(&l, 0, sizeof l);
    l.weight = dfc_builder_param(b, 4, wshape, "%s.weight", prefix);
    if (r->cfg.layout == DFC_RESNET_RADIMAGENET) /* Keras convs keep their biases */
        l.bias = dfc_builder_param(b, 1, bshape, "%s.bias", prefix);
    l.p.stride_h = l.p.stride_w = stride;
    l.p.pad_h = l.p.pad_w = kernel / 2;
    return l;
}

static dfc_batch_norm_layer build_bn(dfc_param_builder *b, int channels, const char *prefix)
{
    int64_t shape[1] = {channels};
    const dfc_resnet *r = b->owner;
    dfc_batch_norm_layer l;
    l.weight = dfc_builder_param(b, 1, shape, "%s.weight", prefix);
    l.bias = dfc_builder_param(b, 1, shape, "%s.bias", prefix);
    l.running_mean = dfc_builder_param(b, 1, shape, "%s.running_mean", prefix);
    l.running_var = dfc_builder_param(b, 1, shape, "%s.running_var", prefix);
    l.eps = r->cfg.layout == DFC_RESNET_RADIMAGENET ? 1.001e-5f : 1e-5f; /* Keras' default vs PyTorch's */
    return l;
}

static void build_block(dfc_param_builder *b, block *blk, int bottleneck, int cin, int width, int stride,
                        int first_of_stage, const char *prefix)
{
    char name[DFC_PARAM_NAME_LEN];
    const dfc_resnet *r = b->owner;
    int keras = r->cfg.layout == DFC_RESNET_RADIMAGENET;
    int cout = bottleneck ? 4 * width : width;
    blk->bottleneck = bottleneck;
    if (bottleneck) {
        /* torchvision strides the 3x3 conv (ResNet v1.5), Keras the first 1x1 */
        int kernels[3] = {1, 3, 1}, cins[3] = {cin, width, width}, couts[3] = {width, width, cout};
        int strides[3] = {keras ? stride : 1, keras ? 1 : stride, 1};
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.conv%d", prefix, i + 1);
            blk->conv[i] = build_conv(b, cins[i], couts[i], kernels[i], strides[i], name);
            snprintf(name, sizeof name, "%s.bn%d", prefix, i + 1);
            blk->bn[i] = build_bn(b, couts[i], name);
        }
    } else {
        for (int i = 0; i < 2; i++) {
            snprintf(name, sizeof name, "%s.conv%d", prefix, i + 1);
            blk->conv[i] = build_conv(b, i ? cout : cin, cout, 3, i ? 1 : stride, name);
            snprintf(name, sizeof name, "%s.bn%d", prefix, i + 1);
            blk->bn[i] = build_bn(b, cout, name);
        }
    }
    /* Keras' conv_block always has a projection shortcut; torchvision only where the shape changes */
    blk->has_downsample = (keras && first_of_stage) || stride != 1 || cin != cout;
    if (blk->has_downsample) {
        snprintf(name, sizeof name, "%s.downsample.0", prefix);
        blk->ds_conv = build_conv(b, cin, cout, 1, stride, name);
        snprintf(name, sizeof name, "%s.downsample.1", prefix);
        blk->ds_bn = build_bn(b, cout, name);
    }
}

static void build(dfc_param_builder *b)
{
    dfc_resnet *r = b->owner;
    int counts[4], bottleneck = 0;
    depth_layout(r->cfg.depth, counts, &bottleneck);
    r->conv1 = build_conv(b, 3, 64, 7, 2, "conv1");
    r->bn1 = build_bn(b, 64, "bn1");
    int cin = 64, nb = 0;
    char prefix[32];
    for (int s = 0; s < 4; s++) {
        int width = 64 << s;
        r->stage_first[s + 1] = nb;
        r->stage_count[s + 1] = counts[s];
        for (int i = 0; i < counts[s]; i++) {
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, i);
            build_block(b, &r->blocks[nb++], bottleneck, cin, width, i == 0 && s > 0 ? 2 : 1, i == 0, prefix);
            cin = bottleneck ? 4 * width : width;
        }
    }
    r->num_blocks = nb;
}

static void resnet_destroy(dfc_net *net)
{
    dfc_resnet *r = (dfc_resnet *)net;
    if (!r)
        return;
    dfc_param_set_free(&r->base.params);
    free(r->blocks);
    free(r);
}

static const dfc_net_vtable RESNET_VTABLE;

dfc_status dfc_resnet_create(const dfc_resnet_config *cfg, dfc_net **out, dfc_error *err)
{
    const char *op = "ResNet config";
    *out = NULL;
    int counts[4], bottleneck;
    if (!depth_layout(cfg->depth, counts, &bottleneck))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: depth %d is not one of 18, 34, 50, 101, 152", op, cfg->depth);
    if (cfg->layout != DFC_RESNET_TORCHVISION && cfg->layout != DFC_RESNET_RADIMAGENET)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown layout %d", op, (int)cfg->layout);
    if (cfg->in_channels != 1 && cfg->in_channels != 3)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: in_channels must be 1 (grayscale) or 3 (RGB), got %d", op,
                        cfg->in_channels);
    int num_taps = 0;
    for (int s = 0; s < DFC_RESNET_STAGES; s++)
        num_taps += (cfg->taps >> s) & 1;
    if (num_taps == 0 || num_taps > DFC_NET_MAX_OUTPUTS || (cfg->taps >> DFC_RESNET_STAGES))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: taps must be 1 to %d of stem, layer1..layer4 (mask 0x%x)", op,
                        DFC_NET_MAX_OUTPUTS, cfg->taps);

    dfc_resnet *r = calloc(1, sizeof *r);
    if (!r)
        return dfc_fail(err, DFC_ERR_NOMEM, "ResNet: out of memory");
    r->cfg = *cfg;
    r->blocks = calloc((size_t)(counts[0] + counts[1] + counts[2] + counts[3]), sizeof *r->blocks);
    if (!r->blocks) {
        resnet_destroy(&r->base);
        return dfc_fail(err, DFC_ERR_NOMEM, "ResNet: out of memory");
    }
    dfc_status st = dfc_param_set_build(&r->base.params, build, r, err);
    if (st != DFC_OK) {
        resnet_destroy(&r->base);
        return st;
    }

    r->base.vt = &RESNET_VTABLE;
    r->base.in_channels = cfg->in_channels;
    for (int s = 0; s < DFC_RESNET_STAGES; s++) {
        r->output_of_stage[s] = -1;
        if ((cfg->taps >> s) & 1) {
            r->output_of_stage[s] = r->base.num_outputs;
            r->base.output_names[r->base.num_outputs++] = STAGE_NAMES[s];
            r->last_stage = s;
        }
    }
    /* input normalisation from x in [-1, 1] (x01 = (x + 1) / 2), as an affine map per output channel */
    static const float IMAGENET_MEAN[3] = {0.485f, 0.456f, 0.406f}, IMAGENET_STD[3] = {0.229f, 0.224f, 0.225f};
    static const float CAFFE_BGR_MEAN[3] = {0.406f, 0.456f, 0.485f};
    for (int c = 0; c < 3; c++) {
        if (cfg->layout == DFC_RESNET_TORCHVISION) { /* (x01 - mean) / std */
            r->in_src[c] = c;
            r->in_scale[c] = 0.5f / IMAGENET_STD[c];
            r->in_shift[c] = (0.5f - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        } else { /* BGR: channel c is RGB channel 2 - c; minus the caffe mean */
            r->in_src[c] = 2 - c;
            r->in_scale[c] = 0.5f;
            r->in_shift[c] = 0.5f - CAFFE_BGR_MEAN[c];
        }
        if (cfg->in_channels == 1)
            r->in_src[c] = 0;
    }
    *out = &r->base;
    return DFC_OK;
}

/* ---- forward and backward ---- */

/* A tape keeps each conv's output (its BN's input) but not the activation ReLU(BN(h)) made from it: the backward
 * recomputes that (one elementwise pass) where it needs it, as the ReLU's mask and as the next conv's input for the
 * weight gradient. The activations were a sixth of the taped memory, and the backward now holds only one block's. */
typedef struct block_tape {
    dfc_tensor x;    /* block input */
    dfc_tensor h[3]; /* conv outputs (BN inputs) */
    dfc_tensor out;  /* the block output: ReLU(BN(h[last]) + shortcut) */
    dfc_tensor hd;   /* downsample conv output */
} block_tape;

typedef struct resnet_tape {
    dfc_tensor x;  /* network input */
    dfc_tensor xn; /* normalised 3-channel input */
    dfc_tensor h0; /* stem conv output */
    dfc_tensor stage_out[DFC_RESNET_STAGES];
    block_tape *blocks;
} resnet_tape;

/* ReLU(y) is applied in place and its backward reads the ReLU output (ReLU'(y) = ReLU'(x)), so a conv-BN-ReLU
 * keeps two tensors for the backward: the conv output and the activation. */
static dfc_status relu_inplace(dfc_backend *be, dfc_tensor *y, dfc_error *err)
{
    return be->ops->activation_forward(be, DFC_ACT_RELU, y, y, err);
}

/* x (N, 1 or 3, H, W) in [-1, 1] -> the network's 3-channel normalised input. */
static dfc_status normalize_forward(dfc_backend *be, const dfc_resnet *r, const dfc_tensor *x, dfc_arena *arena,
                                    dfc_tensor *xn, dfc_error *err)
{
    int64_t n = x->shape[0], h = x->shape[2], w = x->shape[3];
    dfc_tensor x3 = *x;
    int gather = x->shape[1] == 1 || r->in_src[0] != 0;
    if (gather) {
        dfc_tensor planes[3];
        const dfc_tensor *parts[3];
        if (x->shape[1] == 1) {
            parts[0] = parts[1] = parts[2] = x;
        } else {
            for (int c = 0; c < 3; c++) {
                planes[c] = dfc_alloc4(arena, n, 1, h, w, err);
                DFC_CHECK_ALLOC(planes[c]);
            }
            dfc_tensor *outs[3] = {&planes[0], &planes[1], &planes[2]};
            DFC_TRY(be->ops->split_channels(be, x, outs, 3, err));
            for (int c = 0; c < 3; c++)
                parts[c] = &planes[r->in_src[c]];
        }
        x3 = dfc_alloc4(arena, n, 3, h, w, err);
        DFC_CHECK_ALLOC(x3);
        DFC_TRY(be->ops->concat_channels(be, parts, 3, &x3, err));
    }
    *xn = dfc_alloc4(arena, n, 3, h, w, err);
    DFC_CHECK_ALLOC(*xn);
    dfc_tensor scale, shift;
    DFC_TRY(dfc_channel_constants(be, arena, r->in_scale, 3, &scale, err));
    DFC_TRY(dfc_channel_constants(be, arena, r->in_shift, 3, &shift, err));
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_MUL, &x3, &scale, xn, err));
    return be->ops->binary_forward(be, DFC_BINARY_ADD, xn, &shift, xn, err);
}

/* dxn -> dx (caller allocated, x's shape): scale, then undo the gather (a replicated channel sums its copies). */
static dfc_status normalize_backward(dfc_backend *be, const dfc_resnet *r, const dfc_tensor *dxn, dfc_arena *arena,
                                     dfc_tensor *dx, dfc_error *err)
{
    int64_t n = dxn->shape[0], h = dxn->shape[2], w = dxn->shape[3];
    dfc_tensor scale;
    DFC_TRY(dfc_channel_constants(be, arena, r->in_scale, 3, &scale, err));
    int gather = dx->shape[1] == 1 || r->in_src[0] != 0;
    if (!gather)
        return be->ops->binary_forward(be, DFC_BINARY_MUL, dxn, &scale, dx, err);
    dfc_tensor dx3 = dfc_alloc_like(arena, dxn, err), planes[3];
    DFC_CHECK_ALLOC(dx3);
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_MUL, dxn, &scale, &dx3, err));
    for (int c = 0; c < 3; c++) {
        planes[c] = dfc_alloc4(arena, n, 1, h, w, err);
        DFC_CHECK_ALLOC(planes[c]);
    }
    dfc_tensor *outs[3] = {&planes[0], &planes[1], &planes[2]};
    DFC_TRY(be->ops->split_channels(be, &dx3, outs, 3, err));
    if (dx->shape[1] == 1) {
        DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &planes[0], &planes[1], dx, err));
        return be->ops->binary_forward(be, DFC_BINARY_ADD, dx, &planes[2], dx, err);
    }
    const dfc_tensor *parts[3]; /* input channel in_src[c] received normalised channel c */
    for (int c = 0; c < 3; c++)
        parts[r->in_src[c]] = &planes[c];
    return be->ops->concat_channels(be, parts, 3, dx, err);
}

static const dfc_pool2d_params STEM_POOL = {3, 3, 2, 2, 1, 1};

/* ReLU(BN(h)) into arena: the activation after a conv, made in the forward and remade in the backward. */
static dfc_status bn_relu(dfc_backend *be, const dfc_batch_norm_layer *bn, const dfc_tensor *h, dfc_arena *arena,
                          dfc_tensor *a, dfc_error *err)
{
    DFC_TRY(dfc_batch_norm_layer_forward(be, bn, h, arena, a, err));
    return relu_inplace(be, a, err);
}

/* conv1 7x7/2 + BN + ReLU + max pool 3x3/2: the stage "stem". The output is made before the activation, so the
 * activation is on top of tmp and released once the pool has read it (the tape keeps h0). */
static dfc_status stem_forward(dfc_backend *be, const dfc_resnet *r, const dfc_tensor *xn, dfc_arena *arena,
                               dfc_arena *tmp, resnet_tape *t, dfc_tensor *out, dfc_error *err)
{
    dfc_tensor h0, a0;
    DFC_TRY(dfc_conv_layer_forward(be, &r->conv1, xn, tmp, &h0, err));
    int64_t ho = (h0.shape[2] + 2 - 3) / 2 + 1, wo = (h0.shape[3] + 2 - 3) / 2 + 1;
    *out = dfc_alloc4(arena, h0.shape[0], h0.shape[1], ho, wo, err);
    DFC_CHECK_ALLOC(*out);
    dfc_arena_mark activation = dfc_arena_get_mark(tmp);
    DFC_TRY(bn_relu(be, &r->bn1, &h0, tmp, &a0, err));
    DFC_TRY(be->ops->max_pool2d_forward(be, &a0, STEM_POOL, out, err));
    dfc_arena_reset(tmp, activation);
    if (t)
        t->h0 = h0;
    return DFC_OK;
}

/* dout: gradient at the max pool output; dxn (NULL: not wanted) the gradient at the normalised input. */
static dfc_status stem_backward(dfc_backend *be, const dfc_resnet *r, const resnet_tape *t, const dfc_tensor *dout,
                                dfc_arena *arena, dfc_grad_target g, dfc_tensor *dxn, dfc_error *err)
{
    dfc_tensor a0, dh0;
    DFC_TRY(bn_relu(be, &r->bn1, &t->h0, arena, &a0, err));
    dfc_tensor da0 = dfc_alloc_like(arena, &a0, err);
    DFC_CHECK_ALLOC(da0);
    DFC_TRY(be->ops->max_pool2d_backward(be, dout, &a0, STEM_POOL, &da0, err));
    DFC_TRY(be->ops->activation_backward(be, DFC_ACT_RELU, &da0, &a0, &da0, err));
    DFC_TRY(dfc_batch_norm_layer_backward(be, &r->bn1, &t->h0, &da0, arena, &dh0, g, err));
    return dfc_conv_layer_backward(be, &r->conv1, &t->xn, &dh0, arena, dxn, g, err);
}

/* The conv outputs h[i] go to keep (arena with a tape, tmp without), the block output to arena; each activation
 * ReLU(BN(h[i])) and the shortcut's BN output live on top of tmp only while their one reader runs (the next conv's
 * output is made before the activation it reads). Without a tape, tmp (scratch) is released after the block. */
static dfc_status block_forward(dfc_backend *be, const block *blk, const dfc_tensor *x, dfc_arena *arena,
                                dfc_arena *tmp, block_tape *s, dfc_tensor *out, dfc_error *err)
{
    dfc_arena_mark mark = dfc_arena_get_mark(tmp);
    dfc_arena *keep = s ? arena : tmp;
    int nconv = blk->bottleneck ? 3 : 2;
    dfc_tensor h[3], y, hd = {0};
    DFC_TRY(dfc_conv_layer_forward(be, &blk->conv[0], x, keep, &h[0], err));
    for (int i = 1; i < nconv; i++) {
        dfc_tensor shape = dfc_conv_layer_output_shape(&blk->conv[i], &h[i - 1]), a;
        dfc_tensor next = dfc_alloc_like(keep, &shape, err);
        DFC_CHECK_ALLOC(next);
        dfc_arena_mark activation = dfc_arena_get_mark(tmp);
        DFC_TRY(bn_relu(be, &blk->bn[i - 1], &h[i - 1], tmp, &a, err));
        DFC_TRY(dfc_conv_layer_forward_reusing(be, &blk->conv[i], &a, &next, tmp, &h[i], err));
        dfc_arena_reset(tmp, activation);
    }
    DFC_TRY(dfc_batch_norm_layer_forward(be, &blk->bn[nconv - 1], &h[nconv - 1], arena, &y, err));
    if (blk->has_downsample) {
        dfc_tensor shortcut;
        DFC_TRY(dfc_conv_layer_forward(be, &blk->ds_conv, x, keep, &hd, err));
        dfc_arena_mark activation = dfc_arena_get_mark(tmp);
        DFC_TRY(dfc_batch_norm_layer_forward(be, &blk->ds_bn, &hd, tmp, &shortcut, err));
        DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &y, &shortcut, &y, err));
        dfc_arena_reset(tmp, activation);
    } else {
        DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &y, x, &y, err));
    }
    DFC_TRY(relu_inplace(be, &y, err));
    if (s) {
        s->x = *x;
        for (int i = 0; i < nconv; i++)
            s->h[i] = h[i];
        s->out = y;
        s->hd = hd;
    }
    *out = y;
    if (tmp != arena)
        dfc_arena_reset(tmp, mark);
    return DFC_OK;
}

static dfc_status block_backward(dfc_backend *be, const block *blk, const block_tape *s, const dfc_tensor *dout,
                                 dfc_arena *arena, dfc_grad_target g, dfc_tensor *dx, dfc_error *err)
{
    int nconv = blk->bottleneck ? 3 : 2;
    dfc_tensor a[2]; /* the activations the tape did not keep */
    for (int i = 0; i < nconv - 1; i++)
        DFC_TRY(bn_relu(be, &blk->bn[i], &s->h[i], arena, &a[i], err));
    /* through the final ReLU: the sum's gradient goes to the main path and to the shortcut */
    dfc_tensor dsum;
    DFC_TRY(dfc_activation_backward_new(be, DFC_ACT_RELU, dout, &s->out, arena, &dsum, err));
    dfc_tensor dcur = dsum;
    for (int i = nconv - 1; i >= 0; i--) {
        dfc_tensor dh, dinput;
        if (i < nconv - 1) /* through ReLU, in place: dcur is this block's own buffer */
            DFC_TRY(be->ops->activation_backward(be, DFC_ACT_RELU, &dcur, &a[i], &dcur, err));
        DFC_TRY(dfc_batch_norm_layer_backward(be, &blk->bn[i], &s->h[i], &dcur, arena, &dh, g, err));
        DFC_TRY(dfc_conv_layer_backward(be, &blk->conv[i], i ? &a[i - 1] : &s->x, &dh, arena, &dinput, g, err));
        dcur = dinput;
    }
    dfc_tensor dshortcut = dsum;
    if (blk->has_downsample) {
        dfc_tensor dhd;
        DFC_TRY(dfc_batch_norm_layer_backward(be, &blk->ds_bn, &s->hd, &dsum, arena, &dhd, g, err));
        DFC_TRY(dfc_conv_layer_backward(be, &blk->ds_conv, &s->x, &dhd, arena, &dshortcut, g, err));
    }
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dcur, &dshortcut, &dcur, err));
    *dx = dcur;
    return DFC_OK;
}

/* block_backward in a dfc_result_scope: of what it makes only dx (the block input's gradient) stays. */
static dfc_status block_backward_released(dfc_backend *be, const block *blk, const block_tape *s,
                                          const dfc_tensor *dout, dfc_arena *arena, dfc_grad_target g, dfc_tensor *dx,
                                          dfc_error *err)
{
    dfc_result_scope scope;
    DFC_TRY(dfc_result_scope_begin(arena, &s->x, &scope, err));
    dfc_tensor d;
    dfc_status st = block_backward(be, blk, s, dout, arena, g, &d, err);
    return dfc_result_scope_end(be, arena, &scope, st, &d, dx, err);
}

static dfc_status check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const dfc_resnet *r = (const dfc_resnet *)net;
    const char *op = "ResNet.forward";
    DFC_TRY(dfc_check_image_input(x, op, "network", r->cfg.in_channels, err));
    if (x->shape[0] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: x is empty", op);
    return DFC_OK;
}

static dfc_status resnet_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                 const dfc_tensor *x, void **tape_out, dfc_tensor *outputs, dfc_error *err)
{
    const dfc_resnet *r = (const dfc_resnet *)net;
    DFC_TRY(check_input(net, x, err));
    dfc_arena *tmp = tape_out || !scratch ? arena : scratch; /* the backward needs every intermediate */
    resnet_tape *t = NULL;
    if (tape_out) {
        t = dfc_arena_host_alloc(arena, sizeof *t, err);
        block_tape *blocks = dfc_arena_host_alloc(arena, (size_t)r->num_blocks * sizeof *blocks, err);
        if (!t || !blocks)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        memset(t, 0, sizeof *t);
        memset(blocks, 0, (size_t)r->num_blocks * sizeof *blocks);
        t->blocks = blocks;
        t->x = *x;
        *tape_out = t;
    }
    dfc_arena_mark start = dfc_arena_get_mark(tmp);
    dfc_tensor xn, h;
    DFC_TRY(normalize_forward(be, r, x, tmp, &xn, err));
    if (t)
        t->xn = xn;
    DFC_TRY(stem_forward(be, r, &xn, arena, tmp, t, &h, err));
    if (tmp != arena) /* the normalised input is no longer needed */
        dfc_arena_reset(tmp, start);
    for (int stage = 0; stage <= r->last_stage; stage++) {
        for (int i = r->stage_first[stage]; stage > 0 && i < r->stage_first[stage] + r->stage_count[stage]; i++)
            DFC_TRY(block_forward(be, &r->blocks[i], &h, arena, tmp, t ? &t->blocks[i] : NULL, &h, err));
        if (t)
            t->stage_out[stage] = h;
        if (r->output_of_stage[stage] >= 0)
            outputs[r->output_of_stage[stage]] = h;
    }
    return DFC_OK;
}

static dfc_status resnet_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                  const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const dfc_resnet *r = (const dfc_resnet *)net;
    const resnet_tape *t = tape_ptr;
    const char *op = "ResNet.backward";
    if (!t)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: no tape (run the forward with a tape first)", op);
    for (int s = 0; s < DFC_RESNET_STAGES; s++) {
        int k = r->output_of_stage[s];
        if (k >= 0 && douts[k].data)
            DFC_TRY(dfc_check_shape(&douts[k], op, STAGE_NAMES[s], 4, t->stage_out[s].shape, err));
    }
    if (dx)
        DFC_TRY(dfc_check_shape(dx, op, "dx", 4, t->x.shape, err));
    if (!dx && !grads)
        return DFC_OK;
    if (grads) /* running statistics and the stages after the last contributing tap get zero gradients */
        DFC_TRY(dfc_zero_floats(be, grads, r->base.params.total, err));
    dfc_grad_target g = {&r->base.params, grads};
    dfc_tensor dh = {0}; /* data NULL: no gradient has reached this point yet */
    for (int stage = r->last_stage; stage >= 0; stage--) {
        int k = r->output_of_stage[stage];
        if (k >= 0 && douts[k].data) {
            if (!dh.data) {
                dh = douts[k];
            } else {
                dfc_tensor sum;
                DFC_TRY(dfc_add_new(be, &dh, &douts[k], arena, &sum, err));
                dh = sum;
            }
        }
        if (!dh.data)
            continue;
        for (int i = r->stage_first[stage] + r->stage_count[stage] - 1; stage > 0 && i >= r->stage_first[stage]; i--)
            DFC_TRY(block_backward_released(be, &r->blocks[i], &t->blocks[i], &dh, arena, g, &dh, err));
    }
    if (!dh.data) /* every output gradient was absent */
        return dx ? dfc_zero_floats(be, dx->data, dfc_numel(dx), err) : DFC_OK;
    dfc_tensor dxn;
    DFC_TRY(stem_backward(be, r, t, &dh, arena, g, dx ? &dxn : NULL, err));
    return dx ? normalize_backward(be, r, &dxn, arena, dx, err) : DFC_OK;
}

static const dfc_net_vtable RESNET_VTABLE = {
    .kind = "resnet",
    .forward = resnet_forward,
    .backward = resnet_backward,
    .check_input = check_input,
    .destroy = resnet_destroy,
};

#include "inception.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- structure ---- */

/* torchvision's BasicConv2d: conv (no bias) + BatchNorm (eps 0.001, TensorFlow's) + ReLU. */
typedef struct basic_conv {
    dfc_conv_layer conv;
    dfc_batch_norm_layer bn;
} basic_conv;

/* What a branch does to the block input before its convs. */
typedef enum {
    POOL_NONE = 0,
    POOL_AVG_3X3_S1, /* 3x3/1, padding 1 not counted (FIDInceptionA/C/E_1: count_include_pad=False) */
    POOL_MAX_3X3_S1, /* 3x3/1, padding 1 (FIDInceptionE_2, Mixed_7c) */
    POOL_MAX_3X3_S2, /* 3x3/2, no padding (InceptionB/D; the stem) */
} pool_kind;

#define MAX_CHAIN 5
#define MAX_BRANCHES 4
#define MAX_PIECES 6 /* concatenated outputs of a block: an E block's 4 branches, two of them split in two */

/* One branch of an Inception block: an optional pool, a chain of convs, and (E blocks) a last pair of parallel
 * convs (1x3 and 3x1) on the chain's output whose outputs are concatenated. */
typedef struct branch {
    pool_kind pool;
    int num_convs;
    basic_conv chain[MAX_CHAIN];
    int split;
    basic_conv split_conv[2];
} branch;

typedef struct block {
    int num_branches;
    branch br[MAX_BRANCHES];
} block;

#define STEM_CONVS 5
#define NUM_BLOCKS 11

typedef struct dfc_inception {
    dfc_net base; /* first: a dfc_inception is a dfc_net */
    dfc_inception_config cfg;
    basic_conv stem[STEM_CONVS]; /* Conv2d_1a_3x3, 2a, 2b, (max pool), 3b, 4a, (max pool) */
    block blocks[NUM_BLOCKS];    /* Mixed_5b .. Mixed_7c */
} dfc_inception;

/* BasicConv2d(cin, cout, kernel (kh, kw), stride, padding (ph, pw)) named "<block>.<name>" (or "<name>"). */
static basic_conv build_basic(dfc_param_builder *b, const char *block_name, const char *name, int cin, int cout, int kh,
                              int kw, int stride, int ph, int pw)
{
    char prefix[DFC_PARAM_NAME_LEN];
    if (block_name)
        snprintf(prefix, sizeof prefix, "%s.%s", block_name, name);
    else
        snprintf(prefix, sizeof prefix, "%s", name);
    basic_conv c;
    memset(&c, 0, sizeof c);
    int64_t wshape[4] = {cout, cin, kh, kw}, cshape[1] = {cout};
    c.conv.weight = dfc_builder_param(b, 4, wshape, "%s.conv.weight", prefix);
    c.conv.p.stride_h = c.conv.p.stride_w = stride;
    c.conv.p.pad_h = ph;
    c.conv.p.pad_w = pw;
    c.bn.weight = dfc_builder_param(b, 1, cshape, "%s.bn.weight", prefix);
    c.bn.bias = dfc_builder_param(b, 1, cshape, "%s.bn.bias", prefix);
    c.bn.running_mean = dfc_builder_param(b, 1, cshape, "%s.bn.running_mean", prefix);
    c.bn.running_var = dfc_builder_param(b, 1, cshape, "%s.bn.running_var", prefix);
    c.bn.eps = 0.001f; /* torchvision BasicConv2d: BatchNorm2d(eps=0.001) */
    return c;
}

/* A square k x k conv with padding k / 2 at stride 1, or without padding at stride 2. */
static basic_conv sq(dfc_param_builder *b, const char *blk, const char *name, int cin, int cout, int k, int stride)
{
    int pad = stride == 1 ? k / 2 : 0;
    return build_basic(b, blk, name, cin, cout, k, k, stride, pad, pad);
}

/* 1 x 7 (wide) and 7 x 1 (tall) convs with "same" padding. */
static basic_conv wide(dfc_param_builder *b, const char *blk, const char *name, int cin, int cout, int k)
{
    return build_basic(b, blk, name, cin, cout, 1, k, 1, 0, k / 2);
}

static basic_conv tall(dfc_param_builder *b, const char *blk, const char *name, int cin, int cout, int k)
{
    return build_basic(b, blk, name, cin, cout, k, 1, 1, k / 2, 0);
}

/* FIDInceptionA (torchvision InceptionA): 64 + 64 + 96 + pool_features channels. */
static void build_a(dfc_param_builder *b, block *blk, const char *n, int cin, int pool_features)
{
    blk->num_branches = 4;
    branch *br = blk->br;
    br[0].num_convs = 1;
    br[0].chain[0] = sq(b, n, "branch1x1", cin, 64, 1, 1);
    br[1].num_convs = 2;
    br[1].chain[0] = sq(b, n, "branch5x5_1", cin, 48, 1, 1);
    br[1].chain[1] = sq(b, n, "branch5x5_2", 48, 64, 5, 1);
    br[2].num_convs = 3;
    br[2].chain[0] = sq(b, n, "branch3x3dbl_1", cin, 64, 1, 1);
    br[2].chain[1] = sq(b, n, "branch3x3dbl_2", 64, 96, 3, 1);
    br[2].chain[2] = sq(b, n, "branch3x3dbl_3", 96, 96, 3, 1);
    br[3].pool = POOL_AVG_3X3_S1;
    br[3].num_convs = 1;
    br[3].chain[0] = sq(b, n, "branch_pool", cin, pool_features, 1, 1);
}

/* InceptionB (grid reduction 35 -> 17): 384 + 96 + cin channels. */
static void build_b(dfc_param_builder *b, block *blk, const char *n, int cin)
{
    blk->num_branches = 3;
    branch *br = blk->br;
    br[0].num_convs = 1;
    br[0].chain[0] = sq(b, n, "branch3x3", cin, 384, 3, 2);
    br[1].num_convs = 3;
    br[1].chain[0] = sq(b, n, "branch3x3dbl_1", cin, 64, 1, 1);
    br[1].chain[1] = sq(b, n, "branch3x3dbl_2", 64, 96, 3, 1);
    br[1].chain[2] = sq(b, n, "branch3x3dbl_3", 96, 96, 3, 2);
    br[2].pool = POOL_MAX_3X3_S2;
}

/* FIDInceptionC (torchvision InceptionC, factorised 7x7): 4 x 192 channels. */
static void build_c(dfc_param_builder *b, block *blk, const char *n, int cin, int c7)
{
    blk->num_branches = 4;
    branch *br = blk->br;
    br[0].num_convs = 1;
    br[0].chain[0] = sq(b, n, "branch1x1", cin, 192, 1, 1);
    br[1].num_convs = 3;
    br[1].chain[0] = sq(b, n, "branch7x7_1", cin, c7, 1, 1);
    br[1].chain[1] = wide(b, n, "branch7x7_2", c7, c7, 7);
    br[1].chain[2] = tall(b, n, "branch7x7_3", c7, 192, 7);
    br[2].num_convs = 5;
    br[2].chain[0] = sq(b, n, "branch7x7dbl_1", cin, c7, 1, 1);
    br[2].chain[1] = tall(b, n, "branch7x7dbl_2", c7, c7, 7);
    br[2].chain[2] = wide(b, n, "branch7x7dbl_3", c7, c7, 7);
    br[2].chain[3] = tall(b, n, "branch7x7dbl_4", c7, c7, 7);
    br[2].chain[4] = wide(b, n, "branch7x7dbl_5", c7, 192, 7);
    br[3].pool = POOL_AVG_3X3_S1;
    br[3].num_convs = 1;
    br[3].chain[0] = sq(b, n, "branch_pool", cin, 192, 1, 1);
}

/* InceptionD (grid reduction 17 -> 8): 320 + 192 + cin channels. */
static void build_d(dfc_param_builder *b, block *blk, const char *n, int cin)
{
    blk->num_branches = 3;
    branch *br = blk->br;
    br[0].num_convs = 2;
    br[0].chain[0] = sq(b, n, "branch3x3_1", cin, 192, 1, 1);
    br[0].chain[1] = sq(b, n, "branch3x3_2", 192, 320, 3, 2);
    br[1].num_convs = 4;
    br[1].chain[0] = sq(b, n, "branch7x7x3_1", cin, 192, 1, 1);
    br[1].chain[1] = wide(b, n, "branch7x7x3_2", 192, 192, 7);
    br[1].chain[2] = tall(b, n, "branch7x7x3_3", 192, 192, 7);
    br[1].chain[3] = sq(b, n, "branch7x7x3_4", 192, 192, 3, 2);
    br[2].pool = POOL_MAX_3X3_S2;
}

/* FIDInceptionE_1 / E_2 (torchvision InceptionE): 320 + 768 + 768 + 192 = 2048 channels. */
static void build_e(dfc_param_builder *b, block *blk, const char *n, int cin, pool_kind pool)
{
    blk->num_branches = 4;
    branch *br = blk->br;
    br[0].num_convs = 1;
    br[0].chain[0] = sq(b, n, "branch1x1", cin, 320, 1, 1);
    br[1].num_convs = 1;
    br[1].chain[0] = sq(b, n, "branch3x3_1", cin, 384, 1, 1);
    br[1].split = 1;
    br[1].split_conv[0] = wide(b, n, "branch3x3_2a", 384, 384, 3);
    br[1].split_conv[1] = tall(b, n, "branch3x3_2b", 384, 384, 3);
    br[2].num_convs = 2;
    br[2].chain[0] = sq(b, n, "branch3x3dbl_1", cin, 448, 1, 1);
    br[2].chain[1] = sq(b, n, "branch3x3dbl_2", 448, 384, 3, 1);
    br[2].split = 1;
    br[2].split_conv[0] = wide(b, n, "branch3x3dbl_3a", 384, 384, 3);
    br[2].split_conv[1] = tall(b, n, "branch3x3dbl_3b", 384, 384, 3);
    br[3].pool = pool;
    br[3].num_convs = 1;
    br[3].chain[0] = sq(b, n, "branch_pool", cin, 192, 1, 1);
}

/* Walked twice by dfc_param_set_build (b->owner: the dfc_inception), in state_dict order. */
static void build(dfc_param_builder *b)
{
    dfc_inception *net = b->owner;
    net->stem[0] = sq(b, NULL, "Conv2d_1a_3x3", 3, 32, 3, 2);
    net->stem[1] = build_basic(b, NULL, "Conv2d_2a_3x3", 32, 32, 3, 3, 1, 0, 0); /* unpadded */
    net->stem[2] = sq(b, NULL, "Conv2d_2b_3x3", 32, 64, 3, 1);
    net->stem[3] = sq(b, NULL, "Conv2d_3b_1x1", 64, 80, 1, 1);
    net->stem[4] = build_basic(b, NULL, "Conv2d_4a_3x3", 80, 192, 3, 3, 1, 0, 0); /* unpadded */
    block *k = net->blocks;
    build_a(b, &k[0], "Mixed_5b", 192, 32);
    build_a(b, &k[1], "Mixed_5c", 256, 64);
    build_a(b, &k[2], "Mixed_5d", 288, 64);
    build_b(b, &k[3], "Mixed_6a", 288);
    build_c(b, &k[4], "Mixed_6b", 768, 128);
    build_c(b, &k[5], "Mixed_6c", 768, 160);
    build_c(b, &k[6], "Mixed_6d", 768, 160);
    build_c(b, &k[7], "Mixed_6e", 768, 192);
    build_d(b, &k[8], "Mixed_7a", 768);
    build_e(b, &k[9], "Mixed_7b", 1280, POOL_AVG_3X3_S1);  /* FIDInceptionE_1 */
    build_e(b, &k[10], "Mixed_7c", 2048, POOL_MAX_3X3_S1); /* FIDInceptionE_2: max pool, a TF graph quirk */
}

static void inception_destroy(dfc_net *net)
{
    if (!net)
        return;
    dfc_param_set_free(&net->params);
    free(net);
}

static const dfc_net_vtable INCEPTION_VTABLE;
static const char *const OUTPUT_NAMES[1] = {"pool3"};

dfc_status dfc_inception_create(const dfc_inception_config *cfg, dfc_net **out, dfc_error *err)
{
    const char *op = "Inception config";
    *out = NULL;
    if (cfg->in_channels != 1 && cfg->in_channels != 3)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: in_channels must be 1 (grayscale) or 3 (RGB), got %d", op,
                        cfg->in_channels);
    if (cfg->resize != 0 && (cfg->resize < 75 || cfg->resize > 4096))
        return dfc_fail(err, DFC_ERR_VALUE, "%s: resize must be 0 (none) or a side from 75 to 4096, got %d", op,
                        cfg->resize);
    dfc_inception *net = calloc(1, sizeof *net);
    if (!net)
        return dfc_fail(err, DFC_ERR_NOMEM, "Inception: out of memory");
    net->cfg = *cfg;
    dfc_status st = dfc_param_set_build(&net->base.params, build, net, err);
    if (st != DFC_OK) {
        inception_destroy(&net->base);
        return st;
    }
    net->base.vt = &INCEPTION_VTABLE;
    net->base.in_channels = cfg->in_channels;
    net->base.num_outputs = 1;
    net->base.output_names[0] = OUTPUT_NAMES[0];
    *out = &net->base;
    return DFC_OK;
}

/* ---- forward ---- */

static dfc_status basic_forward(dfc_backend *be, const basic_conv *c, const dfc_tensor *x, dfc_arena *arena,
                                dfc_tensor *y, dfc_error *err)
{
    dfc_tensor h;
    DFC_TRY(dfc_conv_layer_forward(be, &c->conv, x, arena, &h, err));
    DFC_TRY(dfc_batch_norm_layer_forward(be, &c->bn, &h, arena, y, err));
    return be->ops->activation_forward(be, DFC_ACT_RELU, y, y, err);
}

/* y may alias x (the input view is copied first). */
static dfc_status pool_forward(dfc_backend *be, pool_kind kind, const dfc_tensor *x_in, dfc_arena *arena, dfc_tensor *y,
                               dfc_error *err)
{
    const dfc_tensor xv = *x_in, *x = &xv;
    dfc_pool2d_params p = {3, 3, 1, 1, 1, 1};
    if (kind == POOL_MAX_3X3_S2) {
        p.stride_h = p.stride_w = 2;
        p.pad_h = p.pad_w = 0;
    }
    int64_t ho = (x->shape[2] + 2 * p.pad_h - 3) / p.stride_h + 1;
    int64_t wo = (x->shape[3] + 2 * p.pad_w - 3) / p.stride_w + 1;
    *y = dfc_alloc4(arena, x->shape[0], x->shape[1], ho, wo, err);
    DFC_CHECK_ALLOC(*y);
    if (kind == POOL_AVG_3X3_S1)
        return be->ops->avg_pool2d_forward(be, x, p, y, err);
    return be->ops->max_pool2d_forward(be, x, p, y, err);
}

/* Every intermediate in tmp; the concatenated output too. */
static dfc_status block_forward(dfc_backend *be, const block *blk, const dfc_tensor *x, dfc_arena *tmp, dfc_tensor *y,
                                dfc_error *err)
{
    dfc_tensor pieces[MAX_PIECES];
    const dfc_tensor *parts[MAX_PIECES];
    int num_pieces = 0;
    int64_t channels = 0;
    for (int i = 0; i < blk->num_branches; i++) {
        const branch *br = &blk->br[i];
        dfc_tensor h = *x;
        if (br->pool != POOL_NONE)
            DFC_TRY(pool_forward(be, br->pool, x, tmp, &h, err));
        for (int c = 0; c < br->num_convs; c++)
            DFC_TRY(basic_forward(be, &br->chain[c], &h, tmp, &h, err));
        if (br->split) {
            for (int s = 0; s < 2; s++)
                DFC_TRY(basic_forward(be, &br->split_conv[s], &h, tmp, &pieces[num_pieces++], err));
        } else {
            pieces[num_pieces++] = h;
        }
    }
    for (int i = 0; i < num_pieces; i++) {
        parts[i] = &pieces[i];
        channels += pieces[i].shape[1];
    }
    *y = dfc_alloc4(tmp, x->shape[0], channels, pieces[0].shape[2], pieces[0].shape[3], err);
    DFC_CHECK_ALLOC(*y);
    return be->ops->concat_channels(be, parts, num_pieces, y, err);
}

/* The stage-by-stage memory discipline: a stage computes into tmp; its output is then moved to the bottom of the
 * arena region this forward owns (everything before is dead) and tmp is released, so memory stays at about one
 * stage's worth whatever the depth. Without a separate scratch arena everything simply stays in arena. */
typedef struct stage_memory {
    dfc_arena *arena, *tmp;
    dfc_arena_mark arena_start, tmp_start;
} stage_memory;

static dfc_status keep_stage_output(dfc_backend *be, stage_memory *m, dfc_tensor *h, dfc_error *err)
{
    if (m->tmp == m->arena)
        return DFC_OK;
    dfc_arena_reset(m->arena, m->arena_start);
    dfc_tensor kept = dfc_arena_tensor(m->arena, h->ndim, h->shape, err);
    DFC_CHECK_ALLOC(kept);
    DFC_TRY(dfc_copy_tensor(be, &kept, h, err));
    dfc_arena_reset(m->tmp, m->tmp_start);
    *h = kept;
    return DFC_OK;
}

/* x (N, 1 or 3, H, W) in [0, 1] -> 3 channels, resized, 2x - 1 (pytorch-fid InceptionV3.forward). */
static dfc_status input_forward(dfc_backend *be, const dfc_inception *net, const dfc_tensor *x, dfc_arena *tmp,
                                dfc_tensor *xn, dfc_error *err)
{
    static const float TWO[3] = {2.0f, 2.0f, 2.0f}, MINUS_ONE[3] = {-1.0f, -1.0f, -1.0f};
    int64_t n = x->shape[0], h = x->shape[2], w = x->shape[3];
    dfc_tensor x3 = *x;
    if (x->shape[1] == 1) { /* PIL convert('RGB') of a grayscale image: the same value in R, G and B */
        const dfc_tensor *parts[3] = {x, x, x};
        x3 = dfc_alloc4(tmp, n, 3, h, w, err);
        DFC_CHECK_ALLOC(x3);
        DFC_TRY(be->ops->concat_channels(be, parts, 3, &x3, err));
    }
    int side = net->cfg.resize;
    dfc_tensor xr = x3;
    if (side > 0 && (h != side || w != side)) {
        xr = dfc_alloc4(tmp, n, 3, side, side, err);
        DFC_CHECK_ALLOC(xr);
        DFC_TRY(be->ops->resize_bilinear_forward(be, &x3, &xr, err));
    }
    *xn = dfc_alloc4(tmp, n, 3, xr.shape[2], xr.shape[3], err);
    DFC_CHECK_ALLOC(*xn);
    dfc_tensor two, minus_one;
    DFC_TRY(dfc_channel_constants(be, tmp, TWO, 3, &two, err));
    DFC_TRY(dfc_channel_constants(be, tmp, MINUS_ONE, 3, &minus_one, err));
    DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_MUL, &xr, &two, xn, err));
    return be->ops->binary_forward(be, DFC_BINARY_ADD, xn, &minus_one, xn, err);
}

static dfc_status check_input(const dfc_net *base, const dfc_tensor *x, dfc_error *err)
{
    const dfc_inception *net = (const dfc_inception *)base;
    const char *op = "Inception.forward";
    DFC_TRY(dfc_check_image_input(x, op, "network", net->cfg.in_channels, err));
    if (x->shape[0] < 1 || x->shape[2] < 1 || x->shape[3] < 1)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: x is empty", op);
    if (net->cfg.resize == 0 && (x->shape[2] < 75 || x->shape[3] < 75))
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: x is %lldx%lld; without a resize Inception-v3 needs at least 75x75 pixels", op,
                        (long long)x->shape[2], (long long)x->shape[3]);
    return DFC_OK;
}

static dfc_status inception_forward(const dfc_net *base, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                    const dfc_tensor *x, void **tape, dfc_tensor *outputs, dfc_error *err)
{
    const dfc_inception *net = (const dfc_inception *)base;
    if (tape)
        return dfc_fail(err, DFC_ERR_VALUE, "Inception: forward only (no tape, no gradients)");
    DFC_TRY(check_input(base, x, err));
    stage_memory m = {arena, scratch ? scratch : arena, dfc_arena_get_mark(arena), {0}};
    m.tmp_start = dfc_arena_get_mark(m.tmp);
    dfc_tensor h;
    DFC_TRY(input_forward(be, net, x, m.tmp, &h, err));
    DFC_TRY(keep_stage_output(be, &m, &h, err));
    for (int i = 0; i < STEM_CONVS; i++) {
        DFC_TRY(basic_forward(be, &net->stem[i], &h, m.tmp, &h, err));
        if (i == 2 || i == 4) /* max pool 3x3/2 after Conv2d_2b_3x3 and Conv2d_4a_3x3 */
            DFC_TRY(pool_forward(be, POOL_MAX_3X3_S2, &h, m.tmp, &h, err));
        DFC_TRY(keep_stage_output(be, &m, &h, err));
    }
    for (int i = 0; i < NUM_BLOCKS; i++) {
        DFC_TRY(block_forward(be, &net->blocks[i], &h, m.tmp, &h, err));
        DFC_TRY(keep_stage_output(be, &m, &h, err));
    }
    /* pool3: adaptive average pool to 1x1 */
    outputs[0] = dfc_alloc2(arena, h.shape[0], h.shape[1], err);
    DFC_CHECK_ALLOC(outputs[0]);
    return be->ops->global_avg_pool_forward(be, &h, &outputs[0], err);
}

static dfc_status inception_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape,
                                     const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    (void)net, (void)be, (void)arena, (void)tape, (void)douts, (void)dx, (void)grads;
    return dfc_fail(err, DFC_ERR_VALUE, "Inception: forward only (FID features need no gradients)");
}

static const dfc_net_vtable INCEPTION_VTABLE = {
    .kind = "inception",
    .forward = inception_forward,
    .backward = inception_backward,
    .check_input = check_input,
    .destroy = inception_destroy,
};

#include "plane_classifier.h"

#include <stdlib.h>
#include <string.h>

#include "layers.h"
#include "segmenter.h"

/* ---- f(x) = l(s(x), x) ---- */

typedef struct plane_classifier {
    dfc_net base; /* first member: the composite is a dfc_net */
    dfc_plane_classifier_config cfg;
    dfc_net *seg, *cls;
    int64_t cls_offset; /* where l's gradients start in the composite's gradient buffer */
    void (*release)(void *ctx);
    void *release_ctx;
} plane_classifier;

typedef struct plane_classifier_tape {
    dfc_tensor x, seg_logits, maps, cat, logits;
    void *seg_tape, *cls_tape; /* seg_tape NULL: s ran as a constant */
} plane_classifier_tape;

static const char *const OUTPUT_NAMES[] = {"logits", "segmentation"};

static void release_children(dfc_net *seg, dfc_net *cls, void (*release)(void *), void *ctx)
{
    if (release) {
        release(ctx);
        return;
    }
    dfc_net_destroy(seg);
    dfc_net_destroy(cls);
}

static void plane_classifier_destroy(dfc_net *net)
{
    plane_classifier *f = (plane_classifier *)net;
    release_children(f->seg, f->cls, f->release, f->release_ctx);
    dfc_param_set_free(&f->base.params);
    free(f);
}

/* Registers every parameter of child under prefix, pointing at the child's values. */
static dfc_status register_child(dfc_param_set *set, const dfc_net *child, const char *prefix, dfc_error *err)
{
    const dfc_param_set *cs = &child->params;
    for (int i = 0; i < cs->count; i++) {
        const dfc_param_info *info = &cs->infos[i];
        if (dfc_param_register_external(set, info->ndim, info->shape, dfc_param_data(cs, i), err, "%s%s", prefix,
                                        info->name) < 0)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
    }
    return DFC_OK;
}

static const dfc_net_vtable PLANE_CLASSIFIER_VT;

dfc_status dfc_plane_classifier_create(const dfc_plane_classifier_config *cfg, dfc_net *seg, dfc_net *cls,
                                       void (*release)(void *ctx), void *release_ctx, dfc_net **out, dfc_error *err)
{
    const char *op = "PlaneClassifier";
    dfc_status st = DFC_OK;
    *out = NULL;
    if (!seg || !cls) {
        st = dfc_fail(err, DFC_ERR_VALUE, "%s: the segmenter and the classifier are both required", op);
        goto fail;
    }
    if (seg->num_outputs < 1 || cls->num_outputs < 1) {
        st = dfc_fail(err, DFC_ERR_VALUE, "%s: the segmenter and the classifier must have outputs", op);
        goto fail;
    }
    if (cfg->seg_input != DFC_SEG_INPUT_PROBABILITIES && cfg->seg_input != DFC_SEG_INPUT_LOGITS) {
        st = dfc_fail(err, DFC_ERR_VALUE, "%s: unknown segmentation input %d", op, (int)cfg->seg_input);
        goto fail;
    }
    if (strcmp(seg->vt->kind, "segmenter") == 0) { /* K is known: check l's first conv now, not at the first call */
        int k = dfc_segmenter_get_config(seg)->classes;
        if (cls->in_channels != seg->in_channels + k) {
            st = dfc_fail(err, DFC_ERR_VALUE,
                          "%s: the classifier takes %d input channels; it must take %d (%d image + %d segmentation "
                          "classes)",
                          op, cls->in_channels, seg->in_channels + k, seg->in_channels, k);
            goto fail;
        }
    } else if (cls->in_channels <= seg->in_channels) {
        st = dfc_fail(err, DFC_ERR_VALUE, "%s: the classifier takes %d input channels, no more than the image's %d", op,
                      cls->in_channels, seg->in_channels);
        goto fail;
    }
    plane_classifier *f = calloc(1, sizeof *f);
    if (!f) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "%s: out of memory", op);
        goto fail;
    }
    f->base.vt = &PLANE_CLASSIFIER_VT;
    f->base.num_outputs = 2;
    f->base.output_names[0] = OUTPUT_NAMES[0];
    f->base.output_names[1] = OUTPUT_NAMES[1];
    f->base.in_channels = seg->in_channels;
    f->cfg = *cfg;
    f->seg = seg;
    f->cls = cls;
    f->release = release;
    f->release_ctx = release_ctx;
    /* no buffer of its own (data stays NULL): every parameter is a child's */
    if ((st = register_child(&f->base.params, seg, "segmenter.", err)) != DFC_OK) {
        plane_classifier_destroy(&f->base);
        return st;
    }
    f->cls_offset = f->base.params.total;
    if ((st = register_child(&f->base.params, cls, "classifier.", err)) != DFC_OK) {
        plane_classifier_destroy(&f->base);
        return st;
    }
    *out = &f->base;
    return DFC_OK;
fail:
    release_children(seg, cls, release, release_ctx);
    return st;
}

/* x's shape (never its data): what s takes, and l at that size on [x, s's maps] */
static dfc_status plane_classifier_check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const plane_classifier *f = (const plane_classifier *)net;
    DFC_TRY(dfc_check_image_input(x, "PlaneClassifier.forward", "classifier", net->in_channels, err));
    DFC_TRY(dfc_net_check_input(f->seg, x, err));
    dfc_tensor cat = *x;
    cat.shape[1] = f->cls->in_channels;
    return dfc_net_check_input(f->cls, &cat, err);
}

static dfc_status plane_classifier_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                           const dfc_tensor *x, void **tape_out, dfc_tensor *outputs, dfc_error *err)
{
    const plane_classifier *f = (const plane_classifier *)net;
    const char *op = "PlaneClassifier.forward";
    DFC_TRY(plane_classifier_check_input(net, x, err));
    plane_classifier_tape *tape = NULL;
    if (tape_out) {
        tape = dfc_arena_host_alloc(arena, sizeof *tape, err);
        if (!tape)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        memset(tape, 0, sizeof *tape);
        tape->x = *x;
        *tape_out = tape;
    }
    int through = f->cfg.grad_through_segmenter;
    dfc_tensor seg_out[DFC_NET_MAX_OUTPUTS], cls_out[DFC_NET_MAX_OUTPUTS];
    DFC_TRY(
        dfc_net_forward(f->seg, be, arena, scratch, x, NULL, tape && through ? &tape->seg_tape : NULL, seg_out, err));
    const dfc_tensor *s = &seg_out[0];
    int64_t n = x->shape[0], h = x->shape[2], w = x->shape[3];
    if (s->ndim != 4 || s->shape[0] != n || s->shape[2] != h || s->shape[3] != w ||
        x->shape[1] + s->shape[1] != f->cls->in_channels)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: the segmenter gives %lld maps of %lldx%lld for a %lldx%lld image; the classifier takes "
                        "%d channels (image + maps)",
                        op, (long long)s->shape[1], (long long)s->shape[2], (long long)s->shape[3], (long long)h,
                        (long long)w, f->cls->in_channels);
    /* without a tape, the maps and the classifier's input only live until l has run */
    dfc_arena *tmp = tape || !scratch ? arena : scratch;
    dfc_arena_mark mark = dfc_arena_get_mark(tmp);
    dfc_tensor maps = *s;
    if (f->cfg.seg_input == DFC_SEG_INPUT_PROBABILITIES) {
        maps = dfc_alloc_like(tmp, s, err);
        DFC_CHECK_ALLOC(maps);
        DFC_TRY(be->ops->softmax_forward(be, s, 1, &maps, err)); /* over the K classes */
    }
    dfc_tensor cat = dfc_alloc4(tmp, n, f->cls->in_channels, h, w, err);
    DFC_CHECK_ALLOC(cat);
    const dfc_tensor *parts[2] = {x, &maps};
    DFC_TRY(be->ops->concat_channels(be, parts, 2, &cat, err));
    DFC_TRY(dfc_net_forward(f->cls, be, arena, scratch, &cat, NULL, tape ? &tape->cls_tape : NULL, cls_out, err));
    if (tmp == scratch)
        dfc_arena_reset(scratch, mark);
    const dfc_tensor *logits = &cls_out[0];
    if (logits->ndim != 2 || logits->shape[0] != n)
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s: the classifier's first output must be logits (N, classes) for N = %lld", op, (long long)n);
    outputs[0] = *logits;
    outputs[1] = *s;
    if (tape) {
        tape->seg_logits = *s;
        tape->maps = maps;
        tape->cat = cat;
        tape->logits = *logits;
    }
    return DFC_OK;
}

static dfc_status plane_classifier_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                            const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const plane_classifier *f = (const plane_classifier *)net;
    const plane_classifier_tape *tape = tape_ptr;
    const char *op = "PlaneClassifier.backward";
    if (!tape)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: no tape (run the forward with a tape first)", op);
    const dfc_tensor *dlogits = &douts[0], *dseg = &douts[1];
    if (dlogits->data)
        DFC_TRY(dfc_check_shape(dlogits, op, "dlogits", 2, tape->logits.shape, err));
    if (dseg->data) {
        if (!tape->seg_tape)
            return dfc_fail(err, DFC_ERR_VALUE,
                            "%s: a gradient for the segmentation was given, but "
                            "grad_through_segmenter is off (the segmenter is a constant)",
                            op);
        DFC_TRY(dfc_check_shape(dseg, op, "dsegmentation", 4, tape->seg_logits.shape, err));
    }
    if (dx)
        DFC_TRY(dfc_check_shape(dx, op, "dx", 4, tape->x.shape, err));
    float *seg_grads = grads, *cls_grads = grads ? grads + f->cls_offset : NULL;
    int64_t n = tape->x.shape[0], cx = tape->x.shape[1], h = tape->x.shape[2], w = tape->x.shape[3];
    int64_t k = tape->seg_logits.shape[1];

    /* l: the gradient of its input [x, maps] */
    dfc_tensor dx_img = {0}, dmaps = {0};
    if (dlogits->data) {
        dfc_tensor cls_douts[DFC_NET_MAX_OUTPUTS];
        memset(cls_douts, 0, sizeof cls_douts);
        cls_douts[0] = *dlogits;
        dfc_tensor dcat = dfc_alloc_like(arena, &tape->cat, err);
        DFC_CHECK_ALLOC(dcat);
        DFC_TRY(dfc_net_backward(f->cls, be, arena, tape->cls_tape, cls_douts, &dcat, cls_grads, err));
        dx_img = dfc_alloc4(arena, n, cx, h, w, err);
        DFC_CHECK_ALLOC(dx_img);
        dmaps = dfc_alloc4(arena, n, k, h, w, err);
        DFC_CHECK_ALLOC(dmaps);
        dfc_tensor *parts[2] = {&dx_img, &dmaps};
        DFC_TRY(be->ops->split_channels(be, &dcat, parts, 2, err));
    } else {
        DFC_TRY(dfc_zero_floats(be, cls_grads, f->cls->params.total, err));
    }

    /* s: the maps' gradient through the softmax, plus the segmentation output's own */
    dfc_tensor dseg_logits = {0};
    if (tape->seg_tape && dmaps.data) {
        if (f->cfg.seg_input == DFC_SEG_INPUT_PROBABILITIES) {
            dseg_logits = dfc_alloc_like(arena, &tape->seg_logits, err);
            DFC_CHECK_ALLOC(dseg_logits);
            DFC_TRY(be->ops->softmax_backward(be, &dmaps, &tape->maps, 1, &dseg_logits, err));
        } else {
            dseg_logits = dmaps;
        }
        if (dseg->data)
            DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dseg_logits, dseg, &dseg_logits, err));
    } else if (dseg->data) {
        dseg_logits = *dseg;
    }
    dfc_tensor dx_seg = {0};
    if (dseg_logits.data) {
        dfc_tensor seg_douts[DFC_NET_MAX_OUTPUTS];
        memset(seg_douts, 0, sizeof seg_douts);
        seg_douts[0] = dseg_logits;
        if (dx) {
            dx_seg = dfc_alloc_like(arena, &tape->x, err);
            DFC_CHECK_ALLOC(dx_seg);
        }
        DFC_TRY(dfc_net_backward(f->seg, be, arena, tape->seg_tape, seg_douts, dx ? &dx_seg : NULL, seg_grads, err));
    } else {
        DFC_TRY(dfc_zero_floats(be, seg_grads, f->seg->params.total, err));
    }

    if (dx) {
        if (dx_img.data && dx_seg.data)
            DFC_TRY(be->ops->binary_forward(be, DFC_BINARY_ADD, &dx_img, &dx_seg, dx, err));
        else if (dx_img.data || dx_seg.data)
            DFC_TRY(dfc_copy_tensor(be, dx, dx_img.data ? &dx_img : &dx_seg, err));
        else
            DFC_TRY(dfc_zero_floats(be, dx->data, dfc_numel(dx), err));
    }
    return DFC_OK;
}

static int plane_classifier_children(const dfc_net *net, const dfc_net **out, int max)
{
    const plane_classifier *f = (const plane_classifier *)net;
    if (max < 2)
        return 0;
    out[0] = f->seg;
    out[1] = f->cls;
    return 2;
}

static const dfc_net_vtable PLANE_CLASSIFIER_VT = {.kind = "plane_classifier",
                                                   .forward = plane_classifier_forward,
                                                   .backward = plane_classifier_backward,
                                                   .check_input = plane_classifier_check_input,
                                                   .destroy = plane_classifier_destroy,
                                                   .children = plane_classifier_children};

/* ---- the small stand-in classifier ---- */

typedef struct small_classifier {
    dfc_net base;
    dfc_small_classifier_config cfg;
    dfc_conv_layer conv1, conv2;
    dfc_linear_layer fc;
} small_classifier;

typedef struct small_classifier_tape {
    dfc_tensor x, a1, p1, a2, g;
} small_classifier_tape;

static const char *const SMALL_OUTPUT_NAMES[] = {"logits"};
static const dfc_pool2d_params POOL2 = {2, 2, 2, 2, 0, 0};

static void small_classifier_destroy(dfc_net *net)
{
    dfc_param_set_free(&net->params);
    free(net);
}

static const dfc_net_vtable SMALL_CLASSIFIER_VT;

dfc_status dfc_small_classifier_create(const dfc_small_classifier_config *cfg, dfc_net **out, dfc_error *err)
{
    *out = NULL;
    if (cfg->in_channels < 1 || cfg->width < 1 || cfg->num_classes < 1)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "SmallClassifier config: in_channels (%d), width (%d) and num_classes "
                        "(%d) must be positive",
                        cfg->in_channels, cfg->width, cfg->num_classes);
    small_classifier *c = calloc(1, sizeof *c);
    if (!c)
        return dfc_fail(err, DFC_ERR_NOMEM, "SmallClassifier: out of memory");
    c->base.vt = &SMALL_CLASSIFIER_VT;
    c->base.num_outputs = 1;
    c->base.output_names[0] = SMALL_OUTPUT_NAMES[0];
    c->base.in_channels = cfg->in_channels;
    c->cfg = *cfg;
    int w = cfg->width;
    int64_t s_w1[4] = {w, cfg->in_channels, 3, 3}, s_b1[1] = {w}, s_w2[4] = {2 * w, w, 3, 3}, s_b2[1] = {2 * w};
    int64_t s_fw[2] = {cfg->num_classes, 2 * w}, s_fb[1] = {cfg->num_classes};
    dfc_param_set *ps = &c->base.params;
    if (dfc_param_register(ps, 4, s_w1, err, "features.0.weight") < 0 ||
        dfc_param_register(ps, 1, s_b1, err, "features.0.bias") < 0 ||
        dfc_param_register(ps, 4, s_w2, err, "features.3.weight") < 0 ||
        dfc_param_register(ps, 1, s_b2, err, "features.3.bias") < 0 ||
        dfc_param_register(ps, 2, s_fw, err, "fc.weight") < 0 || dfc_param_register(ps, 1, s_fb, err, "fc.bias") < 0 ||
        dfc_param_set_allocate(ps, err) != DFC_OK) {
        small_classifier_destroy(&c->base);
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    }
    dfc_conv2d_params same = {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1};
    c->conv1.weight = dfc_param_view(ps, 0);
    c->conv1.bias = dfc_param_view(ps, 1);
    c->conv1.p = same;
    c->conv2.weight = dfc_param_view(ps, 2);
    c->conv2.bias = dfc_param_view(ps, 3);
    c->conv2.p = same;
    c->fc.weight = dfc_param_view(ps, 4);
    c->fc.bias = dfc_param_view(ps, 5);
    *out = &c->base;
    return DFC_OK;
}

/* ReLUs run in place: relu(v) > 0 exactly when v > 0, so the output is the backward's mask. */
static dfc_status small_classifier_check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    const char *op = "SmallClassifier.forward";
    DFC_TRY(dfc_check_image_input(x, op, "classifier", net->in_channels, err));
    if (x->shape[2] < 2 || x->shape[3] < 2 || x->shape[2] % 2 || x->shape[3] % 2)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: x is %lldx%lld; height and width must be even", op,
                        (long long)x->shape[2], (long long)x->shape[3]);
    return DFC_OK;
}

static dfc_status small_classifier_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                           const dfc_tensor *x, void **tape_out, dfc_tensor *outputs, dfc_error *err)
{
    const small_classifier *c = (const small_classifier *)net;
    DFC_TRY(small_classifier_check_input(net, x, err));
    dfc_arena *tmp = tape_out || !scratch ? arena : scratch;
    dfc_arena_mark mark = dfc_arena_get_mark(tmp);
    dfc_tensor a1, p1, a2, g;
    DFC_TRY(dfc_conv_layer_forward(be, &c->conv1, x, tmp, &a1, err));
    DFC_TRY(be->ops->activation_forward(be, DFC_ACT_RELU, &a1, &a1, err));
    p1 = dfc_alloc4(tmp, a1.shape[0], a1.shape[1], a1.shape[2] / 2, a1.shape[3] / 2, err);
    DFC_CHECK_ALLOC(p1);
    DFC_TRY(be->ops->max_pool2d_forward(be, &a1, POOL2, &p1, err));
    DFC_TRY(dfc_conv_layer_forward(be, &c->conv2, &p1, tmp, &a2, err));
    DFC_TRY(be->ops->activation_forward(be, DFC_ACT_RELU, &a2, &a2, err));
    g = dfc_alloc2(arena, a2.shape[0], a2.shape[1], err);
    DFC_CHECK_ALLOC(g);
    DFC_TRY(be->ops->global_avg_pool_forward(be, &a2, &g, err));
    DFC_TRY(dfc_linear_layer_forward(be, &c->fc, &g, arena, &outputs[0], err));
    if (tape_out) {
        small_classifier_tape *t = dfc_arena_host_alloc(arena, sizeof *t, err);
        if (!t)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        small_classifier_tape saved = {*x, a1, p1, a2, g};
        *t = saved;
        *tape_out = t;
    } else if (tmp == scratch) {
        dfc_arena_reset(scratch, mark);
    }
    return DFC_OK;
}

static dfc_status small_classifier_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape_ptr,
                                            const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    const small_classifier *c = (const small_classifier *)net;
    const small_classifier_tape *t = tape_ptr;
    const char *op = "SmallClassifier.backward";
    if (!t)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: no tape (run the forward with a tape first)", op);
    if (dx)
        DFC_TRY(dfc_check_shape(dx, op, "dx", 4, t->x.shape, err));
    if (!douts[0].data) {
        DFC_TRY(dfc_zero_floats(be, dx ? dx->data : NULL, dx ? dfc_numel(dx) : 0, err));
        return dfc_zero_floats(be, grads, net->params.total, err);
    }
    int64_t want[2] = {t->x.shape[0], c->cfg.num_classes};
    DFC_TRY(dfc_check_shape(&douts[0], op, "dlogits", 2, want, err));
    dfc_grad_target g = {&net->params, grads};
    dfc_tensor dg, da2, dc2, dp1, da1, dc1, dxi;
    DFC_TRY(dfc_linear_layer_backward(be, &c->fc, &t->g, &douts[0], arena, &dg, g, err));
    da2 = dfc_alloc_like(arena, &t->a2, err);
    DFC_CHECK_ALLOC(da2);
    DFC_TRY(be->ops->global_avg_pool_backward(be, &dg, &da2, err));
    DFC_TRY(dfc_activation_backward_new(be, DFC_ACT_RELU, &da2, &t->a2, arena, &dc2, err));
    DFC_TRY(dfc_conv_layer_backward(be, &c->conv2, &t->p1, &dc2, arena, &dp1, g, err));
    da1 = dfc_alloc_like(arena, &t->a1, err);
    DFC_CHECK_ALLOC(da1);
    DFC_TRY(be->ops->max_pool2d_backward(be, &dp1, &t->a1, POOL2, &da1, err));
    DFC_TRY(dfc_activation_backward_new(be, DFC_ACT_RELU, &da1, &t->a1, arena, &dc1, err));
    DFC_TRY(dfc_conv_layer_backward(be, &c->conv1, &t->x, &dc1, arena, dx ? &dxi : NULL, g, err));
    return dx ? dfc_copy_tensor(be, dx, &dxi, err) : DFC_OK;
}

static const dfc_net_vtable SMALL_CLASSIFIER_VT = {.kind = "small_classifier",
                                                   .forward = small_classifier_forward,
                                                   .backward = small_classifier_backward,
                                                   .check_input = small_classifier_check_input,
                                                   .destroy = small_classifier_destroy};

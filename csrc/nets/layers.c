#include "layers.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parameter sets ---- */

static int register_va(dfc_param_set *set, int ndim, const int64_t *shape, float *external, dfc_error *err,
                       const char *fmt, va_list ap)
{
    if (set->count == set->capacity) {
        int grown = set->capacity ? 2 * set->capacity : 64;
        dfc_param_info *infos = realloc(set->infos, (size_t)grown * sizeof *infos);
        if (!infos) {
            dfc_fail(err, DFC_ERR_NOMEM, "parameters: out of memory");
            return -1;
        }
        set->infos = infos;
        set->capacity = grown;
    }
    dfc_param_info *info = &set->infos[set->count];
    memset(info, 0, sizeof *info);
    vsnprintf(info->name, sizeof info->name, fmt, ap);
    info->external = external;
    info->ndim = ndim;
    int64_t n = 1;
    for (int i = 0; i < DFC_MAX_DIMS; i++) {
        info->shape[i] = i < ndim ? shape[i] : 1;
        n *= info->shape[i];
    }
    info->offset = set->total;
    set->total += n;
    return set->count++;
}

int dfc_param_register(dfc_param_set *set, int ndim, const int64_t *shape, dfc_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int index = register_va(set, ndim, shape, NULL, err, fmt, ap);
    va_end(ap);
    return index;
}

int dfc_param_register_external(dfc_param_set *set, int ndim, const int64_t *shape, float *external, dfc_error *err,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int index = register_va(set, ndim, shape, external, err, fmt, ap);
    va_end(ap);
    return index;
}

dfc_tensor dfc_builder_param(dfc_param_builder *b, int ndim, const int64_t *shape, const char *fmt, ...)
{
    dfc_tensor t = {NULL, ndim, {1, 1, 1, 1}};
    if (b->failed)
        return t;
    if (b->binding) {
        /* the second walk must retrace the first: a build function that branched differently is a bug, reported
         * instead of reading past the registered parameters */
        if (b->next >= b->set->count || b->set->infos[b->next].ndim != ndim) {
            b->failed = 1;
            dfc_fail(b->err, DFC_ERR_VALUE,
                     "parameters: the binding pass differs from the registering pass at "
                     "parameter %d of %d",
                     b->next, b->set->count);
            return t;
        }
        return dfc_param_view(b->set, b->next++);
    }
    va_list ap;
    va_start(ap, fmt);
    if (register_va(b->set, ndim, shape, NULL, b->err, fmt, ap) < 0)
        b->failed = 1;
    va_end(ap);
    return t;
}

dfc_status dfc_param_set_build(dfc_param_set *set, dfc_param_build_fn build, void *owner, dfc_error *err)
{
    set->build = build;
    set->owner = owner;
    dfc_param_builder b = {set, owner, 0, 0, 0, err};
    build(&b);
    if (b.failed || dfc_param_set_allocate(set, err) != DFC_OK) /* either has reported into err */
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    b.binding = 1;
    build(&b);
    if (b.failed) /* dfc_builder_param has reported into err */
        return err && err->code ? err->code : DFC_ERR_VALUE;
    if (b.next != set->count)
        return dfc_fail(err, DFC_ERR_VALUE, "parameters: the binding pass visited %d of %d parameters", b.next,
                        set->count);
    set->bound = set->data;
    return DFC_OK;
}

/* Re-runs the binding walk with the views based at target (same layout as data). */
static dfc_status rebind_views(dfc_param_set *set, float *target, dfc_error *err)
{
    float *host = set->data;
    set->data = target; /* dfc_param_view bases the views on set->data */
    dfc_param_builder b = {set, set->owner, 1, 0, 0, err};
    set->build(&b);
    set->data = host;
    if (b.failed)
        return err && err->code ? err->code : DFC_ERR_VALUE;
    set->bound = target;
    return DFC_OK;
}

static void free_device_copy(dfc_param_set *set)
{
    if (set->device_data)
        set->device->iface->free(set->device, set->device_data);
    set->device_data = NULL;
    set->device = NULL;
}

dfc_status dfc_param_set_bind(dfc_param_set *set, dfc_backend *be, int refresh, dfc_error *err)
{
    if (!set->build || !set->data)
        return DFC_OK;
    if (be->iface->host_memory)
        return set->bound == set->data ? DFC_OK : rebind_views(set, set->data, err);
    const size_t bytes = (size_t)(set->total > 0 ? set->total : 1) * sizeof(float);
    if (set->device != be) {
        if (set->bound == set->device_data)
            DFC_TRY(rebind_views(set, set->data, err)); /* no view may outlive the copy it points into */
        free_device_copy(set);
        set->device_data = be->iface->alloc(be, bytes, err);
        if (!set->device_data)
            return err && err->code ? err->code : DFC_ERR_NOMEM;
        set->device = be;
        refresh = 1;
    }
    if (refresh)
        DFC_TRY(be->iface->copy_from_host(be, set->device_data, set->data, bytes, err));
    return set->bound == set->device_data ? DFC_OK : rebind_views(set, set->device_data, err);
}

float *dfc_param_data(const dfc_param_set *set, int index)
{
    const dfc_param_info *info = &set->infos[index];
    return info->external ? info->external : set->data + info->offset;
}

dfc_status dfc_param_set_allocate(dfc_param_set *set, dfc_error *err)
{
    free(set->data);
    set->data = calloc((size_t)(set->total > 0 ? set->total : 1), sizeof(float));
    if (!set->data)
        return dfc_fail(err, DFC_ERR_NOMEM, "parameters: cannot allocate %lld floats", (long long)set->total);
    return DFC_OK;
}

dfc_tensor dfc_param_view(const dfc_param_set *set, int index)
{
    const dfc_param_info *info = &set->infos[index];
    dfc_tensor t = {dfc_param_data(set, index), info->ndim, {1, 1, 1, 1}};
    for (int i = 0; i < info->ndim; i++)
        t.shape[i] = info->shape[i];
    return t;
}

void dfc_param_set_free(dfc_param_set *set)
{
    free_device_copy(set);
    free(set->infos);
    free(set->data);
    memset(set, 0, sizeof *set);
}

dfc_tensor dfc_param_grad(const dfc_param_set *set, const dfc_tensor *p, float *grads)
{
    dfc_tensor g = *p;
    g.data = (grads && p->data) ? grads + (p->data - set->data) : NULL;
    return g;
}

/* ---- allocation helpers ---- */

dfc_tensor dfc_alloc_like(dfc_arena *arena, const dfc_tensor *x, dfc_error *err)
{
    return dfc_arena_tensor(arena, x->ndim, x->shape, err);
}

dfc_tensor dfc_alloc4(dfc_arena *arena, int64_t n, int64_t c, int64_t h, int64_t w, dfc_error *err)
{
    int64_t shape[4] = {n, c, h, w};
    return dfc_arena_tensor(arena, 4, shape, err);
}

dfc_tensor dfc_alloc2(dfc_arena *arena, int64_t n, int64_t c, dfc_error *err)
{
    int64_t shape[2] = {n, c};
    return dfc_arena_tensor(arena, 2, shape, err);
}

dfc_status dfc_check_image_input(const dfc_tensor *x, const char *op, const char *what, int channels, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 4, 4, err));
    if (x->shape[1] != channels)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: x has %lld channels, the %s takes %d", op, (long long)x->shape[1],
                        what, channels);
    return DFC_OK;
}

dfc_status dfc_zero_floats(dfc_backend *be, float *data, int64_t count, dfc_error *err)
{
    if (!data || count <= 0)
        return DFC_OK;
    dfc_tensor t = dfc_tensor1(data, count);
    return be->ops->fill(be, 0.0f, &t, err);
}

/* One of a backend's memory functions that move bytes: copy, copy_from_host, copy_to_host (the same signature). */
typedef dfc_status (*memory_copy_fn)(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err);

/* dst = src through copy. */
static dfc_status copy_tensor_with(dfc_backend *be, memory_copy_fn copy, dfc_tensor *dst, const dfc_tensor *src,
                                   dfc_error *err)
{
    const int64_t n = dfc_numel(src);
    if (dfc_numel(dst) != n)
        return dfc_fail(err, DFC_ERR_SHAPE, "copy: the destination holds %lld values, the source %lld",
                        (long long)dfc_numel(dst), (long long)n);
    return copy(be, dst->data, src->data, (size_t)n * sizeof(float), err);
}

dfc_status dfc_copy_tensor(dfc_backend *be, dfc_tensor *dst, const dfc_tensor *src, dfc_error *err)
{
    return copy_tensor_with(be, be->iface->copy, dst, src, err);
}

dfc_status dfc_result_scope_begin(dfc_arena *arena, const dfc_tensor *like, dfc_result_scope *scope, dfc_error *err)
{
    scope->result = (dfc_tensor){0};
    if (like) {
        scope->result = dfc_alloc_like(arena, like, err);
        DFC_CHECK_ALLOC(scope->result);
    }
    scope->mark = dfc_arena_get_mark(arena);
    return DFC_OK;
}

dfc_status dfc_result_scope_end(dfc_backend *be, dfc_arena *arena, const dfc_result_scope *scope, dfc_status st,
                                const dfc_tensor *d, dfc_tensor *out, dfc_error *err)
{
    dfc_tensor result = scope->result;
    if (st == DFC_OK && result.data)
        st = dfc_copy_tensor(be, &result, d, err);
    dfc_arena_reset(arena, scope->mark);
    *out = result;
    return st;
}

dfc_status dfc_copy_tensor_from_host(dfc_backend *be, dfc_tensor *dst, const dfc_tensor *host_src, dfc_error *err)
{
    return copy_tensor_with(be, be->iface->copy_from_host, dst, host_src, err);
}

dfc_status dfc_copy_tensor_to_host(dfc_backend *be, dfc_tensor *host_dst, const dfc_tensor *src, dfc_error *err)
{
    return copy_tensor_with(be, be->iface->copy_to_host, host_dst, src, err);
}

dfc_status dfc_input_into_arena(dfc_backend *be, dfc_arena *arena, dfc_tensor *t, dfc_error *err)
{
    if (!t->data)
        return DFC_OK;
    dfc_tensor copy = dfc_arena_tensor(arena, t->ndim, t->shape, err);
    DFC_CHECK_ALLOC(copy);
    DFC_TRY(dfc_copy_tensor_from_host(be, &copy, t, err));
    *t = copy;
    return DFC_OK;
}

dfc_status dfc_output_in_arena(dfc_arena *arena, const dfc_tensor *host, dfc_tensor *t, dfc_error *err)
{
    *t = *host;
    if (!host->data)
        return DFC_OK;
    *t = dfc_arena_zeros(arena, host->ndim, host->shape, err); /* as the zero-filled host output it stands for */
    DFC_CHECK_ALLOC(*t);
    return DFC_OK;
}

dfc_status dfc_run_staged(dfc_backend *be, dfc_staged_tensor *tensors, int count,
                          dfc_status (*run)(dfc_backend *be, void *ctx, dfc_error *err), void *ctx, dfc_error *err)
{
    dfc_status st = DFC_OK;
    int moved = 0;
    for (; moved < count && st == DFC_OK; moved++) {
        dfc_tensor *t = tensors[moved].t;
        const size_t bytes = (size_t)dfc_numel(t) * sizeof(float);
        float *device = be->iface->alloc(be, bytes, err);
        if (!device) {
            st = err->code ? err->code : DFC_ERR_NOMEM;
            break;
        }
        tensors[moved].host = t->data;
        t->data = device;
        st = tensors[moved].copy_in ? be->iface->copy_from_host(be, device, tensors[moved].host, bytes, err)
                                    : be->iface->zero(be, device, bytes, err);
    }
    if (st == DFC_OK)
        st = run(be, ctx, err);
    for (int k = 0; k < moved; k++) {
        dfc_tensor *t = tensors[k].t;
        if (st == DFC_OK && tensors[k].copy_back)
            st = be->iface->copy_to_host(be, tensors[k].host, t->data, (size_t)dfc_numel(t) * sizeof(float), err);
    }
    for (int k = 0; k < moved; k++) {
        be->iface->free(be, tensors[k].t->data);
        tensors[k].t->data = tensors[k].host;
    }
    return st;
}

dfc_status dfc_channel_constants(dfc_backend *be, dfc_arena *arena, const float *values, int64_t count, dfc_tensor *out,
                                 dfc_error *err)
{
    *out = dfc_alloc4(arena, 1, count, 1, 1, err);
    DFC_CHECK_ALLOC(*out);
    return be->iface->copy_from_host(be, out->data, values, (size_t)count * sizeof(float), err);
}

dfc_status dfc_add_new(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_arena *arena, dfc_tensor *y,
                       dfc_error *err)
{
    *y = dfc_alloc_like(arena, a, err);
    DFC_CHECK_ALLOC(*y);
    return be->ops->binary_forward(be, DFC_BINARY_ADD, a, b, y, err);
}

/* ---- conv ---- */

/* A 1-D conv weight (Co, Ci, K) is the 2-D weight (Co, Ci, 1, K) acting on (N, C, 1, T)... guided-diffusion only
 * uses 1x1 1-D convs, which are simply (Co, Ci, 1, 1) on (N, C, T, 1). */
static dfc_tensor as_conv_weight(const dfc_tensor *w)
{
    dfc_tensor t = *w;
    for (int i = w->ndim; i < 4; i++)
        t.shape[i] = 1;
    t.ndim = 4;
    return t;
}

static dfc_tensor as_image(const dfc_tensor *x)
{
    dfc_tensor t = *x;
    for (int i = x->ndim; i < 4; i++)
        t.shape[i] = 1;
    t.ndim = 4;
    return t;
}

dfc_status dfc_conv_layer_forward(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, dfc_arena *arena,
                                  dfc_tensor *y, dfc_error *err)
{
    return dfc_conv_layer_forward_reusing(be, l, x, NULL, arena, y, err);
}

dfc_tensor dfc_conv_layer_output_shape(const dfc_conv_layer *l, const dfc_tensor *x)
{
    dfc_tensor w = as_conv_weight(&l->weight), xi = as_image(x);
    int64_t ho = (xi.shape[2] + 2 * l->p.pad_h - w.shape[2]) / l->p.stride_h + 1;
    int64_t wo = (xi.shape[3] + 2 * l->p.pad_w - w.shape[3]) / l->p.stride_w + 1;
    return dfc_tensor4(NULL, xi.shape[0], w.shape[0], ho, wo);
}

dfc_status dfc_conv_layer_forward_reusing(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x,
                                          const dfc_tensor *spare, dfc_arena *arena, dfc_tensor *y, dfc_error *err)
{
    return dfc_conv_layer_forward_layout(be, l, x, 0, 0, spare, arena, y, err);
}

dfc_status dfc_conv_layer_forward_layout(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, int x_nhwc,
                                         int y_nhwc, const dfc_tensor *spare, dfc_arena *arena, dfc_tensor *y,
                                         dfc_error *err)
{
    dfc_tensor w = as_conv_weight(&l->weight), xi = as_image(x), yi = dfc_conv_layer_output_shape(l, x);
    if (spare && dfc_numel(spare) >= dfc_numel(&yi))
        yi.data = spare->data;
    else
        yi = dfc_alloc_like(arena, &yi, err);
    DFC_CHECK_ALLOC(yi);
    dfc_conv2d_params p = l->p;
    p.x_nhwc = x_nhwc;
    p.y_nhwc = y_nhwc;
    DFC_TRY(be->ops->conv2d_forward(be, &xi, &w, l->bias.data ? &l->bias : NULL, p, &yi, err));
    *y = yi;
    if (x->ndim == 3) { /* keep (N, C, T) sequences as sequences */
        y->ndim = 3;
        y->shape[3] = 1;
    }
    return DFC_OK;
}

dfc_status dfc_conv_layer_backward(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, const dfc_tensor *dy,
                                   dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g, dfc_error *err)
{
    dfc_tensor w = as_conv_weight(&l->weight), xi = as_image(x), dyi = as_image(dy);
    if (dx) {
        *dx = dfc_alloc_like(arena, x, err);
        DFC_CHECK_ALLOC(*dx);
        dfc_tensor dxi = as_image(dx);
        DFC_TRY(be->ops->conv2d_backward_input(be, &dyi, &w, l->p, &dxi, err));
    }
    if (g.grads) {
        dfc_tensor dw = dfc_param_grad(g.set, &l->weight, g.grads), db = dfc_param_grad(g.set, &l->bias, g.grads);
        dfc_tensor dwi = as_conv_weight(&dw);
        DFC_TRY(be->ops->conv2d_backward_weight(be, &dyi, &xi, l->p, &dwi, db.data ? &db : NULL, err));
    }
    return DFC_OK;
}

/* ---- linear ---- */

dfc_status dfc_linear_layer_forward(dfc_backend *be, const dfc_linear_layer *l, const dfc_tensor *x, dfc_arena *arena,
                                    dfc_tensor *y, dfc_error *err)
{
    *y = dfc_alloc2(arena, x->shape[0], l->weight.shape[0], err);
    DFC_CHECK_ALLOC(*y);
    return be->ops->linear_forward(be, x, &l->weight, l->bias.data ? &l->bias : NULL, y, err);
}

dfc_status dfc_linear_layer_backward(dfc_backend *be, const dfc_linear_layer *l, const dfc_tensor *x,
                                     const dfc_tensor *dy, dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g,
                                     dfc_error *err)
{
    if (dx) {
        *dx = dfc_alloc_like(arena, x, err);
        DFC_CHECK_ALLOC(*dx);
        DFC_TRY(be->ops->linear_backward_input(be, dy, &l->weight, dx, err));
    }
    if (g.grads) {
        dfc_tensor dw = dfc_param_grad(g.set, &l->weight, g.grads), db = dfc_param_grad(g.set, &l->bias, g.grads);
        DFC_TRY(be->ops->linear_backward_weight(be, dy, x, &dw, db.data ? &db : NULL, err));
    }
    return DFC_OK;
}

/* ---- group norm ---- */

dfc_status dfc_group_norm_layer_forward(dfc_backend *be, const dfc_group_norm_layer *l, const dfc_tensor *x,
                                        dfc_arena *arena, dfc_tensor *y, dfc_tensor *mean, dfc_tensor *rstd,
                                        dfc_error *err)
{
    *y = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*y);
    *mean = dfc_alloc2(arena, x->shape[0], l->groups, err);
    DFC_CHECK_ALLOC(*mean);
    *rstd = dfc_alloc2(arena, x->shape[0], l->groups, err);
    DFC_CHECK_ALLOC(*rstd);
    return be->ops->group_norm_forward(be, x, &l->weight, &l->bias, l->groups, l->eps, y, mean, rstd, err);
}

dfc_status dfc_group_norm_layer_backward(dfc_backend *be, const dfc_group_norm_layer *l, const dfc_tensor *x,
                                         const dfc_tensor *mean, const dfc_tensor *rstd, const dfc_tensor *dy,
                                         dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g, dfc_error *err)
{
    *dx = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*dx);
    dfc_tensor dgamma = dfc_param_grad(g.set, &l->weight, g.grads), dbeta = dfc_param_grad(g.set, &l->bias, g.grads);
    return be->ops->group_norm_backward(be, dy, x, &l->weight, mean, rstd, l->groups, l->eps, dx,
                                        dgamma.data ? &dgamma : NULL, dbeta.data ? &dbeta : NULL, err);
}

/* ---- batch norm (inference) ---- */

dfc_status dfc_batch_norm_layer_forward(dfc_backend *be, const dfc_batch_norm_layer *l, const dfc_tensor *x,
                                        dfc_arena *arena, dfc_tensor *y, dfc_error *err)
{
    *y = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*y);
    return be->ops->batch_norm_forward(be, x, l->weight.data ? &l->weight : NULL, l->bias.data ? &l->bias : NULL,
                                       &l->running_mean, &l->running_var, l->eps, y, err);
}

dfc_status dfc_batch_norm_layer_backward(dfc_backend *be, const dfc_batch_norm_layer *l, const dfc_tensor *x,
                                         const dfc_tensor *dy, dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g,
                                         dfc_error *err)
{
    *dx = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*dx);
    dfc_tensor dgamma = dfc_param_grad(g.set, &l->weight, g.grads), dbeta = dfc_param_grad(g.set, &l->bias, g.grads);
    return be->ops->batch_norm_backward(be, dy, x, l->weight.data ? &l->weight : NULL, &l->running_mean,
                                        &l->running_var, l->eps, dx, dgamma.data ? &dgamma : NULL,
                                        dbeta.data ? &dbeta : NULL, err);
}

/* ---- activations ---- */

dfc_status dfc_activation_new(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_arena *arena,
                              dfc_tensor *y, dfc_error *err)
{
    *y = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*y);
    return be->ops->activation_forward(be, kind, x, y, err);
}

dfc_status dfc_activation_backward_new(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                       dfc_arena *arena, dfc_tensor *dx, dfc_error *err)
{
    *dx = dfc_alloc_like(arena, x, err);
    DFC_CHECK_ALLOC(*dx);
    return be->ops->activation_backward(be, kind, dy, x, dx, err);
}

/* Parameterised layers shared by every network (UNet, SonoNet, ResNet, segmenter): each is its parameters
 * (views into the network's single parameter buffer) plus a forward that allocates its output from an arena and
 * a backward that produces the input gradient and, when asked, the parameter gradients. Forward and backward
 * of each layer sit side by side. Parameter gradients are written into a gradient buffer laid out exactly like
 * the parameter buffer, so the gradient of a view is found by offset (dfc_param_grad). */
#ifndef DIFFICE_LAYERS_H
#define DIFFICE_LAYERS_H

#include "../core/arena.h"
#include "../ops/ops.h"

/* A network's parameters: one buffer, named views in registration order (the PyTorch module paths). */
#define DFC_PARAM_NAME_LEN 96

typedef struct dfc_param_info {
    char name[DFC_PARAM_NAME_LEN];
    int ndim;
    int64_t shape[DFC_MAX_DIMS];
    int64_t offset;  /* in floats, into the parameter buffer (and the gradient buffer) */
    float *external; /* non-NULL: the values live elsewhere (a composite network's child), not in data */
} dfc_param_info;

typedef struct dfc_param_builder dfc_param_builder;
typedef void (*dfc_param_build_fn)(dfc_param_builder *b);

typedef struct dfc_param_set {
    dfc_param_info *infos;
    int count, capacity;
    int64_t total; /* floats */
    float *data;   /* the parameter buffer (allocated by dfc_param_set_allocate): host memory, what Python sees */
    /* A backend whose memory is not host memory (a GPU) gets a copy of data in its memory, and the network's views
     * are re-pointed at it while the network runs there (dfc_param_set_bind). */
    dfc_param_build_fn build; /* recorded by dfc_param_set_build: the binding walk that re-points the views */
    void *owner;
    const float *bound;  /* the buffer the views point into now (data or device_data) */
    dfc_backend *device; /* whose memory device_data is; not owned (its owner outlives the copy) */
    float *device_data;
} dfc_param_set;

/* Registers a parameter (name formatted printf-style); records its offset; returns 0 on out-of-memory. */
int dfc_param_register(dfc_param_set *set, int ndim, const int64_t *shape, dfc_error *err, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Registers a parameter whose values another set owns (a child network of a composite): it takes an offset in
 * this set's layout, so gradients of the composite are one buffer, but no space in this set's data. */
int dfc_param_register_external(dfc_param_set *set, int ndim, const int64_t *shape, float *external, dfc_error *err,
                                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Where parameter `index`'s values are. */
float *dfc_param_data(const dfc_param_set *set, int index);
/* Networks are built twice with the same code: first registering each parameter (name, shape) in state_dict order,
 * then, once the buffer exists, binding the views in the same order. A network's build walks its structure and
 * takes each parameter from dfc_builder_param; dfc_param_set_build runs it around the allocation. */
struct dfc_param_builder {
    dfc_param_set *set;
    void *owner; /* the network being built, for its build function */
    int binding; /* 0: registering names and shapes; 1: binding views to the allocated buffer */
    int next;    /* binding: index of the next view */
    int failed;  /* registering: a registration failed (err is set); later parameters are skipped */
    dfc_error *err;
};

/* Registering: registers the named parameter and returns an empty view (data NULL). Binding: returns the next
 * view. */
dfc_tensor dfc_builder_param(dfc_param_builder *b, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Runs build registering, allocates set's buffer, runs build again binding; owner is handed to build as b->owner.
 * On failure the set holds whatever was registered (the caller frees it with its network). */
dfc_status dfc_param_set_build(dfc_param_set *set, dfc_param_build_fn build, void *owner, dfc_error *err);
/* Allocates the zeroed buffer once all parameters are registered. */
dfc_status dfc_param_set_allocate(dfc_param_set *set, dfc_error *err);
/* The view of parameter `index` (its data valid once the buffer is allocated). */
dfc_tensor dfc_param_view(const dfc_param_set *set, int index);
void dfc_param_set_free(dfc_param_set *set);
/* Points the views at the buffer be computes on: data for a host-memory backend; else a copy in be's memory, made
 * on first use (or when be changed) and refreshed from data when refresh is set (the host values may have changed:
 * every call from Python refreshes, the calls inside one run do not). A set without a build function (a composite
 * whose values are its children's) has nothing to bind. */
dfc_status dfc_param_set_bind(dfc_param_set *set, dfc_backend *be, int refresh, dfc_error *err);

/* The gradient view of parameter view p, in a buffer laid out like set->data (NULL data if grads is NULL). */
dfc_tensor dfc_param_grad(const dfc_param_set *set, const dfc_tensor *p, float *grads);

/* ---- layers ---- */

typedef struct dfc_conv_layer {
    dfc_tensor weight; /* (Co, Ci, KH, KW); a 1-D conv's (Co, Ci, 1) weight is viewed with KW = 1 */
    dfc_tensor bias;   /* (Co), data NULL when absent */
    dfc_conv2d_params p;
} dfc_conv_layer;

typedef struct dfc_linear_layer {
    dfc_tensor weight; /* (Out, In) */
    dfc_tensor bias;   /* (Out) */
} dfc_linear_layer;

typedef struct dfc_group_norm_layer {
    dfc_tensor weight, bias; /* (C) */
    int groups;
    float eps;
} dfc_group_norm_layer;

/* Batch norm in inference form (running statistics), as SonoNet and ResNet use it. gamma/beta data may be NULL. */
typedef struct dfc_batch_norm_layer {
    dfc_tensor weight, bias, running_mean, running_var; /* (C) */
    float eps;
} dfc_batch_norm_layer;

/* Gradient outputs of a backward: where the parameter gradients go (grads NULL: not wanted). */
typedef struct dfc_grad_target {
    const dfc_param_set *set;
    float *grads;
} dfc_grad_target;

dfc_status dfc_conv_layer_forward(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, dfc_arena *arena,
                                  dfc_tensor *y, dfc_error *err);
/* The (N, Co, Ho, Wo) shape of l's output for an image x (data NULL): a buffer made ahead for ..._reusing. */
dfc_tensor dfc_conv_layer_output_shape(const dfc_conv_layer *l, const dfc_tensor *x);
/* The same with y in spare's memory when spare (a tensor the caller no longer needs, or NULL) holds enough
 * elements, else from arena. */
dfc_status dfc_conv_layer_forward_reusing(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x,
                                          const dfc_tensor *spare, dfc_arena *arena, dfc_tensor *y, dfc_error *err);
/* The same with x and/or y stored NHWC under their (N, C, H, W) shapes (dfc_conv2d_params), for a backend whose
 * iface->conv_nhwc says it takes them. */
dfc_status dfc_conv_layer_forward_layout(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, int x_nhwc,
                                         int y_nhwc, const dfc_tensor *spare, dfc_arena *arena, dfc_tensor *y,
                                         dfc_error *err);
/* dx may be NULL (no input gradient wanted). */
dfc_status dfc_conv_layer_backward(dfc_backend *be, const dfc_conv_layer *l, const dfc_tensor *x, const dfc_tensor *dy,
                                   dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g, dfc_error *err);

/* x (M, In) -> y (M, Out). */
dfc_status dfc_linear_layer_forward(dfc_backend *be, const dfc_linear_layer *l, const dfc_tensor *x, dfc_arena *arena,
                                    dfc_tensor *y, dfc_error *err);
dfc_status dfc_linear_layer_backward(dfc_backend *be, const dfc_linear_layer *l, const dfc_tensor *x,
                                     const dfc_tensor *dy, dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g,
                                     dfc_error *err);

/* y = GN(x); mean and rstd (N, groups) are allocated and returned for the backward. */
dfc_status dfc_group_norm_layer_forward(dfc_backend *be, const dfc_group_norm_layer *l, const dfc_tensor *x,
                                        dfc_arena *arena, dfc_tensor *y, dfc_tensor *mean, dfc_tensor *rstd,
                                        dfc_error *err);
dfc_status dfc_group_norm_layer_backward(dfc_backend *be, const dfc_group_norm_layer *l, const dfc_tensor *x,
                                         const dfc_tensor *mean, const dfc_tensor *rstd, const dfc_tensor *dy,
                                         dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g, dfc_error *err);

dfc_status dfc_batch_norm_layer_forward(dfc_backend *be, const dfc_batch_norm_layer *l, const dfc_tensor *x,
                                        dfc_arena *arena, dfc_tensor *y, dfc_error *err);
/* dgamma/dbeta go to the gradient buffer when g.grads is set; running statistics get no gradient. */
dfc_status dfc_batch_norm_layer_backward(dfc_backend *be, const dfc_batch_norm_layer *l, const dfc_tensor *x,
                                         const dfc_tensor *dy, dfc_arena *arena, dfc_tensor *dx, dfc_grad_target g,
                                         dfc_error *err);

/* y = act(x), allocated; backward from the forward's input x. */
dfc_status dfc_activation_new(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_arena *arena,
                              dfc_tensor *y, dfc_error *err);
dfc_status dfc_activation_backward_new(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                       dfc_arena *arena, dfc_tensor *dx, dfc_error *err);

/* Shape helpers: a tensor of x's shape with channels (dim 1) replaced, and an (N, C, H, W) of given sizes. */
dfc_tensor dfc_alloc_like(dfc_arena *arena, const dfc_tensor *x, dfc_error *err);
dfc_tensor dfc_alloc4(dfc_arena *arena, int64_t n, int64_t c, int64_t h, int64_t w, dfc_error *err);
dfc_tensor dfc_alloc2(dfc_arena *arena, int64_t n, int64_t c, dfc_error *err);

/* x must be (N, channels, H, W); otherwise "<op>: x has C channels, the <what> takes <channels>". */
dfc_status dfc_check_image_input(const dfc_tensor *x, const char *op, const char *what, int channels, dfc_error *err);

/* count floats at data (a gradient buffer, an absent gradient) set to zero by the backend's fill; nothing if data
 * is NULL or count 0. */
dfc_status dfc_zero_floats(dfc_backend *be, float *data, int64_t count, dfc_error *err);

/* dst = src, tensors of one element count, through the backend's copy between its buffers (nets/ touch no element). */
dfc_status dfc_copy_tensor(dfc_backend *be, dfc_tensor *dst, const dfc_tensor *src, dfc_error *err);
/* A backward step whose temporaries go when it is done, so they do not pile up on the tape: begin makes the step's
 * result buffer (like's shape; like NULL: no result) and takes the arena's mark; end copies the step's result d into
 * that buffer (when st is DFC_OK), resets the arena to the mark, sets *out to the buffer and returns st. */
typedef struct dfc_result_scope {
    dfc_arena_mark mark;
    dfc_tensor result;
} dfc_result_scope;
dfc_status dfc_result_scope_begin(dfc_arena *arena, const dfc_tensor *like, dfc_result_scope *scope, dfc_error *err);
dfc_status dfc_result_scope_end(dfc_backend *be, dfc_arena *arena, const dfc_result_scope *scope, dfc_status st,
                                const dfc_tensor *d, dfc_tensor *out, dfc_error *err);
/* The same between host memory and backend memory: dst (backend) = host_src; host_dst = src (backend). */
dfc_status dfc_copy_tensor_from_host(dfc_backend *be, dfc_tensor *dst, const dfc_tensor *host_src, dfc_error *err);
dfc_status dfc_copy_tensor_to_host(dfc_backend *be, dfc_tensor *host_dst, const dfc_tensor *src, dfc_error *err);
/* For callers whose arrays are in host memory (the Python binding, a C program): an input t moved into arena (be's
 * memory), t->data then pointing at the copy (data NULL, an absent optional input, stays NULL); and an output's
 * zero-filled stand-in t in arena with host's shape (host->data NULL: not wanted, t->data NULL too), copied back
 * with dfc_copy_tensor_to_host once computed. */
dfc_status dfc_input_into_arena(dfc_backend *be, dfc_arena *arena, dfc_tensor *t, dfc_error *err);
dfc_status dfc_output_in_arena(dfc_arena *arena, const dfc_tensor *host, dfc_tensor *t, dfc_error *err);

/* One call of run(be, ctx, err) on host tensors, for a backend whose memory is not host memory: each tensor gets
 * backend memory for the call (copied in from the host where copy_in, else zeroed as a fresh output is), run sees
 * the backend copies in place of the host data, the tensors it writes (copy_back) are copied back, and the backend
 * memory is freed; every t->data is the host's again on return. */
typedef struct dfc_staged_tensor {
    dfc_tensor *t;
    int copy_in, copy_back;
    float *host; /* t's host data during the call (set by dfc_run_staged) */
} dfc_staged_tensor;
dfc_status dfc_run_staged(dfc_backend *be, dfc_staged_tensor *tensors, int count,
                          dfc_status (*run)(dfc_backend *be, void *ctx, dfc_error *err), void *ctx, dfc_error *err);

/* A (1, count, 1, 1) tensor in arena (backend memory) holding count host values: per-channel constants for the
 * broadcasting ops. */
dfc_status dfc_channel_constants(dfc_backend *be, dfc_arena *arena, const float *values, int64_t count, dfc_tensor *out,
                                 dfc_error *err);

/* y = a + b (same shapes), allocated. */
dfc_status dfc_add_new(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_arena *arena, dfc_tensor *y,
                       dfc_error *err);

/* Fails with DFC_ERR_NOMEM if an arena allocation returned NULL data (err already set). */
#define DFC_CHECK_ALLOC(t)                                       \
    do {                                                         \
        if (!(t).data)                                           \
            return err && err->code ? err->code : DFC_ERR_NOMEM; \
    } while (0)

#endif

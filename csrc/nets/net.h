/* One interface for every network (SonoNet, ResNet features, segmenter, plane classifier, the UNet denoiser): x in,
 * a few named outputs out, a backward from output gradients to the input gradient and the parameter gradients.
 * A network may also take a conditioning input beside x (the UNet: its timesteps); dfc_net_forward runs either kind.
 * Networks compose through it (the plane classifier runs a segmenter and a SonoNet), and the sampler and the
 * Python binding drive any of them the same way. */
#ifndef DIFFICE_NET_H
#define DIFFICE_NET_H

#include "layers.h"

#define DFC_NET_MAX_OUTPUTS 4

typedef struct dfc_net dfc_net;

typedef struct dfc_net_vtable {
    const char *kind;
    /* outputs[k] are allocated from arena by the forward (shapes depend on x); a block's intermediates may go to
     * scratch (NULL: use arena). With tape non-NULL everything the backward needs stays in arena, *tape is set. */
    dfc_status (*forward)(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                          const dfc_tensor *x, void **tape, dfc_tensor *outputs, dfc_error *err);
    /* douts[k]: gradient of the loss w.r.t. output k (data NULL: that output does not contribute).
     * dx (caller allocated, x's shape) and grads (parameter-buffer layout) are optional. */
    dfc_status (*backward)(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape,
                           const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err);
    /* Whether forward takes an input of x's shape (x's data is never read): an error naming the network and the
     * rule otherwise, so a caller can check an image size before any work (or memory) is spent on it. */
    dfc_status (*check_input)(const dfc_net *net, const dfc_tensor *x, dfc_error *err);
    void (*destroy)(dfc_net *net);
    /* Networks with a conditioning input set this (NULL: none) and a forward that refuses to run without it.
     * cond (N) float32, one value per sample (the UNet's original timesteps); otherwise as forward. The backward
     * (the VJP with respect to x and the parameters; none flows to cond) is the same entry as for any network. */
    dfc_status (*forward_conditioned)(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                      const dfc_tensor *x, const dfc_tensor *cond, void **tape, dfc_tensor *outputs,
                                      dfc_error *err);
    /* A composite's child networks (NULL: none), so dfc_net_sync reaches their parameters too. */
    int (*children)(const dfc_net *net, const dfc_net **out, int max);
} dfc_net_vtable;

struct dfc_net {
    const dfc_net_vtable *vt;
    dfc_param_set params; /* every parameter (and buffer, e.g. BN running stats), by state_dict name */
    int num_outputs;
    const char *output_names[DFC_NET_MAX_OUTPUTS];
    int in_channels;
};

static inline int dfc_net_is_conditioned(const dfc_net *net) { return net->vt->forward_conditioned != NULL; }

/* Points net's parameter views at be's copy (made on first use; dfc_param_set_bind). Called by every forward and
 * backward, so a network runs on whichever backend it is given; the views are a cache of where the values are, not
 * the values, hence the cast (a C++ `mutable`). */
static inline dfc_status dfc_net_bind(const dfc_net *net, dfc_backend *be, dfc_error *err)
{
    return dfc_param_set_bind((dfc_param_set *)&net->params, be, 0, err);
}

/* Copies the host parameter values of net and of its children to be's copies: what a call from Python does first,
 * since the host values may have changed since the last call (load_state_dict, a training step). */
static inline dfc_status dfc_net_sync(const dfc_net *net, dfc_backend *be, dfc_error *err)
{
    DFC_TRY(dfc_param_set_bind((dfc_param_set *)&net->params, be, 1, err));
    if (!net->vt->children)
        return DFC_OK;
    const dfc_net *kids[4];
    int n = net->vt->children(net, kids, 4);
    for (int i = 0; i < n; i++)
        DFC_TRY(dfc_net_sync(kids[i], be, err));
    return DFC_OK;
}

static inline dfc_status dfc_net_check_input(const dfc_net *net, const dfc_tensor *x, dfc_error *err)
{
    return net->vt->check_input(net, x, err);
}

/* The forward of any network: cond is the conditioning input of a network that takes one ((N) float32, one per
 * sample of x), NULL for the others; either mismatch is an error naming the network. */
static inline dfc_status dfc_net_forward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                         const dfc_tensor *x, const dfc_tensor *cond, void **tape, dfc_tensor *outputs,
                                         dfc_error *err)
{
    DFC_TRY(dfc_net_bind(net, be, err));
    if (!dfc_net_is_conditioned(net)) {
        if (cond)
            return dfc_fail(err, DFC_ERR_VALUE, "%s.forward: got a conditioning input, but the network takes none",
                            net->vt->kind);
        return net->vt->forward(net, be, arena, scratch, x, tape, outputs, err);
    }
    if (!cond)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "%s.forward: the network needs its conditioning input (one value per "
                        "sample, e.g. timesteps)",
                        net->vt->kind);
    if (cond->ndim != 1 || x->ndim < 1 || cond->shape[0] != x->shape[0])
        return dfc_fail(err, DFC_ERR_SHAPE,
                        "%s.forward: the conditioning input must have shape (%lld,), one value "
                        "per sample of x, got %d dims with %lld values",
                        net->vt->kind, (long long)(x->ndim ? x->shape[0] : 0), cond->ndim, (long long)cond->shape[0]);
    return net->vt->forward_conditioned(net, be, arena, scratch, x, cond, tape, outputs, err);
}

/* The backward of any network, from the tape its forward kept: as the vtable's backward (conditioned or not). */
static inline dfc_status dfc_net_backward(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape,
                                          const dfc_tensor *douts, dfc_tensor *dx, float *grads, dfc_error *err)
{
    DFC_TRY(dfc_net_bind(net, be, err));
    return net->vt->backward(net, be, arena, tape, douts, dx, grads, err);
}

/* The same calls for a caller whose arrays are in host memory (the Python binding, a C program).
 * forward: first copies the host parameter values to be (dfc_net_sync: they may have changed since the last call),
 * then moves x and cond (NULL or data NULL: none) into arena (dfc_input_into_arena); the outputs stay in arena.
 * backward: from the tape of a forward_from_host (which synced the parameters), douts (host; data NULL: that output
 * does not contribute) moved into arena, dx (x's shape) and grads (the parameter-buffer layout) written to host
 * memory (dx NULL, or either's data NULL: not wanted).
 * vjp: forward_from_host with a tape, each given dout checked against its output's shape (a mismatch is an error
 * that starts with op), then backward_from_host. */
dfc_status dfc_net_forward_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                     dfc_tensor *x, dfc_tensor *cond, void **tape, dfc_tensor *outputs, dfc_error *err);
dfc_status dfc_net_vjp_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_tensor *x, dfc_tensor *cond,
                                 dfc_tensor *douts, dfc_tensor *dx, dfc_tensor *grads, const char *op, dfc_error *err);
dfc_status dfc_net_backward_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape,
                                      dfc_tensor *douts, dfc_tensor *dx, dfc_tensor *grads, dfc_error *err);

static inline void dfc_net_destroy(dfc_net *net)
{
    if (net)
        net->vt->destroy(net);
}

#endif

/* One interface for the image networks (SonoNet, ResNet features, segmenter, plane classifier): x in, a few
 * named outputs out, a backward from output gradients to the input gradient and the parameter gradients.
 * Networks compose through it (the plane classifier runs a segmenter and a SonoNet), and the sampler and the
 * Python binding drive any of them the same way. The UNet, which also takes timesteps, has its own entry points. */
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
    void (*destroy)(dfc_net *net);
} dfc_net_vtable;

struct dfc_net {
    const dfc_net_vtable *vt;
    dfc_param_set params;           /* every parameter (and buffer, e.g. BN running stats), by state_dict name */
    int num_outputs;
    const char *output_names[DFC_NET_MAX_OUTPUTS];
    int in_channels;
};

static inline void dfc_net_destroy(dfc_net *net)
{
    if (net)
        net->vt->destroy(net);
}

#endif

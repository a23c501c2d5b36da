/* The guided-diffusion UNetModel (openai/guided-diffusion unet.py) as DiME configures it, unconditional:
 * forward, the vector-Jacobian product with respect to the input image, and gradients of every parameter.
 * Parameters are named by their PyTorch state_dict keys, so a checkpoint loads without a mapping table.
 * Layer structure and numerics: docs/method.md sections 1.3-1.5. */
#ifndef DIFFICE_UNET_H
#define DIFFICE_UNET_H

#include "layers.h"

#define DFC_UNET_MAX_LEVELS 8

typedef struct dfc_unet_config {
    int in_channels;
    int model_channels;                        /* mc: the time embedding has mc -> 4 mc */
    int out_channels;                          /* 2 in_channels with learn_sigma */
    int num_res_blocks;
    int num_levels;
    int level_channels[DFC_UNET_MAX_LEVELS];   /* int(channel_mult[l] * mc) */
    int attention[DFC_UNET_MAX_LEVELS];        /* 1: attention blocks at level l (ds = 2^l in attention_resolutions) */
    int num_heads;                             /* used when num_head_channels <= 0 */
    int num_head_channels;                     /* > 0: heads = C / num_head_channels */
    int num_heads_upsample;                    /* output blocks; <= 0: same as num_heads */
    int legacy_attention;                      /* 1: QKVAttentionLegacy (use_new_attention_order=False) */
    int use_scale_shift_norm;
    int resblock_updown;
} dfc_unet_config;

typedef struct dfc_unet dfc_unet;
typedef struct dfc_unet_tape dfc_unet_tape;

/* Builds the network with zeroed parameters; fails on inconsistent configs (e.g. channels not divisible by the 32
 * GroupNorm groups, heads not dividing channels). */
dfc_status dfc_unet_create(const dfc_unet_config *cfg, dfc_unet **out, dfc_error *err);
void dfc_unet_destroy(dfc_unet *u);

const dfc_unet_config *dfc_unet_get_config(const dfc_unet *u);
dfc_param_set *dfc_unet_params(dfc_unet *u);

/* y = UNet(x, t): x (N, in, H, W) with H, W divisible by 2^(levels-1), t (N) original timesteps (as float),
 * y (N, out, H, W) allocated by the caller. Block outputs come from arena, each block's intermediates from
 * scratch, released after the block (the caller resets both afterwards). With tape non-NULL, everything the
 * backward needs is kept in arena (scratch is not used) and *tape points at it. */
dfc_status dfc_unet_forward(const dfc_unet *u, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                            const dfc_tensor *x, const float *t, dfc_unet_tape **tape, dfc_tensor *y,
                            dfc_error *err);

/* From the tape of a forward and dy = dL/dy: dx = dL/dx (if not NULL, caller allocated) and, if grads is not NULL,
 * dL/dparams into grads (laid out like the parameter buffer; every entry is written). */
dfc_status dfc_unet_backward(const dfc_unet *u, dfc_backend *be, dfc_arena *arena, const dfc_unet_tape *tape,
                             const dfc_tensor *dy, dfc_tensor *dx, float *grads, dfc_error *err);

#endif

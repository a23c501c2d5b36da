/* The guided-diffusion UNetModel (openai/guided-diffusion unet.py) as DiME configures it, unconditional, as a
 * dfc_net conditioned on the timesteps: forward, the vector-Jacobian product with respect to the input image, and
 * gradients of every parameter. Parameters are named by their PyTorch state_dict keys, so a checkpoint loads
 * without a mapping table. Layer structure and numerics: docs/method.md sections 1.3-1.5. */
#ifndef DIFFICE_UNET_H
#define DIFFICE_UNET_H

#include "net.h"

#define DFC_UNET_MAX_LEVELS 8

typedef struct dfc_unet_config {
    int in_channels;
    int model_channels; /* mc: the time embedding has mc -> 4 mc */
    int out_channels;   /* 2 in_channels with learn_sigma */
    int num_res_blocks;
    int num_levels;
    int level_channels[DFC_UNET_MAX_LEVELS]; /* int(channel_mult[l] * mc) */
    int attention[DFC_UNET_MAX_LEVELS];      /* 1: attention blocks at level l (ds = 2^l in attention_resolutions) */
    int num_heads;                           /* used when num_head_channels <= 0 */
    int num_head_channels;                   /* > 0: heads = C / num_head_channels */
    int num_heads_upsample;                  /* output blocks; <= 0: same as num_heads */
    int legacy_attention;                    /* 1: QKVAttentionLegacy (use_new_attention_order=False) */
    int use_scale_shift_norm;
    int resblock_updown;
} dfc_unet_config;

/* Builds the network with zeroed parameters (set them through net->params); fails on inconsistent configs (e.g.
 * channels not divisible by the 32 GroupNorm groups, heads not dividing channels).
 * Run it with dfc_net_forward and its conditioning input t (N) float32, the ORIGINAL (un-respaced) timesteps:
 * x (N, in_channels, H, W) with H, W divisible by 2^(levels-1) -> one output "model_output"
 * (N, out_channels, H, W): eps, then the variance interpolation v with learn_sigma. */
dfc_status dfc_unet_create(const dfc_unet_config *cfg, dfc_net **out, dfc_error *err);

#endif

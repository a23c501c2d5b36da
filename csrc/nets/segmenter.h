/* The segmentation network s of the standard-plane classifier f(x) = l(s(x), x) (the role DTU-Net plays in the
 * Diff-ICE paper): a UNet-style encoder-decoder, as a dfc_net.
 *
 * x (N, in_channels, H, W), H and W divisible by 2^(levels-1) -> per-pixel class logits (N, classes, H, W).
 * Level l (0..levels-1) has width w_l = width 2^l.
 *   encoder.l: [2x2/2 max pool, for l > 0] -> DoubleConv(in, w_l)
 *   decoder.j (j = 0..levels-2, level l = levels-2-j): nearest x2 -> conv3x3 w_{l+1} -> w_l (with bias),
 *              concatenate [skip, up] (the skip is encoder.l's output) -> DoubleConv(2 w_l, w_l)
 *   head: conv1x1 width -> classes (with bias)
 * DoubleConv(ci, co) = [conv3x3 ci -> co (no bias: GroupNorm removes it), GroupNorm(groups, co), ReLU] x 2.
 * GroupNorm (eps 1e-5) rather than batch norm, so the network computes the same function in training and at
 * inference; `groups` must divide `width` (and so every w_l = width 2^l); the default 8 suits widths 8, 16, 32, 64.
 *
 * Output: "logits" (N, classes, H, W).
 * Parameter names (the PyTorch module paths of tests/classifier_reference.py's Segmenter, state_dict order):
 *   encoder.L.0.weight (w, ci, 3, 3), encoder.L.1.{weight,bias} (w), encoder.L.3.weight (w, w, 3, 3),
 *   encoder.L.4.{weight,bias} (w)
 *   decoder.J.conv.{weight,bias}, decoder.J.block.{0,1,3,4}.* (as encoder)
 *   head.{weight,bias} (classes, width, 1, 1), (classes) */
#ifndef DIFFICE_SEGMENTER_H
#define DIFFICE_SEGMENTER_H

#include "net.h"

#define DFC_SEGMENTER_MAX_LEVELS 8
#define DFC_SEGMENTER_GN_EPS 1e-5f

typedef struct dfc_segmenter_config {
    int in_channels; /* 1: grayscale ultrasound */
    int classes;     /* K: output classes (background included) */
    int width;       /* channels of level 0 */
    int levels;      /* resolutions: levels - 1 poolings */
    int groups;      /* GroupNorm groups; divides width */
} dfc_segmenter_config;

/* Builds the network with zeroed parameters (set them through net->params before use). */
dfc_status dfc_segmenter_create(const dfc_segmenter_config *cfg, dfc_net **out, dfc_error *err);

/* The configuration a segmenter net was built with (net must come from dfc_segmenter_create). */
const dfc_segmenter_config *dfc_segmenter_get_config(const dfc_net *net);

#endif

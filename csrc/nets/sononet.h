/* SonoNet-k (Baumgartner et al., IEEE TMI 2017), the fetal standard-plane classifier, as a dfc_net.
 *
 * x (N, in_channels, H, W) -> [per-plane standardisation] -> 13 conv3x3 (no bias) + BN + ReLU in blocks of
 * 2, 2, 3, 3, 3 convs of widths k, 2k, 4k, 8k, 8k with a 2x2/2 max pool after each of the first four blocks ->
 * adaptation: conv1x1 8k -> 4k + BN + ReLU, conv1x1 4k -> classes + BN -> global average pool.
 * Batch norm is in inference form with eps 1e-4 throughout.
 *
 * Outputs, in order: "logits" (N, classes), "cam" (N, classes, h, w) (the class-activation map before pooling),
 * "features" (N, 8k, h, w) (the last conv block's output, before the adaptation layer), h = H/16, w = W/16
 * (floor at every pool).
 *
 * Parameter names (state_dict order), for block B in 0..4 and layer I within it:
 *   features.B.I.0.weight                                          conv 3x3 (Co, Ci, 3, 3)
 *   features.B.I.1.{weight,bias,running_mean,running_var}          batch norm (Co)
 *   adaption.0.weight (4k, 8k, 1, 1), adaption.1.{weight,bias,running_mean,running_var} (4k)
 *   adaption.3.weight (classes, 4k, 1, 1), adaption.4.{weight,bias,running_mean,running_var} (classes)
 * Running statistics get no gradient (their entries in a gradient buffer are zero). */
#ifndef DIFFICE_SONONET_H
#define DIFFICE_SONONET_H

#include "net.h"

#define DFC_SONONET_BN_EPS 1e-4f

typedef struct dfc_sononet_config {
    int k;           /* width of the first block: 16, 32, 64 (any k >= 1) */
    int in_channels; /* 1: grayscale; the plane classifier feeds 1 + K segmentation channels */
    int num_classes; /* 14 standard-plane classes */
    int standardize; /* 1: x' = 255 (x - mean) / std per image and channel (std with ddof 0), inside the net */
} dfc_sononet_config;

/* Builds the network with zeroed parameters (set them through net->params before use). */
dfc_status dfc_sononet_create(const dfc_sononet_config *cfg, dfc_net **out, dfc_error *err);

#endif

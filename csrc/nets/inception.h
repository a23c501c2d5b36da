/* The FID Inception-v3 (pytorch-fid's FIDInceptionV3: torchvision's Inception3 with the blocks FIDInceptionA, C,
 * E_1 and E_2 of the TensorFlow FID graph), forward only, behind the generic dfc_net interface. Its one output,
 * "pool3", is the 2048-d global average of Mixed_7c: the features FID compares (docs/method.md section 7).
 *
 * Input: x (N, in_channels, H, W) with values in [0, 1] (pytorch-fid's ToTensor range), in_channels 1 (replicated
 * to RGB, as PIL's convert('RGB') does for a grayscale image) or 3. Inside: bilinear resize to resize x resize
 * (align_corners=False, no antialiasing; resize 0 keeps the input size), then 2x - 1, then the network. Without
 * a resize the input must be at least 75 x 75 (the smallest size that survives the stride-2 stages).
 *
 * Parameter names are pytorch-fid's state_dict keys (pt_inception-2015-12-05-6726825d.pth): Conv2d_1a_3x3 ..
 * Conv2d_4a_3x3 and Mixed_5b .. Mixed_7c, each conv a BasicConv2d "<name>.conv.weight" (no bias) with
 * "<name>.bn.{weight,bias,running_mean,running_var}" (BatchNorm eps 0.001). The classifier (fc) is not part of it.
 * The quirks of the FID graph are kept: the average pools of the A, C and E_1 blocks do not count their padding
 * (count_include_pad=False) and Mixed_7c's pool branch is a 3x3/1 max pool. */
#ifndef DIFFICE_INCEPTION_H
#define DIFFICE_INCEPTION_H

#include "net.h"

typedef struct dfc_inception_config {
    int in_channels; /* 1 (grayscale, replicated) or 3 (RGB) */
    int resize;      /* side of the square bilinear resize of the input (pytorch-fid: 299); 0: no resize */
} dfc_inception_config;

/* Feature dimension of the output. */
#define DFC_INCEPTION_FEATURES 2048

/* Builds the network with zeroed parameters. */
dfc_status dfc_inception_create(const dfc_inception_config *cfg, dfc_net **out, dfc_error *err);

#endif

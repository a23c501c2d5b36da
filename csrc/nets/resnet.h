/* ResNet feature networks (ResNet-18/34 with BasicBlocks, ResNet-50/101/152 with Bottlenecks, no avgpool/fc) in two
 * weight layouts, behind the generic dfc_net interface. The outputs are the features after any of the stages
 * stem (after the max pool), layer1 .. layer4, as the perceptual loss taps them (docs/method.md sections 3 and 8).
 *
 * Layouts (parameter names are the PyTorch state_dict keys of each, so checkpoints load without a mapping):
 *  - torchvision: convs without bias, BatchNorm eps 1e-5, a downsampling block's stride on its 3x3 conv,
 *    `downsample` only where the shape changes. Input: ImageNet mean/std on (x + 1) / 2.
 *  - radimagenet: the Keras ResNet50 converted to PyTorch (RadImageNet-ResNet50_notop.pth): biases on every conv,
 *    BatchNorm eps 1.001e-5, the stride on the FIRST conv of a block, `downsample` in block 0 of every stage
 *    (Keras' conv_block). Input as MONAI's RadImageNetPerceptualSimilarity: (x + 1) / 2, RGB -> BGR, minus
 *    (0.406, 0.456, 0.485) from (B, G, R), no std.
 * x is in [-1, 1], (N, in_channels, H, W) with in_channels 1 (replicated to 3 inside) or 3 (RGB); BN uses its
 * running statistics. */
#ifndef DIFFICE_RESNET_H
#define DIFFICE_RESNET_H

#include "net.h"

typedef enum { DFC_RESNET_TORCHVISION = 0, DFC_RESNET_RADIMAGENET = 1 } dfc_resnet_layout;

/* Stages that can be tapped: bit (1 << stage) of dfc_resnet_config.taps. */
enum {
    DFC_RESNET_STEM = 0,
    DFC_RESNET_LAYER1,
    DFC_RESNET_LAYER2,
    DFC_RESNET_LAYER3,
    DFC_RESNET_LAYER4,
    DFC_RESNET_STAGES
};

typedef struct dfc_resnet_config {
    int depth; /* 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck) */
    dfc_resnet_layout layout;
    int in_channels; /* 1 or 3 */
    unsigned taps;   /* non-empty set of stages, at most DFC_NET_MAX_OUTPUTS; outputs in stage order */
} dfc_resnet_config;

/* Builds the network with zeroed parameters (every stage's parameters exist, whatever the taps, so a full
 * checkpoint always loads; stages after the last tap are not computed). */
dfc_status dfc_resnet_create(const dfc_resnet_config *cfg, dfc_net **out, dfc_error *err);


#endif

/* The standard-plane classifier of Diff-ICE, f(x) = l(s(x), x) (paper section 3; docs/method.md section 6), as a
 * composite dfc_net of two child nets:
 *   s: a segmenter, x (N, 1, H, W) -> segmentation logits (N, K, H, W) (its output 0);
 *   l: any classifier net whose input is [x, m] (N, 1 + K, H, W), m the K segmentation maps, and whose output 0
 *      is logits (N, n_classes) (SonoNet-16 with a 1 + K channel first conv and a 2-class SP/NSP head).
 * m is softmax over the K classes of each pixel (default) or the raw segmentation logits (SASN feeds logits).
 *
 * Outputs, in order: "logits" (N, n_classes) (l's output 0), "segmentation" (N, K, H, W) (s's logits, so
 * explanations can show the segmentation).
 *
 * grad_through_segmenter (default 1): gradients flow from the logits through m and s to x. Off, s is a constant
 * (as SASN runs it under no_grad): x's gradient comes through l's image channel only, s runs without a tape, its
 * parameter gradients are zero, and a gradient for the "segmentation" output is an error.
 *
 * Parameters: the children's, registered as external views (the values stay in the children's buffers) named
 * "segmenter.<name>" then "classifier.<name>"; the composite's gradient buffer is the concatenation of the
 * children's layouts (segmenter first). */
#ifndef DIFFICE_PLANE_CLASSIFIER_H
#define DIFFICE_PLANE_CLASSIFIER_H

#include "net.h"

typedef enum { DFC_SEG_INPUT_PROBABILITIES = 0, DFC_SEG_INPUT_LOGITS = 1 } dfc_seg_input;

typedef struct dfc_plane_classifier_config {
    int grad_through_segmenter;
    dfc_seg_input seg_input;
} dfc_plane_classifier_config;

/* Builds f from s and l, checking that l takes 1 + K channels for s's K classes and that s takes the image's
 * channels. The composite takes ownership of both children: they are destroyed with it, and on failure.
 * release, when non-NULL, is called with release_ctx instead of destroying the children (a binding that keeps
 * the children alive elsewhere drops its references there); it is called on failure too. */
dfc_status dfc_plane_classifier_create(const dfc_plane_classifier_config *cfg, dfc_net *segmenter, dfc_net *classifier,
                                       void (*release)(void *ctx), void *release_ctx, dfc_net **out, dfc_error *err);


/* A small convolutional classifier, the stand-in for l in tests (and a minimal baseline):
 *   features.0: conv3x3 in -> width (bias), ReLU, 2x2/2 max pool, features.3: conv3x3 width -> 2 width (bias),
 *   ReLU, global average pool, fc: linear 2 width -> num_classes.
 * Output: "logits" (N, num_classes). H and W must be even. */
typedef struct dfc_small_classifier_config {
    int in_channels, width, num_classes;
} dfc_small_classifier_config;

dfc_status dfc_small_classifier_create(const dfc_small_classifier_config *cfg, dfc_net **out, dfc_error *err);

#endif

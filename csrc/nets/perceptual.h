/* Perceptual and pixel losses for guidance (docs/method.md sections 3 and 8). Every loss is per sample and the guidance
 * gradient is that of their SUM over the batch, so a sample's gradient neither depends on the other samples nor
 * shrinks with the batch size.
 *
 * Perceptual loss of a against a fixed reference b through a feature network phi (any dfc_net; its outputs are
 * the tapped layers), weight c:
 *  - MSE (DiME): L_n = c * sum over layers of mean over (C, h, w) of (phi(a)_n - phi(b)_n)^2;
 *  - NORMALIZED (MONAI RadImageNetPerceptualSimilarity): f^ = f / (sqrt(sum_c f^2) + 1e-10) at every position,
 *    L_n = c * sum over layers of mean over (h, w) of sum_c (f^_a - f^_b)^2.
 * The reference's features are computed once (Diff-ICE always compares with the original image) and cached. */
#ifndef DIFFICE_PERCEPTUAL_H
#define DIFFICE_PERCEPTUAL_H

#include "net.h"

typedef enum { DFC_PERCEPTUAL_MSE = 0, DFC_PERCEPTUAL_NORMALIZED = 1 } dfc_perceptual_variant;

typedef struct dfc_perceptual dfc_perceptual;

/* net is borrowed: it must outlive the loss. */
dfc_status dfc_perceptual_create(const dfc_net *net, dfc_perceptual_variant variant, float weight, dfc_perceptual **out,
                                 dfc_error *err);
void dfc_perceptual_destroy(dfc_perceptual *p);

/* Runs the network on b (N, in_channels, H, W) and keeps its features, in be's memory: be must outlive them (until
 * the next set_reference or dfc_perceptual_destroy), and a loss runs on a backend of the same memory. arena and
 * scratch are working memory, left as found. */
dfc_status dfc_perceptual_set_reference(dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                        const dfc_tensor *b, dfc_error *err);
int dfc_perceptual_has_reference(const dfc_perceptual *p);

/* loss (N) = per-sample losses of a (b's shape) against the reference; da (a's shape, may be NULL) = d sum(loss)/da.
 * Both caller allocated and overwritten. */
dfc_status dfc_perceptual_loss(const dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                               const dfc_tensor *a, dfc_tensor *loss, dfc_tensor *da, dfc_error *err);

/* The same two for a caller whose arrays are in host memory: b, a moved into arena (net.h's *_from_host), loss and
 * da (data NULL: not wanted) computed there and copied back. arena is left as found by set_reference. */
dfc_status dfc_perceptual_set_reference_from_host(dfc_perceptual *p, dfc_backend *be, dfc_arena *arena,
                                                  dfc_arena *scratch, dfc_tensor *b, dfc_error *err);
dfc_status dfc_perceptual_loss_from_host(const dfc_perceptual *p, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                         dfc_tensor *a, dfc_tensor *loss, dfc_tensor *da, dfc_error *err);

#endif

/* The sampler's guidance (sampler.h's dfc_guidance) built from diffice's networks: a classifier (any dfc_net whose
 * first output is logits), a classification loss and an optional perceptual loss against the original images. */
#ifndef DIFFICE_GUIDANCE_H
#define DIFFICE_GUIDANCE_H

#include "../nets/class_loss.h"
#include "../nets/net.h"
#include "../nets/perceptual.h"
#include "sampler.h"

typedef struct dfc_model_guidance dfc_model_guidance;

/* classifier, perceptual and be are borrowed (must outlive the guidance), and the guidance runs on be only (its
 * images and the perceptual reference are in be's memory); x (N, C, H, W) the original images and targets (N),
 * both in host memory, are copied (x into be's memory). */
dfc_status dfc_model_guidance_create(const dfc_net *classifier, dfc_class_loss_kind kind, dfc_perceptual *perceptual,
                                     dfc_backend *be, const dfc_tensor *x, const int64_t *targets,
                                     dfc_model_guidance **out, dfc_error *err);
void dfc_model_guidance_destroy(dfc_model_guidance *g);

/* The interface the sampler calls (ctx = g). */
dfc_guidance dfc_model_guidance_interface(dfc_model_guidance *g);

dfc_status dfc_model_guidance_loss_and_grad(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x0,
                                            const int64_t *rows, const float *lambda_c, float lambda_p,
                                            dfc_tensor *grad, float *loss_class, float *loss_perceptual,
                                            dfc_error *err);
dfc_status dfc_model_guidance_classify(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x,
                                       const int64_t *rows, float *prob_target, int *is_target, dfc_error *err);

#endif

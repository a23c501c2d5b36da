/* The classification loss Lc(f(x), y) that guides the counterfactual sampler, per sample, with its gradient.
 *
 * logits (N, C), targets y (N) -> loss (N) and dlogits = d(sum_n loss[n]) / dlogits (N, C): the loss is summed
 * over the batch before differentiating (docs/method.md section 3.4), so each sample's gradient is its own.
 *
 * The signed logit of the target (DiME's l_y):
 *   C == 1 (one binary logit z):      l_y = z if y == 1, -z if y == 0;
 *   C == 2 (two class logits z0, z1): l_y = z_y - z_(1-y), i.e. +-(z1 - z0), the binary logit of class 1;
 *   C  > 2:                           l_y = z_y.
 * Kinds:
 *   DFC_CLASS_LOSS_CE:    cross-entropy towards y: -log softmax(z)_y for C >= 2, -log sigmoid(l_y) (BCE) for
 *                         C == 1 (for C == 2 both are -log sigmoid(l_y));
 *   DFC_CLASS_LOSS_LOGIT: DiME/FastDiME's use_logits form, -l_y.
 * The arithmetic is the op table's (cross_entropy: softmax, or BCE for one logit; logit_loss). */
#ifndef DIFFICE_CLASS_LOSS_H
#define DIFFICE_CLASS_LOSS_H

#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../ops/ops.h"

typedef enum { DFC_CLASS_LOSS_CE = 0, DFC_CLASS_LOSS_LOGIT = 1 } dfc_class_loss_kind;

/* loss (N) and dlogits (N, C) are caller allocated; dlogits may be NULL. targets must lie in [0, C) ({0, 1} when
 * C == 1). */
dfc_status dfc_classification_loss(dfc_backend *be, dfc_class_loss_kind kind, const dfc_tensor *logits,
                                   const int64_t *targets, dfc_tensor *loss, dfc_tensor *dlogits, dfc_error *err);

#endif

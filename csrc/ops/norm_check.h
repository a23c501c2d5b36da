/* Argument checks of the norm-family ops (group and batch norm, scale-shift, broadcast add/mul, timestep
 * embedding), defined once in norm_check.c and called by every backend (ref_*.c, cpu_norm.c, csrc/cuda/norm.cu), so
 * all reject the same inputs with the same messages. */
#ifndef DIFFICE_NORM_CHECK_H
#define DIFFICE_NORM_CHECK_H

#include "ops.h"

/* An optional tensor is absent when the pointer or its data is NULL (the bindings pass data == NULL for None). */
static inline int dfc_present(const dfc_tensor *t) { return t && t->data; }

/* x (N, C, ...), groups dividing C, finite eps >= 0; gamma, beta (C) each optional; mean, rstd (N, groups) both
 * or neither. */
dfc_status dfc_group_norm_check(const char *op, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps, dfc_error *err);

/* group_norm_act_forward: x (N, C, H, W) with the group norm's rules, y with x's shape, add (N, C) and ss (N, 2C) each
 * optional, layouts 0 or 1. */
dfc_status dfc_group_norm_act_check(const char *op, const dfc_tensor *x, const dfc_tensor *add, const dfc_tensor *gamma,
                                    const dfc_tensor *beta, const dfc_tensor *ss, int groups, float eps, int x_nhwc,
                                    int y_nhwc, const dfc_tensor *y, dfc_error *err);

/* The gradients a norm backward writes, each optional: dx with x's shape, dgamma and dbeta (C). */
dfc_status dfc_norm_grads_check(const char *op, const dfc_tensor *x, const dfc_tensor *dx, const dfc_tensor *dgamma,
                                const dfc_tensor *dbeta, dfc_error *err);

/* Batch norm (inference) in two parts, so a device backend can copy running_var to the host between them:
 * x (N, C, ...), running_mean, running_var (C), gamma, beta (C) each optional, finite eps >= 0; then every
 * running_var[c] + eps > 0, running_var a host array of C entries. */
dfc_status dfc_batch_norm_check_shapes(const char *op, const dfc_tensor *x, const dfc_tensor *gamma,
                                       const dfc_tensor *beta, const dfc_tensor *running_mean,
                                       const dfc_tensor *running_var, float eps, dfc_error *err);
dfc_status dfc_batch_norm_check_var(const char *op, const float *running_var, int64_t c, float eps, dfc_error *err);

/* scale_shift: x (N, C, ...) with at least 2 dims, ss (N, 2C). */
dfc_status dfc_scale_shift_check(const char *op, const dfc_tensor *x, const dfc_tensor *ss, dfc_error *err);

/* a's and b's shapes right-aligned to 4 dims (leading 1s, so the last real dim is the contiguous inner loop),
 * and b's element strides over them, 0 on broadcast dims. */
typedef struct {
    int64_t a[DFC_MAX_DIMS], b[DFC_MAX_DIMS], b_stride[DFC_MAX_DIMS];
} dfc_broadcast_dims;

/* "add", "mul" (the op's name in messages), or "binary" for an unknown kind. */
const char *dfc_binary_name(dfc_binary kind);

/* b must have a's ndim with each dim 1 or equal to a's; fills *bd. */
dfc_status dfc_binary_check_broadcast(const char *op, const dfc_tensor *a, const dfc_tensor *b, dfc_broadcast_dims *bd,
                                      dfc_error *err);

dfc_status dfc_binary_check_kind(dfc_binary kind, dfc_error *err);

/* timestep_embedding: t (N), y (N, dim) with dim >= 2, max_period finite > 1. */
dfc_status dfc_timestep_embedding_check(const char *op, const dfc_tensor *t, float max_period, const dfc_tensor *y,
                                        dfc_error *err);

#endif

/* Argument checks of the norm ops, shared by the reference kernels (ref_norm.c, which defines them) and the fast
 * ones (cpu_norm.c), so both backends reject the same inputs with the same messages. */
#ifndef DIFFICE_NORM_CHECK_H
#define DIFFICE_NORM_CHECK_H

#include "ops.h"

/* An optional tensor is absent when the pointer or its data is NULL (the bindings pass data == NULL for None). */
static inline int dfc_present(const dfc_tensor *t) { return t && t->data; }

/* x (N, C, ...), groups dividing C, finite eps >= 0; gamma, beta (C) each optional; mean, rstd (N, groups) both
 * or neither. */
dfc_status dfc_group_norm_check(const char *op, const dfc_tensor *x, const dfc_tensor *gamma, const dfc_tensor *beta,
                                const dfc_tensor *mean, const dfc_tensor *rstd, int groups, float eps, dfc_error *err);

/* The gradients a norm backward writes, each optional: dx with x's shape, dgamma and dbeta (C). */
dfc_status dfc_norm_grads_check(const char *op, const dfc_tensor *x, const dfc_tensor *dx, const dfc_tensor *dgamma,
                                const dfc_tensor *dbeta, dfc_error *err);

#endif

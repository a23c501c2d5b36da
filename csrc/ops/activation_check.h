/* The activation kinds' names and argument check, shared by the reference (ref_elementwise.c) and fast
 * (cpu_elementwise.c) kernels so both reject the same inputs with the same messages. Private to csrc/ops. */
#ifndef DIFFICE_ACTIVATION_CHECK_H
#define DIFFICE_ACTIVATION_CHECK_H

#include <math.h>

#include "../core/also_device.h"
#include "ops.h"

/* sigmoid, stable for large |x| (exp of a non-positive argument only): the reference kernels' and the CUDA
 * kernels' (the fast CPU kernels use fast_math.h's vectorisable dfc_sigmoidf). */
static DFC_ALSO_DEVICE inline float dfc_sigmoid_stable(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

/* The op name in messages: the kind's own name. */
static inline const char *dfc_activation_name(dfc_activation kind)
{
    switch (kind) {
    case DFC_ACT_RELU: return "relu";
    case DFC_ACT_SILU: return "silu";
    case DFC_ACT_SIGMOID: return "sigmoid";
    }
    return "activation";
}

/* kind must be a known activation and other (y, dy or dx, named other_name) must have x's shape. */
static inline dfc_status dfc_activation_check(dfc_activation kind, const dfc_tensor *x, const dfc_tensor *other,
                                              const char *other_name, dfc_error *err)
{
    if (kind != DFC_ACT_RELU && kind != DFC_ACT_SILU && kind != DFC_ACT_SIGMOID)
        return dfc_fail(err, DFC_ERR_VALUE, "activation: unknown kind %d", (int)kind);
    return dfc_check_same_shape(x, other, dfc_activation_name(kind), "x", other_name, err);
}

#endif

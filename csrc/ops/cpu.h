/* The fast CPU backend: oneDNN for convolutions and matrix products (every oneDNN call lives in cpu_dnnl.c),
 * OpenMP kernels for the rest. Ops without a faster kernel use the reference one (cpu_backend.c's table). */
#ifndef DIFFICE_CPU_H
#define DIFFICE_CPU_H

#include "ops.h"

/* Backend-private state of the "cpu" backend. */
typedef struct dfc_cpu_state dfc_cpu_state;

dfc_status dfc_cpu_state_create(int num_threads, dfc_cpu_state **out, dfc_error *err);
void dfc_cpu_state_destroy(dfc_cpu_state *state);
/* Bytes the backend keeps for oneDNN: blocked copies of the largest call's arguments and its scratchpad. */
size_t dfc_cpu_workspace_bytes(const dfc_cpu_state *state);

/* Batched strided matrix product through oneDNN:
 *   C[b] = alpha * A[b] B[b] + beta * C[b],  A[b] (M, K), B[b] (K, N), C[b] (M, N), b < batch,
 * with element strides {batch, row, col} for each operand (transposes are expressed by swapping strides).
 * beta is 0 or 1. */
typedef struct dfc_matmul_operand {
    float *data;
    int64_t strides[3];
} dfc_matmul_operand;

dfc_status dfc_dnnl_matmul(dfc_backend *be, int64_t batch, int64_t m, int64_t n, int64_t k, dfc_matmul_operand a,
                           dfc_matmul_operand b, dfc_matmul_operand c, float alpha, float beta, dfc_error *err);

/* The backend's reusable workspace (the one oneDNN's copies use), at least `bytes` long, for a kernel that runs no
 * oneDNN primitive meanwhile. */
dfc_status dfc_cpu_workspace(dfc_backend *be, size_t bytes, void **out, dfc_error *err);

/* Winograd F(4x4, 3x3) convolutions (cpu_winograd.c) of x (N, Ci, H, W) into y (N, Co, H, W): whether a
 * convolution takes that path (3x3, stride 1, padding 1, 32 or more channels in and out, at least 60 4x4 tiles per
 * image - any size and channel count with DIFFICE_WINOGRAD_ALWAYS set -, DIFFICE_NO_WINOGRAD unset), and the
 * convolution, in the backend's workspace. weight is (Co, Ci, 3, 3), or
 * (Ci, Co, 3, 3) with transposed = 1: the input gradient dx = y of dy = x. */
int dfc_winograd_applies(const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *y, dfc_conv2d_params p);
dfc_status dfc_winograd_conv2d(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, int transposed,
                               const dfc_tensor *bias, int x_nhwc, int y_nhwc, dfc_tensor *y, dfc_error *err);

/* The ops with a kernel of their own here (cpu_<op>); every other op runs its reference kernel, which is already
 * the fast one for the memory-bound elementwise ops (cpu_backend.c builds the table from this list). */
#define DFC_CPU_FAST_OPS(X)        \
    X(conv2d_forward)              \
    X(conv2d_backward_input)       \
    X(conv2d_backward_weight)      \
    X(linear_forward)              \
    X(linear_backward_input)       \
    X(linear_backward_weight)      \
    X(group_norm_forward)          \
    X(group_norm_backward)         \
    X(group_norm_act_forward)      \
    X(activation_forward)          \
    X(activation_backward)         \
    X(softmax_forward)             \
    X(softmax_backward)            \
    X(attention_forward)           \
    X(attention_backward)          \
    /* diffusion arithmetic */     \
    X(q_sample)                    \
    X(p_mean_variance_forward)     \
    X(sample_step)                 \
    X(gaussian_noise)              \
    /* optimizer ops */            \
    X(adamw_step)                  \
    X(ema_update)                  \
    X(sum_squares)                 \
    X(scale)                       \
    /* network ops */              \
    X(normalized_distance_forward) \
    X(normalized_distance_backward)

#define DFC_DECLARE_CPU_OP(name) DFC_DECLARE_OP_(cpu, name)
DFC_CPU_FAST_OPS(DFC_DECLARE_CPU_OP)
#undef DFC_DECLARE_CPU_OP

#endif

/* The fast CPU backend: oneDNN for convolutions and matrix products (every oneDNN call lives in cpu_dnnl.c),
 * OpenMP kernels for the rest. Ops without a faster kernel use the reference one (cpu_backend.c's table). */
#ifndef DIFFICE_CPU_H
#define DIFFICE_CPU_H

#include "ops.h"

/* Backend-private state of the "cpu" backend. */
typedef struct dfc_cpu_state dfc_cpu_state;

dfc_status dfc_cpu_state_create(int num_threads, dfc_cpu_state **out, dfc_error *err);
void dfc_cpu_state_destroy(dfc_cpu_state *state);

/* Batched strided matrix product through oneDNN:
 *   C[b] = alpha * A[b] B[b] + beta * C[b],  A[b] (M, K), B[b] (K, N), C[b] (M, N), b < batch,
 * with element strides {batch, row, col} for each operand (transposes are expressed by swapping strides).
 * beta is 0 or 1. */
typedef struct dfc_matmul_operand {
    float *data;
    int64_t strides[3];
} dfc_matmul_operand;

dfc_status dfc_dnnl_matmul(dfc_backend *be, int64_t batch, int64_t m, int64_t n, int64_t k,
                           dfc_matmul_operand a, dfc_matmul_operand b, dfc_matmul_operand c, float alpha,
                           float beta, dfc_error *err);

#define DFC_DECLARE_CPU_OP(name) DFC_DECLARE_OP_(cpu, name)
DFC_DECLARE_CPU_OP(conv2d_forward)
DFC_DECLARE_CPU_OP(conv2d_backward_input)
DFC_DECLARE_CPU_OP(conv2d_backward_weight)
DFC_DECLARE_CPU_OP(linear_forward)
DFC_DECLARE_CPU_OP(linear_backward_input)
DFC_DECLARE_CPU_OP(linear_backward_weight)
DFC_DECLARE_CPU_OP(group_norm_forward)
DFC_DECLARE_CPU_OP(group_norm_backward)
DFC_DECLARE_CPU_OP(attention_forward)
DFC_DECLARE_CPU_OP(attention_backward)
DFC_DECLARE_CPU_OP(activation_forward)
DFC_DECLARE_CPU_OP(activation_backward)
/* diffusion arithmetic */
DFC_DECLARE_CPU_OP(q_sample)
DFC_DECLARE_CPU_OP(p_mean_variance_forward)
DFC_DECLARE_CPU_OP(sample_step)
#undef DFC_DECLARE_CPU_OP

#endif

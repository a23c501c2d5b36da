/* The CUDA backend's private header: its state, error checks, the launcher every kernel goes through, memory
 * staging for the ops' host vectors, and the library calls (cuBLAS GEMM).
 *
 * Every source in csrc/cuda is built twice:
 *  - by nvcc, into the plugin libdiffice_cuda.so (backend "cuda"), which _C loads when a CUDA backend is created;
 *  - by the host C++ compiler with DFC_CUDA_EMULATE, into _C itself (backend "cuda_emulated"): the same kernels
 *    run as host loops over their indices and the library calls run naive host code with the same argument
 *    conventions, so a machine without a GPU (CI) tests every kernel's arithmetic, indexing and argument checks.
 * What the emulation cannot check is the GPU itself: launch limits, the libraries (cuBLAS, cuDNN), streams.
 *
 * A kernel is a loop body over independent indices: dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE (int64_t i)
 * {...}) runs body(i) for i in [0, n), each index writing only its own outputs (no shared memory, no atomics, so
 * the emulation is exact and results do not depend on scheduling: the same inputs give the same bytes). Reductions
 * are one index per output with an inner loop, or two passes through dfc_cuda_scratch (partial sums per chunk,
 * then one index per output summing its chunks in order). */
#ifndef DIFFICE_CUDA_BACKEND_CUH
#define DIFFICE_CUDA_BACKEND_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "../ops/ops.h"
}

#ifdef DFC_CUDA_EMULATE
#define DFC_DEVICE      /* a loop body that the emulation runs on the host */
#define DFC_HOST_DEVICE /* a helper both sides call */
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#define DFC_DEVICE __device__
#define DFC_HOST_DEVICE __host__ __device__
#endif

#ifdef DFC_CUDA_EMULATE
typedef struct dfc_cuda_mapping {
    void *ptr;
    size_t bytes;
} dfc_cuda_mapping;
#endif

/* A convolution's cuDNN algorithm, chosen once per op, shapes, parameters and math mode and kept (dense.cu): the
 * emulation keys and fills the same cache, so its lookups are tested without a GPU. */
typedef struct dfc_cuda_conv_plan {
    int op;        /* 0: an empty slot; else dense.cu's conv kind */
    int precision; /* dfc_precision: the math mode and, for bf16, the data type */
    int64_t x[4], w[4];
    dfc_conv2d_params p;
    int algo, math; /* cudnnConvolution*Algo_t and cudnnMathType_t */
    size_t workspace;
} dfc_cuda_conv_plan;

enum { DFC_CUDA_CONV_PLANS = 64 };

/* The backend's private state (be->impl). */
typedef struct dfc_cuda_state {
    int device;          /* the CUDA device this backend runs on ("cuda:N") */
    void *scratch;       /* backend memory for host vectors and partial results, grown on demand and kept */
    size_t scratch_size; /* its bytes */
    void *bf16_scratch;  /* precision bf16: the bf16 copies of one library call's operands, apart from the scratch
                            (which holds the call's workspace, or the caller's partial results, meanwhile) */
    size_t bf16_scratch_size;
    dfc_cuda_conv_plan conv_plans[DFC_CUDA_CONV_PLANS]; /* round robin once full */
    int conv_plans_next;
#ifndef DFC_CUDA_EMULATE
    cudaStream_t stream; /* every op is issued on this stream, in order */
    cublasHandle_t cublas;
    cudnnHandle_t cudnn; /* convolutions (dense.cu); its workspace is the scratch */
#else
    int strict;                 /* backend memory is inaccessible outside the backend's own functions */
    int window_depth;           /* > 0: inside an op or memory function (nested ops count) */
    dfc_cuda_mapping *mappings; /* strict: every live allocation, to open and close them together */
    int num_mappings, max_mappings;
#endif
} dfc_cuda_state;

static inline dfc_cuda_state *dfc_cuda(dfc_backend *be) { return (dfc_cuda_state *)be->impl; }

/* ---- errors ---- */

#ifndef DFC_CUDA_EMULATE
/* A failed CUDA runtime call as a backend error naming the call; out of memory says how much is free. */
dfc_status dfc_cuda_check(cudaError_t code, const char *call, dfc_error *err);
dfc_status dfc_cublas_check(cublasStatus_t code, const char *call, dfc_error *err);
dfc_status dfc_cudnn_check(cudnnStatus_t code, const char *call, dfc_error *err);
#define DFC_CUDA_TRY(call) DFC_TRY(dfc_cuda_check((call), #call, err))
#define DFC_CUBLAS_TRY(call) DFC_TRY(dfc_cublas_check((call), #call, err))
#define DFC_CUDNN_TRY(call) DFC_TRY(dfc_cudnn_check((call), #call, err))
#endif

/* ---- the launcher ---- */

#ifndef DFC_CUDA_EMULATE
/* Grid-stride loop: any n fits any grid. */
template <class Body> __global__ void dfc_for_each_kernel(int64_t n, Body body)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        body(i);
}
dfc_status dfc_cuda_check_launch(const char *op, dfc_error *err);
#endif

/* Runs body(i) for every i in [0, n) on be's stream (the GPU) or on the host (the emulation, threaded: indices are
 * independent by contract). op names the kernel in a launch error. */
template <class Body>
static inline dfc_status dfc_cuda_for_each(dfc_backend *be, int64_t n, const char *op, dfc_error *err, Body body)
{
    if (n <= 0)
        return DFC_OK;
#ifdef DFC_CUDA_EMULATE
    (void)op;
    (void)err;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        body(i);
    return DFC_OK;
#else
    const int threads = 256;
    int64_t blocks = (n + threads - 1) / threads;
    if (blocks > 65536) /* enough blocks to fill any GPU; the grid-stride loop covers the rest */
        blocks = 65536;
    dfc_for_each_kernel<<<(unsigned)blocks, threads, 0, dfc_cuda(be)->stream>>>(n, body);
    return dfc_cuda_check_launch(op, err);
#endif
}

/* ---- memory ---- */

#ifdef DFC_CUDA_EMULATE
/* The strict emulation's access window (backend.cu): every op of the emulated table and every memory function runs
 * inside one; outside, backend memory cannot be touched. No-ops when not strict. */
void dfc_cuda_window_open(dfc_backend *be);
void dfc_cuda_window_close(dfc_backend *be);
/* Whether ptr lies in memory this backend allocated (always true when not strict: then it cannot tell). */
int dfc_cuda_is_backend_memory(dfc_backend *be, const void *ptr);
#endif

/* bytes rounded up to 256, the alignment of every piece carved from a scratch (cuBLAS's and cuDNN's preference). */
static inline size_t dfc_cuda_aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

/* be's scratch, at least bytes long (grown, never shrunk; the old buffer is freed once the stream is idle). The
 * scratch is one buffer: an op that needs several pieces carves them from one call. */
dfc_status dfc_cuda_scratch(dfc_backend *be, size_t bytes, void **out, dfc_error *err);

/* be's bf16 scratch, at least bytes long (grown like the scratch): for the bf16 copies of a convolution's or GEMM's
 * operands, which must not move the scratch while a caller holds pieces of it. */
dfc_status dfc_cuda_bf16_scratch(dfc_backend *be, size_t bytes, void **out, dfc_error *err);

/* ---- bf16 (precision "bf16": convolutions and GEMMs on bf16 operands with fp32 accumulation) ----
 * A bf16 is a float's upper 16 bits. Rounding is to nearest, ties to even (as __float2bfloat16 and torch's
 * .bfloat16()); NaN stays NaN. The same bit arithmetic on both sides, so the emulation rounds exactly as the GPU. */
DFC_HOST_DEVICE static inline uint16_t dfc_bf16_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* a quiet NaN (rounding could carry a NaN into infinity) */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

DFC_HOST_DEVICE static inline float dfc_bf16_to_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* dst[i] = bf16(src[i]) and back: the operands of a bf16 library call and its bf16 result. */
dfc_status dfc_cuda_to_bf16(dfc_backend *be, const char *op, const float *src, int64_t n, uint16_t *dst,
                            dfc_error *err);
dfc_status dfc_cuda_from_bf16(dfc_backend *be, const char *op, const uint16_t *src, int64_t n, float *dst,
                              dfc_error *err);

/* Copies host arrays (the ops' per-row coefficient vectors and targets) into be's scratch: pieces[k] of
 * sizes[k] bytes land at (*device)[k], each aligned to 256 bytes. At most 8 pieces; NULL pieces give NULL. The op's
 * own scratch comes from the same call, since the scratch is one buffer that a second request could move:
 * extra_bytes after the pieces, at *extra (256-aligned; NULL when extra_bytes is 0; extra may be NULL then). */
dfc_status dfc_cuda_stage_host(dfc_backend *be, int count, const void *const *pieces, const size_t *sizes,
                               void **device, size_t extra_bytes, void **extra, dfc_error *err);

/* Copies bytes from backend memory to the host after every op issued so far (the flags that nonfinite_rows and
 * target_probability return). */
dfc_status dfc_cuda_read_back(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err);

/* ---- GEMM (cuBLAS's column-major convention, as cublasSgemmStridedBatched) ----
 * For each of batch problems b: C_b = alpha op(A_b) op(B_b) + beta C_b, with op(A) m x k, op(B) k x n, C m x n,
 * all column-major with leading dimensions lda, ldb, ldc, and A_b = A + b stride_a (likewise B, C). A row-major
 * product Y (M x N) = X (M x K) W^T (W is N x K) is the column-major Y^T = W X^T: transa = 1 on W, transb = 0 on
 * X, m = N, n = M, k = K. In precision bf16, A and B are rounded to bf16 (copies in the bf16 scratch) and the
 * products accumulate in fp32 into C (cuBLAS's CUDA_R_16BF inputs with CUBLAS_COMPUTE_32F). */
typedef struct dfc_cuda_gemm_args {
    int transa, transb;
    int64_t m, n, k;
    float alpha;
    const float *a;
    int64_t lda, stride_a;
    const float *b;
    int64_t ldb, stride_b;
    float beta;
    float *c;
    int64_t ldc, stride_c;
    int64_t batch;
} dfc_cuda_gemm_args;

dfc_status dfc_cuda_gemm(dfc_backend *be, const dfc_cuda_gemm_args *g, const char *op, dfc_error *err);

#endif

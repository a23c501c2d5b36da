/* The CUDA backend's lifecycle and memory, and the helpers every CUDA op uses (cuda_backend.cuh). Built by nvcc as
 * the plugin's backend "cuda" and, with DFC_CUDA_EMULATE, by the host compiler as _C's "cuda_emulated", whose memory
 * is host memory reached only through these functions (so callers stage data exactly as they do for a GPU). */
#include <stdlib.h>
#include <string.h>

#ifdef DFC_CUDA_EMULATE
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "cuda_backend.cuh"

#ifndef DFC_CUDA_EMULATE

dfc_status dfc_cuda_check(cudaError_t code, const char *call, dfc_error *err)
{
    if (code == cudaSuccess)
        return DFC_OK;
    (void)cudaGetLastError(); /* clear a sticky launch error so the next call reports its own */
    return dfc_fail(err, code == cudaErrorMemoryAllocation ? DFC_ERR_NOMEM : DFC_ERR_BACKEND,
                    "cuda: %s failed: %s (%s)", call, cudaGetErrorString(code), cudaGetErrorName(code));
}

dfc_status dfc_cublas_check(cublasStatus_t code, const char *call, dfc_error *err)
{
    if (code == CUBLAS_STATUS_SUCCESS)
        return DFC_OK;
    return dfc_fail(err, code == CUBLAS_STATUS_ALLOC_FAILED ? DFC_ERR_NOMEM : DFC_ERR_BACKEND,
                    "cuda: %s failed: %s (%s)", call, cublasGetStatusString(code), cublasGetStatusName(code));
}

dfc_status dfc_cudnn_check(cudnnStatus_t code, const char *call, dfc_error *err)
{
    if (code == CUDNN_STATUS_SUCCESS)
        return DFC_OK;
    return dfc_fail(err, code == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? DFC_ERR_NOMEM : DFC_ERR_BACKEND,
                    "cuda: %s failed: %s", call, cudnnGetErrorString(code));
}

dfc_status dfc_cuda_check_launch(const char *op, dfc_error *err)
{
    cudaError_t code = cudaGetLastError();
    if (code == cudaSuccess)
        return DFC_OK;
    return dfc_fail(err, DFC_ERR_BACKEND, "cuda: %s: kernel launch failed: %s (%s)", op, cudaGetErrorString(code),
                    cudaGetErrorName(code));
}

static int cuda_device_count(void)
{
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

static dfc_status cuda_backend_create(dfc_backend *be, dfc_error *err)
{
    int count = 0;
    cudaError_t code = cudaGetDeviceCount(&count);
    if (code != cudaSuccess || count == 0)
        return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "cuda: no CUDA device is available (%s)",
                        code != cudaSuccess ? cudaGetErrorString(code) : "cudaGetDeviceCount found 0 devices");
    if (be->device < 0 || be->device >= count)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "cuda: device cuda:%d does not exist (this machine has %d: cuda:0..cuda:%d)", be->device, count,
                        count - 1);
    dfc_cuda_state *state = (dfc_cuda_state *)calloc(1, sizeof *state);
    if (!state)
        return dfc_fail(err, DFC_ERR_NOMEM, "cuda: out of host memory");
    be->impl = state;
    be->memory_limit = 0; /* device memory: the allocator's out-of-memory error says what is free */
    state->device = be->device;
    DFC_CUDA_TRY(cudaSetDevice(state->device));
    DFC_CUDA_TRY(cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking));
    DFC_CUBLAS_TRY(cublasCreate(&state->cublas));
    DFC_CUBLAS_TRY(cublasSetStream(state->cublas, state->stream));
    /* fp32 (parity with the CPU) unless precision "tf32": then cuBLAS's fp32 GEMMs may round inputs to TF32 (bf16
     * GEMMs take bf16 operands, dfc_cuda_gemm, and use tensor cores in the default mode) */
    DFC_CUBLAS_TRY(cublasSetMathMode(state->cublas, be->precision == DFC_PRECISION_TF32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                                        : CUBLAS_DEFAULT_MATH));
    DFC_CUDNN_TRY(cudnnCreate(&state->cudnn));
    DFC_CUDNN_TRY(cudnnSetStream(state->cudnn, state->stream));
    return DFC_OK;
}

/* Releases what create obtained, also after a create that failed half way (dfc_backend_create then frees be). */
static void cuda_backend_destroy(dfc_backend *be)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (!state)
        return;
    cudaSetDevice(state->device);
    if (state->stream)
        cudaStreamSynchronize(state->stream);
    cudaFree(state->scratch);
    cudaFree(state->bf16_scratch);
    if (state->cudnn)
        cudnnDestroy(state->cudnn);
    if (state->cublas)
        cublasDestroy(state->cublas);
    if (state->stream)
        cudaStreamDestroy(state->stream);
    free(state);
    be->impl = NULL;
}

static dfc_status cuda_backend_synchronize(dfc_backend *be, dfc_error *err)
{
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    DFC_CUDA_TRY(cudaStreamSynchronize(dfc_cuda(be)->stream));
    return DFC_OK;
}

/* ---- device memory: obtained by arenas and caches outside the step loop, so cudaMalloc's cost is paid once ---- */

static void *cuda_memory_alloc(dfc_backend *be, size_t bytes, dfc_error *err)
{
    void *ptr = NULL;
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    cudaError_t code = cudaMalloc(&ptr, bytes ? bytes : 1);
    if (code == cudaSuccess)
        return ptr;
    (void)cudaGetLastError();
    if (code != cudaErrorMemoryAllocation) { /* e.g. a sticky error left by a kernel that faulted earlier */
        dfc_cuda_check(code, "cudaMalloc", err);
        return NULL;
    }
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    dfc_fail(err, DFC_ERR_NOMEM,
             "cuda: out of device memory on cuda:%d: asked for %zu bytes (%.1f MiB), %.1f MiB free of %.1f MiB (%s)",
             dfc_cuda(be)->device, bytes, bytes / 1048576.0, free_bytes / 1048576.0, total_bytes / 1048576.0,
             cudaGetErrorString(code));
    return NULL;
}

static void cuda_memory_free(dfc_backend *be, void *ptr)
{
    if (!ptr)
        return;
    /* memory may still be read by queued kernels: cudaFree waits for the device, so this is stream-safe */
    cudaSetDevice(dfc_cuda(be)->device);
    cudaFree(ptr);
}

static dfc_status cuda_memory_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err)
{
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    DFC_CUDA_TRY(cudaMemsetAsync(ptr, 0, bytes, dfc_cuda(be)->stream));
    return DFC_OK;
}

/* Host buffers are pageable, so the copy is complete (staged) when cudaMemcpyAsync returns: the caller may reuse
 * its buffer at once. */
static dfc_status cuda_memory_copy_from_host(dfc_backend *be, void *dst, const void *host_src, size_t bytes,
                                             dfc_error *err)
{
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    DFC_CUDA_TRY(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, dfc_cuda(be)->stream));
    return DFC_OK;
}

static dfc_status cuda_memory_copy_to_host(dfc_backend *be, void *host_dst, const void *src, size_t bytes,
                                           dfc_error *err)
{
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    DFC_CUDA_TRY(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, dfc_cuda(be)->stream));
    DFC_CUDA_TRY(cudaStreamSynchronize(dfc_cuda(be)->stream));
    return DFC_OK;
}

static dfc_status cuda_memory_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err)
{
    cudaSetDevice(dfc_cuda(be)->device); /* the current device is per thread: make it this backend's */
    DFC_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, dfc_cuda(be)->stream));
    return DFC_OK;
}

#else /* DFC_CUDA_EMULATE: host memory behind the same functions */

/* The strict emulation (DIFFICE_CUDA_EMULATE_STRICT=1, set by the test suite): backend memory is mapped with no
 * access except while an op or a memory function of this backend runs (dfc_cuda_window_open/close), so host code
 * that touches tensor data it should reach only through the backend — what would read a device pointer on a GPU —
 * faults at once instead of passing. Without it, backend memory is ordinary heap memory (AddressSanitizer sees it). */
static int strict_requested(void)
{
    const char *v = getenv("DIFFICE_CUDA_EMULATE_STRICT");
    return v && v[0] == '1';
}

/* One emulated device: "cuda_emulated" takes no device number. */
static int dfc_cuda_emulated_device_count(void) { return 1; }

static dfc_status cuda_backend_create(dfc_backend *be, dfc_error *err)
{
    if (be->device != 0)
        return dfc_fail(err, DFC_ERR_VALUE, "cuda_emulated: device %d does not exist (the emulation has device 0)",
                        be->device);
    dfc_cuda_state *state = (dfc_cuda_state *)calloc(1, sizeof *state);
    if (!state)
        return dfc_fail(err, DFC_ERR_NOMEM, "cuda_emulated: out of host memory");
    be->impl = state;
    state->strict = strict_requested();
    be->private_memory = state->strict; /* its mappings open inside its own ops only */
    return DFC_OK;
}

static void protect_all(dfc_cuda_state *state, int prot)
{
    for (int k = 0; k < state->num_mappings; k++)
        mprotect(state->mappings[k].ptr, state->mappings[k].bytes, prot);
}

void dfc_cuda_window_open(dfc_backend *be)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (state->strict && state->window_depth++ == 0)
        protect_all(state, PROT_READ | PROT_WRITE);
}

void dfc_cuda_window_close(dfc_backend *be)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (state->strict && --state->window_depth == 0)
        protect_all(state, PROT_NONE);
}

int dfc_cuda_is_backend_memory(dfc_backend *be, const void *ptr)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (!state->strict)
        return 1;
    const char *p = (const char *)ptr;
    for (int k = 0; k < state->num_mappings; k++) {
        const char *base = (const char *)state->mappings[k].ptr;
        if (p >= base && p < base + state->mappings[k].bytes)
            return 1;
    }
    return 0;
}

static void *cuda_memory_alloc(dfc_backend *be, size_t bytes, dfc_error *err)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (!state->strict)
        return dfc_host_alloc(be, bytes, err);
    if (state->num_mappings == state->max_mappings) {
        int grown = state->max_mappings ? 2 * state->max_mappings : 64;
        void *fresh = realloc(state->mappings, (size_t)grown * sizeof *state->mappings);
        if (!fresh) {
            dfc_fail(err, DFC_ERR_NOMEM, "cuda_emulated: out of host memory");
            return NULL;
        }
        state->mappings = (dfc_cuda_mapping *)fresh;
        state->max_mappings = grown;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE), rounded = (bytes + page - 1) / page * page;
    void *ptr = mmap(NULL, rounded ? rounded : page, state->window_depth ? PROT_READ | PROT_WRITE : PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
        dfc_fail(err, DFC_ERR_NOMEM, "cuda_emulated: cannot map %zu bytes", bytes);
        return NULL;
    }
    state->mappings[state->num_mappings++] = (dfc_cuda_mapping){ptr, rounded ? rounded : page};
    return ptr;
}

static void cuda_memory_free(dfc_backend *be, void *ptr)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (!ptr)
        return;
    if (!state->strict) {
        dfc_host_free(be, ptr);
        return;
    }
    for (int k = 0; k < state->num_mappings; k++)
        if (state->mappings[k].ptr == ptr) {
            munmap(ptr, state->mappings[k].bytes);
            state->mappings[k] = state->mappings[--state->num_mappings];
            return;
        }
}

static dfc_status cuda_memory_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err)
{
    dfc_cuda_window_open(be);
    dfc_status st = dfc_host_zero(be, ptr, bytes, err);
    dfc_cuda_window_close(be);
    return st;
}

static dfc_status cuda_memory_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err)
{
    const char *d = (const char *)dst, *s = (const char *)src;
    if (d != s && d < s + bytes && s < d + bytes) /* memmove would do; cudaMemcpyAsync's result is undefined */
        return dfc_fail(err, DFC_ERR_BACKEND, "cuda: a copy of %zu bytes between overlapping ranges", bytes);
    dfc_cuda_window_open(be);
    dfc_status st = dfc_host_copy(be, dst, src, bytes, err);
    dfc_cuda_window_close(be);
    return st;
}

#define cuda_memory_copy_from_host cuda_memory_copy
#define cuda_memory_copy_to_host cuda_memory_copy

static void cuda_backend_destroy(dfc_backend *be)
{
    dfc_cuda_state *state = dfc_cuda(be);
    if (!state)
        return;
    cuda_memory_free(be, state->scratch);
    cuda_memory_free(be, state->bf16_scratch);
    for (int k = 0; k < state->num_mappings; k++) /* what an owner did not free: the backend outlives no mapping */
        munmap(state->mappings[k].ptr, state->mappings[k].bytes);
    free(state->mappings);
    free(state);
    be->impl = NULL;
}

static dfc_status cuda_backend_synchronize(dfc_backend *be, dfc_error *err)
{
    (void)be;
    (void)err;
    return DFC_OK;
}

#endif

/* ---- helpers shared by the ops ---- */

/* *buffer, at least bytes long: grown (at least doubled) when short, never shrunk. */
static dfc_status grow_buffer(dfc_backend *be, void **buffer, size_t *size, size_t bytes, void **out, dfc_error *err)
{
    if (bytes > *size) {
        size_t grown = bytes > 2 * *size ? bytes : 2 * *size;
        void *fresh = cuda_memory_alloc(be, grown, err);
        if (!fresh)
            return err ? err->code : DFC_ERR_NOMEM;
        if (*buffer) { /* queued kernels may still read the old buffer (cudaFree waits too, but does not promise it) */
            dfc_status st = cuda_backend_synchronize(be, err);
            if (st != DFC_OK) {
                cuda_memory_free(be, fresh);
                return st;
            }
        }
        cuda_memory_free(be, *buffer);
        *buffer = fresh;
        *size = grown;
    }
    *out = *buffer;
    return DFC_OK;
}

dfc_status dfc_cuda_scratch(dfc_backend *be, size_t bytes, void **out, dfc_error *err)
{
    dfc_cuda_state *state = dfc_cuda(be);
    return grow_buffer(be, &state->scratch, &state->scratch_size, bytes, out, err);
}

dfc_status dfc_cuda_bf16_scratch(dfc_backend *be, size_t bytes, void **out, dfc_error *err)
{
    dfc_cuda_state *state = dfc_cuda(be);
    return grow_buffer(be, &state->bf16_scratch, &state->bf16_scratch_size, bytes, out, err);
}

dfc_status dfc_cuda_to_bf16(dfc_backend *be, const char *op, const float *src, int64_t n, uint16_t *dst, dfc_error *err)
{
    return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t i) { dst[i] = dfc_bf16_from_float(src[i]); });
}

dfc_status dfc_cuda_from_bf16(dfc_backend *be, const char *op, const uint16_t *src, int64_t n, float *dst,
                              dfc_error *err)
{
    return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t i) { dst[i] = dfc_bf16_to_float(src[i]); });
}

dfc_status dfc_cuda_stage_host(dfc_backend *be, int count, const void *const *pieces, const size_t *sizes,
                               void **device, size_t extra_bytes, void **extra, dfc_error *err)
{
    enum { MAX_PIECES = 8 };
    if (count < 0 || count > MAX_PIECES)
        return dfc_fail(err, DFC_ERR_VALUE, "cuda: cannot stage %d host arrays (at most %d)", count, MAX_PIECES);
    size_t offsets[MAX_PIECES], total = 0;
    for (int k = 0; k < count; k++) {
        offsets[k] = total;
        total += dfc_cuda_aligned(sizes[k]);
    }
    void *base = NULL;
    DFC_TRY(dfc_cuda_scratch(be, total + extra_bytes ? total + extra_bytes : 1, &base, err));
    if (extra)
        *extra = extra_bytes ? (char *)base + total : NULL;
    for (int k = 0; k < count; k++) {
        device[k] = pieces[k] ? (char *)base + offsets[k] : NULL;
        if (pieces[k] && sizes[k])
            DFC_TRY(cuda_memory_copy_from_host(be, device[k], pieces[k], sizes[k], err));
    }
    return DFC_OK;
}

dfc_status dfc_cuda_read_back(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err)
{
    return bytes ? cuda_memory_copy_to_host(be, host_dst, src, bytes, err) : DFC_OK;
}

/* The elements a strided batch of column-major (rows x cols) blocks reaches from its first: the length of its bf16
 * copy. */
static int64_t operand_span(int64_t rows, int64_t cols, int64_t ld, int64_t stride, int64_t batch)
{
    return (batch - 1) * stride + (cols - 1) * ld + rows;
}

/* Precision bf16: A and B copied as bf16 into the bf16 scratch, at the same offsets from their first element. */
static dfc_status gemm_bf16_operands(dfc_backend *be, const dfc_cuda_gemm_args *g, const char *op, uint16_t **a16,
                                     uint16_t **b16, dfc_error *err)
{
    const int64_t a_span =
                      operand_span(g->transa ? g->k : g->m, g->transa ? g->m : g->k, g->lda, g->stride_a, g->batch),
                  b_span =
                      operand_span(g->transb ? g->n : g->k, g->transb ? g->k : g->n, g->ldb, g->stride_b, g->batch);
    const size_t b_offset = dfc_cuda_aligned((size_t)a_span * sizeof(uint16_t));
    void *copies = NULL;
    DFC_TRY(dfc_cuda_bf16_scratch(be, b_offset + (size_t)b_span * sizeof(uint16_t), &copies, err));
    *a16 = (uint16_t *)copies;
    *b16 = (uint16_t *)((char *)copies + b_offset);
    DFC_TRY(dfc_cuda_to_bf16(be, op, g->a, a_span, *a16, err));
    return dfc_cuda_to_bf16(be, op, g->b, b_span, *b16, err);
}

/* C = beta C (0 where beta is 0, whatever C held): a product over k = 0, which cuBLAS would refuse (its leading
 * dimensions must be at least 1). */
static dfc_status gemm_empty_product(dfc_backend *be, const dfc_cuda_gemm_args *g, const char *op, dfc_error *err)
{
    const int64_t m = g->m, n = g->n, ldc = g->ldc, stride_c = g->stride_c;
    const float beta = g->beta;
    float *c = g->c;
    return dfc_cuda_for_each(be, g->batch * n * m, op, err, [=] DFC_DEVICE(int64_t i) {
        float *e = c + i / (n * m) * stride_c + i / m % n * ldc + i % m;
        *e = beta != 0.0f ? beta * *e : 0.0f;
    });
}

dfc_status dfc_cuda_gemm(dfc_backend *be, const dfc_cuda_gemm_args *g, const char *op, dfc_error *err)
{
    if (g->m <= 0 || g->n <= 0 || g->batch <= 0)
        return DFC_OK;
    if (g->k <= 0)
        return gemm_empty_product(be, g, op, err);
    /* cuBLAS's rule (a leading dimension at least the rows of its column-major block), checked on both sides so that
     * the emulation refuses what the GPU would */
    const int64_t a_rows = g->transa ? g->k : g->m, b_rows = g->transb ? g->n : g->k;
    if (g->lda < a_rows || g->ldb < b_rows || g->ldc < g->m)
        return dfc_fail(err, DFC_ERR_BACKEND,
                        "cuda: %s: GEMM leading dimensions (%lld, %lld, %lld) below the rows of A, B, C (%lld, %lld, "
                        "%lld)",
                        op, (long long)g->lda, (long long)g->ldb, (long long)g->ldc, (long long)a_rows,
                        (long long)b_rows, (long long)g->m);
    const int bf16 = be->precision == DFC_PRECISION_BF16;
    uint16_t *a16 = NULL, *b16 = NULL;
    if (bf16)
        DFC_TRY(gemm_bf16_operands(be, g, op, &a16, &b16, err));
#ifdef DFC_CUDA_EMULATE
    /* cuBLAS's semantics in plain loops (column-major; A(i, l) of op(A) is a[i + l lda] or, transposed, a[l + i
     * lda]), accumulated in double so the emulation is an oracle for the GPU's fp32 result; bf16 reads the copies */
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t b = 0; b < g->batch; b++)
        for (int64_t j = 0; j < g->n; j++) {
            const int64_t a0 = b * g->stride_a, b0 = b * g->stride_b;
            float *c = g->c + b * g->stride_c;
            for (int64_t i = 0; i < g->m; i++) {
                double acc = 0.0;
                for (int64_t l = 0; l < g->k; l++) {
                    const int64_t ai = a0 + (g->transa ? l + i * g->lda : i + l * g->lda);
                    const int64_t bi = b0 + (g->transb ? j + l * g->ldb : l + j * g->ldb);
                    const float av = bf16 ? dfc_bf16_to_float(a16[ai]) : g->a[ai];
                    const float bv = bf16 ? dfc_bf16_to_float(b16[bi]) : g->b[bi];
                    acc += (double)av * bv;
                }
                float prev = g->beta != 0.0f ? c[i + j * g->ldc] : 0.0f;
                c[i + j * g->ldc] = (float)(g->alpha * acc + (double)g->beta * prev);
            }
        }
    return DFC_OK;
#else
    dfc_cuda_state *state = dfc_cuda(be);
    const int big = g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->batch > INT32_MAX;
    if (big)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "cuda: %s: GEMM of %lld x %lld x %lld (batch %lld) exceeds cuBLAS's int sizes", op,
                        (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch);
    cublasComputeType_t compute =
        be->precision == DFC_PRECISION_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const cudaDataType_t input_type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const void *a = bf16 ? (const void *)a16 : g->a, *b = bf16 ? (const void *)b16 : g->b;
    cublasStatus_t code = cublasGemmStridedBatchedEx(
        state->cublas, g->transa ? CUBLAS_OP_T : CUBLAS_OP_N, g->transb ? CUBLAS_OP_T : CUBLAS_OP_N, (int)g->m,
        (int)g->n, (int)g->k, &g->alpha, a, input_type, (int)g->lda, g->stride_a, b, input_type, (int)g->ldb,
        g->stride_b, &g->beta, g->c, CUDA_R_32F, (int)g->ldc, g->stride_c, (int)g->batch, compute, CUBLAS_GEMM_DEFAULT);
    if (code != CUBLAS_STATUS_SUCCESS)
        return dfc_fail(
            err, DFC_ERR_BACKEND, "cuda: %s: cublasGemmStridedBatchedEx (%lld x %lld x %lld, batch %lld) failed: %s",
            op, (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch, cublasGetStatusString(code));
    return DFC_OK;
#endif
}

/* ---- the interface ---- */

extern "C" {
#ifdef DFC_CUDA_EMULATE
extern const dfc_ops dfc_cuda_emulated_ops;
const dfc_backend_iface dfc_cuda_emulated_backend_iface = {
    .name = "cuda_emulated",
    .ops = &dfc_cuda_emulated_ops,
    .host_memory = 0, /* stage like a GPU, so the staging code is tested too */
    .conv_nhwc = 0,   /* cuDNN's convolutions here take NCHW (csrc/cuda/dense.cu) */
    /* the emulation computes every fp32 product exactly (TF32 keys its plans like the GPU's); bf16 rounds the
     * operands of convolutions and GEMMs as the GPU does */
    .precisions = DFC_PRECISION_BIT(DFC_PRECISION_FP32) | DFC_PRECISION_BIT(DFC_PRECISION_TF32) |
                  DFC_PRECISION_BIT(DFC_PRECISION_BF16),
    .device_count = dfc_cuda_emulated_device_count,
#else
extern const dfc_ops dfc_cuda_ops;
static const dfc_backend_iface cuda_backend_iface = {
    .name = "cuda",
    .ops = &dfc_cuda_ops,
    .host_memory = 0,
    .conv_nhwc = 0,
    .precisions = DFC_PRECISION_BIT(DFC_PRECISION_FP32) | DFC_PRECISION_BIT(DFC_PRECISION_TF32) |
                  DFC_PRECISION_BIT(DFC_PRECISION_BF16),
    .device_count = cuda_device_count,
#endif
    .create = cuda_backend_create,
    .destroy = cuda_backend_destroy,
    .synchronize = cuda_backend_synchronize,
    .alloc = cuda_memory_alloc,
    .free = cuda_memory_free,
    .zero = cuda_memory_zero,
    .copy_from_host = cuda_memory_copy_from_host,
    .copy_to_host = cuda_memory_copy_to_host,
    .copy = cuda_memory_copy,
};

#ifndef DFC_CUDA_EMULATE
/* The plugin's one export: _C's "cuda" entry (backend.c) loads this library and takes its interface. */
__attribute__((visibility("default"))) const dfc_backend_iface *dfc_cuda_plugin_iface(void)
{
    return &cuda_backend_iface;
}
#endif
}

/* Dense ops on the CUDA backend: conv2d through cuDNN, linear and QKV attention through cuBLAS (dfc_cuda_gemm), with
 * the bias, bias-gradient and softmax steps as for_each kernels. Read against ref_conv.c and ref_attention.c: the
 * same checks (conv_check.h, attention_layout.h), the same operation order in the kernels written here.
 *
 * Convolutions: cuDNN's legacy convolution API on fp32 NCHW. The algorithm is chosen once per (op, shapes,
 * parameters, math mode) with cudnnGet*Algorithm_v7, restricted to deterministic algorithms (the backend's contract:
 * the same inputs give the same bytes), and kept in the state's plan cache; the workspace is the backend scratch.
 * Math: CUDNN_FMA_MATH unless the state allows TF32 (CUDNN_DEFAULT_MATH would let cuDNN use TF32 tensor cores on
 * Ampere and later, losing fp32 parity with the CPU). Precision bf16: the two operands a convolution reads are
 * rounded into bf16 copies (the backend's bf16 scratch), cuDNN runs on bf16 tensors with fp32 accumulation and a
 * bf16 result, which is widened into the fp32 output; the bias and everything around stays fp32. In the emulated
 * build the descriptors and library calls are replaced by the reference kernels (ref_conv2d_*) on the widened bf16
 * operands, after the same checks, copies and plan-cache lookup, and the bias kernels run as written.
 *
 * Verified only on a GPU (the emulation cannot reach them): the cuDNN calls (descriptors, algorithm choice, math
 * mode, workspace sizes, the convolution calls themselves), cuBLAS's handling of the GEMM arguments (the emulated
 * GEMM follows its column-major convention), launch sizes, and timing. */
#include <math.h>

#include <stdio.h>
#include <stdlib.h>

#include "cuda_backend.cuh"

extern "C" {
#include "../ops/attention_layout.h"
#include "../ops/conv_check.h"
#ifdef DFC_CUDA_EMULATE
#include "../ops/ref.h"
#endif
}

/* An optional tensor is absent when the pointer or its data is NULL (the bindings pass data == NULL for None). */
static const dfc_tensor *optional(const dfc_tensor *t) { return t && t->data ? t : NULL; }

/* ---- bias kernels (conv and linear: y viewed as (outer, channels, inner)) ---- */

/* y[o, c, i] += bias[c]. */
static dfc_status bias_add(dfc_backend *be, const char *op, const float *bias, int64_t channels, int64_t inner,
                           dfc_tensor *y, dfc_error *err)
{
    float *ys = y->data;
    return dfc_cuda_for_each(be, dfc_numel(y), op, err,
                             [=] DFC_DEVICE(int64_t i) { ys[i] += bias[(i / inner) % channels]; });
}

/* dbias[c] = sum over o, i of dy[o, c, i], in double. With inner == 1 (linear) one index per column sums the rows
 * in order; otherwise (conv, where a plane is long) two passes: one index per (o, c) sums its plane into the
 * scratch, then one index per channel sums its planes in order. */
static dfc_status bias_grad(dfc_backend *be, const char *op, const dfc_tensor *dy, int64_t channels, int64_t inner,
                            dfc_tensor *dbias, dfc_error *err)
{
    const int64_t outer = channels > 0 && inner > 0 ? dfc_numel(dy) / (channels * inner) : 0;
    const float *dys = dy->data;
    float *dbs = dbias->data;
    if (inner == 1)
        return dfc_cuda_for_each(be, channels, op, err, [=] DFC_DEVICE(int64_t c) {
            double sum = 0.0;
            for (int64_t o = 0; o < outer; o++)
                sum += dys[o * channels + c];
            dbs[c] = (float)sum;
        });
    void *scratch = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(outer * channels) * sizeof(double) + 1, &scratch, err));
    double *planes = (double *)scratch;
    DFC_TRY(dfc_cuda_for_each(be, outer * channels, op, err, [=] DFC_DEVICE(int64_t oc) {
        const float *plane = dys + oc * inner;
        double sum = 0.0;
        for (int64_t i = 0; i < inner; i++)
            sum += plane[i];
        planes[oc] = sum;
    }));
    return dfc_cuda_for_each(be, channels, op, err, [=] DFC_DEVICE(int64_t c) {
        double sum = 0.0;
        for (int64_t o = 0; o < outer; o++)
            sum += planes[o * channels + c];
        dbs[c] = (float)sum;
    });
}

/* t = 0 (backward outputs are overwritten even when nothing flows into them). */
static dfc_status fill_zero(dfc_backend *be, const char *op, dfc_tensor *t, dfc_error *err)
{
    float *ts = t->data;
    return dfc_cuda_for_each(be, dfc_numel(t), op, err, [=] DFC_DEVICE(int64_t i) { ts[i] = 0.0f; });
}

/* ---- conv2d ---- */

enum conv_kind { CONV_FORWARD = 1, CONV_BACKWARD_DATA = 2, CONV_BACKWARD_FILTER = 3 };

/* The cached plan of (kind, x shape, w shape, p, math mode), or NULL. */
static dfc_cuda_conv_plan *conv_plan_find(dfc_backend *be, int kind, const int64_t *x, const int64_t *w,
                                          dfc_conv2d_params p)
{
    for (int k = 0; k < DFC_CUDA_CONV_PLANS; k++) {
        dfc_cuda_conv_plan *plan = &dfc_cuda(be)->conv_plans[k];
        int same = plan->op == kind && plan->precision == (int)be->precision && plan->p.stride_h == p.stride_h &&
                   plan->p.stride_w == p.stride_w && plan->p.pad_h == p.pad_h && plan->p.pad_w == p.pad_w;
        for (int d = 0; same && d < 4; d++)
            same = plan->x[d] == x[d] && plan->w[d] == w[d];
        if (same)
            return plan;
    }
    return NULL;
}

/* A fresh slot for (kind, shapes, p), replacing the oldest plan once the cache is full. */
static dfc_cuda_conv_plan *conv_plan_slot(dfc_backend *be, int kind, const int64_t *x, const int64_t *w,
                                          dfc_conv2d_params p)
{
    dfc_cuda_state *state = dfc_cuda(be);
    dfc_cuda_conv_plan *plan = &state->conv_plans[state->conv_plans_next];
    state->conv_plans_next = (state->conv_plans_next + 1) % DFC_CUDA_CONV_PLANS;
    *plan = dfc_cuda_conv_plan{};
    plan->op = kind;
    plan->precision = be->precision;
    plan->p = p;
    for (int d = 0; d < 4; d++) {
        plan->x[d] = x[d];
        plan->w[d] = w[d];
    }
    return plan;
}

/* cuDNN takes int extents. */
static dfc_status conv_check_int_sizes(const char *op, const dfc_tensor *x, const dfc_tensor *w, const dfc_tensor *y,
                                       dfc_error *err)
{
    const dfc_tensor *ts[3] = {x, w, y};
    for (int k = 0; k < 3; k++)
        if (dfc_numel(ts[k]) > INT32_MAX)
            return dfc_fail(err, DFC_ERR_VALUE, "cuda: %s: a tensor of %lld elements exceeds cuDNN's int sizes", op,
                            (long long)dfc_numel(ts[k]));
    return DFC_OK;
}

/* The tensors of one convolution in its forward direction: x (N, Ci, H, W) * w (Co, Ci, KH, KW) -> y. */
typedef struct conv_problem {
    const char *op;
    int kind;
    const dfc_tensor *x, *w, *y;
    dfc_conv2d_params p;
} conv_problem;

/* Which of (x, w, y) a kind of convolution writes; it reads the other two. */
static int conv_output_index(int kind) { return kind == CONV_FORWARD ? 2 : kind == CONV_BACKWARD_DATA ? 0 : 1; }

/* Copies of x, w and y (t, in that order) of element bytes each, carved from one buffer: each copy's offset, each
 * 256-byte aligned, and the buffer's size. */
static size_t conv_copies_layout(const dfc_tensor *const t[3], size_t element, size_t offsets[3])
{
    size_t total = 0;
    for (int k = 0; k < 3; k++) {
        offsets[k] = total;
        total += dfc_cuda_aligned((size_t)dfc_numel(t[k]) * element);
    }
    return total;
}

/* The call's data, in the order (x, w, y): cp's fp32 tensors, or (precision bf16) their bf16 copies. */
typedef struct conv_data {
    void *t[3];
    int bf16;
} conv_data;

#ifndef DFC_CUDA_EMULATE

/* Descriptors of one call, created and destroyed around it. */
typedef struct conv_descs {
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} conv_descs;

/* A failed cuDNN call as an error naming the op and the call. */
static dfc_status cudnn_ok(cudnnStatus_t code, const char *op, const char *call, dfc_error *err)
{
    if (code == CUDNN_STATUS_SUCCESS)
        return DFC_OK;
    return dfc_fail(err, code == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? DFC_ERR_NOMEM : DFC_ERR_BACKEND,
                    "cuda: %s: %s failed: %s", op, call, cudnnGetErrorString(code));
}
#define CUDNN_CALL(fn, ...) DFC_TRY(cudnn_ok(fn(__VA_ARGS__), cp->op, #fn, err))

static void conv_descs_destroy(conv_descs *d)
{
    if (d->x)
        cudnnDestroyTensorDescriptor(d->x);
    if (d->y)
        cudnnDestroyTensorDescriptor(d->y);
    if (d->w)
        cudnnDestroyFilterDescriptor(d->w);
    if (d->conv)
        cudnnDestroyConvolutionDescriptor(d->conv);
}

/* The math mode a descriptor asks for, as PyTorch sets it: fp32: FMA math (no tensor cores, parity with the CPU);
 * tf32: the default math, which on sm80+ runs fp32 data on TF32 tensor cores (never TENSOR_OP_MATH_ALLOW_CONVERSION:
 * that converts fp32 data to fp16); bf16: tensor cores on bf16 data (x, w, y bf16, accumulation in fp32: cuDNN's
 * PSEUDO_BFLOAT16 configuration). */
static cudnnMathType_t conv_math(int precision)
{
    return precision == DFC_PRECISION_TF32   ? CUDNN_DEFAULT_MATH
           : precision == DFC_PRECISION_BF16 ? CUDNN_TENSOR_OP_MATH
                                             : CUDNN_FMA_MATH;
}

static dfc_status conv_descs_init(const conv_problem *cp, int precision, conv_descs *d, dfc_error *err)
{
    const int64_t *xs = cp->x->shape, *ws = cp->w->shape, *ys = cp->y->shape;
    const cudnnDataType_t type = precision == DFC_PRECISION_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    CUDNN_CALL(cudnnCreateTensorDescriptor, &d->x);
    CUDNN_CALL(cudnnCreateTensorDescriptor, &d->y);
    CUDNN_CALL(cudnnCreateFilterDescriptor, &d->w);
    CUDNN_CALL(cudnnCreateConvolutionDescriptor, &d->conv);
    CUDNN_CALL(cudnnSetTensor4dDescriptor, d->x, CUDNN_TENSOR_NCHW, type, (int)xs[0], (int)xs[1], (int)xs[2],
               (int)xs[3]);
    CUDNN_CALL(cudnnSetTensor4dDescriptor, d->y, CUDNN_TENSOR_NCHW, type, (int)ys[0], (int)ys[1], (int)ys[2],
               (int)ys[3]);
    CUDNN_CALL(cudnnSetFilter4dDescriptor, d->w, type, CUDNN_TENSOR_NCHW, (int)ws[0], (int)ws[1], (int)ws[2],
               (int)ws[3]);
    /* cross-correlation, as torch's conv2d and the reference; fp32 accumulation in every precision */
    CUDNN_CALL(cudnnSetConvolution2dDescriptor, d->conv, cp->p.pad_h, cp->p.pad_w, cp->p.stride_h, cp->p.stride_w, 1, 1,
               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    CUDNN_CALL(cudnnSetConvolutionMathType, d->conv, conv_math(precision));
    return DFC_OK;
}

/* An algorithm and math mode cuDNN ranked for a convolution. */
typedef struct conv_candidate {
    int algo, math;
} conv_candidate;

/* cuDNN's ranked candidates that ran and are deterministic, in rank order, with the math mode each would run in:
 * fp32 forces FMA math on every candidate (as PyTorch does with TF32 off: a candidate's reported mode may be the
 * default, which allows TF32) and drops those that need tensor cores; no precision takes a candidate that converts
 * fp32 data to fp16. Returns how many. */
template <class Perf> static int conv_candidates(const Perf *perf, int count, int precision, conv_candidate *out)
{
    int n = 0;
    for (int k = 0; k < count; k++) {
        const int math = perf[k].mathType;
        if (perf[k].status != CUDNN_STATUS_SUCCESS || perf[k].determinism != CUDNN_DETERMINISTIC ||
            math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ||
            (precision == DFC_PRECISION_FP32 && math == CUDNN_TENSOR_OP_MATH))
            continue;
        out[n++] = {(int)perf[k].algo, precision == DFC_PRECISION_FP32 ? (int)CUDNN_FMA_MATH : math};
    }
    return n;
}

/* The workspace cp's kind of convolution needs with algo (the math mode already set on d->conv). */
static cudnnStatus_t conv_workspace_size(cudnnHandle_t h, const conv_problem *cp, const conv_descs *d, int algo,
                                         size_t *bytes)
{
    if (cp->kind == CONV_FORWARD)
        return cudnnGetConvolutionForwardWorkspaceSize(h, d->x, d->w, d->conv, d->y, (cudnnConvolutionFwdAlgo_t)algo,
                                                       bytes);
    if (cp->kind == CONV_BACKWARD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d->w, d->y, d->conv, d->x,
                                                            (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d->x, d->y, d->conv, d->w,
                                                          (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
}

/* A workspace above this is taken only when no candidate needs less: the scratch that holds it is kept. */
static const size_t CONV_WORKSPACE_CAP = (size_t)1 << 30;

/* Chooses plan's algorithm and math mode for the descriptors d, and its workspace size: the first candidate (in
 * cuDNN's rank order) whose mode cuDNN accepts and whose workspace it can size, within CONV_WORKSPACE_CAP where one
 * is. */
static dfc_status conv_plan_choose(dfc_backend *be, const conv_problem *cp, const conv_descs *d,
                                   dfc_cuda_conv_plan *plan, dfc_error *err)
{
    cudnnHandle_t h = dfc_cuda(be)->cudnn;
    conv_candidate candidates[(int)CUDNN_CONVOLUTION_FWD_ALGO_COUNT + (int)CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT +
                              (int)CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int count = 0, n = 0;
    if (cp->kind == CONV_FORWARD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        CUDNN_CALL(cudnnGetConvolutionForwardAlgorithm_v7, h, d->x, d->w, d->conv, d->y,
                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf);
        n = conv_candidates(perf, count, be->precision, candidates);
    } else if (cp->kind == CONV_BACKWARD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        CUDNN_CALL(cudnnGetConvolutionBackwardDataAlgorithm_v7, h, d->w, d->y, d->conv, d->x,
                   CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf);
        n = conv_candidates(perf, count, be->precision, candidates);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        CUDNN_CALL(cudnnGetConvolutionBackwardFilterAlgorithm_v7, h, d->x, d->y, d->conv, d->w,
                   CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf);
        n = conv_candidates(perf, count, be->precision, candidates);
    }
    int chosen = -1;
    for (int k = 0; k < n; k++) {
        size_t bytes = 0;
        if (cudnnSetConvolutionMathType(d->conv, (cudnnMathType_t)candidates[k].math) != CUDNN_STATUS_SUCCESS ||
            conv_workspace_size(h, cp, d, candidates[k].algo, &bytes) != CUDNN_STATUS_SUCCESS)
            continue;
        if (chosen < 0 || bytes <= CONV_WORKSPACE_CAP) {
            chosen = k;
            plan->workspace = bytes;
        }
        if (bytes <= CONV_WORKSPACE_CAP)
            break;
    }
    if (chosen < 0)
        return dfc_fail(err, DFC_ERR_BACKEND,
                        "cuda: %s: cuDNN offers no deterministic %s algorithm for x (%lld, %lld, %lld, %lld), weight "
                        "(%lld, %lld, %lld, %lld) (%d ranked, %d deterministic in that mode, none it could size)",
                        cp->op, dfc_precision_name(be->precision), (long long)cp->x->shape[0],
                        (long long)cp->x->shape[1], (long long)cp->x->shape[2], (long long)cp->x->shape[3],
                        (long long)cp->w->shape[0], (long long)cp->w->shape[1], (long long)cp->w->shape[2],
                        (long long)cp->w->shape[3], count, n);
    plan->algo = candidates[chosen].algo;
    plan->math = candidates[chosen].math;
    if (getenv("DIFFICE_CUDA_LOG_PLANS")) /* what cuDNN chose, once per shape (scripts/gpu_check.sh) */
        fprintf(stderr,
                "diffice cuda plan: %s %s x (%lld, %lld, %lld, %lld) w (%lld, %lld, %lld, %lld) stride (%d, %d) pad "
                "(%d, %d): algo %d, math %d, workspace %zu bytes, candidate %d of %d usable, %d ranked\n",
                cp->op, dfc_precision_name(be->precision), (long long)cp->x->shape[0], (long long)cp->x->shape[1],
                (long long)cp->x->shape[2], (long long)cp->x->shape[3], (long long)cp->w->shape[0],
                (long long)cp->w->shape[1], (long long)cp->w->shape[2], (long long)cp->w->shape[3], cp->p.stride_h,
                cp->p.stride_w, cp->p.pad_h, cp->p.pad_w, plan->algo, plan->math, plan->workspace, chosen + 1, n,
                count);
    CUDNN_CALL(cudnnSetConvolutionMathType, d->conv, (cudnnMathType_t)plan->math);
    return DFC_OK;
}

/* Runs the convolution of cp on data with its (cached or fresh) plan: y = x * w, dx = dy *^T w, or dw = dy *^T x. */
static dfc_status conv_run_with(dfc_backend *be, const conv_problem *cp, const conv_data *data, const conv_descs *d,
                                dfc_error *err)
{
    dfc_cuda_conv_plan *plan = conv_plan_find(be, cp->kind, cp->x->shape, cp->w->shape, cp->p);
    if (!plan) {
        dfc_cuda_conv_plan fresh = {};
        DFC_TRY(conv_plan_choose(be, cp, d, &fresh, err));
        plan = conv_plan_slot(be, cp->kind, cp->x->shape, cp->w->shape, cp->p);
        plan->algo = fresh.algo;
        plan->math = fresh.math;
        plan->workspace = fresh.workspace;
    } else {
        CUDNN_CALL(cudnnSetConvolutionMathType, d->conv, (cudnnMathType_t)plan->math);
    }
    void *workspace = NULL;
    if (plan->workspace)
        DFC_TRY(dfc_cuda_scratch(be, plan->workspace, &workspace, err));
    const float one = 1.0f, zero = 0.0f;
    cudnnHandle_t h = dfc_cuda(be)->cudnn;
    /* the kinds' roles: forward writes y from x and w; backward data writes x (dx) from y (dy) and w; backward
     * filter writes w (dw) from x and y (dy) */
    void *x = data->t[0], *w = data->t[1], *y = data->t[2];
    if (cp->kind == CONV_FORWARD)
        CUDNN_CALL(cudnnConvolutionForward, h, &one, d->x, x, d->w, w, d->conv, (cudnnConvolutionFwdAlgo_t)plan->algo,
                   workspace, plan->workspace, &zero, d->y, y);
    else if (cp->kind == CONV_BACKWARD_DATA)
        CUDNN_CALL(cudnnConvolutionBackwardData, h, &one, d->w, w, d->y, y, d->conv,
                   (cudnnConvolutionBwdDataAlgo_t)plan->algo, workspace, plan->workspace, &zero, d->x, x);
    else
        CUDNN_CALL(cudnnConvolutionBackwardFilter, h, &one, d->x, x, d->y, y, d->conv,
                   (cudnnConvolutionBwdFilterAlgo_t)plan->algo, workspace, plan->workspace, &zero, d->w, w);
    return DFC_OK;
}

static dfc_status conv_call(dfc_backend *be, const conv_problem *cp, const conv_data *data, dfc_error *err)
{
    conv_descs d = {};
    dfc_status st = conv_descs_init(cp, be->precision, &d, err);
    if (st == DFC_OK)
        st = conv_run_with(be, cp, data, &d, err);
    conv_descs_destroy(&d); /* the descriptors are host objects, free to go once the calls are queued */
    return st;
}
#undef CUDNN_CALL

#else /* DFC_CUDA_EMULATE: the same cache lookup, then the reference kernel in place of cuDNN */

/* bf16 data is widened into fp32 copies in the scratch, the reference kernel writes an fp32 result there, and the
 * result is rounded into the bf16 output as cuDNN's bf16 output is. */
static dfc_status conv_call(dfc_backend *be, const conv_problem *cp, const conv_data *data, dfc_error *err)
{
    if (!conv_plan_find(be, cp->kind, cp->x->shape, cp->w->shape, cp->p))
        conv_plan_slot(be, cp->kind, cp->x->shape, cp->w->shape, cp->p); /* algorithm 0, no workspace */
    dfc_tensor t[3] = {*cp->x, *cp->w, *cp->y};
    const int out = conv_output_index(cp->kind);
    if (data->bf16) {
        const dfc_tensor *const fp32[3] = {cp->x, cp->w, cp->y};
        size_t offsets[3];
        void *wide = NULL;
        DFC_TRY(dfc_cuda_scratch(be, conv_copies_layout(fp32, sizeof(float), offsets), &wide, err));
        for (int k = 0; k < 3; k++) {
            t[k].data = (float *)((char *)wide + offsets[k]);
            if (k != out)
                DFC_TRY(dfc_cuda_from_bf16(be, cp->op, (const uint16_t *)data->t[k], dfc_numel(&t[k]), t[k].data, err));
        }
    }
    dfc_status st;
    if (cp->kind == CONV_FORWARD)
        st = ref_conv2d_forward(be, &t[0], &t[1], NULL, cp->p, &t[2], err);
    else if (cp->kind == CONV_BACKWARD_DATA)
        st = ref_conv2d_backward_input(be, &t[2], &t[1], cp->p, &t[0], err);
    else
        st = ref_conv2d_backward_weight(be, &t[2], &t[0], cp->p, &t[1], NULL, err);
    if (st != DFC_OK || !data->bf16)
        return st;
    return dfc_cuda_to_bf16(be, cp->op, t[out].data, dfc_numel(&t[out]), (uint16_t *)data->t[out], err);
}

#endif

/* The convolution of cp in the backend's precision. bf16: x, w and y copied into the bf16 scratch (the two cp reads
 * rounded from its fp32 tensors), and the bf16 result widened into cp's fp32 output. */
static dfc_status conv_run(dfc_backend *be, const conv_problem *cp, dfc_error *err)
{
    DFC_TRY(conv_check_int_sizes(cp->op, cp->x, cp->w, cp->y, err));
    const dfc_tensor *const t[3] = {cp->x, cp->w, cp->y};
    conv_data data = {{t[0]->data, t[1]->data, t[2]->data}, 0};
    if (be->precision != DFC_PRECISION_BF16)
        return conv_call(be, cp, &data, err);
    size_t offsets[3];
    void *base = NULL;
    DFC_TRY(dfc_cuda_bf16_scratch(be, conv_copies_layout(t, sizeof(uint16_t), offsets), &base, err));
    const int out = conv_output_index(cp->kind);
    data.bf16 = 1;
    for (int k = 0; k < 3; k++) {
        data.t[k] = (char *)base + offsets[k];
        if (k != out)
            DFC_TRY(dfc_cuda_to_bf16(be, cp->op, t[k]->data, dfc_numel(t[k]), (uint16_t *)data.t[k], err));
    }
    DFC_TRY(conv_call(be, cp, &data, err));
    return dfc_cuda_from_bf16(be, cp->op, (const uint16_t *)data.t[out], dfc_numel(t[out]), t[out]->data, err);
}

/* y = x * weight + bias: the convolution, then bias[co] added to each output plane. */
dfc_status cuda_conv2d_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                               dfc_conv2d_params p, dfc_tensor *y, dfc_error *err)
{
    const char *op = "conv2d_forward";
    bias = optional(bias);
    DFC_TRY(dfc_conv2d_check(op, x, "x", weight, "weight", bias, "bias", y, "y", p, err));
    DFC_TRY(dfc_conv2d_check_layout(op, p, 0, err));
    if (dfc_numel(y) == 0)
        return DFC_OK;
    if (dfc_numel(x) == 0 || dfc_numel(weight) == 0) { /* no input channels: y is the bias alone */
        DFC_TRY(fill_zero(be, op, y, err));
    } else {
        const conv_problem cp = {op, CONV_FORWARD, x, weight, y, p};
        DFC_TRY(conv_run(be, &cp, err));
    }
    return bias ? bias_add(be, op, bias->data, y->shape[1], y->shape[2] * y->shape[3], y, err) : DFC_OK;
}

/* dx = dy convolved back through weight (cuDNN's backward data). */
dfc_status cuda_conv2d_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight,
                                      dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err)
{
    const char *op = "conv2d_backward_input";
    DFC_TRY(dfc_conv2d_check(op, dx, "dx", weight, "weight", NULL, NULL, dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout(op, p, 0, err));
    if (dfc_numel(dx) == 0)
        return DFC_OK;
    if (dfc_numel(weight) == 0) /* no output channels: nothing flows back */
        return fill_zero(be, op, dx, err);
    const conv_problem cp = {op, CONV_BACKWARD_DATA, dx, weight, dy, p};
    return conv_run(be, &cp, err);
}

/* dweight = sum over the batch of dy correlated with x (cuDNN's backward filter); dbias[co] = sum of dy's planes. */
dfc_status cuda_conv2d_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_conv2d_params p,
                                       dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    const char *op = "conv2d_backward_weight";
    dbias = (dfc_tensor *)optional(dbias);
    DFC_TRY(dfc_conv2d_check(op, x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout(op, p, 0, err));
    if (dfc_numel(dweight) > 0 && (dfc_numel(dy) == 0 || dfc_numel(x) == 0)) { /* an empty batch or input plane
                                                                                  * (cuDNN refuses a 0 extent) */
        DFC_TRY(fill_zero(be, op, dweight, err));
    } else if (dfc_numel(dweight) > 0) {
        const conv_problem cp = {op, CONV_BACKWARD_FILTER, x, dweight, dy, p};
        DFC_TRY(conv_run(be, &cp, err));
    }
    return dbias ? bias_grad(be, op, dy, dy->shape[1], dy->shape[2] * dy->shape[3], dbias, err) : DFC_OK;
}

/* ---- linear (row-major products as cuBLAS's column-major ones; see dfc_cuda_gemm_args) ---- */

/* One column-major product c (m, n) = op(a) (m, k) op(b) (k, n). */
static dfc_status gemm(dfc_backend *be, const char *op, int transa, int transb, int64_t m, int64_t n, int64_t k,
                       const float *a, int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc, dfc_error *err)
{
    dfc_cuda_gemm_args g = {};
    g.transa = transa, g.transb = transb;
    g.m = m, g.n = n, g.k = k;
    g.alpha = 1.0f;
    g.a = a, g.lda = lda;
    g.b = b, g.ldb = ldb;
    g.c = c, g.ldc = ldc;
    g.batch = 1;
    return dfc_cuda_gemm(be, &g, op, err);
}

/* y (M, Out) = x (M, In) W^T + b: column-major y^T = W x^T (transa on W). */
dfc_status cuda_linear_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                               dfc_tensor *y, dfc_error *err)
{
    const char *op = "linear_forward";
    bias = optional(bias);
    DFC_TRY(dfc_linear_check(op, x, "x", weight, "weight", bias, "bias", y, "y", err));
    const int64_t rows = x->shape[0], in = x->shape[1], out = weight->shape[0];
    DFC_TRY(gemm(be, op, 1, 0, out, rows, in, weight->data, in, x->data, in, y->data, out, err));
    return bias ? bias_add(be, op, bias->data, out, 1, y, err) : DFC_OK;
}

/* dx (M, In) = dy (M, Out) W: column-major dx^T = W^T dy^T (W's buffer read column-major is W^T). */
dfc_status cuda_linear_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx,
                                      dfc_error *err)
{
    const char *op = "linear_backward_input";
    DFC_TRY(dfc_linear_check(op, dx, "dx", weight, "weight", NULL, NULL, dy, "dy", err));
    const int64_t rows = dx->shape[0], in = dx->shape[1], out = weight->shape[0];
    return gemm(be, op, 0, 0, in, rows, out, weight->data, in, dy->data, out, dx->data, in, err);
}

/* dW (Out, In) = dy^T x: column-major dW^T = x^T dy (transb on dy); dbias[o] = sum over rows of dy[:, o]. */
dfc_status cuda_linear_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_tensor *dweight,
                                       dfc_tensor *dbias, dfc_error *err)
{
    const char *op = "linear_backward_weight";
    dbias = (dfc_tensor *)optional(dbias);
    DFC_TRY(dfc_linear_check(op, x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", err));
    const int64_t rows = x->shape[0], in = x->shape[1], out = dweight->shape[0];
    DFC_TRY(gemm(be, op, 0, 1, in, out, rows, x->data, in, dy->data, out, dweight->data, in, err));
    return dbias ? bias_grad(be, op, dy, out, 1, dbias, err) : DFC_OK;
}

/* ---- QKV attention ----
 * One sample at a time, its heads as one strided batch: every head's q, k, v (and dq, dk, dv) is a (ch, T) block
 * at a fixed stride (layout.head_stride) from the previous head's, and its (T, T) weights sit in the scratch.
 * Column-major, a row-major (ch, T) block read with leading dimension T is its transpose (T, ch), and the row-major
 * (T, T) weights P[t, s] read so are P^T. */

/* S[t, s] = alpha sum_c a[c, t] b[c, s] for every head of sample n: column-major S^T = B^T A (b's block as is, a's
 * transposed); the weights (alpha = 1/sqrt(ch), a = q, b = k) and the backward's dP (alpha = 1, a = dy, b = v). */
static dfc_status attention_scores(dfc_backend *be, const char *op, const dfc_attention_layout *l, const float *a,
                                   int64_t a_stride, const float *b, float alpha, float *S, dfc_error *err)
{
    dfc_cuda_gemm_args g = {};
    g.transb = 1;
    g.m = l->T, g.n = l->T, g.k = l->ch;
    g.alpha = alpha;
    g.a = b, g.lda = l->T, g.stride_a = l->head_stride;
    g.b = a, g.ldb = l->T, g.stride_b = a_stride;
    g.c = S, g.ldc = l->T, g.stride_c = l->T * l->T;
    g.batch = l->heads;
    return dfc_cuda_gemm(be, &g, op, err);
}

/* Row softmax of every head's scores in place, one index per row (t), as the reference: the max, the sum of exp in
 * double, then each weight exp(s - max) / sum rounded once. */
static dfc_status attention_softmax(dfc_backend *be, const char *op, int64_t rows, int64_t T, float *S, dfc_error *err)
{
    return dfc_cuda_for_each(be, rows, op, err, [=] DFC_DEVICE(int64_t r) {
        float *row = S + r * T;
        double max = -INFINITY;
        for (int64_t s = 0; s < T; s++)
            max = row[s] > max ? row[s] : max;
        double sum = 0.0;
        for (int64_t s = 0; s < T; s++)
            sum += exp((double)row[s] - max);
        for (int64_t s = 0; s < T; s++)
            row[s] = (float)(exp((double)row[s] - max) / sum);
    });
}

dfc_status cuda_attention_forward(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y,
                                  dfc_error *err)
{
    const char *op = "attention";
    dfc_attention_layout l = {};
    DFC_TRY(dfc_attention_layout_init(op, qkv, heads, legacy_order, y, "y", &l, err));
    const int64_t T = l.T, ch = l.ch;
    if (l.N == 0 || T == 0 || ch == 0)
        return DFC_OK;
    void *scratch = NULL;
    DFC_TRY(dfc_cuda_scratch(be, (size_t)(l.heads * T * T) * sizeof(float), &scratch, err));
    float *P = (float *)scratch;
    const float scale = (float)(1.0 / sqrt((double)ch));
    for (int64_t n = 0; n < l.N; n++) {
        const float *q = qkv->data + dfc_attention_q_offset(&l, n, 0), *k = q + l.kv_stride, *v = k + l.kv_stride;
        DFC_TRY(attention_scores(be, op, &l, q, l.head_stride, k, scale, P, err));
        DFC_TRY(attention_softmax(be, op, l.heads * T, T, P, err));
        /* y[c, t] = sum_s P[t, s] v[c, s]: column-major y^T = P v^T (P's buffer transposed, v's as is) */
        dfc_cuda_gemm_args g = {};
        g.transa = 1;
        g.m = T, g.n = ch, g.k = T;
        g.alpha = 1.0f;
        g.a = P, g.lda = T, g.stride_a = T * T;
        g.b = v, g.ldb = T, g.stride_b = l.head_stride;
        g.c = y->data + n * l.C * T, g.ldc = T, g.stride_c = ch * T; /* head-major output channels */
        g.batch = l.heads;
        DFC_TRY(dfc_cuda_gemm(be, &g, op, err));
    }
    return DFC_OK;
}

/* With S = scale q^T k, P = softmax_rows(S), y = v P^T (the reference's derivation):
 *   dv = dy P,  dP = dy^T v,  dS = P * (dP - rowsum(P * dP)),  dq = scale k dS^T,  dk = scale q dS. */
dfc_status cuda_attention_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads,
                                   int legacy_order, dfc_tensor *dqkv, dfc_error *err)
{
    const char *op = "attention_backward";
    dfc_attention_layout l = {};
    DFC_TRY(dfc_attention_layout_init(op, qkv, heads, legacy_order, dy, "dy", &l, err));
    DFC_TRY(dfc_check_same_shape(qkv, dqkv, op, "qkv", "dqkv", err));
    const int64_t T = l.T, ch = l.ch;
    if (l.N == 0 || T == 0 || ch == 0)
        return DFC_OK;
    const size_t weights = (size_t)(l.heads * T * T);
    void *scratch = NULL;
    DFC_TRY(dfc_cuda_scratch(be, 2 * weights * sizeof(float), &scratch, err));
    float *P = (float *)scratch, *dS = P + weights;
    const float scale = (float)(1.0 / sqrt((double)ch));
    for (int64_t n = 0; n < l.N; n++) {
        const int64_t off = dfc_attention_q_offset(&l, n, 0);
        const float *q = qkv->data + off, *k = q + l.kv_stride, *v = k + l.kv_stride;
        float *dq = dqkv->data + off, *dk = dq + l.kv_stride, *dv = dk + l.kv_stride;
        const float *dyn = dy->data + n * l.C * T;
        DFC_TRY(attention_scores(be, op, &l, q, l.head_stride, k, scale, P, err));
        DFC_TRY(attention_softmax(be, op, l.heads * T, T, P, err));
        DFC_TRY(attention_scores(be, op, &l, dyn, ch * T, v, 1.0f, dS, err)); /* dP, turned into dS in place */
        DFC_TRY(dfc_cuda_for_each(be, l.heads * T, op, err, [=] DFC_DEVICE(int64_t r) {
            const float *p = P + r * T;
            float *ds = dS + r * T;
            double dot_p_dp = 0.0;
            for (int64_t s = 0; s < T; s++)
                dot_p_dp += (double)p[s] * ds[s];
            for (int64_t s = 0; s < T; s++)
                ds[s] = (float)(p[s] * (ds[s] - dot_p_dp));
        }));
        dfc_cuda_gemm_args g = {};
        g.m = T, g.n = ch, g.k = T;
        g.batch = l.heads;
        g.ldc = T, g.stride_c = l.head_stride;
        g.lda = T, g.stride_a = T * T;
        g.ldb = T;
        /* dv[c, s] = sum_t P[t, s] dy[c, t]: column-major dv^T = P^T dy^T (both buffers as they are) */
        g.alpha = 1.0f;
        g.a = P;
        g.b = dyn, g.stride_b = ch * T;
        g.c = dv;
        DFC_TRY(dfc_cuda_gemm(be, &g, op, err));
        /* dk[c, s] = scale sum_t dS[t, s] q[c, t]: column-major dk^T = scale dS^T q^T (both as they are) */
        g.alpha = scale;
        g.a = dS;
        g.b = q, g.stride_b = l.head_stride;
        g.c = dk;
        DFC_TRY(dfc_cuda_gemm(be, &g, op, err));
        /* dq[c, t] = scale sum_s dS[t, s] k[c, s]: column-major dq^T = scale dS k^T (dS's buffer transposed) */
        g.transa = 1;
        g.b = k;
        g.c = dq;
        DFC_TRY(dfc_cuda_gemm(be, &g, op, err));
    }
    return DFC_OK;
}

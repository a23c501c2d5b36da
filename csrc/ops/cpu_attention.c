/* Fast CPU guided-diffusion QKV attention: the products are batched oneDNN matmuls over the heads of one sample
 * (q, k, v slices and their transposes expressed through strides, no copies), the softmax an OpenMP loop over
 * rows of a heads x T x T float32 weight buffer. Every product writes a row-major C: oneDNN falls back to a
 * reference kernel for a transposed (column-strided) output, about 500x slower at T = 1008. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "attention_layout.h"
#include "cpu.h"
#include "fast_math.h"

/* Rows of length T in place: P = softmax(S), the row max subtracted first. */
DFC_VECTOR_CLONES
static void softmax_rows(const dfc_backend *be, float *S, int64_t rows, int64_t T)
{
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float *row = S + r * T;
        float max = row[0];
#pragma omp simd reduction(max : max)
        for (int64_t s = 1; s < T; s++)
            max = row[s] > max ? row[s] : max;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t s = 0; s < T; s++) {
            row[s] = dfc_expf_nonpositive(row[s] - max);
            sum += row[s];
        }
        const float inv = 1.0f / sum;
        for (int64_t s = 0; s < T; s++)
            row[s] *= inv;
    }
}

/* dS = P * (dP - rowsum(P * dP)), in place over dP. */
DFC_VECTOR_CLONES
static void softmax_backward_rows(const dfc_backend *be, const float *P, float *dP, int64_t rows, int64_t T)
{
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *p = P + r * T;
        float *d = dP + r * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t s = 0; s < T; s++)
            dot += p[s] * d[s];
        for (int64_t s = 0; s < T; s++)
            d[s] = p[s] * (d[s] - dot);
    }
}

static size_t weights_bytes(const dfc_attention_layout *l) { return (size_t)(l->heads * l->T * l->T) * sizeof(float); }

/* One sample's attention weights (heads, T, T), counted in be's memory budget until free_weights. */
static float *alloc_weights(dfc_backend *be, const char *op, const dfc_attention_layout *l, dfc_error *err)
{
    char what[64];
    snprintf(what, sizeof what, "%s: the attention weights", op);
    if (dfc_backend_reserve(be, weights_bytes(l), what, err) != DFC_OK)
        return NULL;
    float *buf = malloc(weights_bytes(l));
    if (!buf) {
        dfc_backend_release(be, weights_bytes(l));
        dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate the %lld x %lld x %lld weight buffer", op,
                 (long long)l->heads, (long long)l->T, (long long)l->T);
    }
    return buf;
}

static void free_weights(dfc_backend *be, const dfc_attention_layout *l, float *buf)
{
    if (buf)
        dfc_backend_release(be, weights_bytes(l));
    free(buf);
}

/* P[h] = softmax(q_h^T k_h / sqrt(ch)) for every head of sample n, P (heads, T, T). */
static dfc_status attention_weights(dfc_backend *be, const dfc_attention_layout *l, const float *qkv, int64_t n,
                                    float *P, dfc_error *err)
{
    const int64_t T = l->T, hs = l->head_stride;
    float *q = (float *)qkv + dfc_attention_q_offset(l, n, 0);
    dfc_matmul_operand qt = {q, {hs, 1, T}};               /* (t, c) */
    dfc_matmul_operand k = {q + l->kv_stride, {hs, T, 1}}; /* (c, s) */
    dfc_matmul_operand s = {P, {T * T, T, 1}};             /* (t, s) */
    const float scale = (float)(1.0 / sqrt((double)l->ch));
    DFC_TRY(dfc_dnnl_matmul(be, l->heads, T, T, l->ch, qt, k, s, scale, 0.0f, err));
    softmax_rows(be, P, l->heads * T, T);
    return DFC_OK;
}

dfc_status cpu_attention_forward(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y,
                                 dfc_error *err)
{
    dfc_attention_layout l = {0};
    DFC_TRY(dfc_attention_layout_init("attention", qkv, heads, legacy_order, y, "y", &l, err));
    const int64_t T = l.T, ch = l.ch;
    float *P = alloc_weights(be, "attention", &l, err);
    if (!P)
        return DFC_ERR_NOMEM;
    dfc_status st = DFC_OK;
    for (int64_t n = 0; n < l.N && st == DFC_OK; n++) {
        if ((st = attention_weights(be, &l, qkv->data, n, P, err)) != DFC_OK)
            break;
        /* y_h (c, t) = sum_s v_h(c, s) P_h(t, s) */
        float *v = qkv->data + dfc_attention_q_offset(&l, n, 0) + 2 * l.kv_stride;
        dfc_matmul_operand va = {v, {l.head_stride, T, 1}}; /* (c, s) */
        dfc_matmul_operand pt = {P, {T * T, 1, T}};         /* (s, t) */
        dfc_matmul_operand yc = {y->data + n * l.C * T, {ch * T, T, 1}};
        st = dfc_dnnl_matmul(be, l.heads, ch, T, T, va, pt, yc, 1.0f, 0.0f, err);
    }
    free_weights(be, &l, P);
    return st;
}

/* With S = q^T k / sqrt(ch), P = softmax_rows(S), y = v P^T:
 *   dv = dy P,  dP = dy^T v,  dS = P * (dP - rowsum(P * dP)),  dq = k dS^T / sqrt(ch),  dk = q dS / sqrt(ch). */
dfc_status cpu_attention_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads,
                                  int legacy_order, dfc_tensor *dqkv, dfc_error *err)
{
    const char *op = "attention_backward";
    dfc_attention_layout l = {0};
    DFC_TRY(dfc_attention_layout_init(op, qkv, heads, legacy_order, dy, "dy", &l, err));
    DFC_TRY(dfc_check_same_shape(qkv, dqkv, op, "qkv", "dqkv", err));
    const int64_t T = l.T, ch = l.ch, hs = l.head_stride, kv = l.kv_stride;
    const float scale = (float)(1.0 / sqrt((double)ch));
    dfc_status st = DFC_OK;
    float *P = alloc_weights(be, op, &l, err);
    float *dP = P ? alloc_weights(be, op, &l, err) : NULL;
    if (!P || !dP) {
        st = DFC_ERR_NOMEM;
        goto done;
    }
    for (int64_t n = 0; n < l.N; n++) {
        st = attention_weights(be, &l, qkv->data, n, P, err);
        if (st != DFC_OK)
            goto done;
        const int64_t off = dfc_attention_q_offset(&l, n, 0);
        float *q = qkv->data + off, *k = q + kv, *v = k + kv;
        float *dq = dqkv->data + off, *dk = dq + kv, *dv = dk + kv;
        float *dyn = dy->data + n * l.C * T;
        dfc_matmul_operand dy_ct = {dyn, {ch * T, T, 1}}; /* (c, t) */
        dfc_matmul_operand dy_tc = {dyn, {ch * T, 1, T}}; /* (t, c) */
        dfc_matmul_operand p_ts = {P, {T * T, T, 1}};
        dfc_matmul_operand ds_ts = {dP, {T * T, T, 1}};
        dfc_matmul_operand ds_st = {dP, {T * T, 1, T}};
        dfc_matmul_operand q_ct = {q, {hs, T, 1}}, k_cs = {k, {hs, T, 1}}, v_cs = {v, {hs, T, 1}};
        dfc_matmul_operand dq_ct = {dq, {hs, T, 1}}, dk_cs = {dk, {hs, T, 1}}, dv_cs = {dv, {hs, T, 1}};

        if ((st = dfc_dnnl_matmul(be, l.heads, ch, T, T, dy_ct, p_ts, dv_cs, 1.0f, 0.0f, err)) != DFC_OK ||
            (st = dfc_dnnl_matmul(be, l.heads, T, T, ch, dy_tc, v_cs, ds_ts, 1.0f, 0.0f, err)) != DFC_OK)
            goto done;
        softmax_backward_rows(be, P, dP, l.heads * T, T);
        if ((st = dfc_dnnl_matmul(be, l.heads, ch, T, T, k_cs, ds_st, dq_ct, scale, 0.0f, err)) != DFC_OK ||
            (st = dfc_dnnl_matmul(be, l.heads, ch, T, T, q_ct, ds_ts, dk_cs, scale, 0.0f, err)) != DFC_OK)
            goto done;
    }
done:
    free_weights(be, &l, P);
    free_weights(be, &l, dP);
    return st;
}

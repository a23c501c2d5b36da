/* Where guided-diffusion's q, k, v of one head live inside qkv (N, 3C, T), and the argument checks the ref and
 * cpu attention kernels share. Private to csrc/ops/{ref,cpu}_attention.c. */
#ifndef DIFFICE_ATTENTION_LAYOUT_H
#define DIFFICE_ATTENTION_LAYOUT_H

#include "ops.h"

/* Channel c of head h's q in sample n is row (q_offset(n, h) / T + c) of qkv; its k and v rows follow kv_stride
 * elements later each. Both orders keep one head's ch channels of q (or k, v) contiguous, rows of length T:
 *   legacy (QKVAttentionLegacy): per head [q | k | v] blocks of ch channels -> head_stride 3 ch T, kv_stride ch T;
 *   new (QKVAttention): [q of all heads | k of all heads | v of all heads] -> head_stride ch T, kv_stride C T. */
typedef struct {
    int64_t N, C, T, heads, ch;
    int64_t head_stride;
    int64_t kv_stride;
} dfc_attention_layout;

static inline int64_t dfc_attention_q_offset(const dfc_attention_layout *l, int64_t n, int64_t h)
{
    return n * 3 * l->C * l->T + h * l->head_stride;
}

/* Validates qkv (N, 3C, T) and heads, fills the layout, and checks `out` (y, dy: (N, C, T)) by name. */
static inline dfc_status dfc_attention_layout_init(const char *op, const dfc_tensor *qkv, int heads, int legacy_order,
                                                   const dfc_tensor *out, const char *out_name, dfc_attention_layout *l,
                                                   dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(qkv, op, "qkv", 3, 3, err));
    if (qkv->shape[1] % 3 != 0) {
        char s[96];
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: qkv has shape %s; its channel count %lld must be 3 * C", op,
                        dfc_shape_str(qkv, s, sizeof s), (long long)qkv->shape[1]);
    }
    l->N = qkv->shape[0];
    l->C = qkv->shape[1] / 3;
    l->T = qkv->shape[2];
    if (heads < 1 || l->C % heads != 0)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: heads (%d) must be positive and divide the channel count C = %lld", op,
                        heads, (long long)l->C);
    l->heads = heads;
    l->ch = l->C / heads;
    l->head_stride = (legacy_order ? 3 * l->ch : l->ch) * l->T;
    l->kv_stride = (legacy_order ? l->ch : l->C) * l->T;
    const int64_t want[3] = {l->N, l->C, l->T};
    return dfc_check_shape(out, op, out_name, 3, want, err);
}

#endif

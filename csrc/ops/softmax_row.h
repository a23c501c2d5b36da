/* The numerically stable core of softmax and log-sum-exp over one row, shared by the reference kernels
 * (ref_elementwise.c softmax, ref_loss.c cross-entropy), and the softmax axis layout. Private to csrc/ops. */
#ifndef DIFFICE_SOFTMAX_ROW_H
#define DIFFICE_SOFTMAX_ROW_H

#include <math.h>
#include <stdint.h>

#include "../core/tensor.h"
#include "../core/also_device.h"

/* sum_j exp(row_j - max) in double, with max = max_j row_j stored in *max_out. Subtracting the row max keeps every
 * exp() argument <= 0: no overflow. */
static DFC_ALSO_DEVICE inline double dfc_row_sum_exp(const float *row, int64_t k, float *max_out)
{
    float max = row[0];
    for (int64_t j = 1; j < k; j++)
        max = row[j] > max ? row[j] : max;
    double sum = 0.0;
    for (int64_t j = 0; j < k; j++)
        sum += exp((double)row[j] - max);
    *max_out = max;
    return sum;
}

/* The softmax of k values `stride` apart, x into y: the max, the sum of exp in double, then each value (the reference
 * kernel's order; the CUDA kernel runs the same for each of its rows). */
static DFC_ALSO_DEVICE inline void dfc_softmax_strided_row(const float *x, float *y, int64_t k, int64_t stride)
{
    float max = x[0];
    for (int64_t j = 1; j < k; j++)
        max = x[j * stride] > max ? x[j * stride] : max;
    double sum = 0.0;
    for (int64_t j = 0; j < k; j++)
        sum += exp((double)x[j * stride] - max);
    for (int64_t j = 0; j < k; j++)
        y[j * stride] = (float)(exp((double)x[j * stride] - max) / sum);
}

/* x viewed as (outer, k, inner) around the softmax axis (negative counts from the end). */
typedef struct {
    int64_t outer, k, inner;
} dfc_softmax_axis;

static inline dfc_status dfc_softmax_layout(const char *op, const dfc_tensor *x, int axis, dfc_softmax_axis *s,
                                            dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    const int a = axis < 0 ? axis + x->ndim : axis;
    if (a < 0 || a >= x->ndim)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: axis %d is out of range for %d dimensions", op, axis, x->ndim);
    s->k = x->shape[a];
    s->inner = dfc_inner_size(x, a + 1);
    s->outer = s->k * s->inner > 0 ? dfc_numel(x) / (s->k * s->inner) : 0;
    return DFC_OK;
}

#endif

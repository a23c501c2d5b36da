/* The numerically stable core of softmax and log-sum-exp over one row, shared by the reference kernels
 * (ref_elementwise.c softmax, ref_loss.c cross-entropy). Private to csrc/ops. */
#ifndef DIFFICE_SOFTMAX_ROW_H
#define DIFFICE_SOFTMAX_ROW_H

#include <math.h>
#include <stdint.h>

/* sum_j exp(row_j - max) in double, with max = max_j row_j stored in *max_out. Subtracting the row max keeps every
 * exp() argument <= 0: no overflow. */
static inline double dfc_row_sum_exp(const float *row, int64_t k, float *max_out)
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

#endif

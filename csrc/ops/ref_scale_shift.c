/* Reference kernel of guided-diffusion's scale-shift norm (ops.h, UNet ops): one (n, c) plane at a time.
 * Memory-bound, so the CPU table uses it too. */
#include "norm_check.h"
#include "ref.h"

dfc_status ref_scale_shift_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *ss, dfc_tensor *y,
                                   dfc_error *err)
{
    const char *op = "scale_shift";
    DFC_TRY(dfc_scale_shift_check(op, x, ss, err));
    DFC_TRY(dfc_check_same_shape(x, y, op, "x", "y", err));
    const int64_t c = x->shape[1], planes = x->shape[0] * c, inner = dfc_inner_size(x, 2);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const float *ssr = ss->data + (p / c) * 2 * c;
        const float one_plus_scale = 1.0f + ssr[p % c], shift = ssr[c + p % c];
        const float *xp = x->data + p * inner;
        float *yp = y->data + p * inner;
        for (int64_t j = 0; j < inner; j++) {
            const float scaled = xp[j] * one_plus_scale; /* its own statement: never fused into an fma */
            yp[j] = scaled + shift;
        }
    }
    return DFC_OK;
}

/* The sums accumulate in double, in the order of binary_backward's broadcast sums (the same numbers). dx may alias
 * dy: each element is read before it is written. */
dfc_status ref_scale_shift_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *ss,
                                    dfc_tensor *dx, dfc_tensor *dss, dfc_error *err)
{
    const char *op = "scale_shift_backward";
    DFC_TRY(dfc_scale_shift_check(op, x, ss, err));
    DFC_TRY(dfc_check_same_shape(x, dy, op, "x", "dy", err));
    const int want_dx = dx && dx->data, want_dss = dss && dss->data;
    if (want_dx)
        DFC_TRY(dfc_check_same_shape(x, dx, op, "x", "dx", err));
    if (want_dss)
        DFC_TRY(dfc_check_same_shape(ss, dss, op, "ss", "dss", err));
    const int64_t c = x->shape[1], planes = x->shape[0] * c, inner = dfc_inner_size(x, 2);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t p = 0; p < planes; p++) {
        const int64_t row = (p / c) * 2 * c, ch = p % c;
        const float one_plus_scale = 1.0f + ss->data[row + ch];
        const float *dyp = dy->data + p * inner, *xp = x->data + p * inner;
        float *dxp = want_dx ? dx->data + p * inner : NULL;
        double sum_scale = 0.0, sum_shift = 0.0;
        for (int64_t j = 0; j < inner; j++) {
            const float g = dyp[j];
            sum_scale += (double)g * xp[j];
            sum_shift += (double)g;
            if (dxp)
                dxp[j] = g * one_plus_scale;
        }
        if (want_dss) {
            dss->data[row + ch] = (float)sum_scale;
            dss->data[row + c + ch] = (float)sum_shift;
        }
    }
    return DFC_OK;
}

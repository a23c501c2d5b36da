/* Reference conv2d and linear kernels: direct loops, sums in double, one output element at a time.
 * Every loop nest writes only its own outputs (backward_input gathers instead of scattering), so the outer
 * loops parallelise without races. */
#include "conv_check.h"
#include "ref.h"

/* An optional tensor is absent when the pointer or its data is NULL (the bindings pass data == NULL for None). */
static const dfc_tensor *optional(const dfc_tensor *t) { return t && t->data ? t : NULL; }

/* ---- conv2d ---- */

/* y[n, co, i, j] = bias[co] + sum_{ci, kh, kw} x[n, ci, i s - p + kh, j s - p + kw] weight[co, ci, kh, kw],
 * with x zero outside the image. */
dfc_status ref_conv2d_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_conv2d_params p, dfc_tensor *y, dfc_error *err)
{
    bias = optional(bias);
    DFC_TRY(dfc_conv2d_check("conv2d_forward", x, "x", weight, "weight", bias, "bias", y, "y", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_forward", p, 1, err));
    const int64_t n_batch = x->shape[0], ci_n = x->shape[1], h = x->shape[2], w = x->shape[3];
    const int64_t co_n = weight->shape[0], kh_n = weight->shape[2], kw_n = weight->shape[3];
    const int64_t ho_n = y->shape[2], wo_n = y->shape[3];
    const float *xs = x->data, *ws = weight->data, *bs = bias ? bias->data : NULL;
    float *ys = y->data;
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t n = 0; n < n_batch; n++) {
        for (int64_t co = 0; co < co_n; co++) {
            for (int64_t i = 0; i < ho_n; i++) {
                for (int64_t j = 0; j < wo_n; j++) {
                    double sum = bs ? bs[co] : 0.0;
                    for (int64_t ci = 0; ci < ci_n; ci++) {
                        /* x[n, ci, ih, iw] at x_plane[(ih * w + iw) * x_step] */
                        const float *x_plane = p.x_nhwc ? xs + n * h * w * ci_n + ci : xs + (n * ci_n + ci) * h * w;
                        const int64_t x_step = p.x_nhwc ? ci_n : 1;
                        const float *w_kernel = ws + (co * ci_n + ci) * kh_n * kw_n;
                        for (int64_t kh = 0; kh < kh_n; kh++) {
                            const int64_t ih = i * p.stride_h - p.pad_h + kh;
                            if (ih < 0 || ih >= h)
                                continue;
                            for (int64_t kw = 0; kw < kw_n; kw++) {
                                const int64_t iw = j * p.stride_w - p.pad_w + kw;
                                if (iw < 0 || iw >= w)
                                    continue;
                                sum += (double)x_plane[(ih * w + iw) * x_step] * w_kernel[kh * kw_n + kw];
                            }
                        }
                    }
                    ys[p.y_nhwc ? ((n * ho_n + i) * wo_n + j) * co_n + co : ((n * co_n + co) * ho_n + i) * wo_n + j] =
                        (float)sum;
                }
            }
        }
    }
    return DFC_OK;
}

/* dx[n, ci, ih, iw] = sum of dy[n, co, i, j] weight[co, ci, kh, kw] over the (i, j, kh, kw) with
 * i s - p + kh = ih and j s - p + kw = iw: gathered per input pixel rather than scattered per output. */
dfc_status ref_conv2d_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight,
                                     dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_conv2d_check("conv2d_backward_input", dx, "dx", weight, "weight", NULL, NULL, dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_backward_input", p, 0, err));
    const int64_t n_batch = dx->shape[0], ci_n = dx->shape[1], h = dx->shape[2], w = dx->shape[3];
    const int64_t co_n = weight->shape[0], kh_n = weight->shape[2], kw_n = weight->shape[3];
    const int64_t ho_n = dy->shape[2], wo_n = dy->shape[3];
    const float *dys = dy->data, *ws = weight->data;
    float *dxs = dx->data;
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t n = 0; n < n_batch; n++) {
        for (int64_t ci = 0; ci < ci_n; ci++) {
            for (int64_t ih = 0; ih < h; ih++) {
                for (int64_t iw = 0; iw < w; iw++) {
                    double sum = 0.0;
                    for (int64_t co = 0; co < co_n; co++) {
                        const float *dy_plane = dys + (n * co_n + co) * ho_n * wo_n;
                        const float *w_kernel = ws + (co * ci_n + ci) * kh_n * kw_n;
                        for (int64_t kh = 0; kh < kh_n; kh++) {
                            const int64_t ti = ih + p.pad_h - kh; /* = i * stride_h */
                            if (ti < 0 || ti % p.stride_h != 0 || ti / p.stride_h >= ho_n)
                                continue;
                            const int64_t i = ti / p.stride_h;
                            for (int64_t kw = 0; kw < kw_n; kw++) {
                                const int64_t tj = iw + p.pad_w - kw;
                                if (tj < 0 || tj % p.stride_w != 0 || tj / p.stride_w >= wo_n)
                                    continue;
                                sum += (double)dy_plane[i * wo_n + tj / p.stride_w] * w_kernel[kh * kw_n + kw];
                            }
                        }
                    }
                    dxs[((n * ci_n + ci) * h + ih) * w + iw] = (float)sum;
                }
            }
        }
    }
    return DFC_OK;
}

/* dweight[co, ci, kh, kw] = sum_{n, i, j} dy[n, co, i, j] x[n, ci, i s - p + kh, j s - p + kw];
 * dbias[co] = sum_{n, i, j} dy[n, co, i, j]. */
dfc_status ref_conv2d_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_conv2d_params p,
                                      dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    dbias = (dfc_tensor *)optional(dbias);
    DFC_TRY(dfc_conv2d_check("conv2d_backward_weight", x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_backward_weight", p, 0, err));
    const int64_t n_batch = x->shape[0], ci_n = x->shape[1], h = x->shape[2], w = x->shape[3];
    const int64_t co_n = dweight->shape[0], kh_n = dweight->shape[2], kw_n = dweight->shape[3];
    const int64_t ho_n = dy->shape[2], wo_n = dy->shape[3];
    const float *dys = dy->data, *xs = x->data;
    float *dws = dweight->data;
#pragma omp parallel for collapse(2) num_threads(be->num_threads) schedule(static)
    for (int64_t co = 0; co < co_n; co++) {
        for (int64_t ci = 0; ci < ci_n; ci++) {
            for (int64_t kh = 0; kh < kh_n; kh++) {
                for (int64_t kw = 0; kw < kw_n; kw++) {
                    double sum = 0.0;
                    for (int64_t n = 0; n < n_batch; n++) {
                        const float *dy_plane = dys + (n * co_n + co) * ho_n * wo_n;
                        const float *x_plane = xs + (n * ci_n + ci) * h * w;
                        for (int64_t i = 0; i < ho_n; i++) {
                            const int64_t ih = i * p.stride_h - p.pad_h + kh;
                            if (ih < 0 || ih >= h)
                                continue;
                            for (int64_t j = 0; j < wo_n; j++) {
                                const int64_t iw = j * p.stride_w - p.pad_w + kw;
                                if (iw < 0 || iw >= w)
                                    continue;
                                sum += (double)dy_plane[i * wo_n + j] * x_plane[ih * w + iw];
                            }
                        }
                    }
                    dws[((co * ci_n + ci) * kh_n + kh) * kw_n + kw] = (float)sum;
                }
            }
        }
    }
    if (dbias) {
        float *dbs = dbias->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t co = 0; co < co_n; co++) {
            double sum = 0.0;
            for (int64_t n = 0; n < n_batch; n++) {
                const float *dy_plane = dys + (n * co_n + co) * ho_n * wo_n;
                for (int64_t k = 0; k < ho_n * wo_n; k++)
                    sum += dy_plane[k];
            }
            dbs[co] = (float)sum;
        }
    }
    return DFC_OK;
}

/* ---- linear ---- */

/* y[m, o] = bias[o] + sum_i x[m, i] weight[o, i]. */
dfc_status ref_linear_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_tensor *y, dfc_error *err)
{
    bias = optional(bias);
    DFC_TRY(dfc_linear_check("linear_forward", x, "x", weight, "weight", bias, "bias", y, "y", err));
    const int64_t m_n = x->shape[0], in_n = x->shape[1], out_n = weight->shape[0];
    const float *xs = x->data, *ws = weight->data, *bs = bias ? bias->data : NULL;
    float *ys = y->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t m = 0; m < m_n; m++) {
        for (int64_t o = 0; o < out_n; o++) {
            double sum = bs ? bs[o] : 0.0;
            for (int64_t i = 0; i < in_n; i++)
                sum += (double)xs[m * in_n + i] * ws[o * in_n + i];
            ys[m * out_n + o] = (float)sum;
        }
    }
    return DFC_OK;
}

/* dx[m, i] = sum_o dy[m, o] weight[o, i]. */
dfc_status ref_linear_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx,
                                     dfc_error *err)
{
    DFC_TRY(dfc_linear_check("linear_backward_input", dx, "dx", weight, "weight", NULL, NULL, dy, "dy", err));
    const int64_t m_n = dx->shape[0], in_n = dx->shape[1], out_n = weight->shape[0];
    const float *dys = dy->data, *ws = weight->data;
    float *dxs = dx->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t m = 0; m < m_n; m++) {
        for (int64_t i = 0; i < in_n; i++) {
            double sum = 0.0;
            for (int64_t o = 0; o < out_n; o++)
                sum += (double)dys[m * out_n + o] * ws[o * in_n + i];
            dxs[m * in_n + i] = (float)sum;
        }
    }
    return DFC_OK;
}

/* dweight[o, i] = sum_m dy[m, o] x[m, i]; dbias[o] = sum_m dy[m, o]. */
dfc_status ref_linear_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_tensor *dweight,
                                      dfc_tensor *dbias, dfc_error *err)
{
    dbias = (dfc_tensor *)optional(dbias);
    DFC_TRY(dfc_linear_check("linear_backward_weight", x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", err));
    const int64_t m_n = x->shape[0], in_n = x->shape[1], out_n = dweight->shape[0];
    const float *dys = dy->data, *xs = x->data;
    float *dws = dweight->data, *dbs = dbias ? dbias->data : NULL;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t o = 0; o < out_n; o++) {
        for (int64_t i = 0; i < in_n; i++) {
            double sum = 0.0;
            for (int64_t m = 0; m < m_n; m++)
                sum += (double)dys[m * out_n + o] * xs[m * in_n + i];
            dws[o * in_n + i] = (float)sum;
        }
        if (dbs) {
            double sum = 0.0;
            for (int64_t m = 0; m < m_n; m++)
                sum += dys[m * out_n + o];
            dbs[o] = (float)sum;
        }
    }
    return DFC_OK;
}

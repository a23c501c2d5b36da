/* Reference guided-diffusion QKV attention (forward and backward) and the sinusoidal timestep embedding.
 * One (sample, head) at a time: its full T x T weight matrix is kept in double, rows computed in parallel. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_layout.h"
#include "norm_check.h"
#include "ref.h"

/* P[t, s] = softmax_s(scale * sum_c q[c, t] k[c, s]) for one head; q, k rows of length T, ch channels. */
static void attention_weights(const dfc_backend *be, const float *q, const float *k, int64_t ch, int64_t T,
                              double scale, double *P)
{
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        double *row = P + t * T;
        double max = -INFINITY;
        for (int64_t s = 0; s < T; s++) {
            double dot = 0.0;
            for (int64_t c = 0; c < ch; c++)
                dot += (double)q[c * T + t] * k[c * T + s];
            row[s] = dot * scale;
            if (row[s] > max)
                max = row[s];
        }
        double sum = 0.0;
        for (int64_t s = 0; s < T; s++) {
            row[s] = exp(row[s] - max);
            sum += row[s];
        }
        for (int64_t s = 0; s < T; s++)
            row[s] /= sum;
    }
}

dfc_status ref_attention_forward(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y,
                                 dfc_error *err)
{
    dfc_attention_layout l = {0};
    DFC_TRY(dfc_attention_layout_init("attention", qkv, heads, legacy_order, y, "y", &l, err));
    const int64_t T = l.T, ch = l.ch;
    double *P = malloc((size_t)(T * T) * sizeof *P);
    if (!P)
        return dfc_fail(err, DFC_ERR_NOMEM, "attention: cannot allocate the %lld x %lld weight matrix", (long long)T,
                        (long long)T);
    const double scale = 1.0 / sqrt((double)ch);
    for (int64_t n = 0; n < l.N; n++) {
        for (int64_t h = 0; h < l.heads; h++) {
            const float *q = qkv->data + dfc_attention_q_offset(&l, n, h);
            const float *k = q + l.kv_stride, *v = k + l.kv_stride;
            float *yh = y->data + (n * l.C + h * ch) * T; /* head-major output channels */
            attention_weights(be, q, k, ch, T, scale, P);
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
            for (int64_t c = 0; c < ch; c++) {
                for (int64_t t = 0; t < T; t++) {
                    double sum = 0.0;
                    for (int64_t s = 0; s < T; s++)
                        sum += P[t * T + s] * v[c * T + s];
                    yh[c * T + t] = (float)sum;
                }
            }
        }
    }
    free(P);
    return DFC_OK;
}

/* With S = scale q^T k, P = softmax_rows(S), y = v P^T:
 *   dv = dy P,  dP = dy^T v,  dS = P * (dP - rowsum(P * dP)),  dq = scale k dS^T,  dk = scale q dS. */
dfc_status ref_attention_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads,
                                  int legacy_order, dfc_tensor *dqkv, dfc_error *err)
{
    const char *op = "attention_backward";
    dfc_attention_layout l = {0};
    DFC_TRY(dfc_attention_layout_init(op, qkv, heads, legacy_order, dy, "dy", &l, err));
    DFC_TRY(dfc_check_same_shape(qkv, dqkv, op, "qkv", "dqkv", err));
    const int64_t T = l.T, ch = l.ch;
    dfc_status st = DFC_OK;
    double *P = malloc((size_t)(T * T) * sizeof *P);
    double *dS = malloc((size_t)(T * T) * sizeof *dS);
    double *acc = malloc((size_t)(2 * ch * T) * sizeof *acc); /* dv and dk rows, accumulated over t */
    if (!P || !dS || !acc) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "%s: cannot allocate the %lld x %lld weight matrices", op, (long long)T,
                      (long long)T);
        goto done;
    }
    const double scale = 1.0 / sqrt((double)ch);
    for (int64_t n = 0; n < l.N; n++) {
        for (int64_t h = 0; h < l.heads; h++) {
            const int64_t off = dfc_attention_q_offset(&l, n, h);
            const float *q = qkv->data + off, *k = q + l.kv_stride, *v = k + l.kv_stride;
            float *dq = dqkv->data + off, *dk = dq + l.kv_stride, *dv = dk + l.kv_stride;
            const float *dyh = dy->data + (n * l.C + h * ch) * T;
            attention_weights(be, q, k, ch, T, scale, P);

#pragma omp parallel for num_threads(be->num_threads) schedule(static)
            for (int64_t t = 0; t < T; t++) {
                const double *p = P + t * T;
                double *ds = dS + t * T;
                double dot_p_dp = 0.0;
                for (int64_t s = 0; s < T; s++) {
                    double dp = 0.0;
                    for (int64_t c = 0; c < ch; c++)
                        dp += (double)dyh[c * T + t] * v[c * T + s];
                    ds[s] = dp;
                    dot_p_dp += p[s] * dp;
                }
                for (int64_t s = 0; s < T; s++)
                    ds[s] = p[s] * (ds[s] - dot_p_dp);
            }

#pragma omp parallel for num_threads(be->num_threads) schedule(static)
            for (int64_t c = 0; c < ch; c++) {
                double *dv_acc = acc + c * T, *dk_acc = acc + (ch + c) * T;
                memset(dv_acc, 0, (size_t)T * sizeof *dv_acc);
                memset(dk_acc, 0, (size_t)T * sizeof *dk_acc);
                for (int64_t t = 0; t < T; t++) {
                    const double g = dyh[c * T + t], qc = q[c * T + t];
                    double dq_ct = 0.0;
                    for (int64_t s = 0; s < T; s++) {
                        dv_acc[s] += P[t * T + s] * g;
                        dk_acc[s] += dS[t * T + s] * qc;
                        dq_ct += dS[t * T + s] * k[c * T + s];
                    }
                    dq[c * T + t] = (float)(scale * dq_ct);
                }
                for (int64_t s = 0; s < T; s++) {
                    dv[c * T + s] = (float)dv_acc[s];
                    dk[c * T + s] = (float)(scale * dk_acc[s]);
                }
            }
        }
    }
done:
    free(P);
    free(dS);
    free(acc);
    return st;
}

/* guided-diffusion nn.timestep_embedding, operation for operation in float32 (as torch computes it):
 * freqs = exp(-ln(max_period) * arange(half) / half), args = t * freqs, y = [cos(args), sin(args), 0 if dim odd].
 * The exponent is rounded to float32 first like torch's, then exp is taken correctly rounded: torch's float32 exp
 * (MKL, Sleef) is within 1 ulp of that, which t up to 1000 magnifies to a few 1e-5 in the arguments. */
dfc_status ref_timestep_embedding(dfc_backend *be, const dfc_tensor *t, float max_period, dfc_tensor *y, dfc_error *err)
{
    (void)be;
    DFC_TRY(dfc_timestep_embedding_check("timestep_embedding", t, max_period, y, err));
    const int64_t N = y->shape[0], dim = y->shape[1], half = dim / 2;
    /* torch multiplies the float32 arange by the Python double -ln(max_period) cast to float32. */
    const float neg_log_period = (float)(-log((double)max_period));
    for (int64_t n = 0; n < N; n++) {
        float *row = y->data + n * dim;
        for (int64_t i = 0; i < half; i++) {
            const float exponent = neg_log_period * (float)i / (float)half;
            const float freq = (float)exp((double)exponent);
            const float arg = t->data[n] * freq;
            row[i] = cosf(arg);
            row[half + i] = sinf(arg);
        }
        if (dim % 2)
            row[dim - 1] = 0.0f;
    }
    return DFC_OK;
}

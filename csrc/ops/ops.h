/* The op table: every numerical op diffice's networks use, forward and backward, behind one interface.
 * A backend (reference C, fast CPU with oneDNN, later CUDA) is a table of these functions, an interface for its
 * lifecycle and memory (dfc_backend_iface, below) and its private state; model code calls be->ops->name(be, ...)
 * and never knows which device runs it (ggml's backend idea).
 *
 * Conventions, for every op:
 *  - tensors are dense float32, row-major, NCHW for images, (N, C, T) for token sequences, (rows, cols) for
 *    matrices; outputs are allocated by the caller with the right shape (the op checks and fails otherwise);
 *  - backward functions OVERWRITE their outputs (dx, dweight, ...); a NULL optional output is skipped;
 *  - every function returns DFC_OK or a status with a message in err; none allocates per call except backend
 *    caches (oneDNN primitives) and bounded scratch. */
#ifndef DIFFICE_OPS_H
#define DIFFICE_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"

typedef struct dfc_backend dfc_backend;

typedef struct dfc_conv2d_params {
    int stride_h, stride_w;
    int pad_h, pad_w;
    /* conv2d_forward only: 1 when x (resp. y) is stored NHWC (channels last) under its (N, C, H, W) shape, which
     * spares oneDNN's reorders where the neighbouring op writes or reads that layout (group_norm_act_forward);
     * backends that take only NCHW (the backward convolutions, CUDA) reject it. Zero-initialise the struct. */
    int x_nhwc, y_nhwc;
} dfc_conv2d_params;

typedef struct dfc_pool2d_params {
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int pad_h, pad_w;
} dfc_pool2d_params;

typedef enum { DFC_ACT_RELU = 0, DFC_ACT_SILU = 1, DFC_ACT_SIGMOID = 2 } dfc_activation;
typedef enum { DFC_BINARY_ADD = 0, DFC_BINARY_MUL = 1 } dfc_binary;

/* AdamW's hyperparameters (torch.optim.AdamW's; the scalars stay double as torch's Python floats). */
typedef struct dfc_adamw_config {
    double lr;           /* 1e-4 in the Diff-ICE paper */
    double beta1, beta2; /* torch defaults 0.9, 0.999 (guided-diffusion keeps them) */
    double eps;          /* torch default 1e-8 */
    double weight_decay; /* decoupled: p *= 1 - lr * weight_decay before the Adam step (0.05 in the paper) */
} dfc_adamw_config;

/* Per-row coefficients of the posterior q(x_{t-1} | x_t, x_0) and the model's variance at each row's timestep, as
 * guided-diffusion's _extract_into_tensor casts them from the float64 schedule (host arrays of N entries). */
typedef struct dfc_posterior_coefs {
    const float *sqrt_recip_abar, *sqrt_recipm1_abar; /* pred_xstart = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps */
    const float *coef1, *coef2;                       /* mean = coef1 pred_xstart + coef2 x_t */
    const float *min_log, *max_log;                   /* learned range: log beta~ (clipped) .. log beta */
    const float *variance, *log_variance;             /* fixed variances (unused for the learned range) */
} dfc_posterior_coefs;

/* What p_mean_variance's model output holds and which variance it takes (its output_kind) */
enum {
    DFC_OUTPUT_EPS = 0,         /* (N, C, ...) eps; the fixed variance of the coefficients */
    DFC_OUTPUT_EPS_V = 1,       /* (N, 2C, ...) eps and v; the learned range (learn_sigma) */
    DFC_OUTPUT_EPS_V_FIXED = 2, /* (N, 2C, ...) eps and v, v ignored; the fixed variance */
};

/* The same coefficients in float64 for the training loss's variational bound (host arrays of N entries), plus
 * which rows take the decoder NLL (timestep 0) instead of the KL, and the scale of vb (RESCALED_MSE: K / 1000). */
typedef struct dfc_vb_coefs {
    const double *sqrt_recip_abar, *sqrt_recipm1_abar, *coef1, *coef2, *min_log, *max_log;
    const int *decoder_nll;
    double scale;
} dfc_vb_coefs;

typedef struct dfc_ops {
    /* conv2d, groups = 1. x (N, Ci, H, W), weight (Co, Ci, KH, KW), bias (Co) or NULL -> y (N, Co, Ho, Wo),
     * Ho = (H + 2 pad_h - KH) / stride_h + 1. */
    dfc_status (*conv2d_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                                 dfc_conv2d_params p, dfc_tensor *y, dfc_error *err);
    /* dx (N, Ci, H, W) from dy; dx's shape gives H, W (several input sizes map to one output size at stride 2). */
    dfc_status (*conv2d_backward_input)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight,
                                        dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err);
    /* dweight (Co, Ci, KH, KW) and dbias (Co) or NULL. */
    dfc_status (*conv2d_backward_weight)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x,
                                         dfc_conv2d_params p, dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err);

    /* linear: x (M, In), weight (Out, In), bias (Out) or NULL -> y (M, Out) = x W^T + b. */
    dfc_status (*linear_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                                 dfc_tensor *y, dfc_error *err);
    dfc_status (*linear_backward_input)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx,
                                        dfc_error *err);
    dfc_status (*linear_backward_weight)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x,
                                         dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err);

    /* group norm over (N, C, ...) with `groups` dividing C; gamma, beta (C) or both NULL.
     * mean, rstd (N, groups) are optional outputs (saved statistics). y may alias x (a group's statistics are
     * complete before any of its outputs is written). */
    dfc_status (*group_norm_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma,
                                     const dfc_tensor *beta, int groups, float eps, dfc_tensor *y, dfc_tensor *mean,
                                     dfc_tensor *rstd, dfc_error *err);
    /* mean, rstd: the saved statistics, or NULL to recompute them from x. dgamma, dbeta optional. */
    dfc_status (*group_norm_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x,
                                      const dfc_tensor *gamma, const dfc_tensor *mean, const dfc_tensor *rstd,
                                      int groups, float eps, dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta,
                                      dfc_error *err);

    /* batch norm, inference form: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta, per channel of
     * (N, C, ...). gamma, beta may be NULL (1 and 0). */
    dfc_status (*batch_norm_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma,
                                     const dfc_tensor *beta, const dfc_tensor *running_mean,
                                     const dfc_tensor *running_var, float eps, dfc_tensor *y, dfc_error *err);
    dfc_status (*batch_norm_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x,
                                      const dfc_tensor *gamma, const dfc_tensor *running_mean,
                                      const dfc_tensor *running_var, float eps, dfc_tensor *dx, dfc_tensor *dgamma,
                                      dfc_tensor *dbeta, dfc_error *err);

    /* elementwise activation, any shape; backward from the forward's input x. y may alias x, dx may alias dy. */
    dfc_status (*activation_forward)(dfc_backend *be, dfc_activation kind, const dfc_tensor *x, dfc_tensor *y,
                                     dfc_error *err);
    dfc_status (*activation_backward)(dfc_backend *be, dfc_activation kind, const dfc_tensor *dy, const dfc_tensor *x,
                                      dfc_tensor *dx, dfc_error *err);

    /* softmax over one axis (negative: counted from the end, -1 the last); backward from the forward's output y. */
    dfc_status (*softmax_forward)(dfc_backend *be, const dfc_tensor *x, int axis, dfc_tensor *y, dfc_error *err);
    dfc_status (*softmax_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *y, int axis, dfc_tensor *dx,
                                   dfc_error *err);

    /* y = a (op) b, b broadcast to a's shape: b has a's ndim and each of its dims is 1 or equal to a's
     * (per-channel (1,C,1,1), per-sample (N,1,1,1), per-sample-channel (N,C,1,1), full). y may alias a.
     * Backward: da (a's shape) and db (b's shape, summed over broadcast dims), either NULL. */
    dfc_status (*binary_forward)(dfc_backend *be, dfc_binary kind, const dfc_tensor *a, const dfc_tensor *b,
                                 dfc_tensor *y, dfc_error *err);
    dfc_status (*binary_backward)(dfc_backend *be, dfc_binary kind, const dfc_tensor *dy, const dfc_tensor *a,
                                  const dfc_tensor *b, dfc_tensor *da, dfc_tensor *db, dfc_error *err);

    /* channel concat of n tensors (N, Ci, ...) into (N, sum Ci, ...); split is its inverse (and its backward). */
    dfc_status (*concat_channels)(dfc_backend *be, const dfc_tensor *const *xs, int n, dfc_tensor *y, dfc_error *err);
    dfc_status (*split_channels)(dfc_backend *be, const dfc_tensor *x, dfc_tensor *const *ys, int n, dfc_error *err);

    /* nearest-neighbour upsample x2: (N, C, H, W) -> (N, C, 2H, 2W). */
    dfc_status (*upsample_nearest2x_forward)(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err);
    dfc_status (*upsample_nearest2x_backward)(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err);

    /* average pool, floor mode; padding (at most half the kernel) is not counted: each window averages the pixels
     * inside the image (PyTorch AvgPool2d(k, s, p, count_include_pad=False); with p = 0, AvgPool2d(k, s)). */
    dfc_status (*avg_pool2d_forward)(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                     dfc_error *err);
    dfc_status (*avg_pool2d_backward)(dfc_backend *be, const dfc_tensor *dy, dfc_pool2d_params p, dfc_tensor *dx,
                                      dfc_error *err);

    /* max pool with implicit -inf padding, floor mode (PyTorch MaxPool2d(k, s, p)); backward recomputes the
     * argmax from x (first maximum in scan order wins, as PyTorch). */
    dfc_status (*max_pool2d_forward)(dfc_backend *be, const dfc_tensor *x, dfc_pool2d_params p, dfc_tensor *y,
                                     dfc_error *err);
    dfc_status (*max_pool2d_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_pool2d_params p,
                                      dfc_tensor *dx, dfc_error *err);

    /* global average pool: (N, C, H, W) -> (N, C). */
    dfc_status (*global_avg_pool_forward)(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err);
    dfc_status (*global_avg_pool_backward)(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err);

    /* bilinear resize, align_corners=False, no antialiasing; sizes from y (forward) and dx (backward). */
    dfc_status (*resize_bilinear_forward)(dfc_backend *be, const dfc_tensor *x, dfc_tensor *y, dfc_error *err);
    dfc_status (*resize_bilinear_backward)(dfc_backend *be, const dfc_tensor *dy, dfc_tensor *dx, dfc_error *err);

    /* guided-diffusion QKV attention: qkv (N, 3C, T) -> y (N, C, T) with `heads` heads of ch = C / heads,
     * scaling 1/sqrt(ch), softmax over keys. legacy_order != 0: per head [q|k|v] interleaved
     * (QKVAttentionLegacy); 0: q, k, v blocks of C (QKVAttention). Backward recomputes the weights. */
    dfc_status (*attention_forward)(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y,
                                    dfc_error *err);
    dfc_status (*attention_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads,
                                     int legacy_order, dfc_tensor *dqkv, dfc_error *err);

    /* sinusoidal timestep embedding, float32 as guided-diffusion: t (N) -> y (N, dim),
     * [cos(t f_k), sin(t f_k)], f_k = exp(-ln(max_period) k / half), zero column if dim is odd.
     * No backward: t is an integer timestep. */
    dfc_status (*timestep_embedding)(dfc_backend *be, const dfc_tensor *t, float max_period, dfc_tensor *y,
                                     dfc_error *err);

    /* cross-entropy of log-softmax(logits (N, K)) at integer targets (N) -> per-sample loss (N).
     * Backward: dlogits = dloss[n] * (softmax - onehot). K == 1 is one binary logit z (the probability rule below,
     * targets in {0, 1}): the binary cross-entropy -log sigmoid(+-z), dlogits = dloss[n] (sigmoid(z) - target). */
    dfc_status (*cross_entropy_forward)(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets,
                                        dfc_tensor *loss, dfc_error *err);
    dfc_status (*cross_entropy_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                         const int64_t *targets, dfc_tensor *dlogits, dfc_error *err);

    /* mean squared error per sample: a, b (N, ...) -> loss (N) = mean over non-batch dims of (a - b)^2.
     * Backward: da = dloss[n] * 2 (a - b) / M (db = -da), either NULL. */
    dfc_status (*mse_forward)(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss,
                              dfc_error *err);
    dfc_status (*mse_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b,
                               dfc_tensor *da, dfc_tensor *db, dfc_error *err);
    /* ---- diffusion arithmetic (docs/method.md sections 2-5): the sampler's and the training loss's numbers.
     * Rows are the first dim (samples); m = values per row. Per-row coefficients (float *, double *) and flags
     * (int *) are HOST arrays of N entries, as cross_entropy's targets: a device backend copies them in (and
     * copies the int flags that nonfinite_rows and target_probability write back out). ---- */

    /* x_t = sqrt_abar[b] x0 + sqrt_one_minus_abar[b] noise. No backward: the forward process is not
     * differentiated (d x_t / d x0 would be row_scale by sqrt_abar). */
    dfc_status (*q_sample)(dfc_backend *be, const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                           const float *sqrt_one_minus_abar, dfc_tensor *x_t, dfc_error *err);
    /* guided-diffusion's p_mean_variance for eps prediction, float32 in its operation order: model_output
     * (N, 2C, ...) = (eps, v) for DFC_OUTPUT_EPS_V (log_variance = frac max_log + (1 - frac) min_log, frac = (v + 1)
     * / 2, unclamped) and DFC_OUTPUT_EPS_V_FIXED (v ignored: the fixed variances), (N, C, ...) = eps for
     * DFC_OUTPUT_EPS (the fixed variances); pred_xstart clamped to [-1, 1] when clip.
     * mean, variance, log_variance, pred_xstart shaped like x_t; all but mean may be NULL.
     * Backward carries d pred_xstart only (the sampler's x_t-gradient): through the clip (zero where it clamped),
     * dx_t = sqrt_recip_abar g, d model_output = (-sqrt_recipm1_abar g, 0 for v); either output may be NULL. */
    dfc_status (*p_mean_variance_forward)(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_t,
                                          const dfc_posterior_coefs *coefs, int output_kind, int clip, dfc_tensor *mean,
                                          dfc_tensor *variance, dfc_tensor *log_variance, dfc_tensor *pred_xstart,
                                          dfc_error *err);
    dfc_status (*p_mean_variance_backward)(dfc_backend *be, const dfc_tensor *d_pred_xstart,
                                           const dfc_tensor *model_output, const dfc_tensor *x_t,
                                           const dfc_posterior_coefs *coefs, int output_kind, int clip,
                                           dfc_tensor *dx_t, dfc_tensor *d_model_output, dfc_error *err);
    /* a reverse step x_prev = mean - variance grad + noise_weight[b] exp(log_variance / 2) noise (noise_weight is
     * [i != 0]); grad NULL: unguided (variance unused). x_prev may alias mean. No backward (a sample). */
    dfc_status (*sample_step)(dfc_backend *be, const dfc_tensor *mean, const dfc_tensor *variance,
                              const dfc_tensor *log_variance, const dfc_tensor *grad, const dfc_tensor *noise,
                              const float *noise_weight, dfc_tensor *x_prev, dfc_error *err);
    /* out (N, ...): row b = the first numel / N standard normals of the counter-based stream (seed, keys[b], stream,
     * iteration, step, inner_step) of core/rng.h (Philox4x32-10, Box-Muller in double, each normal rounded once),
     * the sampler's noise drawn where its tensors live. keys: a HOST array of N entries. The CPU backends give the
     * host generator's bits; a GPU's log, sqrt, sin and cos may differ from the host libm's in the last bit of a
     * double, which moves the float only where it rounds at that bit. No backward (a sample). */
    dfc_status (*gaussian_noise)(dfc_backend *be, uint64_t seed, const uint64_t *keys, uint32_t stream,
                                 uint32_t iteration, uint32_t step, uint32_t inner_step, dfc_tensor *out,
                                 dfc_error *err);
    /* y = alpha[b] x, any shape (N, ...); y may alias x. Linear, so its backward is itself (dx = alpha dy). */
    dfc_status (*row_scale)(dfc_backend *be, const dfc_tensor *x, const float *alpha, dfc_tensor *y, dfc_error *err);
    /* y += alpha[b] x. Backward: dx = alpha dy (row_scale), dy passes to the old y unchanged. */
    dfc_status (*row_axpy)(dfc_backend *be, const float *alpha, const dfc_tensor *x, dfc_tensor *y, dfc_error *err);
    /* FastDiME's change map: a, b (N, C, H, W) in [-1, 1] -> y (N, 1, H, W) = sum over C of
     * |(a + 1) / 2 - (b + 1) / 2|, divided by its per-sample maximum when that is > 0. No backward (a mask). */
    dfc_status (*change_map)(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *y, dfc_error *err);
    /* FastDiME's masked blend: keep = [mask < threshold] per pixel, mask (N, 1, H, W) broadcast over C of a, b
     * (N, C, H, W); y = a (1 - keep) + keep b. y may alias a. No backward (the sampler does not differentiate it). */
    dfc_status (*masked_blend)(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *mask,
                               float threshold, dfc_tensor *y, dfc_error *err);
    /* DiME's distance terms, a, b (N, C, H, W): loss[b] = lambda_l1 sum |a - b| + lambda_l2 sum over pixels of the
     * channel norm ||a - b|| (norms accumulated in double); weights (1, 0) and (0, 1) are also the perceptual pixel
     * losses l1 and l2_channel_norm (their squared l2 is mse). Backward: da = dloss[b] (lambda_l1 sign(a - b) +
     * lambda_l2 (a - b) / ||a - b||), 0 where the norm is 0. */
    dfc_status (*distance_penalty_forward)(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, float lambda_l1,
                                           float lambda_l2, dfc_tensor *loss, dfc_error *err);
    dfc_status (*distance_penalty_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                            const dfc_tensor *b, float lambda_l1, float lambda_l2, dfc_tensor *da,
                                            dfc_error *err);
    /* non-finite detection: nonfinite[b] = row b of x holds a NaN or an infinity; such rows are set to 0 in place
     * (every later op works per sample, so the others are untouched). */
    dfc_status (*nonfinite_rows)(dfc_backend *be, dfc_tensor *x, int *nonfinite, dfc_error *err);
    /* the flip decision, with class_loss.h's convention: logits (N, K), targets (N) -> prob (N) = p(target)
     * (softmax for K >= 2, sigmoid of +-z for K == 1; in double) and is_target[b] = argmax == target (first on
     * ties; z > 0 for K == 1). No backward. */
    dfc_status (*target_probability)(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets,
                                     dfc_tensor *prob, int *is_target, dfc_error *err);
    /* the training loss's variational bound in bits per dimension with the mean frozen (guided-diffusion's
     * _vb_terms_bpd): model_output (N, 2C, ...) = (eps, v), x_start, x_t (N, C, ...) -> vb (N) =
     * scale mean_j term_j / ln 2, term = KL(q || p) (normal_kl) or, where decoder_nll, the discretized Gaussian
     * NLL of x_start; in double. Backward: d_v (N, C, ...) = dvb[b] d vb / d v (the gradient reaches v only). */
    dfc_status (*diffusion_vb_forward)(dfc_backend *be, const dfc_tensor *model_output, const dfc_tensor *x_start,
                                       const dfc_tensor *x_t, const dfc_vb_coefs *coefs, dfc_tensor *vb,
                                       dfc_error *err);
    dfc_status (*diffusion_vb_backward)(dfc_backend *be, const dfc_tensor *dvb, const dfc_tensor *model_output,
                                        const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_vb_coefs *coefs,
                                        dfc_tensor *d_v, dfc_error *err);

    /* ---- UNet ops (issue 15, unetnet) ---- */
    /* A UNet block's "GroupNorm, then (scale-shift), then SiLU" in one pass, for forwards that keep nothing for a
     * backward: h = x + add[n, c] (add (N, C) or NULL), g = group_norm(h) gamma + beta, g = g (1 + scale) + shift
     * (ss (N, 2C) = [scale | shift] or NULL), y = silu(g) if silu else g. x and y (N, C, H, W), each stored NCHW or
     * NHWC (x_nhwc, y_nhwc); y may alias x, in the same layout or not (an input the caller no longer needs becomes
     * the next convolution's NHWC input in place). */
    dfc_status (*group_norm_act_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *add,
                                         const dfc_tensor *gamma, const dfc_tensor *beta, const dfc_tensor *ss,
                                         int groups, float eps, int silu, int x_nhwc, int y_nhwc, dfc_tensor *y,
                                         dfc_error *err);
    /* guided-diffusion's scale-shift norm (use_scale_shift_norm), per sample and channel: x (N, C, ...),
     * ss (N, 2C) = [scale | shift] -> y = x (1 + scale) + shift, the product rounded before the sum as PyTorch;
     * y may alias x.
     * Backward: dx = dy (1 + scale) and dss = [sum dy x | sum dy] over x's non-(N, C) dims, either NULL. */
    dfc_status (*scale_shift_forward)(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *ss, dfc_tensor *y,
                                      dfc_error *err);
    dfc_status (*scale_shift_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, const dfc_tensor *ss,
                                       dfc_tensor *dx, dfc_tensor *dss, dfc_error *err);

    /* ---- optimizer ops (csrc/ops/ref_optim.c, cpu_optim.c): in place over same-shape tensors, no gradient ---- */
    /* One AdamW step (torch.optim.AdamW, single-tensor form): p *= 1 - lr wd; m = lerp(m, g, 1 - beta1);
     * v = beta2 v + (1 - beta2) g^2; p += -lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps).
     * step: the 1-based count of this step; exp_avg, exp_avg_sq are zero before the first step. */
    dfc_status (*adamw_step)(dfc_backend *be, const dfc_adamw_config *cfg, int64_t step, dfc_tensor *param,
                             const dfc_tensor *grad, dfc_tensor *exp_avg, dfc_tensor *exp_avg_sq, dfc_error *err);
    /* ema = rate ema + (1 - rate) param, rate in [0, 1] (guided-diffusion's update_ema). */
    dfc_status (*ema_update)(dfc_backend *be, double rate, dfc_tensor *ema, const dfc_tensor *param, dfc_error *err);
    /* *sum = sum of x^2 over every element, accumulated in double; the same result for any thread count (training
     * resumes bit for bit). */
    dfc_status (*sum_squares)(dfc_backend *be, const dfc_tensor *x, double *sum, dfc_error *err);
    /* x *= factor (gradient clipping). */
    dfc_status (*scale)(dfc_backend *be, dfc_tensor *x, float factor, dfc_error *err);

    /* ---- network ops (issue 15, netops): classification losses, standardisation, feature distance, fill ---- */

    /* The signed logit of the target l_y of logits (N, C) at integer targets (N) -> loss (N) = -l_y (DiME's
     * use_logits loss): C == 1: l_y = +-z (sign by target in {0, 1}); C == 2: z_y - z_(1-y); C > 2: z_y.
     * Backward: dlogits = dloss[n] d(-l_y)/dz. */
    dfc_status (*logit_loss_forward)(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets,
                                     dfc_tensor *loss, dfc_error *err);
    dfc_status (*logit_loss_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                      const int64_t *targets, dfc_tensor *dlogits, dfc_error *err);

    /* binary cross-entropy with logits, elementwise against targets t in [0, 1] of logits' shape (N, ...), averaged
     * per sample: loss (N) = mean over non-batch dims of max(z, 0) - z t + log(1 + exp(-|z|)).
     * Backward: dlogits = dloss[n] (sigmoid(z) - t) / M. */
    dfc_status (*bce_with_logits_forward)(dfc_backend *be, const dfc_tensor *logits, const dfc_tensor *targets,
                                          dfc_tensor *loss, dfc_error *err);
    dfc_status (*bce_with_logits_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                           const dfc_tensor *targets, dfc_tensor *dlogits, dfc_error *err);

    /* per-plane standardisation of x (N, C, H, W): y = scale (x - mean) / std over each (n, c) plane, std with
     * ddof 0; a constant plane is divided by 1 (it becomes zeros, as in scikit-learn's StandardScaler). Backward
     * from the forward's input x (layer-norm form). */
    dfc_status (*standardize_forward)(dfc_backend *be, const dfc_tensor *x, float scale, dfc_tensor *y, dfc_error *err);
    dfc_status (*standardize_backward)(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, float scale,
                                       dfc_tensor *dx, dfc_error *err);

    /* normalised feature distance (MONAI's perceptual similarity): a, b (N, C, ...) unit-normalised over channels
     * at every position, f^ = f / (sqrt(sum_c f^2) + 1e-10), loss (N) = mean over positions of sum_c (a^ - b^)^2.
     * Backward: da = dloss[n] d loss[n] / da (b is a constant reference: no db). */
    dfc_status (*normalized_distance_forward)(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b,
                                              dfc_tensor *loss, dfc_error *err);
    dfc_status (*normalized_distance_backward)(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a,
                                               const dfc_tensor *b, dfc_tensor *da, dfc_error *err);

    /* y = value everywhere (any shape). */
    dfc_status (*fill)(dfc_backend *be, float value, dfc_tensor *y, dfc_error *err);
} dfc_ops;


/* Every op's name, in table order: lets the reference table and declarations be generated, so a backend table
 * cannot silently miss an op. */
#define DFC_OP_LIST(X)                   \
    X(conv2d_forward)                    \
    X(conv2d_backward_input)             \
    X(conv2d_backward_weight)            \
    X(linear_forward)                    \
    X(linear_backward_input)             \
    X(linear_backward_weight)            \
    X(group_norm_forward)                \
    X(group_norm_backward)               \
    X(batch_norm_forward)                \
    X(batch_norm_backward)               \
    X(activation_forward)                \
    X(activation_backward)               \
    X(softmax_forward)                   \
    X(softmax_backward)                  \
    X(binary_forward)                    \
    X(binary_backward)                   \
    X(concat_channels)                   \
    X(split_channels)                    \
    X(upsample_nearest2x_forward)        \
    X(upsample_nearest2x_backward)       \
    X(avg_pool2d_forward)                \
    X(avg_pool2d_backward)               \
    X(max_pool2d_forward)                \
    X(max_pool2d_backward)               \
    X(global_avg_pool_forward)           \
    X(global_avg_pool_backward)          \
    X(resize_bilinear_forward)           \
    X(resize_bilinear_backward)          \
    X(attention_forward)                 \
    X(attention_backward)                \
    X(timestep_embedding)                \
    X(cross_entropy_forward)             \
    X(cross_entropy_backward)            \
    X(mse_forward)                       \
    X(mse_backward)                      \
    /* diffusion arithmetic */           \
    X(q_sample)                          \
    X(p_mean_variance_forward)           \
    X(p_mean_variance_backward)          \
    X(sample_step)                       \
    X(gaussian_noise)                    \
    X(row_scale)                         \
    X(row_axpy)                          \
    X(change_map)                        \
    X(masked_blend)                      \
    X(distance_penalty_forward)          \
    X(distance_penalty_backward)         \
    X(nonfinite_rows)                    \
    X(target_probability)                \
    X(diffusion_vb_forward)              \
    X(diffusion_vb_backward)             \
    /* UNet ops (issue 15, unetnet) */   \
    X(group_norm_act_forward)            \
    X(scale_shift_forward)               \
    X(scale_shift_backward)              \
    /* optimizer ops */                  \
    X(adamw_step)                        \
    X(ema_update)                        \
    X(sum_squares)                       \
    X(scale)                             \
    /* network ops (issue 15, netops) */ \
    X(logit_loss_forward)                \
    X(logit_loss_backward)               \
    X(bce_with_logits_forward)           \
    X(bce_with_logits_backward)          \
    X(standardize_forward)               \
    X(standardize_backward)              \
    X(normalized_distance_forward)       \
    X(normalized_distance_backward)      \
    X(fill)

/* The number of ops; ops.h fails to compile when struct dfc_ops has a member DFC_OP_LIST lacks (or the
 * reverse), so a table generated from the list is the whole table. */
#define DFC_COUNT_OP_(name) +1
enum { DFC_NUM_OPS = 0 DFC_OP_LIST(DFC_COUNT_OP_) };
#ifdef __cplusplus /* the CUDA backend's sources include this header as C++ */
static_assert(sizeof(dfc_ops) == DFC_NUM_OPS * sizeof(void (*)(void)),
              "struct dfc_ops and DFC_OP_LIST must name the same ops");
#else
_Static_assert(sizeof(dfc_ops) == DFC_NUM_OPS * sizeof(void (*)(void)),
               "struct dfc_ops and DFC_OP_LIST must name the same ops");
#endif

/* Declares prefix_name with exactly the table's signature: DFC_DECLARE_OP_(ref, conv2d_forward) declares
 * ref_conv2d_forward. */
#define DFC_DECLARE_OP_(prefix, name) extern __typeof__(*((dfc_ops *)0)->name) prefix##_##name;
/* One table entry, .name = prefix_name. A backend with a kernel for every op (ref, a future cuda) builds its table
 * as {DFC_OP_LIST(ENTRY)} with ENTRY(name) = DFC_OP_ENTRY_(prefix, name): a missing prefix_name does not link. */
#define DFC_OP_ENTRY_(prefix, name) .name = prefix##_##name,

/* The arithmetic a backend's convolutions and matrix products may use. FP32 (the default, parity with the CPU
 * reference); TF32: fp32 data through tensor cores with 10-bit mantissas (cuDNN and cuBLAS); BF16: reserved for
 * bf16 products with fp32 accumulation, which no backend offers yet. Everything else stays fp32 in every mode. */
typedef enum dfc_precision {
    DFC_PRECISION_FP32 = 0,
    DFC_PRECISION_TF32 = 1,
    DFC_PRECISION_BF16 = 2,
} dfc_precision;

#define DFC_PRECISION_BIT(p) (1u << (p))

/* "fp32", "tf32", "bf16"; NULL past the last. Inline: the CUDA plugin names precisions too and links no backend.c. */
static inline const char *dfc_precision_name(int precision)
{
    static const char *const names[] = {"fp32", "tf32", "bf16"};
    return precision >= 0 && precision < (int)(sizeof names / sizeof names[0]) ? names[precision] : NULL;
}

/* ---- the backend: the op table plus its lifecycle and memory (ggml's ggml_backend_i and buffer interface) ----
 * Memory functions move bytes between the host and backend memory (for the host backends they are malloc and
 * memcpy); ops take tensors whose data is backend memory. */
typedef struct dfc_backend_iface {
    const char *name; /* "ref", "cpu", "cuda": the key dfc_backend_create looks up */
    const dfc_ops *ops;
    /* 1: backend memory is host memory, so host buffers (numpy arrays) may be handed to ops as they are; 0: the
     * caller stages them through alloc and the copy functions. */
    int host_memory;
    /* 1: its forward convolutions are fastest on NHWC x and y (oneDNN's choice on x86), so networks hand them
     * NHWC tensors where the neighbouring ops can write and read that layout (dfc_conv2d_params); 0: NCHW. */
    int conv_nhwc;
    /* The precisions it can run, DFC_PRECISION_BIT(p) for each p: dfc_backend_create refuses any other. */
    unsigned precisions;
    /* How many devices "name:N" may number (0..count-1): 1 for the host backends; the GPUs this process sees for
     * "cuda" (0 without a plugin, driver or device). Needs no backend, so a caller can choose N first. */
    int (*device_count)(void);
    /* Sets up be->impl (be->iface, be->ops and be->num_threads are set); destroy releases it. */
    dfc_status (*create)(dfc_backend *be, dfc_error *err);
    void (*destroy)(dfc_backend *be);
    /* Returns when every op issued so far has finished (the CPU backends' ops finish before they return). */
    dfc_status (*synchronize)(dfc_backend *be, dfc_error *err);
    /* bytes of backend memory, DFC_BACKEND_ALIGN-aligned and uninitialised; NULL with err set on failure. */
    void *(*alloc)(dfc_backend *be, size_t bytes, dfc_error *err);
    void (*free)(dfc_backend *be, void *ptr); /* ptr from alloc, or NULL */
    dfc_status (*zero)(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err);
    dfc_status (*copy_from_host)(dfc_backend *be, void *dst, const void *host_src, size_t bytes, dfc_error *err);
    dfc_status (*copy_to_host)(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err);
    dfc_status (*copy)(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err);
} dfc_backend_iface;

#define DFC_BACKEND_ALIGN 64

/* A backend's interface with every member named after its prefixes: lifecycle functions prefix_backend_create,
 * ..._destroy, ..._synchronize; memory functions memory_alloc, _free, _zero, _copy_from_host, _copy_to_host, _copy
 * (dfc_host for host memory); the table dfc_<prefix>_ops. A missing function does not build. */
#define DFC_BACKEND_IFACE_(prefix, memory, is_host, nhwc)    \
    {                                                        \
        .name = #prefix,                                     \
        .ops = &dfc_##prefix##_ops,                          \
        .host_memory = is_host,                              \
        .conv_nhwc = nhwc,                                   \
        .precisions = DFC_PRECISION_BIT(DFC_PRECISION_FP32), \
        .device_count = dfc_host_device_count,               \
        .create = prefix##_backend_create,                   \
        .destroy = prefix##_backend_destroy,                 \
        .synchronize = prefix##_backend_synchronize,         \
        .alloc = memory##_alloc,                             \
        .free = memory##_free,                               \
        .zero = memory##_zero,                               \
        .copy_from_host = memory##_copy_from_host,           \
        .copy_to_host = memory##_copy_to_host,               \
        .copy = memory##_copy,                               \
    }

/* The host backends' device_count: the one CPU they run on. */
int dfc_host_device_count(void);

/* Host memory (aligned_alloc, memset, memcpy): the memory functions of the ref and cpu backends. */
void *dfc_host_alloc(dfc_backend *be, size_t bytes, dfc_error *err);
void dfc_host_free(dfc_backend *be, void *ptr);
dfc_status dfc_host_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err);
dfc_status dfc_host_copy_from_host(dfc_backend *be, void *dst, const void *host_src, size_t bytes, dfc_error *err);
dfc_status dfc_host_copy_to_host(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err);
dfc_status dfc_host_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err);

struct dfc_backend {
    const dfc_backend_iface *iface; /* lifecycle, memory, name */
    const dfc_ops *ops;             /* iface->ops, at hand for be->ops->name(be, ...) */
    int num_threads;                /* threads the backend's kernels may use: the one thread policy */
    int device;                     /* which device of a backend that has several ("cuda:1" -> 1), else 0 */
    dfc_precision precision;        /* what its convolutions and matrix products may use (one of iface->precisions) */
    int private_memory;             /* set by create: its memory is its own, never another backend's (the strict
                                       emulation's mappings, readable inside this backend's ops only) */
    void *impl;                     /* backend-private state (oneDNN engine and stream, ...) */
    /* Host memory the backend may hold at once, over every arena chunk and op scratch buffer of its host RAM
     * (dfc_backend_reserve); 0: no limit (a GPU's memory: its allocator reports what is free). Set by create:
     * dfc_default_memory_limit(). */
    size_t memory_limit;
    size_t memory_held; /* what dfc_backend_reserve counted and dfc_backend_release has not given back (atomic;
                           counted without a limit too) */
};

/* Creates a backend by its interface's name ("ref": plain C oracle; "cpu": oneDNN + OpenMP; "cuda" or "cuda:N": the
 * GPU; "cuda_emulated": the CUDA kernels run on the host, for tests), from the registry in backend.c.
 * num_threads <= 0 uses every core; precision must be one the backend offers (iface->precisions). */
dfc_status dfc_backend_create(const char *name, int num_threads, dfc_precision precision, dfc_backend **out,
                              dfc_error *err);
void dfc_backend_destroy(dfc_backend *be);
/* The name of the index-th backend in the registry (0: the default), NULL past the last. */
const char *dfc_backend_registered(int index);
/* The device_count of the registered backend called name ("cuda", not "cuda:1"); -1 for an unknown name. */
int dfc_backend_device_count(const char *name);
static inline const char *dfc_backend_name(const dfc_backend *be) { return be->iface->name; }

/* Counts bytes about to be allocated for `what` against be->memory_limit, so the memory of all of a backend's
 * arenas and scratch buffers together stays under one limit; a buffer of 64 MiB or more must also fit the memory
 * the machine has available now (other processes' use), 256 MiB of it kept free. DFC_ERR_NOMEM (a MemoryError in Python) saying how much
 * was asked, held and allowed, and nothing counted, when it does not fit. be NULL: nothing to count. Every
 * reservation is given back by dfc_backend_release with the same bytes when the memory is freed. Without a limit
 * it only counts. */
dfc_status dfc_backend_reserve(dfc_backend *be, size_t bytes, const char *what, dfc_error *err);
void dfc_backend_release(dfc_backend *be, size_t bytes);

/* The tables and interfaces, defined in ref_backend.c and cpu_backend.c. */
extern const dfc_ops dfc_ref_ops;
extern const dfc_ops dfc_cpu_ops;
extern const dfc_backend_iface dfc_ref_backend_iface;
extern const dfc_backend_iface dfc_cpu_backend_iface;
extern const dfc_backend_iface dfc_cuda_emulated_backend_iface; /* csrc/cuda built for the host */
extern const dfc_backend_iface dfc_cuda_loader_iface;           /* "cuda": loads the plugin (backend.c) */

/* AdamW's hyperparameter ranges as torch.optim.AdamW checks them (lr >= 0, eps >= 0, betas in [0, 1),
 * weight_decay >= 0), all finite; defined in ref_optim.c. */
dfc_status dfc_adamw_check(const dfc_adamw_config *cfg, dfc_error *err);

/* Whether b may use (and free) memory that a allocated: backends with the same memory functions on the same device
 * share one memory (the host backends: host memory; a device backend: that device's memory, whichever thread's or
 * precision's backend made it), unless one keeps its memory private. */
static inline int dfc_backend_same_memory(const dfc_backend *a, const dfc_backend *b)
{
    return a == b || (a->iface->alloc == b->iface->alloc && a->iface->free == b->iface->free &&
                      a->device == b->device && !a->private_memory && !b->private_memory);
}

#endif

/* The guided reverse processes of Diff-ICE and its baselines (docs/method.md sections 3-5 and 9), entirely in C:
 * one call generates every counterfactual of a batch, over L iterations and the lambda_c search.
 *
 *   Diff-ICE:      each iteration noises its input to tau (q_sample), then for i = tau-1 .. 0 runs the UNet, forms
 *                  the clipped one-step estimate x0_hat, takes g = grad over x0_hat of
 *                  lambda_c Lc(f(x0_hat), y) + lambda_p Lp(x0_hat, x) with x the ORIGINAL input, and samples from
 *                  N(mean - variance g, variance). The output of iteration l is the input of l + 1.
 *   Diff-ICE_1:    the same with L = 1 (FastDiME without its mask).
 *   Diff-ICE_1-xt: the gradient of the same loss w.r.t. the noisy z, through the UNet's VJP.
 *   DiME:          the clean estimate comes from an unguided reverse chain from z to 0 at every step; the gradient
 *                  is divided by sqrt(abar) (its "scaling trick"); optional l1/l2 terms on z.
 *   FastDiME:      Diff-ICE_1 plus the self-optimised mask (dilation, threshold, warm-up).
 *
 * lambda_c search, per iteration: all samples try the first value; samples whose result is not classified as the
 * target retry from the same noise with the next value; a sample that never flips keeps the last value's result. */
#ifndef DIFFICE_SAMPLER_H
#define DIFFICE_SAMPLER_H

#include "../core/arena.h"
#include "../core/rng.h"
#include "../nets/net.h"
#include "schedule.h"

#define DFC_MAX_LAMBDAS 8
#define DFC_SAMPLER_MAX_ITERATIONS 1000 /* L at most */

typedef enum {
    DFC_METHOD_DIFF_ICE = 0,
    DFC_METHOD_DIFF_ICE_XT = 1,
    DFC_METHOD_DIME = 2,
    DFC_METHOD_FASTDIME = 3,
} dfc_sampler_method;

typedef struct dfc_sampler_config {
    dfc_sampler_method method;
    int iterations; /* L: 5 for Diff-ICE, 1 for the single-pass baselines */
    int tau;        /* respaced noise level: q_sample at tau, first reverse step at tau - 1 */
    int num_lambdas;
    float lambda_c[DFC_MAX_LAMBDAS]; /* searched in order, e.g. 40, 60, 80 */
    float lambda_p;                  /* perceptual weight (30) */
    float lambda_l1, lambda_l2;      /* DiME's terms on the noisy z against x (0: off) */
    int grad_at_previous;            /* FastDiME: gradient at the previous step's x0_hat (the input at the first) */
    int scale_grads;                 /* divide the gradient by sqrt(abar_i) (always on for DiME) */
    int clip;                        /* clamp x0_hat to [-1, 1] (guided-diffusion's clip_denoised) */
    int mask_dilation;               /* FastDiME mask: max-pool kernel (odd) */
    float mask_threshold;            /* FastDiME mask: keep the original where the dilated mask is below this */
    int mask_warmup;                 /* FastDiME mask: first step index (counted from the start) using the mask */
    uint64_t seed;
    int record_steps;        /* keep x_t and x0_hat of every step of the final pass (for figures) */
    int classify_first_step; /* classify x0_hat at the first reverse step of iteration 1's first lambda_c
                                      * pass (outputs first_step_prob / first_step_target; one classifier call) */
} dfc_sampler_config;

/* The guiding loss. rows[b] is the position in the ORIGINAL batch of row b of x0 (for its reference image and
 * target); grad = d/dx0 of sum_b [lambda_c[b] Lc(f(x0_b), y_b) + lambda_p Lp(x0_b, x_rows[b])]. x0, x, grad,
 * loss_class, loss_perceptual and prob_target are be's memory; rows, lambda_c and is_target host arrays. */
typedef struct dfc_guidance {
    void *ctx;
    dfc_status (*loss_and_grad)(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x0, const int64_t *rows,
                                const float *lambda_c, float lambda_p, dfc_tensor *grad, float *loss_class,
                                float *loss_perceptual, dfc_error *err);
    /* probability of the target class and whether the target is the predicted class, per row of x */
    dfc_status (*classify)(void *ctx, dfc_backend *be, dfc_arena *arena, const dfc_tensor *x, const int64_t *rows,
                           float *prob_target, int *is_target, dfc_error *err);
} dfc_guidance;

/* Progress: called after every reverse step; a non-zero return stops the sampler with DFC_ERR_INTERRUPTED. */
typedef int (*dfc_progress_fn)(void *user, int iteration, int lambda_index, int step, int steps_per_pass,
                               int active_samples);

/* Caller-allocated outputs (N images of shape (C, H, W), L iterations). */
typedef struct dfc_sampler_outputs {
    float *counterfactuals; /* (L, N, C, H, W) */
    float *prob_target;     /* (L + 1, N): the input, then each iteration's result */
    float *lambda_used;     /* (L, N) */
    int *flipped;           /* (L, N): the result is classified as the target */
    int *nonfinite_step;  /* (L, N): -1, or the first step where the kept result (its last lambda's) went non-finite */
    float *steps_xt;      /* record_steps: (L, tau, N, C, H, W) z after each step of the kept pass; or NULL */
    float *steps_x0;      /* record_steps: (L, tau, N, C, H, W) x0_hat at each step; or NULL */
    int *input_is_target; /* (N) the input is classified as the target; or NULL */
    float *first_step_prob;    /* classify_first_step: (N) target probability of x0_hat at the first reverse step
                               * of iteration 1's first lambda_c pass (before any guidance acted); or NULL */
    int *first_step_target;    /* classify_first_step: (N) that x0_hat is classified as the target; or NULL */
    double *iteration_seconds; /* (L) */
    size_t peak_bytes;         /* arena peak over the whole call (above the arenas' marks at entry) */
    int64_t unet_evaluations;
} dfc_sampler_outputs;

dfc_status dfc_sampler_validate(const dfc_sampler_config *cfg, const dfc_diffusion *d, dfc_error *err);

/* x (N, C, H, W) in [-1, 1], be's memory; sample_keys (N) identify the images for the noise; out: host memory.
 * denoiser: any dfc_net conditioned on the original timesteps with one output, the model output (N, C or 2C, H, W)
 * (the UNet). work, scratch: arenas of memory be can use (be's, or host memory for a host backend) that the caller
 * keeps between calls, so a call reuses the memory the previous one obtained (they grow when a call needs more); the
 * run works above their marks at entry and resets them to those marks before it returns; their peaks restart at the
 * call. NULL (either): the call makes arenas of its own and frees them before it returns. */
dfc_status dfc_sampler_run(const dfc_sampler_config *cfg, const dfc_net *denoiser, const dfc_diffusion *d,
                           const dfc_guidance *guidance, dfc_backend *be, dfc_arena *work, dfc_arena *scratch,
                           const dfc_tensor *x, const uint64_t *sample_keys, dfc_progress_fn progress,
                           void *progress_user, dfc_sampler_outputs *out, dfc_error *err);

/* dfc_sampler_run for a caller whose images are in host memory (the Python binding, a C program): x_host is copied
 * into be's memory for the run, and the denoiser's host parameter values to be first (dfc_net_sync: they may have
 * changed since the last run). */
dfc_status dfc_sampler_run_from_host(const dfc_sampler_config *cfg, const dfc_net *denoiser, const dfc_diffusion *d,
                                     const dfc_guidance *guidance, dfc_backend *be, dfc_arena *work, dfc_arena *scratch,
                                     const dfc_tensor *x_host, const uint64_t *sample_keys, dfc_progress_fn progress,
                                     void *progress_user, dfc_sampler_outputs *out, dfc_error *err);

#endif

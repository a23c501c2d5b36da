/* The argument checks of the diffusion ops (diffusion_rows.h), shared by the reference, fast CPU and CUDA kernels so
 * every backend rejects the same inputs with the same messages; a file of its own so the CUDA plugin links them
 * without the reference kernels. */
#include "diffusion_rows.h"
#include "net_ops.h"

dfc_status dfc_check_rows(const char *op, const char *name, const void *array, dfc_error *err)
{
    return array ? DFC_OK : dfc_fail(err, DFC_ERR_VALUE, "%s: the per-row array %s is missing", op, name);
}

dfc_status dfc_model_output_check(const char *op, const dfc_tensor *model_output, const dfc_tensor *x,
                                  const char *x_name, int output_kind, dfc_error *err)
{
    if (output_kind < DFC_OUTPUT_EPS || output_kind > DFC_OUTPUT_EPS_V_FIXED)
        return dfc_fail(err, DFC_ERR_VALUE,
                        "%s: output_kind must be 0 (eps), 1 (eps, v: learned) or 2 (eps, v: fixed), got %d", op,
                        output_kind);
    DFC_TRY(dfc_check_ndim(x, op, x_name, 2, DFC_MAX_DIMS, err));
    int64_t shape[DFC_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++)
        shape[i] = x->shape[i];
    shape[1] *= output_kind ? 2 : 1;
    if (dfc_check_shape(model_output, op, "model_output", x->ndim, shape, err) != DFC_OK) {
        dfc_error_prefix(err, "%s", output_kind ? "(learned sigma: 2C channels) " : "(fixed variance: C channels) ");
        return err ? err->code : DFC_ERR_SHAPE;
    }
    return DFC_OK;
}

static int present(const dfc_tensor *t) { return t && t->data; }

dfc_status dfc_q_sample_check(const dfc_tensor *x0, const dfc_tensor *noise, const float *sqrt_abar,
                              const float *sqrt_one_minus_abar, const dfc_tensor *x_t, dfc_error *err)
{
    const char *op = "q_sample";
    DFC_TRY(dfc_check_ndim(x0, op, "x0", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x0, noise, op, "x0", "noise", err));
    DFC_TRY(dfc_check_same_shape(x0, x_t, op, "x0", "x_t", err));
    DFC_TRY(dfc_check_rows(op, "sqrt_abar", sqrt_abar, err));
    return dfc_check_rows(op, "sqrt_one_minus_abar", sqrt_one_minus_abar, err);
}

dfc_status dfc_check_posterior(const char *op, const dfc_posterior_coefs *c, int output_kind, dfc_error *err)
{
    if (!c)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: coefs is missing", op);
    DFC_TRY(dfc_check_rows(op, "sqrt_recip_abar", c->sqrt_recip_abar, err));
    DFC_TRY(dfc_check_rows(op, "sqrt_recipm1_abar", c->sqrt_recipm1_abar, err));
    DFC_TRY(dfc_check_rows(op, "coef1", c->coef1, err));
    DFC_TRY(dfc_check_rows(op, "coef2", c->coef2, err));
    const int learned = output_kind == DFC_OUTPUT_EPS_V;
    DFC_TRY(dfc_check_rows(op, learned ? "min_log" : "variance", learned ? c->min_log : c->variance, err));
    return dfc_check_rows(op, learned ? "max_log" : "log_variance", learned ? c->max_log : c->log_variance, err);
}

dfc_status dfc_p_mean_variance_check(const dfc_tensor *model_output, const dfc_tensor *x_t,
                                     const dfc_posterior_coefs *coefs, int output_kind, const dfc_tensor *mean,
                                     const dfc_tensor *variance, const dfc_tensor *log_variance,
                                     const dfc_tensor *pred_xstart, dfc_error *err)
{
    const char *op = "p_mean_variance";
    DFC_TRY(dfc_model_output_check(op, model_output, x_t, "x_t", output_kind, err));
    DFC_TRY(dfc_check_posterior(op, coefs, output_kind, err));
    DFC_TRY(dfc_check_same_shape(x_t, mean, op, "x_t", "mean", err));
    const dfc_tensor *optional[] = {variance, log_variance, pred_xstart};
    const char *names[] = {"variance", "log_variance", "pred_xstart"};
    for (int i = 0; i < 3; i++)
        if (present(optional[i]))
            DFC_TRY(dfc_check_same_shape(x_t, optional[i], op, "x_t", names[i], err));
    return DFC_OK;
}

dfc_status dfc_p_mean_variance_backward_check(const dfc_tensor *d_pred_xstart, const dfc_tensor *model_output,
                                              const dfc_tensor *x_t, const dfc_posterior_coefs *coefs, int output_kind,
                                              const dfc_tensor *dx_t, const dfc_tensor *d_model_output, dfc_error *err)
{
    const char *op = "p_mean_variance_backward";
    DFC_TRY(dfc_model_output_check(op, model_output, x_t, "x_t", output_kind, err));
    DFC_TRY(dfc_check_posterior(op, coefs, output_kind, err));
    DFC_TRY(dfc_check_same_shape(x_t, d_pred_xstart, op, "x_t", "d_pred_xstart", err));
    if (present(dx_t))
        DFC_TRY(dfc_check_same_shape(x_t, dx_t, op, "x_t", "dx_t", err));
    if (present(d_model_output))
        DFC_TRY(dfc_check_same_shape(model_output, d_model_output, op, "model_output", "d_model_output", err));
    return DFC_OK;
}

dfc_status dfc_sample_step_check(const dfc_tensor *mean, const dfc_tensor *variance, const dfc_tensor *log_variance,
                                 const dfc_tensor *grad, const dfc_tensor *noise, const float *noise_weight,
                                 const dfc_tensor *x_prev, dfc_error *err)
{
    const char *op = "sample_step";
    DFC_TRY(dfc_check_ndim(mean, op, "mean", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(mean, log_variance, op, "mean", "log_variance", err));
    DFC_TRY(dfc_check_same_shape(mean, noise, op, "mean", "noise", err));
    DFC_TRY(dfc_check_same_shape(mean, x_prev, op, "mean", "x_prev", err));
    DFC_TRY(dfc_check_rows(op, "noise_weight", noise_weight, err));
    if (present(grad)) {
        DFC_TRY(dfc_check_same_shape(mean, grad, op, "mean", "grad", err));
        DFC_TRY(dfc_check_same_shape(mean, variance, op, "mean", "variance", err));
    }
    return DFC_OK;
}

dfc_status dfc_gaussian_noise_check(const uint64_t *keys, const dfc_tensor *out, dfc_error *err)
{
    const char *op = "gaussian_noise";
    DFC_TRY(dfc_check_ndim(out, op, "out", 1, DFC_MAX_DIMS, err));
    return dfc_check_rows(op, "keys", keys, err);
}

/* a, b (N, C, H, W) and a per-pixel map (N, 1, H, W). */
dfc_status dfc_check_pixel_map(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *map,
                               const char *map_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    const int64_t shape[4] = {a->shape[0], 1, a->shape[2], a->shape[3]};
    return dfc_check_shape(map, op, map_name, 4, shape, err);
}

dfc_status dfc_check_distance(const char *op, const dfc_tensor *a, const dfc_tensor *b, const dfc_tensor *per_row,
                              const char *per_row_name, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 4, 4, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    return dfc_check_shape(per_row, op, per_row_name, 1, a->shape, err);
}

dfc_status dfc_nonfinite_rows_check(const dfc_tensor *x, const int *nonfinite, dfc_error *err)
{
    const char *op = "nonfinite_rows";
    DFC_TRY(dfc_check_ndim(x, op, "x", 1, DFC_MAX_DIMS, err));
    return dfc_check_rows(op, "nonfinite", nonfinite, err);
}

dfc_status dfc_target_probability_check(const dfc_tensor *logits, const int64_t *targets, const dfc_tensor *prob,
                                        const int *is_target, dfc_error *err)
{
    const char *op = "target_probability";
    DFC_TRY(dfc_check_class_targets(op, logits, targets, err));
    DFC_TRY(dfc_check_shape(prob, op, "prob", 1, logits->shape, err));
    return dfc_check_rows(op, "is_target", is_target, err);
}

dfc_status dfc_check_vb(const char *op, const dfc_tensor *model_output, const dfc_tensor *x_start,
                        const dfc_tensor *x_t, const dfc_vb_coefs *c, const dfc_tensor *per_row,
                        const char *per_row_name, const dfc_tensor *d_v, dfc_error *err)
{
    DFC_TRY(dfc_model_output_check(op, model_output, x_start, "x_start", 1, err));
    DFC_TRY(dfc_check_same_shape(x_start, x_t, op, "x_start", "x_t", err));
    if (!c)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: coefs is missing", op);
    const void *arrays[] = {c->sqrt_recip_abar, c->sqrt_recipm1_abar, c->coef1,      c->coef2,
                            c->min_log,         c->max_log,           c->decoder_nll};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        DFC_TRY(dfc_check_rows(op, "of coefs", arrays[i], err));
    DFC_TRY(dfc_check_shape(per_row, op, per_row_name, 1, x_start->shape, err));
    return d_v ? dfc_check_same_shape(x_start, d_v, op, "x_start", "d_v", err) : DFC_OK;
}

#include "losses.h"

#include <stdlib.h>

#include "../ops/diffusion_rows.h"

/* ---- training_losses ---- */

static dfc_status check_inputs(const dfc_diffusion *d, const dfc_tensor *x_start, const dfc_tensor *x_t,
                               const dfc_tensor *noise, const int64_t *indices, const dfc_tensor *model_output,
                               const dfc_tensor *d_model_output, dfc_error *err)
{
    const char *op = "training_losses";
    DFC_TRY(dfc_check_ndim(x_start, op, "x_start", 2, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(x_start, x_t, op, "x_start", "x_t", err));
    DFC_TRY(dfc_check_same_shape(x_start, noise, op, "x_start", "noise", err));
    DFC_TRY(
        dfc_model_output_check(op, model_output, x_start, "x_start", d->variance_type == DFC_VAR_LEARNED_RANGE, err));
    if (d_model_output && d_model_output->data)
        DFC_TRY(dfc_check_same_shape(model_output, d_model_output, op, "model_output", "d_model_output", err));
    for (int64_t b = 0; b < x_start->shape[0]; b++)
        if (indices[b] < 0 || indices[b] >= d->num_timesteps)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: timestep index %lld of sample %lld is outside [0, %d)", op,
                            (long long)indices[b], (long long)b, d->num_timesteps);
    return DFC_OK;
}

dfc_status dfc_diffusion_training_losses(const dfc_diffusion *d, dfc_backend *be, dfc_loss_type type,
                                         const dfc_tensor *x_start, const dfc_tensor *x_t, const dfc_tensor *noise,
                                         const int64_t *indices, const dfc_tensor *model_output, const float *weights,
                                         float *loss, float *mse, float *vb, dfc_tensor *d_model_output, dfc_error *err)
{
    const char *op = "training_losses";
    if (type != DFC_LOSS_MSE && type != DFC_LOSS_RESCALED_MSE)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown loss type %d", op, (int)type);
    DFC_TRY(check_inputs(d, x_start, x_t, noise, indices, model_output, d_model_output, err));
    const int learned = d->variance_type == DFC_VAR_LEARNED_RANGE;
    const int want_grad = d_model_output && d_model_output->data;
    const int64_t n = x_start->shape[0], m = dfc_inner_size(x_start, 1);

    /* host: the per-row coefficients and flags; backend memory: per-row weights, vb, eps_hat and v (the model
     * output's halves) and their gradients */
    const size_t tensors = learned ? (size_t)(n * m) * (want_grad ? 4 : 2) : 0;
    const size_t row_doubles = learned ? (size_t)n * 6 : 0;
    double *rows = malloc(row_doubles * sizeof(double) + (size_t)n * sizeof(int) + sizeof(double));
    if (!rows)
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: out of memory", op);
    float *scratch = be->iface->alloc(be, (tensors + (size_t)n * 2) * sizeof(float), err);
    if (!scratch) {
        free(rows);
        return err && err->code ? err->code : DFC_ERR_NOMEM;
    }
    int *decoder_nll = (int *)(rows + row_doubles);
    dfc_tensor dweight = dfc_tensor1(scratch, n), vb_t = dfc_tensor1(scratch + n, n);
    dfc_tensor mse_t = dfc_tensor1(mse, n), eps_hat = *model_output, v = *model_output;
    dfc_tensor d_eps = {0}, d_v = {0};
    dfc_status st = weights ? be->iface->copy_from_host(be, dweight.data, weights, (size_t)n * sizeof(float), err)
                            : be->ops->fill(be, 1.0f, &dweight, err);
    if (st == DFC_OK)
        st = be->iface->zero(be, vb_t.data, (size_t)n * sizeof(float), err);
    if (st == DFC_OK && learned) { /* split the (eps_hat, v) channels */
        eps_hat.data = scratch + 2 * n;
        v.data = eps_hat.data + n * m;
        eps_hat.shape[1] = v.shape[1] = x_start->shape[1];
        dfc_tensor *halves[2] = {&eps_hat, &v};
        st = be->ops->split_channels(be, model_output, halves, 2, err);
        d_eps = eps_hat;
        d_v = v;
        d_eps.data = v.data + n * m;
        d_v.data = d_eps.data + n * m;
    } else {
        d_eps = want_grad ? *d_model_output : d_eps;
    }
    /* target: the noise (ModelMeanType.EPSILON) */
    if (st == DFC_OK)
        st = be->ops->mse_forward(be, &eps_hat, noise, &mse_t, err);
    if (st == DFC_OK && want_grad)
        st = be->ops->mse_backward(be, &dweight, &eps_hat, noise, &d_eps, NULL, err);
    if (st == DFC_OK && learned) {
        double *tables[6] = {d->sqrt_recip_alphas_cumprod, d->sqrt_recipm1_alphas_cumprod,    d->posterior_mean_coef1,
                             d->posterior_mean_coef2,      d->posterior_log_variance_clipped, d->log_betas};
        for (int k = 0; k < 6; k++)
            for (int64_t b = 0; b < n; b++)
                rows[k * n + b] = tables[k][indices[b]];
        for (int64_t b = 0; b < n; b++)
            decoder_nll[b] = indices[b] == 0;
        /* RESCALED_MSE scales vb by num_timesteps / 1000; plain MSE leaves it as is */
        const dfc_vb_coefs c = {
            rows,         rows + n,     rows + 2 * n, rows + 3 * n,
            rows + 4 * n, rows + 5 * n, decoder_nll,  type == DFC_LOSS_RESCALED_MSE ? d->num_timesteps / 1000.0 : 1.0};
        st = be->ops->diffusion_vb_forward(be, model_output, x_start, x_t, &c, &vb_t, err);
        if (st == DFC_OK && want_grad)
            st = be->ops->diffusion_vb_backward(be, &dweight, model_output, x_start, x_t, &c, &d_v, err);
        if (st == DFC_OK && want_grad) {
            const dfc_tensor *parts[2] = {&d_eps, &d_v};
            st = be->ops->concat_channels(be, parts, 2, d_model_output, err);
        }
    }
    if (st == DFC_OK) {
        dfc_tensor loss_t = dfc_tensor1(loss, n);
        st = be->ops->binary_forward(be, DFC_BINARY_ADD, &mse_t, &vb_t, &loss_t, err);
    }
    if (st == DFC_OK && vb)
        st = be->iface->copy(be, vb, vb_t.data, (size_t)n * sizeof(float), err);
    be->iface->free(be, scratch);
    free(rows);
    return st;
}

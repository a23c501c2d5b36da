/* Reference loss kernels: per-sample cross-entropy on logits (one logit: binary) and mean squared error. Sums in
 * double. */
#include <math.h>

#include "ref.h"
#include "net_ops.h"
#include "softmax_row.h"

/* ---- cross-entropy ---- */

/* log(sum_j exp(row_j)) with the row max taken out, so no exp() overflows. */
static double log_sum_exp(const float *row, int64_t k)
{
    float max;
    const double sum = dfc_row_sum_exp(row, k, &max);
    return max + log(sum);
}

/* loss[n] = logsumexp(logits[n]) - logits[n, target[n]]; one logit: -log sigmoid(l_y). */
dfc_status ref_cross_entropy_forward(dfc_backend *be, const dfc_tensor *logits, const int64_t *targets,
                                     dfc_tensor *loss, dfc_error *err)
{
    DFC_TRY(dfc_check_class_loss("cross_entropy", logits, targets, loss, "loss", NULL, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *row = logits->data + i * k;
        if (k == 1)
            loss->data[i] = (float)dfc_neg_log_sigmoid(dfc_target_logit(row, k, targets[i]));
        else
            loss->data[i] = (float)(log_sum_exp(row, k) - row[targets[i]]);
    }
    return DFC_OK;
}

dfc_status ref_cross_entropy_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *logits,
                                      const int64_t *targets, dfc_tensor *dlogits, dfc_error *err)
{
    DFC_TRY(dfc_check_class_loss("cross_entropy_backward", logits, targets, dloss, "dloss", dlogits, err));
    const int64_t n = logits->shape[0], k = logits->shape[1];
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *row = logits->data + i * k;
        float *drow = dlogits->data + i * k;
        if (k == 1) { /* d/dz softplus(-sign z) = -sign sigmoid(-l_y) (= sigmoid(z) - target) */
            const double ly = dfc_target_logit(row, k, targets[i]);
            drow[0] = (float)(dloss->data[i] * (targets[i] == 1 ? -1.0 : 1.0) * dfc_sigmoid(-ly));
            continue;
        }
        const double lse = log_sum_exp(row, k), scale = dloss->data[i];
        for (int64_t j = 0; j < k; j++)
            drow[j] = (float)(scale * (exp((double)row[j] - lse) - (j == targets[i] ? 1.0 : 0.0)));
    }
    return DFC_OK;
}

/* ---- mean squared error ---- */

/* loss[n] = mean over the non-batch dims of (a - b)^2; a 1-D a has one value per sample. */
dfc_status ref_mse_forward(dfc_backend *be, const dfc_tensor *a, const dfc_tensor *b, dfc_tensor *loss, dfc_error *err)
{
    const char *op = "mse";
    DFC_TRY(dfc_check_mse(op, a, b, err));
    const int64_t n = a->shape[0], m = dfc_inner_size(a, 1);
    DFC_TRY(dfc_check_shape(loss, op, "loss", 1, &n, err));
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *ar = a->data + i * m, *br = b->data + i * m;
        double sum = 0.0;
        for (int64_t j = 0; j < m; j++) {
            const double d = (double)ar[j] - br[j];
            sum += d * d;
        }
        loss->data[i] = (float)(sum / (double)m);
    }
    return DFC_OK;
}

/* da = dloss[n] 2 (a - b) / M, db = -da. */
dfc_status ref_mse_backward(dfc_backend *be, const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b,
                            dfc_tensor *da, dfc_tensor *db, dfc_error *err)
{
    DFC_TRY(dfc_check_mse_backward(dloss, a, b, da, db, err));
    const int64_t n = a->shape[0], m = dfc_inner_size(a, 1);
    float *das = da && da->data ? da->data : NULL, *dbs = db && db->data ? db->data : NULL;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const double scale = 2.0 * dloss->data[i] / (double)m;
        for (int64_t j = i * m; j < (i + 1) * m; j++) {
            const double g = scale * ((double)a->data[j] - b->data[j]);
            if (das)
                das[j] = (float)g;
            if (dbs)
                dbs[j] = (float)-g;
        }
    }
    return DFC_OK;
}

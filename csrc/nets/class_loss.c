#include "class_loss.h"

#include <math.h>
#include <string.h>

/* -log sigmoid(v) = softplus(-v), without overflow for either sign. */
static double neg_log_sigmoid(double v) { return fmax(-v, 0.0) + log1p(exp(-fabs(v))); }

static double sigmoid(double v) { return v >= 0 ? 1.0 / (1.0 + exp(-v)) : exp(v) / (1.0 + exp(v)); }

/* One sample: its loss, and its row of dlogits when d is not NULL. */
static double sample_loss(dfc_class_loss_kind kind, const float *z, int64_t c, int64_t y, float *d)
{
    if (c == 1) {
        double sign = y == 1 ? 1.0 : -1.0, ly = sign * z[0];
        if (kind == DFC_CLASS_LOSS_LOGIT) {
            if (d)
                d[0] = (float)-sign;
            return -ly;
        }
        if (d)
            d[0] = (float)(-sign * sigmoid(-ly)); /* d/dz softplus(-sign z) */
        return neg_log_sigmoid(ly);
    }
    if (kind == DFC_CLASS_LOSS_LOGIT) {
        if (d)
            memset(d, 0, (size_t)c * sizeof(float));
        if (c == 2) { /* -(z_y - z_other) */
            if (d) {
                d[y] = -1.0f;
                d[1 - y] = 1.0f;
            }
            return -((double)z[y] - z[1 - y]);
        }
        if (d)
            d[y] = -1.0f;
        return -(double)z[y];
    }
    double m = z[0], sum = 0.0;
    for (int64_t k = 1; k < c; k++)
        m = fmax(m, z[k]);
    for (int64_t k = 0; k < c; k++)
        sum += exp(z[k] - m);
    double lse = m + log(sum);
    if (d)
        for (int64_t k = 0; k < c; k++)
            d[k] = (float)(exp(z[k] - lse) - (k == y ? 1.0 : 0.0));
    return lse - z[y];
}

double dfc_class_probability(const float *z, int64_t c, int64_t y)
{
    if (c == 1)
        return sigmoid(y == 1 ? (double)z[0] : -(double)z[0]); /* 1 - sigmoid(v) = sigmoid(-v) */
    double m = z[0], sum = 0.0;
    for (int64_t k = 1; k < c; k++)
        m = fmax(m, z[k]);
    for (int64_t k = 0; k < c; k++)
        sum += exp((double)z[k] - m);
    return exp((double)z[y] - m) / sum;
}

int64_t dfc_predicted_class(const float *z, int64_t c)
{
    if (c == 1)
        return z[0] > 0.0f;
    int64_t best = 0;
    for (int64_t k = 1; k < c; k++)
        if (z[k] > z[best])
            best = k;
    return best;
}

dfc_status dfc_class_loss(dfc_class_loss_kind kind, const dfc_tensor *logits, const int64_t *targets,
                          dfc_tensor *loss, dfc_tensor *dlogits, dfc_error *err)
{
    const char *op = "classification_loss";
    if (kind != DFC_CLASS_LOSS_CE && kind != DFC_CLASS_LOSS_LOGIT)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown kind %d", op, (int)kind);
    DFC_TRY(dfc_check_ndim(logits, op, "logits", 2, 2, err));
    int64_t n = logits->shape[0], c = logits->shape[1];
    if (c < 1)
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: logits have no classes", op);
    int64_t loss_shape[1] = {n};
    if (loss)
        DFC_TRY(dfc_check_shape(loss, op, "loss", 1, loss_shape, err));
    if (dlogits)
        DFC_TRY(dfc_check_same_shape(dlogits, logits, op, "dlogits", "logits", err));
    int64_t classes = c == 1 ? 2 : c;
    for (int64_t i = 0; i < n; i++)
        if (targets[i] < 0 || targets[i] >= classes)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: targets[%lld] = %lld is not a class of %lld logits (0..%lld)", op,
                            (long long)i, (long long)targets[i], (long long)c, (long long)(classes - 1));
    for (int64_t i = 0; i < n; i++) {
        double l = sample_loss(kind, logits->data + i * c, c, targets[i], dlogits ? dlogits->data + i * c : NULL);
        if (loss)
            loss->data[i] = (float)l;
    }
    return DFC_OK;
}

#include "class_loss.h"

dfc_status dfc_classification_loss(dfc_backend *be, dfc_class_loss_kind kind, const dfc_tensor *logits,
                                   const int64_t *targets, dfc_tensor *loss, dfc_tensor *dlogits, dfc_error *err)
{
    const char *op = "classification_loss";
    if (kind != DFC_CLASS_LOSS_CE && kind != DFC_CLASS_LOSS_LOGIT)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: unknown kind %d", op, (int)kind);
    if (!loss)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: loss is required", op);
    /* d sum(loss) / dloss = 1: loss holds the ones for the backward until the forward overwrites it */
    if (dlogits) {
        DFC_TRY(be->ops->fill(be, 1.0f, loss, err));
        if (kind == DFC_CLASS_LOSS_CE)
            DFC_TRY(be->ops->cross_entropy_backward(be, loss, logits, targets, dlogits, err));
        else
            DFC_TRY(be->ops->logit_loss_backward(be, loss, logits, targets, dlogits, err));
    }
    if (kind == DFC_CLASS_LOSS_CE)
        return be->ops->cross_entropy_forward(be, logits, targets, loss, err);
    return be->ops->logit_loss_forward(be, logits, targets, loss, err);
}

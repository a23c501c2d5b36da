/* The argument checks of the loss ops (net_ops.h): mse, binary cross-entropy with logits and the normalised feature
 * distance, shared by every backend's kernels; a file of its own so the CUDA plugin links them without the reference
 * kernels. */
#include "net_ops.h"

dfc_status dfc_check_mse(const char *op, const dfc_tensor *a, const dfc_tensor *b, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 1, DFC_MAX_DIMS, err));
    return dfc_check_same_shape(a, b, op, "a", "b", err);
}

dfc_status dfc_check_mse_backward(const dfc_tensor *dloss, const dfc_tensor *a, const dfc_tensor *b,
                                  const dfc_tensor *da, const dfc_tensor *db, dfc_error *err)
{
    const char *op = "mse_backward";
    DFC_TRY(dfc_check_mse(op, a, b, err));
    DFC_TRY(dfc_check_shape(dloss, op, "dloss", 1, a->shape, err));
    if (da && da->data)
        DFC_TRY(dfc_check_same_shape(a, da, op, "a", "da", err));
    if (db && db->data)
        DFC_TRY(dfc_check_same_shape(a, db, op, "a", "db", err));
    return DFC_OK;
}

dfc_status dfc_check_bce(const char *op, const dfc_tensor *logits, const dfc_tensor *targets, const dfc_tensor *per_row,
                         const char *per_row_name, const dfc_tensor *dlogits, dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(logits, op, "logits", 1, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(logits, targets, op, "logits", "targets", err));
    DFC_TRY(dfc_check_shape(per_row, op, per_row_name, 1, logits->shape, err));
    return dlogits ? dfc_check_same_shape(logits, dlogits, op, "logits", "dlogits", err) : DFC_OK;
}

dfc_status dfc_check_normalized_distance(const char *op, const dfc_tensor *a, const dfc_tensor *b,
                                         const dfc_tensor *per_row, const char *per_row_name, const dfc_tensor *da,
                                         dfc_error *err)
{
    DFC_TRY(dfc_check_ndim(a, op, "a", 2, DFC_MAX_DIMS, err));
    DFC_TRY(dfc_check_same_shape(a, b, op, "a", "b", err));
    DFC_TRY(dfc_check_shape(per_row, op, per_row_name, 1, a->shape, err));
    return da ? dfc_check_same_shape(a, da, op, "a", "da", err) : DFC_OK;
}

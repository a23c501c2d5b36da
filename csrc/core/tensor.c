#include "tensor.h"

#include <stdio.h>

const char *dfc_shape_str(const dfc_tensor *t, char *buf, int len)
{
    int pos = snprintf(buf, (size_t)len, "(");
    for (int i = 0; i < t->ndim && pos < len; i++)
        pos += snprintf(buf + pos, (size_t)(len - pos), i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (pos < len)
        snprintf(buf + pos, (size_t)(len - pos), t->ndim == 1 ? ",)" : ")");
    return buf;
}

dfc_status dfc_check_ndim(const dfc_tensor *t, const char *op, const char *name, int ndim_min, int ndim_max,
                          dfc_error *err)
{
    if (!t || !t->data)
        return dfc_fail(err, DFC_ERR_VALUE, "%s: %s is missing", op, name);
    if (t->ndim < ndim_min || t->ndim > ndim_max) {
        char s[96];
        if (ndim_min == ndim_max)
            return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s must have %d dimensions, got %d with shape %s", op, name,
                            ndim_min, t->ndim, dfc_shape_str(t, s, sizeof s));
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s must have %d to %d dimensions, got %d with shape %s", op, name,
                        ndim_min, ndim_max, t->ndim, dfc_shape_str(t, s, sizeof s));
    }
    return DFC_OK;
}

dfc_status dfc_check_shape(const dfc_tensor *t, const char *op, const char *name, int ndim, const int64_t *shape,
                           dfc_error *err)
{
    dfc_tensor want = {0, ndim, {0, 0, 0, 0}};
    for (int i = 0; i < ndim; i++)
        want.shape[i] = shape[i];
    int ok = t && t->data && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[96], exp[96];
        if (!t || !t->data)
            return dfc_fail(err, DFC_ERR_VALUE, "%s: %s is missing, expected shape %s", op, name,
                            dfc_shape_str(&want, exp, sizeof exp));
        return dfc_fail(err, DFC_ERR_SHAPE, "%s: %s has shape %s, expected %s", op, name,
                        dfc_shape_str(t, got, sizeof got), dfc_shape_str(&want, exp, sizeof exp));
    }
    return DFC_OK;
}

dfc_status dfc_check_same_shape(const dfc_tensor *a, const dfc_tensor *b, const char *op, const char *name_a,
                                const char *name_b, dfc_error *err)
{
    (void)name_a;
    DFC_TRY(dfc_check_ndim(a, op, name_a, 1, DFC_MAX_DIMS, err));
    return dfc_check_shape(b, op, name_b, a->ndim, a->shape, err);
}

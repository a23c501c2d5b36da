/* A tensor is a view: float32 data owned elsewhere (a numpy array, an arena), dense row-major, up to 4 dims.
 * Image tensors are NCHW; sequences are (N, C, T); matrices are (rows, cols). */
#ifndef DIFFICE_TENSOR_H
#define DIFFICE_TENSOR_H

#include <stdint.h>

#include "error.h"

#define DFC_MAX_DIMS 4

typedef struct dfc_tensor {
    float *data;
    int ndim;
    int64_t shape[DFC_MAX_DIMS];
} dfc_tensor;

static inline int64_t dfc_numel(const dfc_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

static inline dfc_tensor dfc_tensor1(float *data, int64_t d0)
{
    dfc_tensor t = {data, 1, {d0, 1, 1, 1}};
    return t;
}
static inline dfc_tensor dfc_tensor3(float *data, int64_t d0, int64_t d1, int64_t d2)
{
    dfc_tensor t = {data, 3, {d0, d1, d2, 1}};
    return t;
}
static inline dfc_tensor dfc_tensor4(float *data, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    dfc_tensor t = {data, 4, {d0, d1, d2, d3}};
    return t;
}

/* Product of dims [from, ndim): the "spatial" size of an (N, C, ...) tensor when from = 2. */
static inline int64_t dfc_inner_size(const dfc_tensor *t, int from)
{
    int64_t n = 1;
    for (int i = from; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* Formats a shape as "(3, 8, 13, 19)" into buf; returns buf. */
const char *dfc_shape_str(const dfc_tensor *t, char *buf, int len);

/* Shape checks that fail with a message naming the tensor: "conv2d: weight has shape (..), expected (..)". */
dfc_status dfc_check_ndim(const dfc_tensor *t, const char *op, const char *name, int ndim_min, int ndim_max,
                          dfc_error *err);
dfc_status dfc_check_shape(const dfc_tensor *t, const char *op, const char *name, int ndim, const int64_t *shape,
                           dfc_error *err);
dfc_status dfc_check_same_shape(const dfc_tensor *a, const dfc_tensor *b, const char *op, const char *name_a,
                                const char *name_b, dfc_error *err);

#endif

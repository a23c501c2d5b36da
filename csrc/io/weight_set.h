/* The weights collection: an ordered set of named float32 tensors, and the helpers every reader shares (element
 * types and their conversion to float32, little-endian field reads, shape arithmetic, UTF-8 checks, the
 * whole-file reader). The bottom of csrc/io: it knows no file format and includes nothing else from csrc/io.
 *
 * Every tensor is named by its PyTorch module path ("input_blocks.0.0.weight"), has 0 to DFC_MAX_DIMS dims and is
 * stored dense row-major as float32 whatever the file held (float16/bfloat16/float64/integers are converted on
 * load). The collection owns all its memory (names, data, metadata) and dfc_weights_destroy frees it at once. */
#ifndef DIFFICE_IO_WEIGHT_SET_H
#define DIFFICE_IO_WEIGHT_SET_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../core/error.h"
#include "../core/tensor.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "diffice's file readers assume a little-endian host"
#endif

/* ---- the collection ---- */

typedef struct dfc_weight {
    char *name;                  /* UTF-8, NUL-terminated */
    int ndim;                    /* 0 (a scalar) to DFC_MAX_DIMS */
    int64_t shape[DFC_MAX_DIMS]; /* dims past ndim are 1 */
    int64_t numel;               /* product of shape; may be 0 */
    float *data;                 /* numel floats, dense row-major (malloc'd); NULL once taken */
} dfc_weight;

typedef struct dfc_weights {
    dfc_weight *items; /* in file order */
    size_t count, capacity;
    size_t *slots;     /* open-addressing hash of names: item index + 1, 0 = empty */
    size_t slot_count; /* a power of two, at least 2 * count */
    char **meta_keys;  /* safetensors "__metadata__", in file order */
    char **meta_values;
    size_t meta_count, meta_capacity;
} dfc_weights;

dfc_status dfc_weights_create(dfc_weights **out, dfc_error *err);
void dfc_weights_destroy(dfc_weights *w);

/* Appends a tensor and returns its uninitialised data in *data. Fails (DFC_ERR_FORMAT, naming the tensor) on more
 * than DFC_MAX_DIMS dims, a negative dim, a name that is not UTF-8 or holds a NUL, or a duplicate name. */
dfc_status dfc_weights_add(dfc_weights *w, const char *name, size_t name_len, int ndim, const int64_t *shape,
                           float **data, dfc_error *err);

/* NULL when absent. */
const dfc_weight *dfc_weights_find(const dfc_weights *w, const char *name);

dfc_status dfc_weights_set_metadata(dfc_weights *w, const char *key, size_t key_len, const char *value,
                                    size_t value_len, dfc_error *err);

/* Hands item `index`'s data to the caller, who frees it with free(); the item keeps its name and shape. */
float *dfc_weights_take_data(dfc_weights *w, size_t index);

/* ---- element types (convert.c) ---- */

typedef enum {
    DFC_DT_F32,
    DFC_DT_F16,
    DFC_DT_BF16,
    DFC_DT_F64,
    DFC_DT_I64,
    DFC_DT_I32,
    DFC_DT_I16,
    DFC_DT_I8,
    DFC_DT_U8,
    DFC_DT_BOOL,
} dfc_dtype;

size_t dfc_dtype_size(dfc_dtype dt);
const char *dfc_dtype_name(dfc_dtype dt); /* "float32", "bfloat16", ... */

/* dst[i] = float(src[i]) for n elements read from possibly unaligned little-endian bytes. float16 and bfloat16
 * convert exactly (subnormals, infinities, NaN payloads); float64 and integers round to nearest. */
void dfc_convert_to_f32(float *dst, const uint8_t *src, dfc_dtype dt, int64_t n);

/* Dense row-major float32 copy of a strided view: element (i0, ..) is read at element index
 * sum(i_k * strides[k]) of src. The caller has checked every index lies in src. */
void dfc_gather_to_f32(float *dst, const uint8_t *src, dfc_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *strides);

/* ---- little-endian fields from a byte buffer (any alignment) ---- */

static inline uint16_t dfc_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t dfc_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t dfc_rd64(const uint8_t *p) { return (uint64_t)dfc_rd32(p) | ((uint64_t)dfc_rd32(p + 4) << 32); }

/* ---- shapes, names, files ---- */

/* Product of n non-negative dims into *out; 0 when it would exceed 2^62 (no tensor in a file is that big). */
int dfc_checked_numel(int n, const int64_t *shape, int64_t *out);

/* "(5, 7)" / "()" / "(3,)" into buf. */
const char *dfc_dims_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* 1 when s[0..n) is valid UTF-8 with no NUL. */
int dfc_utf8_valid(const char *s, size_t n);

/* Reads a whole regular file into a new buffer (free() it). DFC_ERR_IO for a missing file or a directory. */
dfc_status dfc_read_file(const char *path, uint8_t **data, size_t *size, dfc_error *err);

#endif

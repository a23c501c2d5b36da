/* Shared by the readers in csrc/io: element types and conversion to float32, little-endian field reads, the
 * whole-file reader, and the zip reader (npz and torch checkpoints are both zips). Not part of the public API. */
#ifndef DIFFICE_IO_INTERNAL_H
#define DIFFICE_IO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "weights.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "diffice's file readers assume a little-endian host"
#endif

/* ---- element types ---- */

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

/* Product of n non-negative dims into *out; 0 when it would exceed 2^62 (no tensor in a file is that big). */
int dfc_checked_numel(int n, const int64_t *shape, int64_t *out);

/* "(5, 7)" / "()" / "(3,)" into buf. */
const char *dfc_dims_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* 1 when s[0..n) is valid UTF-8 with no NUL. */
int dfc_utf8_valid(const char *s, size_t n);

/* Reads a whole regular file into a new buffer (free() it). DFC_ERR_IO for a missing file or a directory. */
dfc_status dfc_read_file(const char *path, uint8_t **data, size_t *size, dfc_error *err);

/* ---- zip (stored and deflate members, ZIP64) ---- */

typedef struct dfc_zip_entry {
    char *name;           /* NUL-terminated (names with a NUL byte are refused) */
    uint64_t data_offset; /* first byte of the member's (compressed) data in the archive */
    uint64_t compressed_size;
    uint64_t size;
    uint32_t crc32;
    int method; /* 0 stored, 8 deflate */
} dfc_zip_entry;

typedef struct dfc_zip {
    const uint8_t *data; /* the whole archive, borrowed */
    size_t size;
    dfc_zip_entry *entries; /* central-directory order */
    size_t count;
} dfc_zip;

/* 1 when data starts like a zip archive (a local header, or the end record of an empty archive). */
int dfc_zip_magic(const uint8_t *data, size_t size);

/* Reads the central directory; every entry is checked to lie inside the archive. Duplicate names, encrypted
 * members and methods other than stored/deflate are refused. */
dfc_status dfc_zip_open(dfc_zip *zip, const uint8_t *data, size_t size, dfc_error *err);
void dfc_zip_close(dfc_zip *zip);
const dfc_zip_entry *dfc_zip_find(const dfc_zip *zip, const char *name);

/* A member's bytes with the CRC checked: stored members point into the archive (*owned = NULL), deflated ones
 * are inflated into *owned (free() it), which *bytes then points to. */
dfc_status dfc_zip_read(const dfc_zip *zip, const dfc_zip_entry *entry, const uint8_t **bytes, uint8_t **owned,
                        dfc_error *err);

/* ---- format parsers over an in-memory file, filling an empty collection; messages omit the path ---- */

dfc_status dfc_safetensors_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err);
dfc_status dfc_npz_parse(const dfc_zip *zip, dfc_weights *w, dfc_error *err);
/* archive: the <archive> prefix of <archive>/data.pkl. */
dfc_status dfc_torch_zip_parse(const dfc_zip *zip, const char *archive, dfc_weights *w, dfc_error *err);
dfc_status dfc_torch_legacy_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err);

/* The <archive> of a member named <archive>/data.pkl (archive has no '/'), copied into buf; 0 if none. */
int dfc_torch_zip_archive(const dfc_zip *zip, char *buf, size_t len);

#endif

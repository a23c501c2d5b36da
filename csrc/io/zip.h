/* A read-only zip reader (stored and deflate members, ZIP64) over an archive in memory: npz files and PyTorch
 * checkpoints are both zips. Knows no weight format; depends only on weight_set.h (field reads, errors). */
#ifndef DIFFICE_IO_ZIP_H
#define DIFFICE_IO_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "weight_set.h"

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

#endif

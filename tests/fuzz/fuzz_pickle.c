/* libFuzzer harness: the restricted unpickler on its own. The input is the data.pkl of a zip checkpoint; the
 * harness wraps it in an in-memory archive "archive/" with stored storages data/0 .. data/3 (64 bytes each,
 * CRCs right), so mutations reach the unpickler instead of dying at the zip's CRC check. */
#include <stdio.h>
#include <zlib.h>

#include "fuzz_common.h"

#define N_STORAGES 4
#define STORAGE_BYTES 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t total = size + N_STORAGES * STORAGE_BYTES;
    uint8_t *buf = malloc(total ? total : 1);
    if (!buf)
        return 0;
    if (size)
        memcpy(buf, data, size);
    for (size_t i = 0; i < N_STORAGES * STORAGE_BYTES; i++)
        buf[size + i] = (uint8_t)(i * 37u + 11u);
    char names[1 + N_STORAGES][32];
    dfc_zip_entry entries[1 + N_STORAGES];
    memset(entries, 0, sizeof entries);
    strcpy(names[0], "archive/data.pkl");
    entries[0].name = names[0];
    entries[0].data_offset = 0;
    entries[0].size = entries[0].compressed_size = size;
    entries[0].crc32 = (uint32_t)crc32(0L, buf, (uInt)size);
    for (int k = 0; k < N_STORAGES; k++) {
        dfc_zip_entry *e = &entries[1 + k];
        snprintf(names[1 + k], sizeof names[1 + k], "archive/data/%d", k);
        e->name = names[1 + k];
        e->data_offset = size + (size_t)k * STORAGE_BYTES;
        e->size = e->compressed_size = STORAGE_BYTES;
        e->crc32 = (uint32_t)crc32(0L, buf + e->data_offset, STORAGE_BYTES);
    }
    dfc_zip zip = {.data = buf, .size = total, .entries = entries, .count = 1 + N_STORAGES};
    dfc_error err;
    dfc_error_clear(&err);
    dfc_weights *w = NULL;
    if (dfc_weights_create(&w, &err) != DFC_OK)
        abort();
    dfc_status st = dfc_torch_zip_parse(&zip, "archive", w, &err);
    fuzz_check_result(st, w, &err);
    dfc_weights_destroy(w);
    free(buf);
    return 0;
}

/* The path-level loaders: read a file, pick its format from the first bytes (or take the one asked for), hand the
 * bytes to that format's parser, and prefix any error with the path. The top of csrc/io: it calls the parsers and
 * the collection; nothing in csrc/io calls it. */
#include <stdlib.h>

#include "npz.h"
#include "safetensors.h"
#include "torch_pickle.h"
#include "weight_set.h"
#include "weights.h"
#include "zip.h"

/* Replaces every byte that does not start a valid UTF-8 sequence with '?': messages quote names and paths from
 * files, and Python decodes messages as UTF-8. */
static void sanitize_utf8(char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80                 ? 1
                     : c >= 0xc2 && c <= 0xdf ? 2
                     : c >= 0xe0 && c <= 0xef ? 3
                     : c >= 0xf0 && c <= 0xf4 ? 4
                                              : 0;
        if (len == 0 || len > n - i || !dfc_utf8_valid(s + i, len)) {
            s[i++] = '?';
            continue;
        }
        i += len;
    }
}

/* ---- loaders ---- */

typedef enum { FORMAT_AUTO, FORMAT_SAFETENSORS, FORMAT_NPZ, FORMAT_TORCH } file_format;

static int has_npy_member(const dfc_zip *zip)
{
    for (size_t i = 0; i < zip->count; i++) {
        size_t n = strlen(zip->entries[i].name);
        if (n >= 4 && strcmp(zip->entries[i].name + n - 4, ".npy") == 0)
            return 1;
    }
    return 0;
}

static dfc_status parse_zip(const uint8_t *data, size_t size, file_format format, dfc_weights *w, dfc_error *err)
{
    dfc_zip zip;
    DFC_TRY(dfc_zip_open(&zip, data, size, err));
    char archive[256];
    dfc_status st;
    int is_torch = dfc_torch_zip_archive(&zip, archive, sizeof archive);
    if (format == FORMAT_TORCH || (format == FORMAT_AUTO && is_torch)) {
        if (!is_torch)
            st = dfc_fail(err, DFC_ERR_FORMAT,
                          "zip archive has no <archive>/data.pkl member, so it is not a "
                          "PyTorch checkpoint");
        else
            st = dfc_torch_zip_parse(&zip, archive, w, err);
    } else if (format == FORMAT_NPZ || has_npy_member(&zip)) {
        st = dfc_npz_parse(&zip, w, err);
    } else {
        st = dfc_fail(err, DFC_ERR_FORMAT,
                      "zip archive holds neither <archive>/data.pkl (a PyTorch checkpoint) "
                      "nor .npy arrays (an npz)");
    }
    dfc_zip_close(&zip);
    return st;
}

static dfc_status parse_file(const uint8_t *data, size_t size, file_format format, dfc_weights *w, dfc_error *err)
{
    if (size == 0)
        return dfc_fail(err, DFC_ERR_FORMAT, "file is empty");
    int zip = dfc_zip_magic(data, size);
    /* PROTO opcode; a safetensors header length can also start with byte 0x80, but its JSON starts at byte 8 */
    int pickle = data[0] == 0x80 && !(size > 8 && data[8] == '{');
    switch (format) {
    case FORMAT_SAFETENSORS: return dfc_safetensors_parse(data, size, w, err);
    case FORMAT_NPZ:
        if (!zip)
            return dfc_fail(err, DFC_ERR_FORMAT, "not a zip archive (an .npz is a zip of .npy files)");
        return parse_zip(data, size, format, w, err);
    case FORMAT_TORCH:
        if (zip)
            return parse_zip(data, size, format, w, err);
        if (pickle)
            return dfc_torch_legacy_parse(data, size, w, err);
        return dfc_fail(err, DFC_ERR_FORMAT, "not a PyTorch checkpoint (neither a zip archive nor a pickle)");
    case FORMAT_AUTO:
        if (zip)
            return parse_zip(data, size, format, w, err);
        if (pickle)
            return dfc_torch_legacy_parse(data, size, w, err);
        return dfc_safetensors_parse(data, size, w, err);
    }
    return dfc_fail(err, DFC_ERR_VALUE, "unknown format %d", (int)format);
}

static dfc_status load(const char *path, file_format format, dfc_weights **out, dfc_error *err)
{
    *out = NULL;
    uint8_t *data = NULL;
    size_t size = 0;
    dfc_weights *w = NULL;
    dfc_status st = dfc_read_file(path, &data, &size, err);
    if (st == DFC_OK) {
        st = dfc_weights_create(&w, err);
        if (st == DFC_OK)
            st = parse_file(data, size, format, w, err);
        if (st != DFC_OK)
            dfc_error_prefix(err, "%s: ", path);
    }
    free(data);
    if (st != DFC_OK) {
        dfc_weights_destroy(w);
        if (err)
            sanitize_utf8(err->message);
        return st;
    }
    *out = w;
    return DFC_OK;
}

dfc_status dfc_load_weights(const char *path, dfc_weights **out, dfc_error *err)
{
    return load(path, FORMAT_AUTO, out, err);
}

dfc_status dfc_load_safetensors(const char *path, dfc_weights **out, dfc_error *err)
{
    return load(path, FORMAT_SAFETENSORS, out, err);
}

dfc_status dfc_load_npz(const char *path, dfc_weights **out, dfc_error *err)
{
    return load(path, FORMAT_NPZ, out, err);
}

dfc_status dfc_load_torch(const char *path, dfc_weights **out, dfc_error *err)
{
    return load(path, FORMAT_TORCH, out, err);
}

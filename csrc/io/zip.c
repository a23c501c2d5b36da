/* A read-only zip reader for npz files and PyTorch checkpoints: the central directory (with ZIP64), stored and
 * deflate members, CRC-32 checked. Everything is read from the central directory; local headers only give where
 * a member's data starts. Every offset and size is checked against the archive before use. */
#include <limits.h>
#include <stdlib.h>
#include <zlib.h>

#include "zip.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_END 0x06054b50u
#define SIG_END64 0x06064b50u
#define SIG_END64_LOCATOR 0x07064b50u

#define END_SIZE 22
#define END64_SIZE 56
#define LOCATOR_SIZE 20
#define CENTRAL_SIZE 46
#define LOCAL_SIZE 30

/* Deflate cannot compress better than about 1032:1; a member claiming more is lying about its size. */
#define DEFLATE_MAX_RATIO 1032

int dfc_zip_magic(const uint8_t *data, size_t size)
{
    return size >= 4 && (dfc_rd32(data) == SIG_LOCAL || dfc_rd32(data) == SIG_END);
}

void dfc_zip_close(dfc_zip *zip)
{
    for (size_t i = 0; i < zip->count; i++)
        free(zip->entries[i].name);
    free(zip->entries);
    memset(zip, 0, sizeof *zip);
}

/* The end-of-central-directory record: the last signature whose comment runs exactly to the end of the file. */
static int find_end_record(const uint8_t *data, size_t size, size_t *pos)
{
    if (size < END_SIZE)
        return 0;
    size_t lowest = size - END_SIZE > 0xffff ? size - END_SIZE - 0xffff : 0;
    for (size_t p = size - END_SIZE + 1; p-- > lowest;) {
        if (dfc_rd32(data + p) == SIG_END && p + END_SIZE + dfc_rd16(data + p + 20) == size) {
            *pos = p;
            return 1;
        }
    }
    return 0;
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sizes/offset of 0xffffffff live in the ZIP64 extra field (id 1), in this order, 8 bytes each. */
static dfc_status read_zip64_extra(const uint8_t *extra, size_t len, dfc_zip_entry *e, uint64_t *local_offset,
                                   dfc_error *err)
{
    int need_size = e->size == 0xffffffffu, need_csize = e->compressed_size == 0xffffffffu,
        need_offset = *local_offset == 0xffffffffu;
    if (!need_size && !need_csize && !need_offset)
        return DFC_OK;
    size_t p = 0;
    while (p + 4 <= len) {
        uint16_t id = dfc_rd16(extra + p), n = dfc_rd16(extra + p + 2);
        if (p + 4 + n > len)
            break;
        if (id == 1) {
            const uint8_t *f = extra + p + 4;
            size_t q = 0, want = 8u * (size_t)(need_size + need_csize + need_offset);
            if (n < want)
                break;
            if (need_size) {
                e->size = dfc_rd64(f + q);
                q += 8;
            }
            if (need_csize) {
                e->compressed_size = dfc_rd64(f + q);
                q += 8;
            }
            if (need_offset)
                *local_offset = dfc_rd64(f + q);
            return DFC_OK;
        }
        p += 4 + (size_t)n;
    }
    return dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' lacks the ZIP64 extra field its sizes need", e->name);
}

dfc_status dfc_zip_open(dfc_zip *zip, const uint8_t *data, size_t size, dfc_error *err)
{
    memset(zip, 0, sizeof *zip);
    zip->data = data;
    zip->size = size;
    size_t end;
    if (!find_end_record(data, size, &end))
        return dfc_fail(err, DFC_ERR_FORMAT, "zip archive has no end-of-central-directory record (truncated?)");
    const uint8_t *r = data + end;
    uint64_t disk = dfc_rd16(r + 4), cd_disk = dfc_rd16(r + 6);
    uint64_t count = dfc_rd16(r + 10), cd_size = dfc_rd32(r + 12), cd_offset = dfc_rd32(r + 16);
    uint64_t cd_limit = end; /* the central directory must end before the end record(s) */
    if (end >= LOCATOR_SIZE && dfc_rd32(data + end - LOCATOR_SIZE) == SIG_END64_LOCATOR) {
        uint64_t off64 = dfc_rd64(data + end - LOCATOR_SIZE + 8);
        if (off64 > end - LOCATOR_SIZE || end - LOCATOR_SIZE - off64 < END64_SIZE ||
            dfc_rd32(data + off64) != SIG_END64)
            return dfc_fail(err, DFC_ERR_FORMAT, "zip archive has a broken ZIP64 end record");
        const uint8_t *r64 = data + off64;
        disk = dfc_rd32(r64 + 16);
        cd_disk = dfc_rd32(r64 + 20);
        count = dfc_rd64(r64 + 32);
        cd_size = dfc_rd64(r64 + 40);
        cd_offset = dfc_rd64(r64 + 48);
        cd_limit = off64;
    }
    if (disk != 0 || cd_disk != 0)
        return dfc_fail(err, DFC_ERR_FORMAT, "multi-disk zip archives are not supported");
    if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
        return dfc_fail(err, DFC_ERR_FORMAT, "zip central directory (offset %llu, %llu bytes) lies outside the archive",
                        (unsigned long long)cd_offset, (unsigned long long)cd_size);
    if (count > cd_size / CENTRAL_SIZE)
        return dfc_fail(err, DFC_ERR_FORMAT, "zip archive claims %llu members in a %llu-byte central directory",
                        (unsigned long long)count, (unsigned long long)cd_size);
    zip->entries = calloc(count ? count : 1, sizeof *zip->entries);
    if (!zip->entries)
        return dfc_fail(err, DFC_ERR_NOMEM, "zip: out of memory");

    dfc_status st = DFC_OK;
    const uint8_t *cd = data + cd_offset;
    size_t p = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (p + CENTRAL_SIZE > cd_size || dfc_rd32(cd + p) != SIG_CENTRAL) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip central directory entry %llu is malformed", (unsigned long long)i);
            goto fail;
        }
        const uint8_t *c = cd + p;
        uint16_t flags = dfc_rd16(c + 8), method = dfc_rd16(c + 10);
        size_t name_len = dfc_rd16(c + 28), extra_len = dfc_rd16(c + 30), comment_len = dfc_rd16(c + 32);
        if (p + CENTRAL_SIZE + name_len + extra_len + comment_len > cd_size) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip central directory entry %llu runs past the directory",
                          (unsigned long long)i);
            goto fail;
        }
        dfc_zip_entry *e = &zip->entries[i];
        zip->count = (size_t)i + 1;
        e->name = malloc(name_len + 1);
        if (!e->name) {
            st = dfc_fail(err, DFC_ERR_NOMEM, "zip: out of memory");
            goto fail;
        }
        memcpy(e->name, c + CENTRAL_SIZE, name_len);
        e->name[name_len] = '\0';
        if (memchr(c + CENTRAL_SIZE, 0, name_len)) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member %llu has a NUL byte in its name", (unsigned long long)i);
            goto fail;
        }
        e->method = method;
        e->crc32 = dfc_rd32(c + 16);
        e->compressed_size = dfc_rd32(c + 20);
        e->size = dfc_rd32(c + 24);
        uint64_t local = dfc_rd32(c + 42);
        if (flags & 1) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' is encrypted", e->name);
            goto fail;
        }
        if (method != 0 && method != 8) {
            st = dfc_fail(err, DFC_ERR_FORMAT,
                          "zip member '%s' uses compression method %u (only stored and deflate are supported)", e->name,
                          method);
            goto fail;
        }
        st = read_zip64_extra(c + CENTRAL_SIZE + name_len, extra_len, e, &local, err);
        if (st != DFC_OK)
            goto fail;
        /* The local header repeats the name; its own extra field may differ in length. */
        if (local > cd_offset || cd_offset - local < LOCAL_SIZE || dfc_rd32(data + local) != SIG_LOCAL) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' has no local header at offset %llu", e->name,
                          (unsigned long long)local);
            goto fail;
        }
        uint64_t local_name = dfc_rd16(data + local + 26), local_extra = dfc_rd16(data + local + 28);
        e->data_offset = local + LOCAL_SIZE + local_name + local_extra;
        if (e->data_offset > cd_offset || e->compressed_size > cd_offset - e->data_offset) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' (%llu bytes at offset %llu) runs past its data area",
                          e->name, (unsigned long long)e->compressed_size, (unsigned long long)e->data_offset);
            goto fail;
        }
        if (local_name != name_len || memcmp(data + local + LOCAL_SIZE, e->name, name_len) != 0) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s': local header names another file", e->name);
            goto fail;
        }
        if (method == 0 && e->compressed_size != e->size) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' is stored but its sizes differ (%llu vs %llu)", e->name,
                          (unsigned long long)e->compressed_size, (unsigned long long)e->size);
            goto fail;
        }
        p += CENTRAL_SIZE + name_len + extra_len + comment_len;
    }

    if (zip->count > 1) {
        char **names = malloc(zip->count * sizeof *names);
        if (!names) {
            st = dfc_fail(err, DFC_ERR_NOMEM, "zip: out of memory");
            goto fail;
        }
        for (size_t i = 0; i < zip->count; i++)
            names[i] = zip->entries[i].name;
        qsort(names, zip->count, sizeof *names, name_cmp);
        for (size_t i = 1; i < zip->count; i++) {
            if (strcmp(names[i - 1], names[i]) == 0) {
                st = dfc_fail(err, DFC_ERR_FORMAT, "zip archive holds '%s' twice", names[i]);
                break;
            }
        }
        free(names);
        if (st != DFC_OK)
            goto fail;
    }
    return DFC_OK;
fail:
    dfc_zip_close(zip);
    return st;
}

const dfc_zip_entry *dfc_zip_find(const dfc_zip *zip, const char *name)
{
    for (size_t i = 0; i < zip->count; i++)
        if (strcmp(zip->entries[i].name, name) == 0)
            return &zip->entries[i];
    return NULL;
}

/* zlib counts in uInt; feed it at most 1 GiB at a time. */
#define ZLIB_CHUNK ((uint64_t)1 << 30)

static uint32_t crc32_of(const uint8_t *p, uint64_t n)
{
    uLong crc = crc32(0L, Z_NULL, 0);
    while (n > 0) {
        uInt step = (uInt)(n > ZLIB_CHUNK ? ZLIB_CHUNK : n);
        crc = crc32(crc, p, step);
        p += step;
        n -= step;
    }
    return (uint32_t)crc;
}

static dfc_status inflate_member(const dfc_zip_entry *e, const uint8_t *src, uint8_t *dst, dfc_error *err)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) /* raw deflate: zip members have no zlib header */
        return dfc_fail(err, DFC_ERR_NOMEM, "zip: cannot initialise zlib");
    uint64_t in_left = e->compressed_size, out_left = e->size;
    int rc = Z_OK;
    zs.next_in = (Bytef *)src;
    zs.next_out = dst;
    while (rc == Z_OK) {
        if (zs.avail_in == 0 && in_left > 0) {
            zs.avail_in = (uInt)(in_left > ZLIB_CHUNK ? ZLIB_CHUNK : in_left);
            in_left -= zs.avail_in;
        }
        if (zs.avail_out == 0 && out_left > 0) {
            zs.avail_out = (uInt)(out_left > ZLIB_CHUNK ? ZLIB_CHUNK : out_left);
            out_left -= zs.avail_out;
        }
        uInt avail_in = zs.avail_in, avail_out = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        if (rc == Z_BUF_ERROR || (rc == Z_OK && zs.avail_in == avail_in && zs.avail_out == avail_out))
            break; /* no progress possible: input ended early or output is full */
    }
    uint64_t produced = zs.total_out;
    inflateEnd(&zs);
    if (rc != Z_STREAM_END)
        return dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s': deflate data is corrupt or truncated (%s)", e->name,
                        rc == Z_DATA_ERROR    ? "invalid data"
                        : produced >= e->size ? "longer than its stated size"
                                              : "ends early");
    if (produced != e->size)
        return dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' inflates to %llu bytes, its header says %llu", e->name,
                        (unsigned long long)produced, (unsigned long long)e->size);
    return DFC_OK;
}

dfc_status dfc_zip_read(const dfc_zip *zip, const dfc_zip_entry *e, const uint8_t **bytes, uint8_t **owned,
                        dfc_error *err)
{
    *bytes = NULL;
    *owned = NULL;
    const uint8_t *src = zip->data + e->data_offset;
    const uint8_t *out = src;
    uint8_t *buf = NULL;
    if (e->method == 8) {
        if (e->size / DEFLATE_MAX_RATIO > e->compressed_size + 1)
            return dfc_fail(err, DFC_ERR_FORMAT,
                            "zip member '%s' claims %llu bytes from %llu compressed, beyond deflate's limit", e->name,
                            (unsigned long long)e->size, (unsigned long long)e->compressed_size);
        if (e->size > SIZE_MAX - 1 || !(buf = malloc(e->size ? (size_t)e->size : 1)))
            return dfc_fail(err, DFC_ERR_NOMEM, "zip member '%s': out of memory for %llu bytes", e->name,
                            (unsigned long long)e->size);
        dfc_status st = inflate_member(e, src, buf, err);
        if (st != DFC_OK) {
            free(buf);
            return st;
        }
        out = buf;
    }
    uint32_t crc = crc32_of(out, e->size);
    if (crc != e->crc32) {
        free(buf);
        return dfc_fail(err, DFC_ERR_FORMAT, "zip member '%s' fails its CRC-32 check (0x%08x, expected 0x%08x)",
                        e->name, crc, e->crc32);
    }
    *bytes = out;
    *owned = buf;
    return DFC_OK;
}

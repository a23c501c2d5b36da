/* The weights collection (dfc_weights) and the helpers every reader shares: shape arithmetic, UTF-8 checks, the
 * whole-file reader. Knows no file format; the element types and their conversion are in convert.c. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "weight_set.h"

/* ---- the collection ---- */

dfc_status dfc_weights_create(dfc_weights **out, dfc_error *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory");
    return DFC_OK;
}

void dfc_weights_destroy(dfc_weights *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++) {
        free(w->items[i].name);
        free(w->items[i].data);
    }
    for (size_t i = 0; i < w->meta_count; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->items);
    free(w->slots);
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Slot holding `name`, or the empty slot where it would go. */
static size_t find_slot(const dfc_weights *w, const char *name)
{
    size_t mask = w->slot_count - 1;
    size_t s = (size_t)name_hash(name) & mask;
    while (w->slots[s] && strcmp(w->items[w->slots[s] - 1].name, name) != 0)
        s = (s + 1) & mask;
    return s;
}

static dfc_status grow_slots(dfc_weights *w, dfc_error *err)
{
    size_t n = w->slot_count ? w->slot_count * 2 : 16;
    size_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory for the name index");
    free(w->slots);
    w->slots = slots;
    w->slot_count = n;
    for (size_t i = 0; i < w->count; i++)
        w->slots[find_slot(w, w->items[i].name)] = i + 1;
    return DFC_OK;
}

dfc_status dfc_weights_add(dfc_weights *w, const char *name, size_t name_len, int ndim, const int64_t *shape,
                           float **data, dfc_error *err)
{
    *data = NULL;
    if (!dfc_utf8_valid(name, name_len))
        return dfc_fail(err, DFC_ERR_FORMAT, "a tensor name is not valid UTF-8 or contains a NUL byte");
    int shown = name_len > 200 ? 200 : (int)name_len;
    if (ndim < 0 || ndim > DFC_MAX_DIMS)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%.*s' has %d dimensions; at most %d are supported", shown, name,
                        ndim, DFC_MAX_DIMS);
    int64_t numel;
    if (!dfc_checked_numel(ndim, shape, &numel)) {
        char dims[160];
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%.*s' has an invalid shape %s", shown, name,
                        dfc_dims_str(ndim, shape, dims, sizeof dims));
    }
    if ((w->count + 1) * 2 > w->slot_count)
        DFC_TRY(grow_slots(w, err));
    if (w->count == w->capacity) {
        size_t cap = w->capacity ? w->capacity * 2 : 64;
        dfc_weight *items = realloc(w->items, cap * sizeof *items);
        if (!items)
            return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory");
        w->items = items;
        w->capacity = cap;
    }
    dfc_weight *t = &w->items[w->count];
    memset(t, 0, sizeof *t);
    t->name = malloc(name_len + 1);
    /* malloc(0) may return NULL; an empty tensor still gets a real pointer. */
    t->data = malloc(numel > 0 ? (size_t)numel * sizeof(float) : sizeof(float));
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory for tensor '%.*s' (%lld elements)", shown, name,
                        (long long)numel);
    }
    memcpy(t->name, name, name_len);
    t->name[name_len] = '\0';
    size_t slot = find_slot(w, t->name);
    if (w->slots[slot]) {
        free(t->name);
        free(t->data);
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%.*s' appears twice", shown, name);
    }
    t->ndim = ndim;
    for (int i = 0; i < DFC_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 1;
    t->numel = numel;
    w->slots[slot] = ++w->count;
    *data = t->data;
    return DFC_OK;
}

const dfc_weight *dfc_weights_find(const dfc_weights *w, const char *name)
{
    if (!w || !w->slot_count)
        return NULL;
    size_t s = w->slots[find_slot(w, name)];
    return s ? &w->items[s - 1] : NULL;
}

static char *copy_string(const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (c) {
        memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

dfc_status dfc_weights_set_metadata(dfc_weights *w, const char *key, size_t key_len, const char *value,
                                    size_t value_len, dfc_error *err)
{
    if (!dfc_utf8_valid(key, key_len) || !dfc_utf8_valid(value, value_len))
        return dfc_fail(err, DFC_ERR_FORMAT, "a metadata entry is not valid UTF-8 or contains a NUL byte");
    if (w->meta_count == w->meta_capacity) {
        size_t cap = w->meta_capacity ? w->meta_capacity * 2 : 8;
        char **keys = realloc(w->meta_keys, cap * sizeof *keys);
        if (!keys)
            return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory");
        w->meta_keys = keys;
        char **values = realloc(w->meta_values, cap * sizeof *values);
        if (!values)
            return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory");
        w->meta_values = values;
        w->meta_capacity = cap;
    }
    char *k = copy_string(key, key_len), *v = copy_string(value, value_len);
    if (!k || !v) {
        free(k);
        free(v);
        return dfc_fail(err, DFC_ERR_NOMEM, "weights: out of memory");
    }
    w->meta_keys[w->meta_count] = k;
    w->meta_values[w->meta_count] = v;
    w->meta_count++;
    return DFC_OK;
}

float *dfc_weights_take_data(dfc_weights *w, size_t index)
{
    if (index >= w->count)
        return NULL;
    float *data = w->items[index].data;
    w->items[index].data = NULL;
    return data;
}

/* ---- helpers ---- */

int dfc_checked_numel(int n, const int64_t *shape, int64_t *out)
{
    int64_t numel = 1;
    for (int i = 0; i < n; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && numel > (INT64_C(1) << 62) / shape[i]))
            return 0;
        numel *= shape[i];
    }
    *out = numel;
    return 1;
}

const char *dfc_dims_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t pos = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && pos < len; i++)
        pos += (size_t)snprintf(buf + pos, len - pos, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (pos < len)
        snprintf(buf + pos, len - pos, ndim == 1 ? ",)" : ")");
    return buf;
}

int dfc_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i <= (size_t)extra)
            return 0;
        for (int k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || (cp >= 0xd800 && cp <= 0xdfff) ||
            cp > 0x10ffff)
            return 0;
        i += (size_t)extra + 1;
    }
    return 1;
}

dfc_status dfc_read_file(const char *path, uint8_t **data, size_t *size, dfc_error *err)
{
    *data = NULL;
    *size = 0;
    char reason[256];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        strerror_r(errno, reason, sizeof reason);
        return dfc_fail(err, DFC_ERR_IO, "%s: cannot open: %s", path, reason);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        strerror_r(errno, reason, sizeof reason);
        close(fd);
        return dfc_fail(err, DFC_ERR_IO, "%s: cannot stat: %s", path, reason);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dfc_fail(err, DFC_ERR_IO, "%s: %s", path,
                        S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file");
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return dfc_fail(err, DFC_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got > (1u << 30) ? (1u << 30) : n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r < 0)
                strerror_r(errno, reason, sizeof reason);
            else
                snprintf(reason, sizeof reason, "file shrank to %zu bytes while reading", got);
            close(fd);
            free(buf);
            return dfc_fail(err, DFC_ERR_IO, "%s: read failed: %s", path, reason);
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *size = n;
    return DFC_OK;
}

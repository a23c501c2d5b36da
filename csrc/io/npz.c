/* numpy .npz: a zip of .npy files (np.savez stores them, np.savez_compressed deflates them).
 *
 * A .npy file is "\x93NUMPY", a version (1.0: 2-byte header length; 2.0/3.0: 4-byte), then a Python dict
 * literal such as {'descr': '<f4', 'fortran_order': False, 'shape': (64, 3), } padded with spaces and '\n',
 * then the raw little-endian data. The dict is parsed here as exactly that literal, never evaluated. */
#include <stdio.h>
#include <stdlib.h>

#include "npz.h"

typedef struct {
    const char *s;
    size_t n, pos;
} cursor;

static void skip_blank(cursor *c)
{
    while (c->pos < c->n &&
           (c->s[c->pos] == ' ' || c->s[c->pos] == '\t' || c->s[c->pos] == '\n' || c->s[c->pos] == '\r'))
        c->pos++;
}

static int accept(cursor *c, char ch)
{
    skip_blank(c);
    if (c->pos < c->n && c->s[c->pos] == ch) {
        c->pos++;
        return 1;
    }
    return 0;
}

/* A quoted literal without escapes (numpy never writes any in these keys or dtype strings). */
static int read_quoted(cursor *c, const char **s, size_t *len)
{
    skip_blank(c);
    if (c->pos >= c->n || (c->s[c->pos] != '\'' && c->s[c->pos] != '"'))
        return 0;
    char quote = c->s[c->pos++];
    size_t start = c->pos;
    while (c->pos < c->n && c->s[c->pos] != quote && c->s[c->pos] != '\\' && c->s[c->pos] != '\n')
        c->pos++;
    if (c->pos >= c->n || c->s[c->pos] != quote)
        return 0;
    *s = c->s + start;
    *len = c->pos - start;
    c->pos++;
    return 1;
}

static int read_word(cursor *c, const char *word)
{
    skip_blank(c);
    size_t n = strlen(word);
    if (c->n - c->pos >= n && memcmp(c->s + c->pos, word, n) == 0) {
        c->pos += n;
        return 1;
    }
    return 0;
}

/* A tuple of non-negative ints: (), (3,), (3, 4) -- an 'L' suffix from Python 2 allowed. */
static int read_shape(cursor *c, int *ndim, int64_t *shape, int *too_many)
{
    if (!accept(c, '('))
        return 0;
    *ndim = 0;
    *too_many = 0;
    for (;;) {
        if (accept(c, ')'))
            return 1;
        skip_blank(c);
        if (c->pos >= c->n || c->s[c->pos] < '0' || c->s[c->pos] > '9')
            return 0;
        int64_t v = 0;
        while (c->pos < c->n && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
            if (v > (INT64_C(1) << 56))
                return 0;
            v = v * 10 + (c->s[c->pos++] - '0');
        }
        if (c->pos < c->n && c->s[c->pos] == 'L')
            c->pos++;
        if (*ndim < DFC_MAX_DIMS)
            shape[*ndim] = v;
        else
            *too_many = 1;
        (*ndim)++;
        if (*ndim > 64)
            return 0;
        int comma = accept(c, ',');
        if (*ndim == 1 && !comma) /* "(3)" is an int in Python, not a tuple */
            return 0;
        if (!comma)
            return accept(c, ')');
    }
}

static dfc_status parse_descr(const char *s, size_t len, const char *key, dfc_dtype *dt, dfc_error *err)
{
    static const struct {
        const char *code;
        dfc_dtype dt;
    } table[] = {{"f4", DFC_DT_F32}, {"f2", DFC_DT_F16}, {"f8", DFC_DT_F64}, {"i8", DFC_DT_I64}, {"i4", DFC_DT_I32},
                 {"i2", DFC_DT_I16}, {"i1", DFC_DT_I8},  {"u1", DFC_DT_U8},  {"b1", DFC_DT_BOOL}};
    char descr[32];
    snprintf(descr, sizeof descr, "%.*s", (int)(len < 31 ? len : 31), s);
    for (size_t i = 0; len == 3 && i < sizeof table / sizeof table[0]; i++) {
        if (memcmp(s + 1, table[i].code, 2) != 0)
            continue;
        /* byte order: '<' little, '=' native (little here), '|' not applicable; all fine for 1-byte types */
        if (s[0] == '<' || s[0] == '=' || (dfc_dtype_size(table[i].dt) == 1 && (s[0] == '|' || s[0] == '>'))) {
            *dt = table[i].dt;
            return DFC_OK;
        }
    }
    if (len >= 1 && s[0] == '>')
        return dfc_fail(err, DFC_ERR_FORMAT, "array '%s' has big-endian dtype '%s' (only little-endian is supported)",
                        key, descr);
    if ((len == 1 && s[0] == 'O') || (len == 2 && s[1] == 'O'))
        return dfc_fail(err, DFC_ERR_FORMAT, "array '%s' has dtype object ('%s'), which needs pickle and is refused",
                        key, descr);
    return dfc_fail(err, DFC_ERR_FORMAT,
                    "array '%s' has unsupported dtype '%s' (supported: <f4, <f2, <f8, <i8, <i4, <i2, |i1, |u1, |b1)",
                    key, descr);
}

/* Parses one .npy member and appends it to w under `key`. */
static dfc_status parse_npy(const uint8_t *data, size_t size, const char *member, const char *key, dfc_weights *w,
                            dfc_error *err)
{
    if (size < 10 || memcmp(data, "\x93NUMPY", 6) != 0)
        return dfc_fail(err, DFC_ERR_FORMAT, "member '%s' is not a .npy array (bad magic)", member);
    int major = data[6];
    size_t header_len, header_start;
    if (major == 1) {
        header_len = dfc_rd16(data + 8);
        header_start = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12)
            return dfc_fail(err, DFC_ERR_FORMAT, "member '%s': truncated .npy header", member);
        header_len = dfc_rd32(data + 8);
        header_start = 12;
    } else {
        return dfc_fail(err, DFC_ERR_FORMAT, "member '%s': unsupported .npy format version %d.%d", member, major,
                        data[7]);
    }
    if (header_len > size - header_start)
        return dfc_fail(err, DFC_ERR_FORMAT, "member '%s': .npy header length %zu runs past the %zu-byte member",
                        member, header_len, size);

    cursor c = {(const char *)data + header_start, header_len, 0};
    const char *descr = NULL;
    size_t descr_len = 0;
    int fortran = -1, ndim = -1, too_many = 0;
    int64_t shape[DFC_MAX_DIMS];
    dfc_dtype dt = DFC_DT_F32;
    if (!accept(&c, '{'))
        goto bad_header;
    for (;;) {
        const char *k;
        size_t klen;
        if (accept(&c, '}'))
            break;
        if (!read_quoted(&c, &k, &klen) || !accept(&c, ':'))
            goto bad_header;
        if (klen == 5 && memcmp(k, "descr", 5) == 0 && !descr) {
            skip_blank(&c);
            if (c.pos < c.n && c.s[c.pos] == '[')
                return dfc_fail(err, DFC_ERR_FORMAT, "array '%s' has a structured dtype, which is not supported", key);
            if (!read_quoted(&c, &descr, &descr_len))
                goto bad_header;
        } else if (klen == 13 && memcmp(k, "fortran_order", 13) == 0 && fortran < 0) {
            if (read_word(&c, "True"))
                fortran = 1;
            else if (read_word(&c, "False"))
                fortran = 0;
            else
                goto bad_header;
        } else if (klen == 5 && memcmp(k, "shape", 5) == 0 && ndim < 0) {
            if (!read_shape(&c, &ndim, shape, &too_many))
                goto bad_header;
        } else {
            goto bad_header;
        }
        if (!accept(&c, ',')) {
            if (!accept(&c, '}'))
                goto bad_header;
            break;
        }
    }
    skip_blank(&c);
    if (c.pos != c.n || !descr || fortran < 0 || ndim < 0)
        goto bad_header;
    DFC_TRY(parse_descr(descr, descr_len, key, &dt, err));
    if (too_many)
        return dfc_fail(err, DFC_ERR_FORMAT, "array '%s' has %d dimensions; at most %d are supported", key, ndim,
                        DFC_MAX_DIMS);

    int64_t numel;
    char dims[160];
    if (!dfc_checked_numel(ndim, shape, &numel))
        return dfc_fail(err, DFC_ERR_FORMAT, "array '%s': shape %s is too large", key,
                        dfc_dims_str(ndim, shape, dims, sizeof dims));
    size_t data_start = header_start + header_len;
    uint64_t need = (uint64_t)numel * dfc_dtype_size(dt);
    if (need != size - data_start)
        return dfc_fail(err, DFC_ERR_FORMAT, "array '%s': shape %s %s needs %llu bytes of data, the member has %zu",
                        key, dfc_dims_str(ndim, shape, dims, sizeof dims), dfc_dtype_name(dt), (unsigned long long)need,
                        size - data_start);
    float *out;
    DFC_TRY(dfc_weights_add(w, key, strlen(key), ndim, shape, &out, err));
    const uint8_t *src = data + data_start;
    if (fortran && ndim > 1 && numel > 0) {
        /* column-major: the first index varies fastest */
        int64_t strides[DFC_MAX_DIMS];
        int64_t step = 1;
        for (int i = 0; i < ndim; i++) {
            strides[i] = step;
            step *= shape[i];
        }
        dfc_gather_to_f32(out, src, dt, ndim, shape, strides);
    } else {
        dfc_convert_to_f32(out, src, dt, numel);
    }
    return DFC_OK;

bad_header:
    return dfc_fail(err, DFC_ERR_FORMAT, "member '%s': malformed .npy header at byte %zu: %.*s", member, c.pos,
                    (int)(header_len < 120 ? header_len : 120), (const char *)data + header_start);
}

dfc_status dfc_npz_parse(const dfc_zip *zip, dfc_weights *w, dfc_error *err)
{
    for (size_t i = 0; i < zip->count; i++) {
        const dfc_zip_entry *e = &zip->entries[i];
        size_t n = strlen(e->name);
        if (n < 4 || strcmp(e->name + n - 4, ".npy") != 0)
            return dfc_fail(err, DFC_ERR_FORMAT, "member '%s' is not a .npy array", e->name);
        char *key = malloc(n - 3);
        if (!key)
            return dfc_fail(err, DFC_ERR_NOMEM, "npz: out of memory");
        memcpy(key, e->name, n - 4);
        key[n - 4] = '\0';
        const uint8_t *bytes;
        uint8_t *owned;
        dfc_status st = dfc_zip_read(zip, e, &bytes, &owned, err);
        if (st == DFC_OK)
            st = parse_npy(bytes, (size_t)e->size, e->name, key, w, err);
        free(owned);
        free(key);
        if (st != DFC_OK)
            return st;
    }
    return DFC_OK;
}

/* safetensors read and write.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data section. The JSON is an object
 * mapping each tensor name to {"dtype": "F32", "shape": [5, 7], "data_offsets": [begin, end]} (offsets relative
 * to the data section), plus an optional "__metadata__" object of strings. Validation follows the reference
 * implementation (huggingface/safetensors): the header starts with '{', the byte ranges sorted by offset tile the
 * data section exactly (no gap, no overlap, nothing after), each range holds numel * dtype size bytes. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"

#define HEADER_MAX ((uint64_t)100 * 1000 * 1000) /* the reference refuses headers over 100 MB too */
#define JSON_MAX_DEPTH 16                        /* safetensors needs 3 */

/* ---- a strict JSON parser (RFC 8259) building a small tree ---- */

typedef enum { JSON_NULL, JSON_BOOL, JSON_INT, JSON_REAL, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value {
    json_type type;
    int64_t integer;          /* JSON_BOOL, JSON_INT (a number without fraction or exponent that fits) */
    char *string;             /* JSON_STRING: decoded UTF-8, NUL-terminated (NUL inside is refused) */
    size_t length;            /* JSON_STRING: bytes; JSON_ARRAY/OBJECT: items */
    struct json_value *items; /* JSON_ARRAY/OBJECT */
    char **keys;              /* JSON_OBJECT, keys[i] names items[i] */
    size_t *key_lengths;
    size_t capacity;
} json_value;

typedef struct {
    const char *s;
    size_t n, pos;
    dfc_error *err;
} json_parser;

static void json_free(json_value *v)
{
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        for (size_t i = 0; i < v->length; i++) {
            json_free(&v->items[i]);
            if (v->keys)
                free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
        free(v->key_lengths);
    }
    free(v->string);
    memset(v, 0, sizeof *v);
}

static dfc_status json_error(json_parser *p, const char *what)
{
    return dfc_fail(p->err, DFC_ERR_FORMAT, "header is not valid JSON: %s at byte %zu of the header", what, p->pos);
}

static void skip_space(json_parser *p)
{
    while (p->pos < p->n &&
           (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, unsigned cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* At the opening quote; decodes into a new string (escapes never make it longer than the source). */
static dfc_status parse_string(json_parser *p, char **out, size_t *out_len)
{
    size_t start = ++p->pos, end = start;
    while (end < p->n && p->s[end] != '"')
        end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->n)
        return json_error(p, "unterminated string");
    char *buf = malloc(end - start + 1);
    if (!buf)
        return dfc_fail(p->err, DFC_ERR_NOMEM, "header: out of memory");
    size_t len = 0;
    while (p->pos < end) {
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c < 0x20) {
            free(buf);
            return json_error(p, "control character in a string");
        }
        if (c != '\\') {
            buf[len++] = (char)c;
            p->pos++;
            continue;
        }
        char e = p->s[p->pos + 1];
        p->pos += 2;
        switch (e) {
        case '"': buf[len++] = '"'; break;
        case '\\': buf[len++] = '\\'; break;
        case '/': buf[len++] = '/'; break;
        case 'b': buf[len++] = '\b'; break;
        case 'f': buf[len++] = '\f'; break;
        case 'n': buf[len++] = '\n'; break;
        case 'r': buf[len++] = '\r'; break;
        case 't': buf[len++] = '\t'; break;
        case 'u': {
            unsigned cp, low;
            if (p->pos + 4 > end || !hex4(p->s + p->pos, &cp)) {
                free(buf);
                return json_error(p, "bad \\u escape");
            }
            p->pos += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair encodes one code point above U+FFFF */
                if (p->pos + 6 > end || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
                    !hex4(p->s + p->pos + 2, &low) || low < 0xdc00 || low > 0xdfff) {
                    free(buf);
                    return json_error(p, "unpaired surrogate in a \\u escape");
                }
                p->pos += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                free(buf);
                return json_error(p, "unpaired surrogate in a \\u escape");
            }
            if (cp == 0) {
                free(buf);
                return json_error(p, "\\u0000 in a string");
            }
            len += put_utf8(buf + len, cp);
            break;
        }
        default: free(buf); return json_error(p, "bad escape in a string");
        }
    }
    p->pos = end + 1;
    buf[len] = '\0';
    if (!dfc_utf8_valid(buf, len)) {
        free(buf);
        return json_error(p, "string is not valid UTF-8");
    }
    *out = buf;
    *out_len = len;
    return DFC_OK;
}

static dfc_status parse_number(json_parser *p, json_value *v)
{
    int negative = 0, integral = 1, overflow = 0;
    uint64_t magnitude = 0;
    if (p->s[p->pos] == '-') {
        negative = 1;
        p->pos++;
    }
    if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
        return json_error(p, "bad number");
    if (p->s[p->pos] == '0' && p->pos + 1 < p->n && p->s[p->pos + 1] >= '0' && p->s[p->pos + 1] <= '9')
        return json_error(p, "number with a leading zero");
    while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned d = (unsigned)(p->s[p->pos++] - '0');
        if (magnitude > (UINT64_C(1) << 62) / 10)
            overflow = 1;
        else
            magnitude = magnitude * 10 + d;
    }
    if (p->pos < p->n && p->s[p->pos] == '.') {
        integral = 0;
        p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return json_error(p, "bad number");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    if (p->pos < p->n && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0;
        p->pos++;
        if (p->pos < p->n && (p->s[p->pos] == '+' || p->s[p->pos] == '-'))
            p->pos++;
        if (p->pos >= p->n || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return json_error(p, "bad number");
        while (p->pos < p->n && p->s[p->pos] >= '0' && p->s[p->pos] <= '9')
            p->pos++;
    }
    if (integral && !overflow) {
        v->type = JSON_INT;
        v->integer = negative ? -(int64_t)magnitude : (int64_t)magnitude;
    } else {
        v->type = JSON_REAL; /* a fraction, an exponent or a huge integer: never a valid size or offset */
    }
    return DFC_OK;
}

static dfc_status parse_value(json_parser *p, json_value *v, int depth);

static dfc_status add_item(json_parser *p, json_value *v, char *key, size_t key_len, json_value *item)
{
    if (v->length == v->capacity) {
        size_t cap = v->capacity ? v->capacity * 2 : 4;
        json_value *items = realloc(v->items, cap * sizeof *items);
        if (items)
            v->items = items;
        if (items && v->type == JSON_OBJECT) {
            char **keys = realloc(v->keys, cap * sizeof *keys);
            if (keys)
                v->keys = keys;
            size_t *lengths = keys ? realloc(v->key_lengths, cap * sizeof *lengths) : NULL;
            if (lengths)
                v->key_lengths = lengths;
            items = lengths ? items : NULL;
        }
        if (!items)
            return dfc_fail(p->err, DFC_ERR_NOMEM, "header: out of memory");
        v->capacity = cap;
    }
    v->items[v->length] = *item;
    if (v->type == JSON_OBJECT) {
        v->keys[v->length] = key;
        v->key_lengths[v->length] = key_len;
    }
    v->length++;
    return DFC_OK;
}

static int key_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorting, not pairwise comparison: a hostile header may hold a million keys. */
static dfc_status check_unique_keys(json_parser *p, const json_value *obj)
{
    if (obj->length < 2)
        return DFC_OK;
    char **sorted = malloc(obj->length * sizeof *sorted);
    if (!sorted)
        return dfc_fail(p->err, DFC_ERR_NOMEM, "header: out of memory");
    memcpy(sorted, obj->keys, obj->length * sizeof *sorted);
    qsort(sorted, obj->length, sizeof *sorted, key_cmp);
    dfc_status st = DFC_OK;
    for (size_t i = 1; i < obj->length && st == DFC_OK; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            st = dfc_fail(p->err, DFC_ERR_FORMAT, "header is not valid JSON: key '%.200s' appears twice in an object",
                          sorted[i]);
    free(sorted);
    return st;
}

/* Array or object, at the opening bracket. */
static dfc_status parse_container(json_parser *p, json_value *v, int depth)
{
    int object = p->s[p->pos] == '{';
    char close = object ? '}' : ']';
    v->type = object ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;
    skip_space(p);
    if (p->pos < p->n && p->s[p->pos] == close) {
        p->pos++;
        return DFC_OK;
    }
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        skip_space(p);
        if (object) {
            if (p->pos >= p->n || p->s[p->pos] != '"')
                return json_error(p, "expected a string key");
            DFC_TRY(parse_string(p, &key, &key_len));
            skip_space(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') {
                free(key);
                return json_error(p, "expected ':'");
            }
            p->pos++;
        }
        json_value item;
        memset(&item, 0, sizeof item);
        dfc_status st = parse_value(p, &item, depth + 1);
        if (st == DFC_OK)
            st = add_item(p, v, key, key_len, &item);
        if (st != DFC_OK) {
            free(key);
            json_free(&item);
            return st;
        }
        skip_space(p);
        if (p->pos < p->n && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->n && p->s[p->pos] == close) {
            p->pos++;
            return object ? check_unique_keys(p, v) : DFC_OK;
        }
        return json_error(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int match_word(json_parser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->n - p->pos >= n && memcmp(p->s + p->pos, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

static dfc_status parse_value(json_parser *p, json_value *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return json_error(p, "nesting too deep");
    skip_space(p);
    if (p->pos >= p->n)
        return json_error(p, "unexpected end");
    char c = p->s[p->pos];
    if (c == '{' || c == '[')
        return parse_container(p, v, depth);
    if (c == '"') {
        v->type = JSON_STRING;
        return parse_string(p, &v->string, &v->length);
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number(p, v);
    if (match_word(p, "true") || match_word(p, "false")) {
        v->type = JSON_BOOL;
        v->integer = p->s[p->pos - 4] == 't'; /* "true" ends 4 bytes back, "false" has an 'a' there */
        return DFC_OK;
    }
    if (match_word(p, "null")) {
        v->type = JSON_NULL;
        return DFC_OK;
    }
    return json_error(p, "unexpected character");
}

/* ---- reading ---- */

typedef struct {
    const char *name;
    dfc_dtype dtype;
    int ndim;
    int64_t shape[DFC_MAX_DIMS];
    uint64_t begin, end;
} tensor_entry;

static int parse_dtype(const char *s, dfc_dtype *dt)
{
    static const struct {
        const char *name;
        dfc_dtype dt;
    } table[] = {
        {"F32", DFC_DT_F32}, {"F16", DFC_DT_F16}, {"BF16", DFC_DT_BF16}, {"F64", DFC_DT_F64}, {"I64", DFC_DT_I64},
        {"I32", DFC_DT_I32}, {"I16", DFC_DT_I16}, {"I8", DFC_DT_I8},     {"U8", DFC_DT_U8},   {"BOOL", DFC_DT_BOOL},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(s, table[i].name) == 0) {
            *dt = table[i].dt;
            return 1;
        }
    }
    return 0;
}

static const json_value *object_get(const json_value *obj, const char *key)
{
    for (size_t i = 0; i < obj->length; i++)
        if (strcmp(obj->keys[i], key) == 0 && obj->key_lengths[i] == strlen(key))
            return &obj->items[i];
    return NULL;
}

static dfc_status read_entry(const char *name, const json_value *info, tensor_entry *t, dfc_error *err)
{
    t->name = name;
    if (info->type != JSON_OBJECT)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': header entry is not an object", name);
    for (size_t i = 0; i < info->length; i++) {
        const char *k = info->keys[i];
        if (strcmp(k, "dtype") != 0 && strcmp(k, "shape") != 0 && strcmp(k, "data_offsets") != 0)
            return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': unknown header field '%s'", name, k);
    }
    const json_value *dtype = object_get(info, "dtype"), *shape = object_get(info, "shape"),
                     *offsets = object_get(info, "data_offsets");
    if (!dtype || !shape || !offsets)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': header entry lacks \"%s\"", name,
                        !dtype   ? "dtype"
                        : !shape ? "shape"
                                 : "data_offsets");
    if (dtype->type != JSON_STRING)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': \"dtype\" is not a string", name);
    if (!parse_dtype(dtype->string, &t->dtype))
        return dfc_fail(err, DFC_ERR_FORMAT,
                        "tensor '%s': unsupported dtype '%.40s' (supported: F32, F16, BF16, F64, I64, I32, I16, I8, "
                        "U8, BOOL)",
                        name, dtype->string);
    if (shape->type != JSON_ARRAY)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': \"shape\" is not a list", name);
    if (shape->length > DFC_MAX_DIMS)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s' has %zu dimensions; at most %d are supported", name,
                        shape->length, DFC_MAX_DIMS);
    t->ndim = (int)shape->length;
    for (int i = 0; i < t->ndim; i++) {
        if (shape->items[i].type != JSON_INT || shape->items[i].integer < 0)
            return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': shape entry %d is not a non-negative integer", name, i);
        t->shape[i] = shape->items[i].integer;
    }
    if (offsets->type != JSON_ARRAY || offsets->length != 2 || offsets->items[0].type != JSON_INT ||
        offsets->items[1].type != JSON_INT || offsets->items[0].integer < 0 || offsets->items[1].integer < 0)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': \"data_offsets\" is not a pair of non-negative integers",
                        name);
    t->begin = (uint64_t)offsets->items[0].integer;
    t->end = (uint64_t)offsets->items[1].integer;
    if (t->begin > t->end)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': data_offsets [%llu, %llu] are out of order (begin > end)",
                        name, (unsigned long long)t->begin, (unsigned long long)t->end);
    int64_t numel;
    char dims[160];
    if (!dfc_checked_numel(t->ndim, t->shape, &numel) || (uint64_t)numel > UINT64_MAX / 8)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': shape %s is too large", name,
                        dfc_dims_str(t->ndim, t->shape, dims, sizeof dims));
    uint64_t need = (uint64_t)numel * dfc_dtype_size(t->dtype);
    if (t->end - t->begin != need)
        return dfc_fail(err, DFC_ERR_FORMAT, "tensor '%s': data_offsets [%llu, %llu] but shape %s %s needs %llu bytes",
                        name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        dfc_dims_str(t->ndim, t->shape, dims, sizeof dims), dfc_dtype_name(t->dtype),
                        (unsigned long long)need);
    return DFC_OK;
}

static int entry_order(const void *a, const void *b)
{
    const tensor_entry *x = *(const tensor_entry *const *)a, *y = *(const tensor_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static dfc_status check_layout(tensor_entry *entries, size_t count, uint64_t data_size, dfc_error *err)
{
    tensor_entry **sorted = malloc((count ? count : 1) * sizeof *sorted);
    if (!sorted)
        return dfc_fail(err, DFC_ERR_NOMEM, "header: out of memory");
    for (size_t i = 0; i < count; i++)
        sorted[i] = &entries[i];
    qsort(sorted, count, sizeof *sorted, entry_order);
    dfc_status st = DFC_OK;
    uint64_t covered = 0;
    for (size_t i = 0; i < count && st == DFC_OK; i++) {
        const tensor_entry *t = sorted[i];
        if (t->end > data_size)
            st = dfc_fail(err, DFC_ERR_FORMAT,
                          "tensor '%s': data_offsets [%llu, %llu] lie beyond the %llu-byte data section", t->name,
                          (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)data_size);
        else if (t->begin < covered)
            st = dfc_fail(
                err, DFC_ERR_FORMAT, "tensors '%s' and '%s' overlap: data_offsets [%llu, %llu] and [%llu, %llu]",
                sorted[i - 1]->name, t->name, (unsigned long long)sorted[i - 1]->begin,
                (unsigned long long)sorted[i - 1]->end, (unsigned long long)t->begin, (unsigned long long)t->end);
        else if (t->begin > covered)
            st = dfc_fail(err, DFC_ERR_FORMAT, "%llu unused bytes before tensor '%s' (data_offsets [%llu, %llu])",
                          (unsigned long long)(t->begin - covered), t->name, (unsigned long long)t->begin,
                          (unsigned long long)t->end);
        covered = t->end;
    }
    if (st == DFC_OK && covered != data_size)
        st = dfc_fail(err, DFC_ERR_FORMAT,
                      "data section has %llu bytes but the tensors cover only %llu (truncated "
                      "header or trailing bytes)",
                      (unsigned long long)data_size, (unsigned long long)covered);
    free(sorted);
    return st;
}

dfc_status dfc_safetensors_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err)
{
    if (size < 8)
        return dfc_fail(err, DFC_ERR_FORMAT, "file is %zu bytes, too short for the 8-byte safetensors header length",
                        size);
    uint64_t header_len = dfc_rd64(data);
    if (header_len > HEADER_MAX)
        return dfc_fail(err, DFC_ERR_FORMAT, "header length %llu is over the %llu-byte limit (not a safetensors file?)",
                        (unsigned long long)header_len, (unsigned long long)HEADER_MAX);
    if (header_len > size - 8)
        return dfc_fail(err, DFC_ERR_FORMAT, "header length %llu exceeds the %zu bytes after the length prefix",
                        (unsigned long long)header_len, size - 8);
    if (header_len < 2 || data[8] != '{')
        return dfc_fail(err, DFC_ERR_FORMAT, "header does not start with '{' (not a safetensors file?)");

    json_parser p = {(const char *)data + 8, (size_t)header_len, 0, err};
    json_value root;
    memset(&root, 0, sizeof root);
    tensor_entry *entries = NULL;
    dfc_status st = parse_value(&p, &root, 0);
    if (st != DFC_OK)
        goto done;
    skip_space(&p);
    if (p.pos != p.n) {
        st = json_error(&p, "trailing characters after the header object");
        goto done;
    }
    entries = malloc((root.length ? root.length : 1) * sizeof *entries);
    if (!entries) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "header: out of memory");
        goto done;
    }
    size_t count = 0;
    const json_value *metadata = NULL;
    for (size_t i = 0; i < root.length && st == DFC_OK; i++) {
        if (strcmp(root.keys[i], "__metadata__") == 0)
            metadata = &root.items[i];
        else
            st = read_entry(root.keys[i], &root.items[i], &entries[count++], err);
    }
    if (st != DFC_OK)
        goto done;
    if (metadata) {
        if (metadata->type != JSON_OBJECT) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "\"__metadata__\" is not an object");
            goto done;
        }
        for (size_t i = 0; i < metadata->length && st == DFC_OK; i++) {
            const json_value *v = &metadata->items[i];
            if (v->type != JSON_STRING)
                st = dfc_fail(err, DFC_ERR_FORMAT, "\"__metadata__\" value of '%s' is not a string", metadata->keys[i]);
            else
                st =
                    dfc_weights_set_metadata(w, metadata->keys[i], metadata->key_lengths[i], v->string, v->length, err);
        }
        if (st != DFC_OK)
            goto done;
    }
    const uint8_t *section = data + 8 + header_len;
    st = check_layout(entries, count, (uint64_t)(size - 8 - header_len), err);
    for (size_t i = 0; i < count && st == DFC_OK; i++) {
        const tensor_entry *t = &entries[i];
        float *out;
        st = dfc_weights_add(w, t->name, strlen(t->name), t->ndim, t->shape, &out, err);
        if (st == DFC_OK)
            dfc_convert_to_f32(out, section + t->begin, t->dtype,
                               (int64_t)((t->end - t->begin) / dfc_dtype_size(t->dtype)));
    }
done:
    free(entries);
    json_free(&root);
    return st;
}

/* ---- writing ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} text;

static void text_put(text *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

static void text_puts(text *t, const char *s) { text_put(t, s, strlen(s)); }

/* A JSON string as serde_json writes it: short escapes where they exist, \u00XX for other control bytes. */
static void text_put_json_string(text *t, const char *s)
{
    text_puts(t, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        switch (c) {
        case '"': text_puts(t, "\\\""); break;
        case '\\': text_puts(t, "\\\\"); break;
        case '\b': text_puts(t, "\\b"); break;
        case '\f': text_puts(t, "\\f"); break;
        case '\n': text_puts(t, "\\n"); break;
        case '\r': text_puts(t, "\\r"); break;
        case '\t': text_puts(t, "\\t"); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                text_puts(t, esc);
            } else {
                text_put(t, (const char *)&c, 1);
            }
        }
    }
    text_puts(t, "\"");
}

static int item_name_order(const void *a, const void *b)
{
    return strcmp((*(const dfc_weight *const *)a)->name, (*(const dfc_weight *const *)b)->name);
}

static int meta_order(const void *a, const void *b)
{
    return strcmp(**(const char *const *const *)a, **(const char *const *const *)b);
}

static dfc_status write_all(int fd, const void *buf, size_t n, const char *tmp, dfc_error *err)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            char reason[256];
            if (r < 0)
                strerror_r(errno, reason, sizeof reason);
            else
                snprintf(reason, sizeof reason, "no progress");
            return dfc_fail(err, DFC_ERR_IO, "%s: write failed: %s", tmp, reason);
        }
        p += r;
        n -= (size_t)r;
    }
    return DFC_OK;
}

/* Opens a new file next to `path`, named <path>.tmp<random>, honouring the umask like a plain open would. */
static int open_temp(const char *path, char *tmp, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)tmp;
    for (int attempt = 0; attempt < 64; attempt++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        if ((size_t)snprintf(tmp, len, "%s.tmp%08llx", path, (unsigned long long)(seed >> 32)) >= len)
            return -1;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}

dfc_status dfc_save_safetensors(const char *path, const dfc_weight *items, size_t count, const char *const *meta_keys,
                                const char *const *meta_values, size_t meta_count, int half, dfc_error *err)
{
    const size_t elem_size = half ? 2 : sizeof(float);
    text header = {0};
    const dfc_weight **order = NULL;
    const char *const **meta_order_ptrs = NULL;
    char *tmp = NULL;
    int fd = -1;
    dfc_status st = DFC_OK;

    order = malloc((count ? count : 1) * sizeof *order);
    meta_order_ptrs = malloc((meta_count ? meta_count : 1) * sizeof *meta_order_ptrs);
    if (!order || !meta_order_ptrs) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "save_safetensors: out of memory");
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        const dfc_weight *t = &items[i];
        int64_t numel;
        if (!dfc_utf8_valid(t->name, strlen(t->name)) || strcmp(t->name, "__metadata__") == 0) {
            st = dfc_fail(err, DFC_ERR_VALUE, "save_safetensors: invalid tensor name '%s'", t->name);
            goto done;
        }
        if (t->ndim < 0 || t->ndim > DFC_MAX_DIMS || !dfc_checked_numel(t->ndim, t->shape, &numel) ||
            (numel > 0 && !t->data)) {
            st = dfc_fail(err, DFC_ERR_VALUE,
                          "save_safetensors: tensor '%s' has %d dimensions or no data "
                          "(0 to %d dimensions supported)",
                          t->name, t->ndim, DFC_MAX_DIMS);
            goto done;
        }
        order[i] = t;
    }
    for (size_t i = 0; i < meta_count; i++) {
        if (!dfc_utf8_valid(meta_keys[i], strlen(meta_keys[i])) ||
            !dfc_utf8_valid(meta_values[i], strlen(meta_values[i]))) {
            st = dfc_fail(err, DFC_ERR_VALUE, "save_safetensors: metadata entry %zu is not valid UTF-8", i);
            goto done;
        }
        meta_order_ptrs[i] = &meta_keys[i];
    }
    /* The reference sorts by dtype alignment, then name; ours share one dtype, so by name. */
    qsort(order, count, sizeof *order, item_name_order);
    qsort(meta_order_ptrs, meta_count, sizeof *meta_order_ptrs, meta_order);
    for (size_t i = 1; i < count; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            st = dfc_fail(err, DFC_ERR_VALUE, "save_safetensors: tensor name '%s' appears twice", order[i]->name);
            goto done;
        }
    }
    for (size_t i = 1; i < meta_count; i++) {
        if (strcmp(*meta_order_ptrs[i - 1], *meta_order_ptrs[i]) == 0) {
            st = dfc_fail(err, DFC_ERR_VALUE, "save_safetensors: metadata key '%s' appears twice", *meta_order_ptrs[i]);
            goto done;
        }
    }

    text_puts(&header, "{");
    if (meta_count > 0) {
        text_puts(&header, "\"__metadata__\":{");
        for (size_t i = 0; i < meta_count; i++) {
            size_t k = (size_t)(meta_order_ptrs[i] - meta_keys);
            if (i)
                text_puts(&header, ",");
            text_put_json_string(&header, meta_keys[k]);
            text_puts(&header, ":");
            text_put_json_string(&header, meta_values[k]);
        }
        text_puts(&header, "}");
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        const dfc_weight *t = order[i];
        char num[64];
        int64_t numel;
        dfc_checked_numel(t->ndim, t->shape, &numel);
        if (i || meta_count)
            text_puts(&header, ",");
        text_put_json_string(&header, t->name);
        text_puts(&header, half ? ":{\"dtype\":\"F16\",\"shape\":[" : ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            text_puts(&header, num);
        }
        uint64_t end = offset + (uint64_t)numel * elem_size;
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                 (unsigned long long)end);
        text_puts(&header, num);
        offset = end;
    }
    text_puts(&header, "}");
    while (!header.failed && header.len % 8 != 0)
        text_puts(&header, " ");
    if (header.failed) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "save_safetensors: out of memory for the header");
        goto done;
    }

    size_t tmp_len = strlen(path) + 32;
    tmp = malloc(tmp_len);
    if (!tmp) {
        st = dfc_fail(err, DFC_ERR_NOMEM, "save_safetensors: out of memory");
        goto done;
    }
    fd = open_temp(path, tmp, tmp_len);
    if (fd < 0) {
        char reason[256];
        strerror_r(errno, reason, sizeof reason);
        st = dfc_fail(err, DFC_ERR_IO, "%s: cannot create a temporary file next to it: %s", path, reason);
        goto done;
    }
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++)
        len_bytes[i] = (uint8_t)((uint64_t)header.len >> (8 * i));
    st = write_all(fd, len_bytes, 8, tmp, err);
    if (st == DFC_OK)
        st = write_all(fd, header.buf, header.len, tmp, err);
    for (size_t i = 0; i < count && st == DFC_OK; i++) {
        int64_t numel;
        dfc_checked_numel(order[i]->ndim, order[i]->shape, &numel);
        st = write_all(fd, order[i]->data, (size_t)numel * elem_size, tmp, err);
    }
    if (st == DFC_OK && fsync(fd) != 0) {
        char reason[256];
        strerror_r(errno, reason, sizeof reason);
        st = dfc_fail(err, DFC_ERR_IO, "%s: fsync failed: %s", tmp, reason);
    }
    if (close(fd) != 0 && st == DFC_OK) {
        char reason[256];
        strerror_r(errno, reason, sizeof reason);
        st = dfc_fail(err, DFC_ERR_IO, "%s: close failed: %s", tmp, reason);
    }
    fd = -1;
    if (st == DFC_OK && rename(tmp, path) != 0) {
        char reason[256];
        strerror_r(errno, reason, sizeof reason);
        st = dfc_fail(err, DFC_ERR_IO, "%s: cannot rename the temporary file into place: %s", path, reason);
    }
    if (st != DFC_OK)
        unlink(tmp);
done:
    if (fd >= 0)
        close(fd);
    free(tmp);
    free(header.buf);
    free(order);
    free(meta_order_ptrs);
    return st;
}

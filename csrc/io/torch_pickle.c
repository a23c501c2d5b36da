/* PyTorch checkpoints without torch: a restricted unpickler and the two torch.save container formats.
 *
 * Zip format (torch >= 1.6): <archive>/data.pkl is the pickled object; each tensor's storage is pickled as a
 * persistent id ('storage', torch.FloatStorage, key, location, numel) whose bytes are the record
 * <archive>/data/<key>; <archive>/byteorder, when present, says "little".
 * Legacy format (_use_new_zipfile_serialization=False): five pickles back to back -- torch's magic number, the
 * protocol version 1001, sys_info, the object (persistent ids with a sixth element, view metadata, always None),
 * the list of storage keys -- then for each key in that list an 8-byte little-endian element count and the raw
 * storage bytes.
 *
 * The unpickler builds plain values (None, bool, int, float, str, bytes, tuple, list, dict) and implements only
 * the opcodes torch.save emits. The only callables it knows are collections.OrderedDict,
 * torch._utils._rebuild_tensor(_v2), torch._utils._rebuild_parameter(_with_state), and the torch.<X>Storage
 * classes (only as persistent-id tags); any other global is refused by name, so nothing in a file can make it
 * run code. Every length is checked against the bytes left before allocating; stack, mark nesting and memo are
 * bounded; the object graph is never walked recursively. */
#include <stdio.h>
#include <stdlib.h>

#include "torch_pickle.h"

#define MAX_STACK ((size_t)1 << 24)
#define MAX_MARKS 4096
#define MAX_GLOBAL_LINE 256
#define MAX_TENSOR_DIMS 64

/* ---- values ---- */

typedef enum {
    V_NONE,
    V_BOOL,
    V_INT,
    V_BIGINT, /* more than 8 bytes (torch's magic number): raw little-endian bytes in s */
    V_FLOAT,
    V_STR,
    V_BYTES,
    V_TUPLE,
    V_LIST,
    V_DICT, /* items[2k] is a key, items[2k + 1] its value, in insertion order */
    V_GLOBAL,
    V_STORAGE,
    V_TENSOR,
} vtype;

typedef enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_REBUILD_PARAMETER_WITH_STATE,
    G_STORAGE_CLASS,
} global_kind;

typedef struct value {
    vtype type;
    int64_t i;          /* V_BOOL/V_INT; V_GLOBAL: global_kind; V_STORAGE: index in the storage table */
    double f;           /* V_FLOAT */
    dfc_dtype dtype;    /* V_GLOBAL of a storage class */
    const char *global; /* V_GLOBAL: "module.name" for messages */
    char *s;            /* V_STR/V_BYTES/V_BIGINT: NUL-terminated copy */
    size_t len;
    struct value **items; /* V_TUPLE/V_LIST/V_DICT */
    size_t count, cap;
    /* V_TENSOR */
    int64_t storage, offset;
    int ndim;
    int64_t shape[DFC_MAX_DIMS], stride[DFC_MAX_DIMS];
} value;

typedef struct {
    char *key;
    dfc_dtype dtype;
    int64_t numel;
    const uint8_t *bytes; /* numel elements once resolved */
    uint8_t *owned;       /* when the record had to be inflated */
} storage;

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    size_t file_size; /* caps every claimed size */
    value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t mark_count, mark_cap;
    value **memo;
    size_t memo_count, memo_cap;
    value **pool; /* every value made, freed together */
    size_t pool_count, pool_cap;
    storage *storages;
    size_t storage_count, storage_cap;
    const dfc_zip *zip; /* zip format: where storages are read from */
    const char *archive;
    dfc_error *err;
} unpickler;

static const struct {
    const char *module, *name;
    global_kind kind;
    dfc_dtype dtype;
} known_globals[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, DFC_DT_F32},
    {"torch._utils", "_rebuild_tensor", G_REBUILD_TENSOR, DFC_DT_F32},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2, DFC_DT_F32},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER, DFC_DT_F32},
    {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAMETER_WITH_STATE, DFC_DT_F32},
    {"torch", "FloatStorage", G_STORAGE_CLASS, DFC_DT_F32},
    {"torch", "HalfStorage", G_STORAGE_CLASS, DFC_DT_F16},
    {"torch", "BFloat16Storage", G_STORAGE_CLASS, DFC_DT_BF16},
    {"torch", "DoubleStorage", G_STORAGE_CLASS, DFC_DT_F64},
    {"torch", "LongStorage", G_STORAGE_CLASS, DFC_DT_I64},
    {"torch", "IntStorage", G_STORAGE_CLASS, DFC_DT_I32},
    {"torch", "ShortStorage", G_STORAGE_CLASS, DFC_DT_I16},
    {"torch", "CharStorage", G_STORAGE_CLASS, DFC_DT_I8},
    {"torch", "ByteStorage", G_STORAGE_CLASS, DFC_DT_U8},
    {"torch", "BoolStorage", G_STORAGE_CLASS, DFC_DT_BOOL},
};

static const char *type_name(const value *v)
{
    switch (v->type) {
    case V_NONE: return "None";
    case V_BOOL: return "bool";
    case V_INT:
    case V_BIGINT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_BYTES: return "bytes";
    case V_TUPLE: return "tuple";
    case V_LIST: return "list";
    case V_DICT: return "dict";
    case V_GLOBAL: return v->global;
    case V_STORAGE: return "storage";
    case V_TENSOR: return "tensor";
    }
    return "?";
}

static void unpickler_free(unpickler *u)
{
    for (size_t i = 0; i < u->pool_count; i++) {
        free(u->pool[i]->s);
        free(u->pool[i]->items);
        free(u->pool[i]);
    }
    for (size_t i = 0; i < u->storage_count; i++) {
        free(u->storages[i].key);
        free(u->storages[i].owned);
    }
    free(u->pool);
    free(u->storages);
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

static dfc_status nomem(unpickler *u) { return dfc_fail(u->err, DFC_ERR_NOMEM, "checkpoint: out of memory"); }

/* Grows *arr (of *cap elements of `size` bytes) to hold at least `need`. */
static int grow(void *arr, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 1;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*(void **)arr, n * size);
    if (!p)
        return 0;
    *(void **)arr = p;
    *cap = n;
    return 1;
}

static value *new_value(unpickler *u, vtype type)
{
    if (!grow(&u->pool, &u->pool_cap, u->pool_count + 1, sizeof *u->pool))
        return NULL;
    value *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->type = type;
    u->pool[u->pool_count++] = v;
    return v;
}

static dfc_status append_item(unpickler *u, value *container, value *item)
{
    if (!grow(&container->items, &container->cap, container->count + 1, sizeof *container->items))
        return nomem(u);
    container->items[container->count++] = item;
    return DFC_OK;
}

/* ---- the stack machine ---- */

static dfc_status fail_at(unpickler *u, size_t at, const char *what)
{
    return dfc_fail(u->err, DFC_ERR_FORMAT, "pickle: %s at offset %zu", what, at);
}

static dfc_status push(unpickler *u, value *v)
{
    if (!v)
        return nomem(u);
    if (u->sp >= MAX_STACK)
        return fail_at(u, u->pos, "stack deeper than the limit");
    if (!grow(&u->stack, &u->stack_cap, u->sp + 1, sizeof *u->stack))
        return nomem(u);
    u->stack[u->sp++] = v;
    return DFC_OK;
}

static size_t stack_floor(const unpickler *u) { return u->mark_count ? u->marks[u->mark_count - 1] : 0; }

static dfc_status pop(unpickler *u, value **out)
{
    *out = NULL;
    if (u->sp <= stack_floor(u))
        return fail_at(u, u->pos, "stack underflow");
    *out = u->stack[--u->sp];
    return DFC_OK;
}

static dfc_status top(unpickler *u, value **out)
{
    *out = NULL;
    if (u->sp <= stack_floor(u))
        return fail_at(u, u->pos, "stack underflow");
    *out = u->stack[u->sp - 1];
    return DFC_OK;
}

/* Removes the topmost mark; items above it are stack[*first .. sp). */
static dfc_status pop_mark(unpickler *u, size_t *first)
{
    *first = 0;
    if (u->mark_count == 0)
        return fail_at(u, u->pos, "no MARK to match");
    *first = u->marks[--u->mark_count];
    return DFC_OK;
}

static dfc_status need(unpickler *u, size_t n)
{
    if (u->size - u->pos < n)
        return fail_at(u, u->pos, "truncated data");
    return DFC_OK;
}

static dfc_status read_length(unpickler *u, int bytes, size_t *len)
{
    *len = 0;
    DFC_TRY(need(u, (size_t)bytes));
    uint64_t n = bytes == 1 ? u->data[u->pos] : bytes == 4 ? dfc_rd32(u->data + u->pos) : dfc_rd64(u->data + u->pos);
    u->pos += (size_t)bytes;
    if (n > u->size - u->pos)
        return fail_at(u, u->pos, "length runs past the end of the data");
    *len = (size_t)n;
    return DFC_OK;
}

static dfc_status push_string(unpickler *u, vtype type, size_t len)
{
    value *v = new_value(u, type);
    if (!v || !(v->s = malloc(len + 1)))
        return nomem(u);
    memcpy(v->s, u->data + u->pos, len);
    v->s[len] = '\0';
    v->len = len;
    u->pos += len;
    return push(u, v);
}

static dfc_status push_int(unpickler *u, int64_t i)
{
    value *v = new_value(u, V_INT);
    if (v)
        v->i = i;
    return push(u, v);
}

/* LONG1/LONG4: little-endian two's complement. */
static dfc_status push_long(unpickler *u, size_t len)
{
    if (len > 8)
        return push_string(u, V_BIGINT, len);
    uint64_t bits = 0;
    for (size_t k = 0; k < len; k++)
        bits |= (uint64_t)u->data[u->pos + k] << (8 * k);
    if (len > 0 && len < 8 && (u->data[u->pos + len - 1] & 0x80))
        bits |= ~UINT64_C(0) << (8 * len); /* sign-extend */
    u->pos += len;
    return push_int(u, (int64_t)bits);
}

static dfc_status push_global(unpickler *u, const char *module, const char *name)
{
    for (size_t i = 0; i < sizeof known_globals / sizeof known_globals[0]; i++) {
        if (strcmp(module, known_globals[i].module) == 0 && strcmp(name, known_globals[i].name) == 0) {
            value *v = new_value(u, V_GLOBAL);
            if (v) {
                v->i = known_globals[i].kind;
                v->dtype = known_globals[i].dtype;
                v->global = known_globals[i].name;
            }
            return push(u, v);
        }
    }
    /* A whole pickled nn.Module (torch.save(model)) or any other Python object lands here: say what to save. */
    return dfc_fail(u->err, DFC_ERR_FORMAT,
                    "refusing pickle global '%.200s.%.200s': only state_dicts (tensors in dicts, lists and tuples) are "
                    "read, never pickled objects such as a whole model from torch.save(model); in PyTorch, save "
                    "the weights with torch.save(model.state_dict(), path)",
                    module, name);
}

/* GLOBAL: "module\nname\n" */
static dfc_status read_line(unpickler *u, char *buf)
{
    size_t n = 0;
    while (u->pos < u->size && u->data[u->pos] != '\n') {
        if (n + 1 >= MAX_GLOBAL_LINE)
            return fail_at(u, u->pos, "GLOBAL name too long");
        buf[n++] = (char)u->data[u->pos++];
    }
    if (u->pos >= u->size)
        return fail_at(u, u->pos, "truncated GLOBAL");
    u->pos++;
    buf[n] = '\0';
    if (memchr(buf, 0, n))
        return fail_at(u, u->pos, "NUL byte in a GLOBAL name");
    return DFC_OK;
}

static dfc_status memo_put(unpickler *u, uint64_t index)
{
    value *v;
    DFC_TRY(top(u, &v));
    if (index > u->memo_count)
        return fail_at(u, u->pos, "memo index out of sequence");
    if (index == u->memo_count) {
        if (!grow(&u->memo, &u->memo_cap, u->memo_count + 1, sizeof *u->memo))
            return nomem(u);
        u->memo_count++;
    }
    u->memo[index] = v;
    return DFC_OK;
}

static dfc_status memo_get(unpickler *u, uint64_t index)
{
    if (index >= u->memo_count)
        return fail_at(u, u->pos, "memo index not defined");
    return push(u, u->memo[index]);
}

/* ('storage', torch.XStorage, key, location, numel[, view_metadata=None]) -> a storage value. */
static dfc_status persistent_load(unpickler *u, value *pid)
{
    if (pid->type != V_TUPLE || (pid->count != 5 && pid->count != 6) || pid->items[0]->type != V_STR ||
        strcmp(pid->items[0]->s, "storage") != 0)
        return fail_at(u, u->pos, "persistent id is not a ('storage', ...) tuple");
    value *cls = pid->items[1], *key = pid->items[2], *numel = pid->items[4];
    if (cls->type != V_GLOBAL || cls->i != G_STORAGE_CLASS)
        return fail_at(u, u->pos, "persistent id names no torch storage class");
    if (key->type != V_STR || numel->type != V_INT || numel->i < 0)
        return fail_at(u, u->pos, "persistent id has a bad key or element count");
    if (pid->count == 6 && pid->items[5]->type != V_NONE)
        return fail_at(u, u->pos, "storage views (legacy view metadata) are not supported");
    size_t item = dfc_dtype_size(cls->dtype);
    if ((uint64_t)numel->i > u->file_size / item)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "storage '%.100s' claims %lld elements, more than the file holds",
                        key->s, (long long)numel->i);
    size_t index = u->storage_count;
    for (size_t i = u->storage_count; i-- > 0;) { /* a storage shared by views comes back by key */
        if (strcmp(u->storages[i].key, key->s) == 0) {
            index = i;
            break;
        }
    }
    if (index < u->storage_count) {
        const storage *s = &u->storages[index];
        if (s->dtype != cls->dtype || s->numel != numel->i)
            return dfc_fail(u->err, DFC_ERR_FORMAT, "storage '%.100s' is described twice, differently", key->s);
    } else {
        if (!grow(&u->storages, &u->storage_cap, u->storage_count + 1, sizeof *u->storages))
            return nomem(u);
        storage *s = &u->storages[u->storage_count];
        memset(s, 0, sizeof *s);
        if (!(s->key = malloc(key->len + 1)))
            return nomem(u);
        memcpy(s->key, key->s, key->len + 1);
        s->dtype = cls->dtype;
        s->numel = numel->i;
        u->storage_count++;
    }
    value *v = new_value(u, V_STORAGE);
    if (v)
        v->i = (int64_t)index;
    return push(u, v);
}

static int int_tuple(const value *t, int64_t *out, int max)
{
    if (t->type != V_TUPLE)
        return 0;
    for (size_t i = 0; i < t->count; i++) {
        if (t->items[i]->type != V_INT || t->items[i]->i < 0)
            return 0;
        if ((int)i < max)
            out[i] = t->items[i]->i;
    }
    return 1;
}

/* _rebuild_tensor(storage, offset, size, stride) and _v2(..., requires_grad, hooks[, metadata]). */
static dfc_status rebuild_tensor(unpickler *u, const value *args, int v2)
{
    size_t lo = v2 ? 6 : 4, hi = v2 ? 7 : 4;
    if (args->count < lo || args->count > hi)
        return fail_at(u, u->pos, "tensor rebuild with the wrong number of arguments");
    const value *st = args->items[0], *offset = args->items[1], *size = args->items[2], *stride = args->items[3];
    if (st->type != V_STORAGE || offset->type != V_INT || offset->i < 0)
        return fail_at(u, u->pos, "tensor rebuild without a storage and offset");
    if (size->type != V_TUPLE || stride->type != V_TUPLE || size->count != stride->count ||
        size->count > MAX_TENSOR_DIMS)
        return fail_at(u, u->pos, "tensor rebuild with mismatched size and stride");
    value *t = new_value(u, V_TENSOR);
    if (!t)
        return nomem(u);
    t->storage = st->i;
    t->offset = offset->i;
    t->ndim = (int)size->count;
    if (!int_tuple(size, t->shape, DFC_MAX_DIMS) || !int_tuple(stride, t->stride, DFC_MAX_DIMS))
        return fail_at(u, u->pos, "tensor size or stride is not a tuple of non-negative ints");
    return push(u, t);
}

static dfc_status reduce(unpickler *u)
{
    value *args = NULL, *fn = NULL;
    DFC_TRY(pop(u, &args));
    DFC_TRY(pop(u, &fn));
    if (fn->type != V_GLOBAL)
        return fail_at(u, u->pos, "REDUCE on a value that is not an allowed callable");
    if (args->type != V_TUPLE)
        return fail_at(u, u->pos, "REDUCE arguments are not a tuple");
    switch ((global_kind)fn->i) {
    case G_ORDERED_DICT:
        if (args->count != 0)
            return fail_at(u, u->pos, "OrderedDict called with arguments");
        return push(u, new_value(u, V_DICT));
    case G_REBUILD_TENSOR: return rebuild_tensor(u, args, 0);
    case G_REBUILD_TENSOR_V2: return rebuild_tensor(u, args, 1);
    case G_REBUILD_PARAMETER:
    case G_REBUILD_PARAMETER_WITH_STATE: {
        /* (data, requires_grad, backward_hooks[, state]): a Parameter is its data here */
        size_t n = fn->i == G_REBUILD_PARAMETER ? 3 : 4;
        if (args->count != n || args->items[0]->type != V_TENSOR)
            return fail_at(u, u->pos, "parameter rebuild with unexpected arguments");
        return push(u, args->items[0]);
    }
    case G_STORAGE_CLASS: break;
    }
    return dfc_fail(u->err, DFC_ERR_FORMAT, "pickle calls torch.%s, which is not supported", fn->global);
}

/* Items stack[first..sp) into a new tuple/list, popped. */
static dfc_status collect(unpickler *u, vtype type, size_t first)
{
    value *v = new_value(u, type);
    if (!v)
        return nomem(u);
    for (size_t i = first; i < u->sp; i++)
        DFC_TRY(append_item(u, v, u->stack[i]));
    u->sp = first;
    return push(u, v);
}

static dfc_status set_items(unpickler *u, value *dict, size_t first)
{
    if (dict->type != V_DICT)
        return fail_at(u, u->pos, "SETITEM on a value that is not a dict");
    if ((u->sp - first) % 2 != 0)
        return fail_at(u, u->pos, "SETITEMS with an odd number of items");
    for (size_t i = first; i < u->sp; i++)
        DFC_TRY(append_item(u, dict, u->stack[i]));
    u->sp = first;
    return DFC_OK;
}

static dfc_status append_items(unpickler *u, value *list, size_t first)
{
    if (list->type != V_LIST)
        return fail_at(u, u->pos, "APPEND on a value that is not a list");
    for (size_t i = first; i < u->sp; i++)
        DFC_TRY(append_item(u, list, u->stack[i]));
    u->sp = first;
    return DFC_OK;
}

static const char *opcode_name(uint8_t op)
{
    switch (op) {
    case 'c': return "GLOBAL";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'P': return "PERSID";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'p': return "PUT";
    case 'g': return "GET";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    }
    return NULL;
}

/* Runs one pickle from u->pos to its STOP; *result is the single value left. */
static dfc_status unpickle(unpickler *u, value **result)
{
    *result = NULL;
    u->sp = 0;
    u->mark_count = 0;
    u->memo_count = 0;
    char module[MAX_GLOBAL_LINE], name[MAX_GLOBAL_LINE];
    for (;;) {
        DFC_TRY(need(u, 1));
        size_t at = u->pos;
        uint8_t op = u->data[u->pos++];
        value *a = NULL, *b = NULL;
        size_t len = 0, first = 0;
        switch (op) {
        case 0x80: /* PROTO */
            DFC_TRY(need(u, 1));
            if (u->data[u->pos] > 5)
                return fail_at(u, at, "unsupported pickle protocol");
            u->pos++;
            break;
        case 0x95: /* FRAME: a length hint only; the data is contiguous here */ DFC_TRY(read_length(u, 8, &len)); break;
        case '.': /* STOP */
            if (u->sp != 1 || u->mark_count != 0)
                return fail_at(u, at, "STOP with an unbalanced stack");
            *result = u->stack[0];
            return DFC_OK;
        case '(': /* MARK */
            if (u->mark_count >= MAX_MARKS)
                return fail_at(u, at, "MARKs nested deeper than the limit");
            if (!grow(&u->marks, &u->mark_cap, u->mark_count + 1, sizeof *u->marks))
                return nomem(u);
            u->marks[u->mark_count++] = u->sp;
            break;
        case '0': /* POP */ DFC_TRY(pop(u, &a)); break;
        case '1': /* POP_MARK */
            DFC_TRY(pop_mark(u, &first));
            u->sp = first;
            break;
        case '2': /* DUP */
            DFC_TRY(top(u, &a));
            DFC_TRY(push(u, a));
            break;
        case 'N': DFC_TRY(push(u, new_value(u, V_NONE))); break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            a = new_value(u, V_BOOL);
            if (a)
                a->i = op == 0x88;
            DFC_TRY(push(u, a));
            break;
        case 'J': /* BININT */
            DFC_TRY(need(u, 4));
            DFC_TRY(push_int(u, (int32_t)dfc_rd32(u->data + u->pos)));
            u->pos += 4;
            break;
        case 'K': /* BININT1 */
            DFC_TRY(need(u, 1));
            DFC_TRY(push_int(u, u->data[u->pos]));
            u->pos += 1;
            break;
        case 'M': /* BININT2 */
            DFC_TRY(need(u, 2));
            DFC_TRY(push_int(u, dfc_rd16(u->data + u->pos)));
            u->pos += 2;
            break;
        case 0x8a: /* LONG1 */
            DFC_TRY(read_length(u, 1, &len));
            DFC_TRY(push_long(u, len));
            break;
        case 0x8b: /* LONG4 */
            DFC_TRY(read_length(u, 4, &len));
            DFC_TRY(push_long(u, len));
            break;
        case 'G': { /* BINFLOAT: big-endian double */
            DFC_TRY(need(u, 8));
            uint64_t bits = 0;
            for (int k = 0; k < 8; k++)
                bits = (bits << 8) | u->data[u->pos + k];
            u->pos += 8;
            a = new_value(u, V_FLOAT);
            if (a)
                memcpy(&a->f, &bits, sizeof a->f);
            DFC_TRY(push(u, a));
            break;
        }
        case 'X': /* BINUNICODE */
            DFC_TRY(read_length(u, 4, &len));
            DFC_TRY(push_string(u, V_STR, len));
            break;
        case 0x8c: /* SHORT_BINUNICODE */
            DFC_TRY(read_length(u, 1, &len));
            DFC_TRY(push_string(u, V_STR, len));
            break;
        case 0x8d: /* BINUNICODE8 */
            DFC_TRY(read_length(u, 8, &len));
            DFC_TRY(push_string(u, V_STR, len));
            break;
        case 'T': /* BINSTRING (Python 2 str; torch's legacy loader decodes it as text) */
            DFC_TRY(read_length(u, 4, &len));
            DFC_TRY(push_string(u, V_STR, len));
            break;
        case 'U': /* SHORT_BINSTRING */
            DFC_TRY(read_length(u, 1, &len));
            DFC_TRY(push_string(u, V_STR, len));
            break;
        case 'B': /* BINBYTES */
            DFC_TRY(read_length(u, 4, &len));
            DFC_TRY(push_string(u, V_BYTES, len));
            break;
        case 'C': /* SHORT_BINBYTES */
            DFC_TRY(read_length(u, 1, &len));
            DFC_TRY(push_string(u, V_BYTES, len));
            break;
        case 0x8e: /* BINBYTES8 */
            DFC_TRY(read_length(u, 8, &len));
            DFC_TRY(push_string(u, V_BYTES, len));
            break;
        case ')': DFC_TRY(push(u, new_value(u, V_TUPLE))); break; /* EMPTY_TUPLE */
        case 't':                                                 /* TUPLE */
            DFC_TRY(pop_mark(u, &first));
            DFC_TRY(collect(u, V_TUPLE, first));
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
            len = (size_t)(op - 0x84);
            if (u->sp < stack_floor(u) + len)
                return fail_at(u, at, "stack underflow");
            DFC_TRY(collect(u, V_TUPLE, u->sp - len));
            break;
        case ']': DFC_TRY(push(u, new_value(u, V_LIST))); break; /* EMPTY_LIST */
        case 'l':                                                /* LIST */
            DFC_TRY(pop_mark(u, &first));
            DFC_TRY(collect(u, V_LIST, first));
            break;
        case 'a': /* APPEND */
            DFC_TRY(pop(u, &b));
            DFC_TRY(top(u, &a));
            if (a->type != V_LIST)
                return fail_at(u, at, "APPEND on a value that is not a list");
            DFC_TRY(append_item(u, a, b));
            break;
        case 'e': /* APPENDS */
            DFC_TRY(pop_mark(u, &first));
            if (first == 0 || first <= stack_floor(u))
                return fail_at(u, at, "APPENDS without a list");
            DFC_TRY(append_items(u, u->stack[first - 1], first));
            break;
        case '}': DFC_TRY(push(u, new_value(u, V_DICT))); break; /* EMPTY_DICT */
        case 'd':                                                /* DICT */
            DFC_TRY(pop_mark(u, &first));
            a = new_value(u, V_DICT);
            if (!a)
                return nomem(u);
            DFC_TRY(set_items(u, a, first));
            DFC_TRY(push(u, a));
            break;
        case 's': /* SETITEM */
            if (u->sp < stack_floor(u) + 3)
                return fail_at(u, at, "stack underflow");
            DFC_TRY(set_items(u, u->stack[u->sp - 3], u->sp - 2));
            break;
        case 'u': /* SETITEMS */
            DFC_TRY(pop_mark(u, &first));
            if (first == 0 || first <= stack_floor(u))
                return fail_at(u, at, "SETITEMS without a dict");
            DFC_TRY(set_items(u, u->stack[first - 1], first));
            break;
        case 'q': /* BINPUT */
            DFC_TRY(need(u, 1));
            DFC_TRY(memo_put(u, u->data[u->pos++]));
            break;
        case 'r': /* LONG_BINPUT */
            DFC_TRY(need(u, 4));
            u->pos += 4;
            DFC_TRY(memo_put(u, dfc_rd32(u->data + u->pos - 4)));
            break;
        case 0x94: /* MEMOIZE */ DFC_TRY(memo_put(u, u->memo_count)); break;
        case 'h': /* BINGET */
            DFC_TRY(need(u, 1));
            DFC_TRY(memo_get(u, u->data[u->pos++]));
            break;
        case 'j': /* LONG_BINGET */
            DFC_TRY(need(u, 4));
            u->pos += 4;
            DFC_TRY(memo_get(u, dfc_rd32(u->data + u->pos - 4)));
            break;
        case 'c': /* GLOBAL */
            DFC_TRY(read_line(u, module));
            DFC_TRY(read_line(u, name));
            DFC_TRY(push_global(u, module, name));
            break;
        case 0x93: /* STACK_GLOBAL */
            DFC_TRY(pop(u, &b));
            DFC_TRY(pop(u, &a));
            if (a->type != V_STR || b->type != V_STR)
                return fail_at(u, at, "STACK_GLOBAL without two strings");
            DFC_TRY(push_global(u, a->s, b->s));
            break;
        case 'R': DFC_TRY(reduce(u)); break; /* REDUCE */
        case 'b':                            /* BUILD: object state (a state_dict's _metadata); not needed */
            DFC_TRY(pop(u, &b));
            DFC_TRY(top(u, &a));
            break;
        case 'Q': /* BINPERSID */
            DFC_TRY(pop(u, &a));
            DFC_TRY(persistent_load(u, a));
            break;
        default: {
            const char *known = opcode_name(op);
            char what[96];
            if (known)
                snprintf(what, sizeof what, "unsupported opcode %s (0x%02x)", known, op);
            else if (op >= 0x20 && op < 0x7f)
                snprintf(what, sizeof what, "unknown opcode 0x%02x ('%c')", op, op);
            else
                snprintf(what, sizeof what, "unknown opcode 0x%02x", op);
            return fail_at(u, at, what);
        }
        }
    }
}

/* ---- from the unpickled object to weights ---- */

static const value *dict_get(const value *d, const char *key)
{
    for (size_t i = d->count; i >= 2; i -= 2) /* the last assignment wins, as in Python */
        if (d->items[i - 2]->type == V_STR && strcmp(d->items[i - 2]->s, key) == 0)
            return d->items[i - 1];
    return NULL;
}

static dfc_status resolve_storage(unpickler *u, storage *s)
{
    if (s->bytes)
        return DFC_OK;
    if (!u->zip)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "storage '%.100s' has no data in the file", s->key);
    char name[512];
    if ((size_t)snprintf(name, sizeof name, "%s/data/%s", u->archive, s->key) >= sizeof name)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "storage key '%.100s' is too long", s->key);
    const dfc_zip_entry *e = dfc_zip_find(u->zip, name);
    if (!e)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "storage record '%s' is missing", name);
    uint64_t need_bytes = (uint64_t)s->numel * dfc_dtype_size(s->dtype);
    if (e->size != need_bytes)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "storage record '%s' has %llu bytes, %lld %s elements need %llu", name,
                        (unsigned long long)e->size, (long long)s->numel, dfc_dtype_name(s->dtype),
                        (unsigned long long)need_bytes);
    return dfc_zip_read(u->zip, e, &s->bytes, &s->owned, u->err);
}

static dfc_status add_tensor(unpickler *u, const char *name, const value *t, dfc_weights *w)
{
    storage *s = &u->storages[t->storage];
    if (t->ndim > DFC_MAX_DIMS)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "tensor '%.200s' has %d dimensions; at most %d are supported", name,
                        t->ndim, DFC_MAX_DIMS);
    int64_t numel;
    char dims[160];
    if (!dfc_checked_numel(t->ndim, t->shape, &numel))
        return dfc_fail(u->err, DFC_ERR_FORMAT, "tensor '%.200s' has an invalid shape", name);
    /* The last element a view reaches must lie in its storage; a broadcast view (zero strides) could claim far
     * more elements than the file holds, so it is refused rather than expanded. */
    if (numel > 0) {
        uint64_t last = (uint64_t)t->offset, step;
        int overflow = 0;
        for (int d = 0; d < t->ndim; d++) {
            overflow |= __builtin_mul_overflow((uint64_t)(t->shape[d] - 1), (uint64_t)t->stride[d], &step);
            overflow |= __builtin_add_overflow(last, step, &last);
        }
        if (overflow || last >= (uint64_t)s->numel)
            return dfc_fail(
                u->err, DFC_ERR_FORMAT,
                "tensor '%.200s' (shape %s, offset %lld) reaches past the %lld elements of storage '%.100s'", name,
                dfc_dims_str(t->ndim, t->shape, dims, sizeof dims), (long long)t->offset, (long long)s->numel, s->key);
        if (numel > s->numel)
            return dfc_fail(u->err, DFC_ERR_FORMAT,
                            "tensor '%.200s' has %lld elements but its storage only %lld (broadcast views are not "
                            "supported)",
                            name, (long long)numel, (long long)s->numel);
    }
    DFC_TRY(resolve_storage(u, s));
    float *out;
    DFC_TRY(dfc_weights_add(w, name, strlen(name), t->ndim, t->shape, &out, u->err));
    if (numel == 0)
        return DFC_OK;
    int contiguous = 1;
    int64_t expect = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != expect)
            contiguous = 0;
        expect *= t->shape[d];
    }
    const uint8_t *base = s->bytes + (size_t)t->offset * dfc_dtype_size(s->dtype);
    if (contiguous)
        dfc_convert_to_f32(out, base, s->dtype, numel);
    else
        dfc_gather_to_f32(out, base, s->dtype, t->ndim, t->shape, t->stride);
    return DFC_OK;
}

/* The state_dict is the top dict, or its 'state_dict' / 'model' / 'ema' entry (first that is a dict). */
static dfc_status load_state_dict(unpickler *u, const value *root, dfc_weights *w)
{
    if (root->type != V_DICT)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "checkpoint holds a %s, not a dict of tensors", type_name(root));
    const value *sd = root;
    static const char *const nested[] = {"state_dict", "model", "ema"};
    for (size_t i = 0; i < sizeof nested / sizeof nested[0]; i++) {
        const value *v = dict_get(root, nested[i]);
        if (v && v->type == V_DICT) {
            sd = v;
            break;
        }
    }
    size_t tensors = 0;
    for (size_t i = 0; i + 1 < sd->count; i += 2)
        tensors += sd->items[i]->type == V_STR && sd->items[i + 1]->type == V_TENSOR;
    if (tensors == 0) {
        char keys[400];
        size_t pos = 0;
        keys[0] = '\0';
        for (size_t i = 0; i + 1 < root->count && pos < sizeof keys - 1; i += 2)
            if (root->items[i]->type == V_STR)
                pos += (size_t)snprintf(keys + pos, sizeof keys - pos, "%s'%.60s'", pos ? ", " : "", root->items[i]->s);
        return dfc_fail(u->err, DFC_ERR_FORMAT,
                        "no tensors found at the top level or under 'state_dict', 'model' or 'ema' (top-level keys: "
                        "%s)",
                        pos ? keys : "none");
    }
    /* The wrappers' prefixes on every key, in any order: DataParallel / DistributedDataParallel's "module.",
     * torch.compile's "_orig_mod." (each strips at least 7 bytes, so this ends). */
    static const char *const wrappers[] = {"module.", "_orig_mod."};
    size_t skip = 0;
    for (int stripped = 1; stripped;) {
        stripped = 0;
        for (size_t k = 0; k < sizeof wrappers / sizeof wrappers[0] && !stripped; k++) {
            size_t n = strlen(wrappers[k]), prefixed = 0;
            for (size_t i = 0; i + 1 < sd->count; i += 2)
                if (sd->items[i]->type == V_STR && sd->items[i + 1]->type == V_TENSOR)
                    prefixed += sd->items[i]->len >= skip + n && strncmp(sd->items[i]->s + skip, wrappers[k], n) == 0;
            if (prefixed == tensors) {
                skip += n;
                stripped = 1;
            }
        }
    }
    for (size_t i = 0; i + 1 < sd->count; i += 2)
        if (sd->items[i]->type == V_STR && sd->items[i + 1]->type == V_TENSOR)
            DFC_TRY(add_tensor(u, sd->items[i]->s + skip, sd->items[i + 1], w));
    return DFC_OK;
}

/* ---- the two container formats ---- */

int dfc_torch_zip_archive(const dfc_zip *zip, char *buf, size_t len)
{
    for (size_t i = 0; i < zip->count; i++) {
        const char *n = zip->entries[i].name, *slash = strchr(n, '/');
        if (slash && slash != n && strcmp(slash, "/data.pkl") == 0 && (size_t)(slash - n) < len) {
            memcpy(buf, n, (size_t)(slash - n));
            buf[slash - n] = '\0';
            return 1;
        }
    }
    return 0;
}

dfc_status dfc_torch_zip_parse(const dfc_zip *zip, const char *archive, dfc_weights *w, dfc_error *err)
{
    unpickler u;
    memset(&u, 0, sizeof u);
    u.err = err;
    u.zip = zip;
    u.archive = archive;
    u.file_size = zip->size;
    char name[300];
    const uint8_t *bytes;
    uint8_t *owned = NULL;
    dfc_status st = DFC_OK;

    snprintf(name, sizeof name, "%s/byteorder", archive);
    const dfc_zip_entry *e = dfc_zip_find(zip, name);
    if (e) {
        st = dfc_zip_read(zip, e, &bytes, &owned, err);
        if (st == DFC_OK && !(e->size == 6 && memcmp(bytes, "little", 6) == 0))
            st = dfc_fail(err, DFC_ERR_FORMAT, "checkpoint byte order is '%.*s'; only little-endian is supported",
                          (int)(e->size < 16 ? e->size : 16), (const char *)bytes);
        free(owned);
        owned = NULL;
        if (st != DFC_OK)
            return st;
    }
    snprintf(name, sizeof name, "%s/data.pkl", archive);
    e = dfc_zip_find(zip, name);
    if (!e)
        return dfc_fail(err, DFC_ERR_FORMAT, "'%s' is missing", name);
    DFC_TRY(dfc_zip_read(zip, e, &bytes, &owned, err));
    u.data = bytes;
    u.size = (size_t)e->size;
    value *root;
    st = unpickle(&u, &root);
    if (st == DFC_OK && u.pos != u.size)
        st = fail_at(&u, u.pos, "trailing bytes after STOP");
    if (st == DFC_OK)
        st = load_state_dict(&u, root, w);
    unpickler_free(&u);
    free(owned);
    return st;
}

static const uint8_t torch_magic[] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                      0x20, 0x6a, 0xa8, 0x50, 0x19}; /* 0x1950a86a20f9469cfc6c */

static dfc_status legacy_headers(unpickler *u)
{
    value *v = NULL;
    DFC_TRY(unpickle(u, &v));
    if (v->type != V_BIGINT || v->len != sizeof torch_magic || memcmp(v->s, torch_magic, sizeof torch_magic) != 0)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "a pickle, but not a PyTorch checkpoint (no torch magic number)");
    DFC_TRY(unpickle(u, &v));
    if (v->type != V_INT || v->i != 1001)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "unsupported legacy checkpoint protocol version");
    DFC_TRY(unpickle(u, &v));
    if (v->type != V_DICT)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "legacy checkpoint sys_info is not a dict");
    const value *little = dict_get(v, "little_endian");
    if (little && little->type == V_BOOL && !little->i)
        return dfc_fail(u->err, DFC_ERR_FORMAT, "checkpoint was saved big-endian; only little-endian is supported");
    return DFC_OK;
}

dfc_status dfc_torch_legacy_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err)
{
    unpickler u;
    memset(&u, 0, sizeof u);
    u.err = err;
    u.data = data;
    u.size = size;
    u.file_size = size;
    value *root = NULL, *keys = NULL;
    dfc_status st = legacy_headers(&u);
    if (st == DFC_OK)
        st = unpickle(&u, &root);
    if (st == DFC_OK)
        st = unpickle(&u, &keys);
    if (st == DFC_OK && keys->type != V_LIST)
        st = dfc_fail(err, DFC_ERR_FORMAT, "legacy checkpoint storage keys are not a list");
    /* The storages follow in the order of the key list: element count, then the bytes. */
    for (size_t k = 0; st == DFC_OK && k < keys->count; k++) {
        const value *key = keys->items[k];
        storage *s = NULL;
        for (size_t i = 0; key->type == V_STR && i < u.storage_count && !s; i++)
            if (strcmp(u.storages[i].key, key->s) == 0)
                s = &u.storages[i];
        if (!s || s->bytes) {
            st = dfc_fail(err, DFC_ERR_FORMAT,
                          "legacy checkpoint lists storage %zu, which no tensor uses or which "
                          "is listed twice",
                          k);
            break;
        }
        if (size - u.pos < 8) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "storage '%.100s' is truncated (file ends at its header)", s->key);
            break;
        }
        uint64_t count = dfc_rd64(data + u.pos);
        size_t item = dfc_dtype_size(s->dtype);
        if (count != (uint64_t)s->numel) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "storage '%.100s' has %llu elements in the file, %lld in the pickle",
                          s->key, (unsigned long long)count, (long long)s->numel);
            break;
        }
        if (count > (size - u.pos - 8) / item) {
            st = dfc_fail(err, DFC_ERR_FORMAT, "storage '%.100s' is truncated (%llu %s elements, %zu bytes left)",
                          s->key, (unsigned long long)count, dfc_dtype_name(s->dtype), size - u.pos - 8);
            break;
        }
        s->bytes = data + u.pos + 8;
        u.pos += 8 + (size_t)count * item;
    }
    if (st == DFC_OK && u.pos != size)
        st = dfc_fail(err, DFC_ERR_FORMAT, "%zu unexpected bytes after the last storage", size - u.pos);
    if (st == DFC_OK)
        st = load_state_dict(&u, root, w);
    unpickler_free(&u);
    return st;
}

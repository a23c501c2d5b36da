/* Every oneDNN call in diffice lives in this file: the engine and stream of the "cpu" backend, matrix products,
 * convolutions and linear layers. Tensors are NCHW at the interface (a forward convolution's x or y may be NHWC,
 * dfc_conv2d_params); primitives pick their own layouts and we reorder at the boundary where they differ (oneDNN's
 * convolutions on AVX2 and AVX-512 choose NHWC, so an NHWC x or y is passed as it is).
 *
 * Creating a oneDNN primitive descriptor costs far more than running a small primitive, so each backend keeps a
 * bounded cache of ready-to-run entries keyed by (op kind, shapes, params): the primitive, its descriptor, the
 * memory objects of its arguments (the caller's plain layout and, where the primitive chose a blocked one, its
 * own layout plus a reorder between them). Blocked copies and the primitive's scratchpad live in one workspace
 * buffer per backend that grows to the largest call and is reused. A backend is used by one thread at a time, so
 * nothing here is locked; two backends share nothing. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oneapi/dnnl/dnnl.h>

#include "conv_check.h"
#include "cpu.h"

#define PRIM_CACHE_CAPACITY 128 /* distinct (op, shape) pairs kept; a UNet has a few dozen conv shapes */
#define PRIM_MAX_SLOTS 4        /* tensor arguments of one primitive (src, weights, bias, dst) */
#define WORKSPACE_ALIGN 4096

typedef enum {
    PRIM_CONV_FORWARD = 1,
    PRIM_CONV_BACKWARD_DATA,
    PRIM_CONV_BACKWARD_WEIGHTS,
    PRIM_MATMUL,
} prim_kind;

/* Compared with memcmp: always built from a zeroed struct, no padding (all int64). */
typedef struct prim_key {
    int64_t kind;
    int64_t v[19];
} prim_key;

/* One tensor argument of a cached primitive. */
typedef struct arg_slot {
    int arg; /* DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, ... */
    int is_output;
    dnnl_memory_t user;       /* the caller's dense row-major buffer; its handle is set on every call */
    dnnl_memory_t inner;      /* the layout the primitive chose, in the workspace; NULL when it is the caller's */
    dnnl_primitive_t reorder; /* user -> inner for inputs, inner -> user for outputs; NULL without inner */
    size_t offset;            /* of inner in the workspace */
} arg_slot;

typedef struct prim_entry {
    prim_key key;
    uint64_t last_use;
    dnnl_primitive_desc_t hint_pd; /* the forward descriptor a backward one was derived from, kept alive with it */
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    arg_slot slots[PRIM_MAX_SLOTS]; /* in the order the op passes its buffers to entry_execute */
    int nslots;
    dnnl_memory_t scratchpad; /* NULL when the primitive needs none */
    size_t scratchpad_offset;
    size_t workspace_size; /* bytes of workspace one execution needs */
} prim_entry;

struct dfc_cpu_state {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int num_threads;
    prim_entry *cache[PRIM_CACHE_CAPACITY];
    int cache_count;
    uint64_t clock; /* ticks on every cache use: least recently used entries are evicted first */
    void *workspace;
    size_t workspace_size;
};

static dfc_status dnnl_check(dnnl_status_t s, const char *what, dfc_error *err)
{
    if (s == dnnl_success)
        return DFC_OK;
    if (s == dnnl_out_of_memory)
        return dfc_fail(err, DFC_ERR_NOMEM, "oneDNN: %s: out of memory", what);
    return dfc_fail(err, DFC_ERR_BACKEND, "oneDNN: %s failed with status %d", what, (int)s);
}

#define DNNL_TRY(call, what)                                  \
    do {                                                      \
        if ((st = dnnl_check((call), (what), err)) != DFC_OK) \
            goto done;                                        \
    } while (0)

/* DFC_TRY for functions with a cleanup label. */
#define TRY_GOTO(expr)               \
    do {                             \
        if ((st = (expr)) != DFC_OK) \
            goto done;               \
    } while (0)

static void entry_destroy(prim_entry *e);

dfc_status dfc_cpu_state_create(int num_threads, dfc_cpu_state **out, dfc_error *err)
{
    dfc_status st = DFC_OK;
    dfc_cpu_state *s = calloc(1, sizeof *s);
    if (!s)
        return dfc_fail(err, DFC_ERR_NOMEM, "cpu backend: out of memory");
    s->num_threads = num_threads;
    DNNL_TRY(dnnl_engine_create(&s->engine, dnnl_cpu, 0), "engine creation");
    DNNL_TRY(dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags), "stream creation");
    *out = s;
    return DFC_OK;
done:
    dfc_cpu_state_destroy(s);
    return st;
}

void dfc_cpu_state_destroy(dfc_cpu_state *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->cache_count; i++)
        entry_destroy(s->cache[i]);
    free(s->workspace);
    if (s->stream)
        dnnl_stream_destroy(s->stream);
    if (s->engine)
        dnnl_engine_destroy(s->engine);
    free(s);
}

size_t dfc_cpu_workspace_bytes(const dfc_cpu_state *s) { return s->workspace_size; }

static dfc_status workspace_reserve(dfc_backend *be, size_t size, dfc_error *err);

dfc_status dfc_cpu_workspace(dfc_backend *be, size_t bytes, void **out, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    DFC_TRY(workspace_reserve(be, bytes, err));
    *out = s->workspace;
    return DFC_OK;
}

/* oneDNN's OpenMP runtime uses the calling thread's thread count (also when it generates kernels). */
static void set_threads(const dfc_backend *be)
{
#ifdef _OPENMP
    omp_set_num_threads(be->num_threads);
#else
    (void)be;
#endif
}

/* ---- the primitive cache ---- */

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static void entry_destroy(prim_entry *e)
{
    if (!e)
        return;
    for (int i = 0; i < e->nslots; i++) {
        if (e->slots[i].reorder)
            dnnl_primitive_destroy(e->slots[i].reorder);
        if (e->slots[i].inner)
            dnnl_memory_destroy(e->slots[i].inner);
        if (e->slots[i].user)
            dnnl_memory_destroy(e->slots[i].user);
    }
    if (e->scratchpad)
        dnnl_memory_destroy(e->scratchpad);
    if (e->prim)
        dnnl_primitive_destroy(e->prim);
    if (e->pd)
        dnnl_primitive_desc_destroy(e->pd);
    if (e->hint_pd)
        dnnl_primitive_desc_destroy(e->hint_pd);
    free(e);
}

static prim_entry *cache_find(dfc_cpu_state *s, const prim_key *key)
{
    for (int i = 0; i < s->cache_count; i++) {
        if (memcmp(&s->cache[i]->key, key, sizeof *key) == 0) {
            s->cache[i]->last_use = ++s->clock;
            return s->cache[i];
        }
    }
    return NULL;
}

/* Takes ownership of e; when full, evicts the least recently used entry. */
static void cache_insert(dfc_cpu_state *s, prim_entry *e)
{
    e->last_use = ++s->clock;
    if (s->cache_count < PRIM_CACHE_CAPACITY) {
        s->cache[s->cache_count++] = e;
        return;
    }
    int oldest = 0;
    for (int i = 1; i < s->cache_count; i++)
        if (s->cache[i]->last_use < s->cache[oldest]->last_use)
            oldest = i;
    entry_destroy(s->cache[oldest]);
    s->cache[oldest] = e;
}

/* Adds an argument of e->pd: the caller's buffer is described by user_md; if the primitive chose another layout
 * for it, a workspace region and a reorder are set up. */
static dfc_status entry_add_slot(dfc_cpu_state *s, prim_entry *e, int arg, int is_output,
                                 const_dnnl_memory_desc_t user_md, dfc_error *err)
{
    dfc_status st = DFC_OK;
    dnnl_primitive_desc_t reorder_pd = NULL;
    arg_slot *slot = &e->slots[e->nslots++];
    slot->arg = arg;
    slot->is_output = is_output;
    DNNL_TRY(dnnl_memory_create(&slot->user, user_md, s->engine, DNNL_MEMORY_NONE), "argument memory");
    const_dnnl_memory_desc_t chosen = dnnl_primitive_desc_query_md(e->pd, dnnl_query_exec_arg_md, arg);
    if (!chosen || dnnl_memory_desc_equal(chosen, user_md))
        return DFC_OK;
    DNNL_TRY(dnnl_memory_create(&slot->inner, chosen, s->engine, DNNL_MEMORY_NONE), "argument memory");
    slot->offset = e->workspace_size;
    e->workspace_size += round_up(dnnl_memory_desc_get_size(chosen), WORKSPACE_ALIGN);
    DNNL_TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, is_output ? chosen : user_md, s->engine,
                                                is_output ? user_md : chosen, s->engine, NULL),
             "reorder");
    DNNL_TRY(dnnl_primitive_create(&slot->reorder, reorder_pd), "reorder");
done:
    if (reorder_pd)
        dnnl_primitive_desc_destroy(reorder_pd);
    return st;
}

/* Creates e->prim from e->pd and sizes its scratchpad; call after the pd exists, before or after the slots. */
static dfc_status entry_finish(dfc_cpu_state *s, prim_entry *e, const char *what, dfc_error *err)
{
    dfc_status st = DFC_OK;
    DNNL_TRY(dnnl_primitive_create(&e->prim, e->pd), what);
    const_dnnl_memory_desc_t scratch_md = dnnl_primitive_desc_query_md(e->pd, dnnl_query_scratchpad_md, 0);
    if (scratch_md && dnnl_memory_desc_get_size(scratch_md) > 0) {
        DNNL_TRY(dnnl_memory_create(&e->scratchpad, scratch_md, s->engine, DNNL_MEMORY_NONE), what);
        e->scratchpad_offset = e->workspace_size;
        e->workspace_size += round_up(dnnl_memory_desc_get_size(scratch_md), WORKSPACE_ALIGN);
    }
done:
    return st;
}

/* Grows the workspace to at least size bytes (counted in be's memory budget while it is held). */
static dfc_status workspace_reserve(dfc_backend *be, size_t size, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    if (size <= s->workspace_size)
        return DFC_OK;
    free(s->workspace);
    s->workspace = NULL;
    dfc_backend_release(be, s->workspace_size);
    s->workspace_size = 0;
    const size_t rounded = round_up(size, WORKSPACE_ALIGN);
    DFC_TRY(dfc_backend_reserve(be, rounded, "cpu backend: the oneDNN workspace", err));
    s->workspace = aligned_alloc(WORKSPACE_ALIGN, rounded);
    if (!s->workspace) {
        dfc_backend_release(be, rounded);
        return dfc_fail(err, DFC_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes of oneDNN workspace", size);
    }
    s->workspace_size = rounded;
    return DFC_OK;
}

/* Runs e on the callers' buffers (one per slot, in slot order): reorders inputs into the primitive's layouts,
 * executes, reorders outputs back. Inputs are only read, despite the non-const handles oneDNN takes. */
static dfc_status entry_execute(dfc_backend *be, prim_entry *e, float *const *buffers, const char *what, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    dfc_status st = DFC_OK;
    DFC_TRY(workspace_reserve(be, e->workspace_size, err));
    char *workspace = s->workspace;
    dnnl_exec_arg_t args[PRIM_MAX_SLOTS + 1];
    int nargs = 0;
    for (int i = 0; i < e->nslots; i++) {
        arg_slot *slot = &e->slots[i];
        DNNL_TRY(dnnl_memory_set_data_handle(slot->user, buffers[i]), what);
        if (slot->inner)
            DNNL_TRY(dnnl_memory_set_data_handle(slot->inner, workspace + slot->offset), what);
        args[nargs++] = (dnnl_exec_arg_t){slot->arg, slot->inner ? slot->inner : slot->user};
    }
    if (e->scratchpad) {
        DNNL_TRY(dnnl_memory_set_data_handle(e->scratchpad, workspace + e->scratchpad_offset), what);
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->scratchpad};
    }
    set_threads(be);
    for (int i = 0; i < e->nslots; i++) {
        arg_slot *slot = &e->slots[i];
        if (slot->reorder && !slot->is_output) {
            dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, slot->user}, {DNNL_ARG_TO, slot->inner}};
            DNNL_TRY(dnnl_primitive_execute(slot->reorder, s->stream, 2, r), what);
        }
    }
    DNNL_TRY(dnnl_primitive_execute(e->prim, s->stream, nargs, args), what);
    for (int i = 0; i < e->nslots; i++) {
        arg_slot *slot = &e->slots[i];
        if (slot->reorder && slot->is_output) {
            dnnl_exec_arg_t r[] = {{DNNL_ARG_FROM, slot->inner}, {DNNL_ARG_TO, slot->user}};
            DNNL_TRY(dnnl_primitive_execute(slot->reorder, s->stream, 2, r), what);
        }
    }
    DNNL_TRY(dnnl_stream_wait(s->stream), what);
done:
    return st;
}

/* Attributes of every cached primitive: the scratchpad comes from our workspace, not a per-call allocation. */
static dfc_status user_scratchpad_attr(dnnl_primitive_attr_t *attr, dfc_error *err)
{
    dfc_status st = DFC_OK;
    DNNL_TRY(dnnl_primitive_attr_create(attr), "primitive attributes");
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user), "primitive attributes");
done:
    return st;
}

/* ---- matrix products ---- */

/* Below this many rows of A, oneDNN's default (brgemm) matmul spends most of its time repacking B on every call;
 * its gemm-based implementation reads B in place: 2-5x faster for 1-10 rows on AVX-512, and no slower up to ~16. */
#define MATMUL_FEW_ROWS 16

/* Moves pd to oneDNN's gemm-based implementation if it offers one; otherwise leaves the default. */
static dfc_status prefer_gemm_impl(dnnl_engine_t engine, dnnl_primitive_desc_t *pd, const_dnnl_memory_desc_t a_md,
                                   const_dnnl_memory_desc_t b_md, const_dnnl_memory_desc_t bias_md,
                                   const_dnnl_memory_desc_t c_md, const_dnnl_primitive_attr_t attr, dfc_error *err)
{
    dfc_status st = DFC_OK;
    do {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(*pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
            strncmp(impl, "gemm:", 5) == 0)
            return DFC_OK;
    } while (dnnl_primitive_desc_next_impl(*pd) == dnnl_success);
    /* None found: the iteration ended on the slowest implementation; start over from the default. */
    dnnl_primitive_desc_destroy(*pd);
    *pd = NULL;
    DNNL_TRY(dnnl_matmul_primitive_desc_create(pd, engine, a_md, b_md, bias_md, c_md, attr), "matmul");
done:
    return st;
}

/* A matmul C[b] = alpha A[b] B[b] (+ bias) (+ C[b] when beta = 1), strides as in dfc_dnnl_matmul; bias (n) or
 * NULL. Slots: A, B, [bias], C. */
static dfc_status matmul_entry(dfc_backend *be, const prim_key *key, int64_t batch, int64_t m, int64_t n, int64_t k,
                               const int64_t *a_strides, const int64_t *b_strides, const int64_t *c_strides,
                               int has_bias, float alpha, float beta, prim_entry **out, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    dfc_status st = DFC_OK;
    dnnl_memory_desc_t a_md = NULL, b_md = NULL, bias_md = NULL, c_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    prim_entry *e = calloc(1, sizeof *e);
    if (!e)
        return dfc_fail(err, DFC_ERR_NOMEM, "matmul: out of memory");
    e->key = *key;

    dnnl_dims_t a_dims = {batch, m, k}, b_dims = {batch, k, n}, c_dims = {batch, m, n}, bias_dims = {1, 1, n};
    dnnl_dims_t a_st = {a_strides[0], a_strides[1], a_strides[2]}, b_st = {b_strides[0], b_strides[1], b_strides[2]};
    dnnl_dims_t c_st = {c_strides[0], c_strides[1], c_strides[2]}, bias_strides = {n, n, 1};
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&a_md, 3, a_dims, dnnl_f32, a_st), "matmul A descriptor");
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&b_md, 3, b_dims, dnnl_f32, b_st), "matmul B descriptor");
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&c_md, 3, c_dims, dnnl_f32, c_st), "matmul C descriptor");
    if (has_bias)
        DNNL_TRY(dnnl_memory_desc_create_with_strides(&bias_md, 3, bias_dims, dnnl_f32, bias_strides),
                 "matmul bias descriptor");
    TRY_GOTO(user_scratchpad_attr(&attr, err));
    if (alpha != 1.0f || beta != 0.0f) {
        DNNL_TRY(dnnl_post_ops_create(&post_ops), "matmul post-ops");
        /* Order matters: scale the product first, then add the old C. */
        if (alpha != 1.0f)
            DNNL_TRY(dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_linear, alpha, 0.0f), "matmul scale");
        if (beta != 0.0f)
            DNNL_TRY(dnnl_post_ops_append_sum(post_ops, 1.0f, 0, dnnl_data_type_undef), "matmul accumulate");
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, post_ops), "matmul post-ops");
    }
    DNNL_TRY(dnnl_matmul_primitive_desc_create(&e->pd, s->engine, a_md, b_md, bias_md, c_md, attr), "matmul");
    if (m < MATMUL_FEW_ROWS)
        TRY_GOTO(prefer_gemm_impl(s->engine, &e->pd, a_md, b_md, bias_md, c_md, attr, err));
    TRY_GOTO(entry_finish(s, e, "matmul", err));
    TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_SRC, 0, a_md, err));
    TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_WEIGHTS, 0, b_md, err));
    if (has_bias)
        TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_BIAS, 0, bias_md, err));
    TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DST, 1, c_md, err));
done:
    if (st != DFC_OK) {
        entry_destroy(e);
        e = NULL;
    }
    *out = e;
    if (post_ops)
        dnnl_post_ops_destroy(post_ops);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (a_md)
        dnnl_memory_desc_destroy(a_md);
    if (b_md)
        dnnl_memory_desc_destroy(b_md);
    if (bias_md)
        dnnl_memory_desc_destroy(bias_md);
    if (c_md)
        dnnl_memory_desc_destroy(c_md);
    return st;
}

/* Cached matmul with an optional bias (n) added to every row. */
static dfc_status matmul(dfc_backend *be, int64_t batch, int64_t m, int64_t n, int64_t k, dfc_matmul_operand a,
                         dfc_matmul_operand b, const float *bias, dfc_matmul_operand c, float alpha, float beta,
                         dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    prim_key key;
    memset(&key, 0, sizeof key);
    int32_t alpha_bits, beta_bits;
    memcpy(&alpha_bits, &alpha, sizeof alpha_bits);
    memcpy(&beta_bits, &beta, sizeof beta_bits);
    const int64_t v[] = {batch,
                         m,
                         n,
                         k,
                         a.strides[0],
                         a.strides[1],
                         a.strides[2],
                         b.strides[0],
                         b.strides[1],
                         b.strides[2],
                         c.strides[0],
                         c.strides[1],
                         c.strides[2],
                         alpha_bits,
                         beta_bits,
                         bias != NULL};
    key.kind = PRIM_MATMUL;
    memcpy(key.v, v, sizeof v);
    set_threads(be);
    prim_entry *e = cache_find(s, &key);
    if (!e) {
        DFC_TRY(matmul_entry(be, &key, batch, m, n, k, a.strides, b.strides, c.strides, bias != NULL, alpha, beta, &e,
                             err));
        cache_insert(s, e);
    }
    float *buffers[PRIM_MAX_SLOTS] = {a.data, b.data};
    int i = 2;
    if (bias)
        buffers[i++] = (float *)bias;
    buffers[i] = c.data;
    return entry_execute(be, e, buffers, "matmul", err);
}

dfc_status dfc_dnnl_matmul(dfc_backend *be, int64_t batch, int64_t m, int64_t n, int64_t k, dfc_matmul_operand a,
                           dfc_matmul_operand b, dfc_matmul_operand c, float alpha, float beta, dfc_error *err)
{
    if (beta != 0.0f && beta != 1.0f)
        return dfc_fail(err, DFC_ERR_VALUE, "matmul: beta must be 0 or 1, got %g", (double)beta);
    return matmul(be, batch, m, n, k, a, b, NULL, c, alpha, beta, err);
}

/* ---- convolution ---- */

/* Key and primitive of one convolution direction: x (N, Ci, H, W), weight (Co, Ci, KH, KW), y (N, Co, Ho, Wo).
 * Slots: forward x, weight, [bias], y; backward data dy, weight, dx; backward weights dy, x, dweight, [dbias]. */
static dfc_status conv_entry(dfc_backend *be, const prim_key *key, prim_kind kind, const int64_t *x_shape,
                             const int64_t *w_shape, const int64_t *y_shape, int has_bias, dfc_conv2d_params p,
                             prim_entry **out, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    dfc_status st = DFC_OK;
    dnnl_memory_desc_t x_any = NULL, w_any = NULL, y_any = NULL, x_md = NULL, w_md = NULL, y_md = NULL, bias_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    prim_entry *e = calloc(1, sizeof *e);
    if (!e)
        return dfc_fail(err, DFC_ERR_NOMEM, "conv2d: out of memory");
    e->key = *key;

    dnnl_dims_t x_dims = {x_shape[0], x_shape[1], x_shape[2], x_shape[3]};
    dnnl_dims_t w_dims = {w_shape[0], w_shape[1], w_shape[2], w_shape[3]};
    dnnl_dims_t y_dims = {y_shape[0], y_shape[1], y_shape[2], y_shape[3]};
    dnnl_dims_t bias_dims = {w_shape[0]};
    dnnl_dims_t strides = {p.stride_h, p.stride_w}, dilates = {0, 0}, pad_l = {p.pad_h, p.pad_w};
    /* Right padding that exactly reaches the last window (may be below pad_l, even negative, when the stride
     * skips trailing input rows): the input rows no window touches get zero gradient. */
    dnnl_dims_t pad_r = {(y_shape[2] - 1) * p.stride_h + w_shape[2] - x_shape[2] - p.pad_h,
                         (y_shape[3] - 1) * p.stride_w + w_shape[3] - x_shape[3] - p.pad_w};
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&x_any, 4, x_dims, dnnl_f32, dnnl_format_tag_any), "conv2d");
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&w_any, 4, w_dims, dnnl_f32, dnnl_format_tag_any), "conv2d");
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&y_any, 4, y_dims, dnnl_f32, dnnl_format_tag_any), "conv2d");
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&x_md, 4, x_dims, dnnl_f32, p.x_nhwc ? dnnl_nhwc : dnnl_nchw), "conv2d");
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&w_md, 4, w_dims, dnnl_f32, dnnl_oihw), "conv2d");
    DNNL_TRY(dnnl_memory_desc_create_with_tag(&y_md, 4, y_dims, dnnl_f32, p.y_nhwc ? dnnl_nhwc : dnnl_nchw), "conv2d");
    if (has_bias)
        DNNL_TRY(dnnl_memory_desc_create_with_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_a), "conv2d");
    TRY_GOTO(user_scratchpad_attr(&attr, err));

    if (kind == PRIM_CONV_FORWARD) {
        DNNL_TRY(dnnl_convolution_forward_primitive_desc_create(&e->pd, s->engine, dnnl_forward_inference,
                                                                dnnl_convolution_direct, x_any, w_any, bias_md, y_any,
                                                                strides, dilates, pad_l, pad_r, attr),
                 "conv2d forward");
        TRY_GOTO(entry_finish(s, e, "conv2d forward", err));
        TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_SRC, 0, x_md, err));
        TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_WEIGHTS, 0, w_md, err));
        if (has_bias)
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_BIAS, 0, bias_md, err));
        TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DST, 1, y_md, err));
    } else {
        /* Backward descriptors need the forward one they belong to as a hint for their layouts. */
        DNNL_TRY(dnnl_convolution_forward_primitive_desc_create(&e->hint_pd, s->engine, dnnl_forward_training,
                                                                dnnl_convolution_direct, x_any, w_any, bias_md, y_any,
                                                                strides, dilates, pad_l, pad_r, NULL),
                 "conv2d backward (forward hint)");
        if (kind == PRIM_CONV_BACKWARD_DATA) {
            DNNL_TRY(dnnl_convolution_backward_data_primitive_desc_create(&e->pd, s->engine, dnnl_convolution_direct,
                                                                          x_any, w_any, y_any, strides, dilates, pad_l,
                                                                          pad_r, e->hint_pd, attr),
                     "conv2d backward data");
            TRY_GOTO(entry_finish(s, e, "conv2d backward data", err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DIFF_DST, 0, y_md, err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_WEIGHTS, 0, w_md, err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DIFF_SRC, 1, x_md, err));
        } else {
            DNNL_TRY(dnnl_convolution_backward_weights_primitive_desc_create(&e->pd, s->engine, dnnl_convolution_direct,
                                                                             x_any, w_any, bias_md, y_any, strides,
                                                                             dilates, pad_l, pad_r, e->hint_pd, attr),
                     "conv2d backward weights");
            TRY_GOTO(entry_finish(s, e, "conv2d backward weights", err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DIFF_DST, 0, y_md, err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_SRC, 0, x_md, err));
            TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DIFF_WEIGHTS, 1, w_md, err));
            if (has_bias)
                TRY_GOTO(entry_add_slot(s, e, DNNL_ARG_DIFF_BIAS, 1, bias_md, err));
        }
    }
done:
    if (st != DFC_OK) {
        entry_destroy(e);
        e = NULL;
    }
    *out = e;
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_t mds[] = {x_any, w_any, y_any, x_md, w_md, y_md, bias_md};
    for (size_t i = 0; i < sizeof mds / sizeof mds[0]; i++)
        if (mds[i])
            dnnl_memory_desc_destroy(mds[i]);
    return st;
}

/* A convolution whose images would need more than this many bytes of copies in the primitive's layout (input and
 * output, both reordered) runs in batch slices: the copies, which the backend keeps for the next call, shrink with
 * the slice, and each image's arithmetic is the same. At 224x288 a 256 -> 128 channel conv copies ~100 MB per image:
 * unsliced, a batch of 10 would leave up to ~1 GB of copies with the backend between calls. */
#define CONV_SLICE_BYTES ((int64_t)128 << 20)

/* Images per slice for a convolution of n images with x and y of these per-image sizes (elements). */
static int64_t conv_slice_images(int64_t n, int64_t x_per_image, int64_t y_per_image)
{
    const int64_t per_image = (x_per_image + y_per_image) * (int64_t)sizeof(float);
    if (n <= 1 || n * per_image <= CONV_SLICE_BYTES)
        return n;
    int64_t most = CONV_SLICE_BYTES / per_image;
    if (most < 1)
        most = 1;
    const int64_t slices = (n + most - 1) / most;
    return (n + slices - 1) / slices; /* even slices: at most two distinct shapes to cache */
}

/* Finds or builds the entry for one convolution direction and runs it on buffers (in that entry's slot order).
 * image_strides[i]: elements between consecutive images of buffers[i] (0 for weights and bias), or NULL for a
 * direction that cannot be sliced (the weight gradient sums over the batch). */
static dfc_status conv_run(dfc_backend *be, prim_kind kind, const dfc_tensor *x, const dfc_tensor *weight,
                           const dfc_tensor *y, int has_bias, dfc_conv2d_params p, float *const *buffers,
                           const int64_t *image_strides, int nbuffers, const char *what, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    const int64_t n = x->shape[0];
    const int64_t slice = image_strides ? conv_slice_images(n, dfc_inner_size(x, 1), dfc_inner_size(y, 1)) : n;
    set_threads(be);
    for (int64_t first = 0; first < n; first += slice) {
        const int64_t count = n - first < slice ? n - first : slice;
        prim_key key;
        memset(&key, 0, sizeof key);
        key.kind = kind;
        int64_t x_shape[4], y_shape[4];
        for (int i = 0; i < 4; i++) {
            x_shape[i] = i == 0 ? count : x->shape[i];
            y_shape[i] = i == 0 ? count : y->shape[i];
            key.v[i] = x_shape[i];
            key.v[4 + i] = weight->shape[i];
            key.v[8 + i] = y_shape[i];
        }
        key.v[12] = p.stride_h;
        key.v[13] = p.stride_w;
        key.v[14] = p.pad_h;
        key.v[15] = p.pad_w;
        key.v[16] = has_bias;
        key.v[17] = p.x_nhwc;
        key.v[18] = p.y_nhwc;
        prim_entry *e = cache_find(s, &key);
        if (!e) {
            DFC_TRY(conv_entry(be, &key, kind, x_shape, weight->shape, y_shape, has_bias, p, &e, err));
            cache_insert(s, e);
        }
        float *sliced[PRIM_MAX_SLOTS];
        for (int i = 0; i < nbuffers; i++)
            sliced[i] = buffers[i] && image_strides ? buffers[i] + first * image_strides[i] : buffers[i];
        DFC_TRY(entry_execute(be, e, sliced, what, err));
    }
    return DFC_OK;
}

dfc_status cpu_conv2d_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_conv2d_params p, dfc_tensor *y, dfc_error *err)
{
    if (bias && !bias->data)
        bias = NULL;
    DFC_TRY(dfc_conv2d_check("conv2d_forward", x, "x", weight, "weight", bias, "bias", y, "y", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_forward", p, 1, err));
    if (dfc_winograd_applies(x, weight, y, p))
        return dfc_winograd_conv2d(be, x, weight, 0, bias, p.x_nhwc, p.y_nhwc, y, err);
    float *buffers[PRIM_MAX_SLOTS] = {x->data, weight->data};
    int64_t strides[PRIM_MAX_SLOTS] = {dfc_inner_size(x, 1), 0};
    int n = 2;
    if (bias)
        buffers[n++] = bias->data;
    strides[n] = dfc_inner_size(y, 1);
    buffers[n++] = y->data;
    return conv_run(be, PRIM_CONV_FORWARD, x, weight, y, bias != NULL, p, buffers, strides, n, "conv2d_forward", err);
}

dfc_status cpu_conv2d_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight,
                                     dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err)
{
    DFC_TRY(dfc_conv2d_check("conv2d_backward_input", dx, "dx", weight, "weight", NULL, NULL, dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_backward_input", p, 0, err));
    if (dfc_winograd_applies(dy, weight, dx, p)) /* dx = dy * flipped W^T */
        return dfc_winograd_conv2d(be, dy, weight, 1, NULL, 0, 0, dx, err);
    float *buffers[PRIM_MAX_SLOTS] = {dy->data, weight->data, dx->data};
    const int64_t strides[PRIM_MAX_SLOTS] = {dfc_inner_size(dy, 1), 0, dfc_inner_size(dx, 1)};
    return conv_run(be, PRIM_CONV_BACKWARD_DATA, dx, weight, dy, 0, p, buffers, strides, 3, "conv2d_backward_input",
                    err);
}

dfc_status cpu_conv2d_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_conv2d_params p,
                                      dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    if (dbias && !dbias->data)
        dbias = NULL;
    DFC_TRY(dfc_conv2d_check("conv2d_backward_weight", x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", p, err));
    DFC_TRY(dfc_conv2d_check_layout("conv2d_backward_weight", p, 0, err));
    float *buffers[PRIM_MAX_SLOTS] = {dy->data, x->data, dweight->data, dbias ? dbias->data : NULL}; /* slot order */
    return conv_run(be, PRIM_CONV_BACKWARD_WEIGHTS, x, dweight, dy, dbias != NULL, p, buffers, NULL, 4,
                    "conv2d_backward_weight", err);
}

/* ---- linear: matmuls on the row-major operands, transposes expressed as strides ---- */

/* y (M, Out) = x (M, In) W^T + b: B[i, o] = W[o, i]. */
dfc_status cpu_linear_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_tensor *y, dfc_error *err)
{
    if (bias && !bias->data)
        bias = NULL;
    DFC_TRY(dfc_linear_check("linear_forward", x, "x", weight, "weight", bias, "bias", y, "y", err));
    const int64_t m = x->shape[0], in = x->shape[1], out = weight->shape[0];
    dfc_matmul_operand a = {x->data, {m * in, in, 1}};
    dfc_matmul_operand b = {weight->data, {out * in, 1, in}};
    dfc_matmul_operand c = {y->data, {m * out, out, 1}};
    return matmul(be, 1, m, out, in, a, b, bias ? bias->data : NULL, c, 1.0f, 0.0f, err);
}

/* dx (M, In) = dy (M, Out) W (Out, In). */
dfc_status cpu_linear_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx,
                                     dfc_error *err)
{
    DFC_TRY(dfc_linear_check("linear_backward_input", dx, "dx", weight, "weight", NULL, NULL, dy, "dy", err));
    const int64_t m = dx->shape[0], in = dx->shape[1], out = weight->shape[0];
    dfc_matmul_operand a = {dy->data, {m * out, out, 1}};
    dfc_matmul_operand b = {weight->data, {out * in, in, 1}};
    dfc_matmul_operand c = {dx->data, {m * in, in, 1}};
    return matmul(be, 1, m, in, out, a, b, NULL, c, 1.0f, 0.0f, err);
}

/* dweight (Out, In) = dy^T (Out, M) x (M, In); dbias (Out) = column sums of dy. */
dfc_status cpu_linear_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_tensor *dweight,
                                      dfc_tensor *dbias, dfc_error *err)
{
    if (dbias && !dbias->data)
        dbias = NULL;
    DFC_TRY(dfc_linear_check("linear_backward_weight", x, "x", dweight, "dweight", dbias, "dbias", dy, "dy", err));
    const int64_t m = x->shape[0], in = x->shape[1], out = dweight->shape[0];
    dfc_matmul_operand a = {dy->data, {m * out, 1, out}};
    dfc_matmul_operand b = {x->data, {m * in, in, 1}};
    dfc_matmul_operand c = {dweight->data, {out * in, in, 1}};
    DFC_TRY(matmul(be, 1, out, in, m, a, b, NULL, c, 1.0f, 0.0f, err));
    if (dbias) {
        const float *dys = dy->data;
        float *dbs = dbias->data;
#pragma omp parallel for num_threads(be->num_threads) schedule(static)
        for (int64_t o = 0; o < out; o++) {
            double sum = 0.0;
            for (int64_t r = 0; r < m; r++)
                sum += dys[r * out + o];
            dbs[o] = (float)sum;
        }
    }
    return DFC_OK;
}

#include "arena.h"

#include <stdlib.h>
#include <string.h>

#include "../ops/ops.h"

_Static_assert(DFC_ARENA_ALIGN <= DFC_BACKEND_ALIGN, "backend memory must be aligned for the arena");

static size_t round_up(size_t n) { return (n + DFC_ARENA_ALIGN - 1) / DFC_ARENA_ALIGN * DFC_ARENA_ALIGN; }

/* A chunk's memory: the backend's, counted in its memory budget while the arena holds it; or the host's (the host
 * functions take no backend). NULL with an "arena: " error on failure. */
static void *chunk_alloc(dfc_arena *arena, size_t bytes, dfc_error *err)
{
    dfc_backend *be = arena->backend;
    if (be && dfc_backend_reserve(be, bytes, "arena", err) != DFC_OK)
        return NULL;
    void *base = be ? be->iface->alloc(be, bytes, err) : dfc_host_alloc(NULL, bytes, err);
    if (!base) {
        dfc_backend_release(be, bytes);
        dfc_error_prefix(err, "arena: ");
    }
    return base;
}

static void chunk_free(dfc_arena *arena, dfc_arena_chunk chunk)
{
    if (arena->backend) {
        arena->backend->iface->free(arena->backend, chunk.base);
        dfc_backend_release(arena->backend, chunk.capacity);
    } else {
        dfc_host_free(NULL, chunk.base);
    }
}

void dfc_arena_init_backend(dfc_arena *arena, dfc_backend *be, size_t chunk_size, size_t limit)
{
    memset(arena, 0, sizeof *arena);
    arena->chunk_size = round_up(chunk_size ? chunk_size : ((size_t)64 << 20));
    arena->limit = limit;
    arena->backend = be;
}

void dfc_arena_init(dfc_arena *arena, size_t chunk_size, size_t limit)
{
    dfc_arena_init_backend(arena, NULL, chunk_size, limit);
}

void dfc_arena_free(dfc_arena *arena)
{
    for (int i = 0; i < arena->num_chunks; i++)
        chunk_free(arena, arena->chunks[i]);
    free(arena->chunks);
    if (arena->host) {
        dfc_arena_free(arena->host);
        free(arena->host);
    }
    dfc_arena_init_backend(arena, arena->backend, arena->chunk_size, arena->limit);
}

size_t dfc_arena_capacity(const dfc_arena *arena)
{
    size_t total = 0;
    for (int i = 0; i < arena->num_chunks; i++)
        total += arena->chunks[i].capacity;
    return total;
}

/* Makes chunk `index` (after the current one: free by the bump discipline) at least `bytes` large. The chunks
 * from `index` on are all free, so their order is nobody's business: the smallest one that fits is moved to `index`
 * (a call whose tensors change size from phase to phase reuses what it holds). When none fits, they are given back
 * and one chunk of at least their total size takes their place, so the arena grows by the shortfall only, not by a
 * new chunk for each phase, and its memory is never held twice. */
static int ensure_chunk(dfc_arena *arena, int index, size_t bytes, dfc_error *err)
{
    int best = -1;
    size_t free_bytes = 0;
    for (int i = index; i < arena->num_chunks; i++) {
        free_bytes += arena->chunks[i].capacity;
        if (arena->chunks[i].capacity >= bytes &&
            (best < 0 || arena->chunks[i].capacity < arena->chunks[best].capacity))
            best = i;
    }
    if (best >= 0) {
        dfc_arena_chunk fits = arena->chunks[best];
        arena->chunks[best] = arena->chunks[index];
        arena->chunks[index] = fits;
        return 1;
    }
    /* a chunk made for one large tensor gets room for the small ones that follow it (a layer's bias-sized outputs),
     * which would otherwise each open a default-size chunk */
    const size_t needed = bytes > arena->chunk_size ? bytes + round_up(arena->chunk_size / 8) : arena->chunk_size;
    const size_t held = dfc_arena_capacity(arena) - free_bytes;
    size_t want = needed > free_bytes ? needed : free_bytes;
    if (arena->limit && held + want > arena->limit)
        want = needed;
    if (arena->limit && held + want > arena->limit) {
        dfc_fail(err, DFC_ERR_NOMEM, "arena: %zu more bytes would pass the memory limit of %zu bytes (%zu held)", want,
                 arena->limit, held);
        return 0;
    }
    if (index >= arena->max_chunks) {
        int grown = arena->max_chunks ? 2 * arena->max_chunks : 8;
        while (grown <= index)
            grown *= 2;
        dfc_arena_chunk *chunks = realloc(arena->chunks, (size_t)grown * sizeof *chunks);
        if (!chunks) {
            dfc_fail(err, DFC_ERR_NOMEM, "arena: out of memory");
            return 0;
        }
        arena->chunks = chunks;
        arena->max_chunks = grown;
    }
    for (int i = index; i < arena->num_chunks; i++) /* before the new one is counted: never held twice */
        chunk_free(arena, arena->chunks[i]);
    arena->num_chunks = index;
    unsigned char *base = chunk_alloc(arena, want, err);
    if (!base)
        return 0;
    arena->chunks[index].base = base;
    arena->chunks[index].capacity = want;
    arena->num_chunks = index + 1;
    return 1;
}

void *dfc_arena_alloc(dfc_arena *arena, size_t bytes, dfc_error *err)
{
    size_t rounded = round_up(bytes ? bytes : 1);
    if (rounded < bytes) {
        dfc_fail(err, DFC_ERR_NOMEM, "arena: request of %zu bytes is too large", bytes);
        return NULL;
    }
    int index = arena->current;
    size_t offset = arena->offset;
    /* an empty current chunk is as free as the ones after it: the smallest of them that fits is taken */
    if (arena->num_chunks == 0 || offset == 0 || arena->chunks[index].capacity - offset < rounded) {
        if (offset > 0)
            index++, offset = 0;
        if (!ensure_chunk(arena, index, rounded, err))
            return NULL;
        /* the bytes left unused at the end of the previous chunk count as used until the mark is reset */
        if (index != arena->current)
            arena->in_use += arena->chunks[arena->current].capacity - arena->offset;
    }
    void *p = arena->chunks[index].base + offset;
    arena->current = index;
    arena->offset = offset + rounded;
    arena->in_use += rounded;
    if (arena->in_use > arena->peak)
        arena->peak = arena->in_use;
    return p;
}

void *dfc_arena_host_alloc(dfc_arena *arena, size_t bytes, dfc_error *err)
{
    if (!arena->backend)
        return dfc_arena_alloc(arena, bytes, err);
    if (!arena->host) {
        if (!(arena->host = malloc(sizeof *arena->host))) {
            dfc_fail(err, DFC_ERR_NOMEM, "arena: out of memory");
            return NULL;
        }
        /* small: index arrays and tapes (a larger request gets a chunk of its own size) */
        dfc_arena_init(arena->host, (size_t)1 << 20, arena->limit);
    }
    return dfc_arena_alloc(arena->host, bytes, err);
}

dfc_tensor dfc_arena_tensor(dfc_arena *arena, int ndim, const int64_t *shape, dfc_error *err)
{
    dfc_tensor t = {NULL, ndim, {1, 1, 1, 1}};
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t.shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t.data = dfc_arena_alloc(arena, n * sizeof(float), err);
    return t;
}

dfc_tensor dfc_arena_zeros(dfc_arena *arena, int ndim, const int64_t *shape, dfc_error *err)
{
    dfc_tensor t = dfc_arena_tensor(arena, ndim, shape, err);
    if (!t.data)
        return t;
    const size_t bytes = (size_t)dfc_numel(&t) * sizeof(float);
    dfc_status st = arena->backend ? arena->backend->iface->zero(arena->backend, t.data, bytes, err)
                                   : dfc_host_zero(NULL, t.data, bytes, err);
    if (st != DFC_OK)
        t.data = NULL;
    return t;
}

dfc_arena_mark dfc_arena_get_mark(const dfc_arena *arena)
{
    dfc_arena_mark m = {arena->current, arena->offset, arena->in_use, 0, 0, 0};
    if (arena->host) {
        m.host_chunk = arena->host->current;
        m.host_offset = arena->host->offset;
        m.host_in_use = arena->host->in_use;
    }
    return m;
}

void dfc_arena_reset(dfc_arena *arena, dfc_arena_mark mark)
{
    arena->current = mark.chunk;
    arena->offset = mark.offset;
    arena->in_use = mark.in_use;
    if (arena->host) /* made after the mark: its fields are 0, everything in it is released */
        dfc_arena_reset(arena->host, (dfc_arena_mark){mark.host_chunk, mark.host_offset, mark.host_in_use, 0, 0, 0});
}

int dfc_arena_usable_by(const dfc_arena *arena, const dfc_backend *be)
{
    if (arena->backend == be)
        return 1;
    const int arena_on_host = !arena->backend || arena->backend->iface->alloc == dfc_host_alloc;
    return arena_on_host && be->iface->alloc == dfc_host_alloc;
}

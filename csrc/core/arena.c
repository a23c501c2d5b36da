#include "arena.h"

#include <stdlib.h>
#include <string.h>

dfc_status dfc_arena_init(dfc_arena *arena, size_t capacity, dfc_error *err)
{
    memset(arena, 0, sizeof *arena);
    if (capacity == 0)
        return DFC_OK;
    size_t rounded = (capacity + DFC_ARENA_ALIGN - 1) / DFC_ARENA_ALIGN * DFC_ARENA_ALIGN;
    arena->base = aligned_alloc(DFC_ARENA_ALIGN, rounded);
    if (!arena->base)
        return dfc_fail(err, DFC_ERR_NOMEM, "arena: cannot allocate %zu bytes", rounded);
    arena->capacity = rounded;
    return DFC_OK;
}

void dfc_arena_free(dfc_arena *arena)
{
    free(arena->base);
    memset(arena, 0, sizeof *arena);
}

void *dfc_arena_alloc(dfc_arena *arena, size_t bytes, dfc_error *err)
{
    size_t rounded = (bytes + DFC_ARENA_ALIGN - 1) / DFC_ARENA_ALIGN * DFC_ARENA_ALIGN;
    if (rounded < bytes || arena->capacity - arena->used < rounded) {
        dfc_fail(err, DFC_ERR_NOMEM, "arena: request of %zu bytes exceeds the %zu bytes left of %zu", bytes,
                 arena->capacity - arena->used, arena->capacity);
        return NULL;
    }
    void *p = arena->base + arena->used;
    arena->used += rounded;
    if (arena->used > arena->peak)
        arena->peak = arena->used;
    return p;
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

/* A bump allocator: networks and samplers take all scratch memory from one arena, sized once, so the step loop
 * never calls malloc and peak memory is known. Marks let a caller release everything allocated after a point. */
#ifndef DIFFICE_ARENA_H
#define DIFFICE_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

#define DFC_ARENA_ALIGN 64

typedef struct dfc_arena {
    unsigned char *base;
    size_t capacity;
    size_t used;
    size_t peak;
} dfc_arena;

dfc_status dfc_arena_init(dfc_arena *arena, size_t capacity, dfc_error *err);
void dfc_arena_free(dfc_arena *arena);

/* Returns NULL and sets err when the arena is full (never grows: growth would invalidate views). */
void *dfc_arena_alloc(dfc_arena *arena, size_t bytes, dfc_error *err);

/* Allocates an uninitialised tensor of the given shape; on failure data is NULL and err is set. */
dfc_tensor dfc_arena_tensor(dfc_arena *arena, int ndim, const int64_t *shape, dfc_error *err);

static inline size_t dfc_arena_mark(const dfc_arena *arena) { return arena->used; }
static inline void dfc_arena_reset(dfc_arena *arena, size_t mark) { arena->used = mark; }

#endif

/* A bump allocator in chunks: networks and samplers take their activations and scratch from an arena, reset it
 * to a mark between calls, and so reach a steady state with no malloc at all. Chunks never move (a new chunk is
 * added when one is full), so tensors allocated earlier stay valid. Peak use is tracked for memory reports.
 * The chunks come from a backend's allocator (dfc_arena_init_backend), so an arena can hold device memory, or
 * from host memory (dfc_arena_init). The host structures that go with a backend arena's tensors (a network's tape,
 * per-row index arrays) come from its host side (dfc_arena_host_alloc), which marks and resets cover too. */
#ifndef DIFFICE_ARENA_H
#define DIFFICE_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "tensor.h"

#define DFC_ARENA_ALIGN 64

typedef struct dfc_backend dfc_backend; /* ops/ops.h */

typedef struct dfc_arena_chunk {
    unsigned char *base;
    size_t capacity;
} dfc_arena_chunk;

typedef struct dfc_arena {
    dfc_arena_chunk *chunks;
    int num_chunks, max_chunks;
    int current;            /* chunk being filled */
    size_t offset;          /* bytes used in the current chunk */
    size_t in_use;          /* bytes handed out and not released, over all chunks */
    size_t peak;            /* highest in_use seen */
    size_t chunk_size;      /* default size of a new chunk */
    size_t limit;           /* most bytes the chunks may hold in all (0: no limit) */
    dfc_backend *backend;   /* whose memory the chunks are (NULL: host memory); not owned */
    struct dfc_arena *host; /* a backend arena's host side, made on first dfc_arena_host_alloc; owned */
} dfc_arena;

typedef struct dfc_arena_mark {
    int chunk;
    size_t offset, in_use;
    int host_chunk; /* the host side's, for a backend arena ({0} marks both empty) */
    size_t host_offset, host_in_use;
} dfc_arena_mark;

/* An arena of host memory. chunk_size 0: 64 MiB; limit 0: no limit. */
void dfc_arena_init(dfc_arena *arena, size_t chunk_size, size_t limit);
/* An arena of backend memory (be->iface->alloc), which only be's ops and memory functions may touch; be must
 * outlive the arena's chunks (dfc_arena_free). be NULL: host memory, as dfc_arena_init. */
void dfc_arena_init_backend(dfc_arena *arena, dfc_backend *be, size_t chunk_size, size_t limit);

void dfc_arena_free(dfc_arena *arena);

/* 64-byte aligned, uninitialised, in the arena's memory (the backend's for a backend arena: for tensors, which
 * only the backend's ops and memory functions may touch); NULL with err set when the allocation fails or passes
 * the limit. */
void *dfc_arena_alloc(dfc_arena *arena, size_t bytes, dfc_error *err);
/* The same in host memory, released with the arena's allocations (same marks): from the arena itself when it holds
 * host memory, else from its host side. For what the host reads and writes: index and flag arrays, tapes. */
void *dfc_arena_host_alloc(dfc_arena *arena, size_t bytes, dfc_error *err);

/* An uninitialised tensor of the given shape; data NULL and err set on failure. */
dfc_tensor dfc_arena_tensor(dfc_arena *arena, int ndim, const int64_t *shape, dfc_error *err);
/* The same, zero-filled (through the backend's memory functions for a backend arena). */
dfc_tensor dfc_arena_zeros(dfc_arena *arena, int ndim, const int64_t *shape, dfc_error *err);

dfc_arena_mark dfc_arena_get_mark(const dfc_arena *arena);
/* Releases everything allocated after the mark (the memory stays with the arena for reuse). */
void dfc_arena_reset(dfc_arena *arena, dfc_arena_mark mark);

/* Bytes the arena holds from the system (its host side not counted, nor in peak). */
size_t dfc_arena_capacity(const dfc_arena *arena);

/* Whether be's ops may touch the arena's memory: it is be's, or host memory and be works in host memory. */
int dfc_arena_usable_by(const dfc_arena *arena, const dfc_backend *be);

#endif

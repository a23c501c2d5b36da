/* Activation memory kept between the calls of a network (or of the sampler that runs one), so a steady loop neither
 * mallocs nor page-faults. A call that finds it in use by another thread runs with arenas of its own instead of
 * waiting. The arenas hold the memory of the backend of the call that filled them; a call on a backend of other
 * memory replaces them. No call blocks: the only lock is a try-lock. */
#ifndef DIFFICE_WORKSPACE_H
#define DIFFICE_WORKSPACE_H

#include <stdatomic.h>

#include "../core/arena.h"

typedef struct dfc_workspace {
    dfc_arena main, scratch;
    dfc_backend *holder;    /* whose memory the arenas hold (NULL: none yet); the owner keeps it alive */
    atomic_flag busy;       /* set while a call uses the arenas */
    size_t last_peak_bytes; /* arena peak of the last call */
} dfc_workspace;

/* One call's arenas: the workspace's (shared), or its own when the workspace was busy. */
typedef struct dfc_workspace_arenas {
    dfc_arena *main, *scratch;
    dfc_arena own_main, own_scratch;
    int shared;
} dfc_workspace_arenas;

void dfc_workspace_init(dfc_workspace *ws); /* no memory until the first call says whose */
void dfc_workspace_free(dfc_workspace *ws); /* frees the kept memory; holder must still be alive */

/* Empty arenas in be's memory for one call, their peaks restarted. Returns 1 when the kept arenas were (re)made in
 * be's memory (the first call, or the first on a backend of other memory, whose kept memory is then freed): their
 * owner must keep be alive from now on and may let the previous holder go; else 0. */
int dfc_workspace_acquire(dfc_workspace *ws, dfc_backend *be, dfc_workspace_arenas *w);
void dfc_workspace_release(dfc_workspace *ws, dfc_workspace_arenas *w);

/* Frees the kept memory unless a call is using it; 1 when freed (holder is then NULL), else 0. */
int dfc_workspace_release_memory(dfc_workspace *ws);
size_t dfc_workspace_held(const dfc_workspace *ws);

#endif

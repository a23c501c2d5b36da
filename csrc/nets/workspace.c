#include "workspace.h"

#include "../ops/ops.h"

static void init_arenas(dfc_arena *main, dfc_arena *scratch, dfc_backend *be)
{
    dfc_arena_init_backend(main, be, 0, 0); /* be->memory_limit bounds them */
    dfc_arena_init_backend(scratch, be, 0, 0);
}

static void free_arenas(dfc_workspace *ws)
{
    dfc_arena_free(&ws->main);
    dfc_arena_free(&ws->scratch);
    ws->holder = NULL;
}

void dfc_workspace_init(dfc_workspace *ws)
{
    init_arenas(&ws->main, &ws->scratch, NULL);
    ws->holder = NULL;
    ws->last_peak_bytes = 0;
    atomic_flag_clear(&ws->busy);
}

void dfc_workspace_free(dfc_workspace *ws) { free_arenas(ws); }

int dfc_workspace_acquire(dfc_workspace *ws, dfc_backend *be, dfc_workspace_arenas *w)
{
    int moved = 0;
    w->shared = !atomic_flag_test_and_set(&ws->busy);
    if (w->shared) {
        /* kept memory serves any backend that shares it (another thread's backend of the same kind) */
        if (!ws->holder || !dfc_backend_same_memory(ws->holder, be)) {
            free_arenas(ws);
            init_arenas(&ws->main, &ws->scratch, be);
            ws->holder = be;
            moved = 1;
        } else if (ws->holder != be) {
            /* another backend of that memory (another stream) takes the arenas: the holder's queued work on them
             * finishes first (an error there is the holder's, reported by its next call) */
            dfc_error ignored = {0};
            (void)ws->holder->iface->synchronize(ws->holder, &ignored);
        }
        w->main = &ws->main;
        w->scratch = &ws->scratch;
    } else {
        init_arenas(&w->own_main, &w->own_scratch, be);
        w->main = &w->own_main;
        w->scratch = &w->own_scratch;
    }
    dfc_arena_mark empty = {0};
    dfc_arena_reset(w->main, empty);
    dfc_arena_reset(w->scratch, empty);
    w->main->peak = w->scratch->peak = 0;
    return moved;
}

void dfc_workspace_release(dfc_workspace *ws, dfc_workspace_arenas *w)
{
    ws->last_peak_bytes = w->main->peak + w->scratch->peak;
    if (w->shared) {
        atomic_flag_clear(&ws->busy);
    } else {
        dfc_arena_free(&w->own_main);
        dfc_arena_free(&w->own_scratch);
    }
}

int dfc_workspace_release_memory(dfc_workspace *ws)
{
    if (atomic_flag_test_and_set(&ws->busy))
        return 0;
    free_arenas(ws);
    atomic_flag_clear(&ws->busy);
    return 1;
}

size_t dfc_workspace_held(const dfc_workspace *ws)
{
    return dfc_arena_capacity(&ws->main) + dfc_arena_capacity(&ws->scratch);
}

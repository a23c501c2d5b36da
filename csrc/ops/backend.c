/* The backend registry and the host memory functions. A backend is found by its interface's name and driven only
 * through its interface: nothing here knows what a particular backend does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

/* Every backend this build has, the default first; a CUDA build appends &dfc_cuda_backend_iface. */
static const dfc_backend_iface *const registry[] = {&dfc_cpu_backend_iface, &dfc_ref_backend_iface};
#define REGISTRY_SIZE ((int)(sizeof registry / sizeof registry[0]))

const char *dfc_backend_registered(int index)
{
    return index >= 0 && index < REGISTRY_SIZE ? registry[index]->name : NULL;
}

/* The one thread policy: num_threads <= 0 means every core. */
static int default_threads(int num_threads)
{
    if (num_threads > 0)
        return num_threads;
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

dfc_status dfc_backend_create(const char *name, int num_threads, dfc_backend **out, dfc_error *err)
{
    *out = NULL;
    const dfc_backend_iface *iface = NULL;
    for (int i = 0; i < REGISTRY_SIZE && !iface; i++)
        if (strcmp(registry[i]->name, name) == 0) /* the registry's lookup by key; nothing dispatches on names */
            iface = registry[i];
    if (!iface) {
        char known[128] = "";
        for (int i = 0; i < REGISTRY_SIZE; i++) {
            size_t used = strlen(known);
            snprintf(known + used, sizeof known - used, "%s'%s'", i ? ", " : "", registry[i]->name);
        }
        return dfc_fail(err, DFC_ERR_VALUE, "backend: unknown backend '%s' (expected one of %s)", name, known);
    }
    dfc_backend *be = calloc(1, sizeof *be);
    if (!be)
        return dfc_fail(err, DFC_ERR_NOMEM, "backend: out of memory");
    be->iface = iface;
    be->ops = iface->ops;
    be->num_threads = default_threads(num_threads);
    dfc_status st = iface->create(be, err);
    if (st != DFC_OK) {
        free(be);
        return st;
    }
    *out = be;
    return DFC_OK;
}

void dfc_backend_destroy(dfc_backend *be)
{
    if (!be)
        return;
    be->iface->destroy(be);
    free(be);
}

/* ---- host memory ---- */

void *dfc_host_alloc(dfc_backend *be, size_t bytes, dfc_error *err)
{
    (void)be;
    size_t rounded = (bytes + DFC_BACKEND_ALIGN - 1) / DFC_BACKEND_ALIGN * DFC_BACKEND_ALIGN;
    void *p = rounded >= bytes ? aligned_alloc(DFC_BACKEND_ALIGN, rounded ? rounded : DFC_BACKEND_ALIGN) : NULL;
    if (!p)
        dfc_fail(err, DFC_ERR_NOMEM, "host memory: cannot allocate %zu bytes", bytes);
    return p;
}

void dfc_host_free(dfc_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

dfc_status dfc_host_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)err;
    memset(ptr, 0, bytes);
    return DFC_OK;
}

dfc_status dfc_host_copy_from_host(dfc_backend *be, void *dst, const void *host_src, size_t bytes, dfc_error *err)
{
    return dfc_host_copy(be, dst, host_src, bytes, err);
}

dfc_status dfc_host_copy_to_host(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err)
{
    return dfc_host_copy(be, host_dst, src, bytes, err);
}

dfc_status dfc_host_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)err;
    memmove(dst, src, bytes);
    return DFC_OK;
}

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu.h"
#include "ops.h"

dfc_status dfc_backend_create(const char *name, int num_threads, dfc_backend **out, dfc_error *err)
{
    *out = NULL;
    if (num_threads <= 0) {
#ifdef _OPENMP
        num_threads = omp_get_num_procs();
#else
        num_threads = 1;
#endif
    }
    dfc_backend *be = calloc(1, sizeof *be);
    if (!be)
        return dfc_fail(err, DFC_ERR_NOMEM, "backend: out of memory");
    if (strcmp(name, "ref") == 0) {
        be->name = "ref";
        be->ops = &dfc_ref_ops;
        be->num_threads = num_threads;
    } else if (strcmp(name, "cpu") == 0) {
        be->name = "cpu";
        be->ops = &dfc_cpu_ops;
        be->num_threads = num_threads;
        dfc_cpu_state *state = NULL;
        dfc_status st = dfc_cpu_state_create(num_threads, &state, err);
        if (st != DFC_OK) {
            free(be);
            return st;
        }
        be->impl = state;
    } else {
        free(be);
        return dfc_fail(err, DFC_ERR_VALUE, "backend: unknown backend '%s' (expected 'ref' or 'cpu')", name);
    }
    *out = be;
    return DFC_OK;
}

void dfc_backend_destroy(dfc_backend *be)
{
    if (!be)
        return;
    if (strcmp(be->name, "cpu") == 0)
        dfc_cpu_state_destroy(be->impl);
    free(be);
}

/* The fast CPU backend's table: generated from DFC_OP_LIST with the reference kernel for every op, then the ops of
 * DFC_CPU_FAST_OPS (cpu.h) replaced by their cpu_ kernels. A new op thus runs its reference kernel here until it
 * gets a fast one, and no entry can be left NULL. */
#include "cpu.h"
#include "ref.h"

#define DFC_REF_ENTRY(name) DFC_OP_ENTRY_(ref, name)
#define DFC_CPU_ENTRY(name) DFC_OP_ENTRY_(cpu, name)
/* The second initializer of a fast op overrides its reference default: intended, so the warning is off here. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Woverride-init"
const dfc_ops dfc_cpu_ops = {DFC_OP_LIST(DFC_REF_ENTRY) DFC_CPU_FAST_OPS(DFC_CPU_ENTRY)};
#pragma GCC diagnostic pop
#undef DFC_REF_ENTRY
#undef DFC_CPU_ENTRY

static dfc_status cpu_backend_create(dfc_backend *be, dfc_error *err)
{
    dfc_cpu_state *state = NULL;
    dfc_status st = dfc_cpu_state_create(be->num_threads, &state, err);
    be->impl = state;
    return st;
}

static void cpu_backend_destroy(dfc_backend *be) { dfc_cpu_state_destroy(be->impl); }

static dfc_status cpu_backend_synchronize(dfc_backend *be, dfc_error *err)
{
    (void)be;
    (void)err;
    return DFC_OK; /* oneDNN runs on an in-order stream waited on by each call; OpenMP kernels join before return */
}

const dfc_backend_iface dfc_cpu_backend_iface = DFC_BACKEND_IFACE_(cpu, dfc_host, 1, 1);

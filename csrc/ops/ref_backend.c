/* The reference backend: every op's reference kernel, host memory, no private state. */
#include "ref.h"

#define DFC_REF_ENTRY(name) DFC_OP_ENTRY_(ref, name)
const dfc_ops dfc_ref_ops = {DFC_OP_LIST(DFC_REF_ENTRY)};
#undef DFC_REF_ENTRY

static dfc_status ref_backend_create(dfc_backend *be, dfc_error *err)
{
    (void)be;
    (void)err;
    return DFC_OK;
}

static void ref_backend_destroy(dfc_backend *be) { (void)be; }

static dfc_status ref_backend_synchronize(dfc_backend *be, dfc_error *err)
{
    (void)be;
    (void)err;
    return DFC_OK; /* every op has finished when it returns */
}

const dfc_backend_iface dfc_ref_backend_iface = DFC_BACKEND_IFACE_(ref, dfc_host, 1, 0);

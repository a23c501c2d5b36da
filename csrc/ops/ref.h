/* The reference backend: plain, obviously-correct C loops for every op; the oracle the fast kernels are
 * tested against. Loops over independent outputs may run in parallel (be->num_threads); reductions are serial
 * and accumulate in double where it matters. */
#ifndef DIFFICE_REF_H
#define DIFFICE_REF_H

#include "ops.h"

#define DFC_DECLARE_REF_OP(name) DFC_DECLARE_OP_(ref, name)
DFC_OP_LIST(DFC_DECLARE_REF_OP)
#undef DFC_DECLARE_REF_OP

#endif

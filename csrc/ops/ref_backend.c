#include "ref.h"

#define DFC_REF_ENTRY(name) .name = ref_##name,
const dfc_ops dfc_ref_ops = {DFC_OP_LIST(DFC_REF_ENTRY)};
#undef DFC_REF_ENTRY

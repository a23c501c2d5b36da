/* Fast CPU attention (stub: falls back to the reference kernel until written). */
#include "cpu.h"
#include "ref.h"

dfc_status cpu_attention_forward(dfc_backend *be, const dfc_tensor *qkv, int heads, int legacy_order, dfc_tensor *y,
                                 dfc_error *err)
{
    return ref_attention_forward(be, qkv, heads, legacy_order, y, err);
}

dfc_status cpu_attention_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *qkv, int heads,
                                  int legacy_order, dfc_tensor *dqkv, dfc_error *err)
{
    return ref_attention_backward(be, dy, qkv, heads, legacy_order, dqkv, err);
}

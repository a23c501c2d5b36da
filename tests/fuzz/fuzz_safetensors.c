/* libFuzzer harness: the safetensors parser (strict JSON header, offsets, dtype conversion, metadata). */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dfc_error err;
    dfc_error_clear(&err);
    dfc_weights *w = NULL;
    if (dfc_weights_create(&w, &err) != DFC_OK)
        abort();
    dfc_status st = dfc_safetensors_parse(data, size, w, &err);
    fuzz_check_result(st, w, &err);
    dfc_weights_destroy(w);
    return 0;
}

/* libFuzzer harness: the zip reader (central directory, ZIP64, stored/deflate, CRC) and the .npy parser. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dfc_error err;
    dfc_error_clear(&err);
    dfc_zip zip;
    dfc_status st = dfc_zip_open(&zip, data, size, &err);
    if (st != DFC_OK) {
        fuzz_check_result(st, NULL, &err);
        return 0;
    }
    dfc_weights *w = NULL;
    if (dfc_weights_create(&w, &err) != DFC_OK)
        abort();
    st = dfc_npz_parse(&zip, w, &err);
    fuzz_check_result(st, w, &err);
    dfc_weights_destroy(w);
    dfc_zip_close(&zip);
    return 0;
}

/* libFuzzer harness: PyTorch checkpoints as whole files, zip (torch >= 1.6) or legacy, the way
 * dfc_load_torch dispatches: a zip holding <archive>/data.pkl, else a legacy pickle stream. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dfc_error err;
    dfc_error_clear(&err);
    dfc_weights *w = NULL;
    if (dfc_weights_create(&w, &err) != DFC_OK)
        abort();
    dfc_status st;
    if (dfc_zip_magic(data, size)) {
        dfc_zip zip;
        st = dfc_zip_open(&zip, data, size, &err);
        if (st == DFC_OK) {
            char archive[256];
            if (dfc_torch_zip_archive(&zip, archive, sizeof archive))
                st = dfc_torch_zip_parse(&zip, archive, w, &err);
            else
                st = dfc_fail(&err, DFC_ERR_FORMAT, "no data.pkl");
            dfc_zip_close(&zip);
        }
    } else {
        st = dfc_torch_legacy_parse(data, size, w, &err);
    }
    fuzz_check_result(st, w, &err);
    dfc_weights_destroy(w);
    return 0;
}

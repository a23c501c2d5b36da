/* Shared by the libFuzzer harnesses in tests/fuzz: every reader must return a status for any input (never crash,
 * hang or allocate beyond what the input can justify); a DFC_OK result must be a consistent collection. The
 * harnesses abort (a libFuzzer crash) when a success leaves an inconsistent collection or a failure leaves no
 * message, so "no crash" also means "every error is reported". */
#ifndef DIFFICE_FUZZ_COMMON_H
#define DIFFICE_FUZZ_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The parsers and what they stand on; the harnesses call the parsers directly, never the loaders in weights.c. */
#include "io/npz.h"
#include "io/safetensors.h"
#include "io/torch_pickle.h"
#include "io/weight_set.h"
#include "io/zip.h"

static void fuzz_check_result(dfc_status st, const dfc_weights *w, const dfc_error *err)
{
    if (st != DFC_OK) {
        if (err->code == DFC_OK || err->message[0] == '\0')
            abort(); /* a failure without a message would reach Python as an empty exception */
        return;
    }
    for (size_t i = 0; i < w->count; i++) {
        const dfc_weight *t = &w->items[i];
        if (!t->name || t->ndim < 0 || t->ndim > DFC_MAX_DIMS)
            abort();
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0)
                abort();
            n *= t->shape[d];
        }
        if (n != t->numel || (n > 0 && !t->data))
            abort();
        if (dfc_weights_find(w, t->name) != t)
            abort();
        /* Touch every element so ASan sees a short buffer. */
        volatile float sink = 0.0f;
        for (int64_t k = 0; k < n; k++)
            sink += t->data[k];
        (void)sink;
    }
}

#endif

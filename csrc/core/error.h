/* Status codes and the error record every fallible C function fills.
 * Library code never aborts and never prints: it returns a status and leaves a message in a caller-owned
 * dfc_error, which the Python bindings turn into an exception (sqlite-style). */
#ifndef DIFFICE_ERROR_H
#define DIFFICE_ERROR_H

#include <stddef.h>

typedef enum {
    DFC_OK = 0,
    DFC_ERR_SHAPE,           /* tensor shapes disagree: ValueError */
    DFC_ERR_VALUE,           /* bad argument value: ValueError */
    DFC_ERR_FORMAT,          /* malformed file: ValueError naming the file */
    DFC_ERR_IO,              /* cannot open/read/write: OSError */
    DFC_ERR_NOMEM,           /* allocation failed or refused: MemoryError */
    DFC_ERR_BACKEND,         /* oneDNN/CUDA/... call failed: RuntimeError */
    DFC_ERR_NOT_IMPLEMENTED, /* op missing on this backend: NotImplementedError */
    DFC_ERR_INTERRUPTED,     /* stopped by a signal check: KeyboardInterrupt */
    DFC_ERR_NUMERIC          /* NaN/Inf detected: FloatingPointError */
} dfc_status;

#define DFC_ERROR_MSG_LEN 1024

typedef struct dfc_error {
    dfc_status code;
    char message[DFC_ERROR_MSG_LEN];
} dfc_error;

/* Sets err (if not NULL) and returns code, so callers can write `return dfc_fail(err, ...)`.
 * The first error wins: a later call does not overwrite an earlier, more specific message. */
dfc_status dfc_fail(dfc_error *err, dfc_status code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes context ("loading 'x.safetensors': ") to an existing message. */
void dfc_error_prefix(dfc_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void dfc_error_clear(dfc_error *err);

const char *dfc_status_name(dfc_status code);

#define DFC_TRY(expr)                        \
    do {                                     \
        dfc_status dfc_try_status_ = (expr); \
        if (dfc_try_status_ != DFC_OK)       \
            return dfc_try_status_;          \
    } while (0)

#endif

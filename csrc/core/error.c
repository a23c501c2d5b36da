#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

dfc_status dfc_fail(dfc_error *err, dfc_status code, const char *fmt, ...)
{
    if (err && err->code == DFC_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void dfc_error_prefix(dfc_error *err, const char *fmt, ...)
{
    if (!err || err->code == DFC_OK)
        return;
    char prefix[DFC_ERROR_MSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char old[DFC_ERROR_MSG_LEN];
    memcpy(old, err->message, sizeof old);
    int used = snprintf(err->message, sizeof err->message, "%s", prefix);
    if (used >= 0 && used < (int)sizeof err->message)
        snprintf(err->message + used, sizeof err->message - (size_t)used, "%s", old);
}

void dfc_error_clear(dfc_error *err)
{
    if (err) {
        err->code = DFC_OK;
        err->message[0] = '\0';
    }
}

const char *dfc_status_name(dfc_status code)
{
    switch (code) {
    case DFC_OK: return "ok";
    case DFC_ERR_SHAPE: return "shape error";
    case DFC_ERR_VALUE: return "value error";
    case DFC_ERR_FORMAT: return "format error";
    case DFC_ERR_IO: return "I/O error";
    case DFC_ERR_NOMEM: return "out of memory";
    case DFC_ERR_BACKEND: return "backend error";
    case DFC_ERR_NOT_IMPLEMENTED: return "not implemented";
    case DFC_ERR_INTERRUPTED: return "interrupted";
    case DFC_ERR_NUMERIC: return "numerical error";
    }
    return "unknown error";
}

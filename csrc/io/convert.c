/* Element types of weight files and their conversion to float32 (declared in weight_set.h). */
#include "weight_set.h"

size_t dfc_dtype_size(dfc_dtype dt)
{
    switch (dt) {
    case DFC_DT_F64:
    case DFC_DT_I64: return 8;
    case DFC_DT_F32:
    case DFC_DT_I32: return 4;
    case DFC_DT_F16:
    case DFC_DT_BF16:
    case DFC_DT_I16: return 2;
    case DFC_DT_I8:
    case DFC_DT_U8:
    case DFC_DT_BOOL: return 1;
    }
    return 1;
}

const char *dfc_dtype_name(dfc_dtype dt)
{
    switch (dt) {
    case DFC_DT_F32: return "float32";
    case DFC_DT_F16: return "float16";
    case DFC_DT_BF16: return "bfloat16";
    case DFC_DT_F64: return "float64";
    case DFC_DT_I64: return "int64";
    case DFC_DT_I32: return "int32";
    case DFC_DT_I16: return "int16";
    case DFC_DT_I8: return "int8";
    case DFC_DT_U8: return "uint8";
    case DFC_DT_BOOL: return "bool";
    }
    return "unknown";
}

static inline float bits_to_f32(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact: every half value is a float value. */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    if (exponent == 0) {
        /* zero or subnormal: mantissa * 2^-24, exact in float (a 10-bit integer times a power of two) */
        float magnitude = (float)mantissa * 0x1p-24f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) /* inf, or NaN keeping its payload (and so its quiet bit) */
        return bits_to_f32(sign | 0x7f800000u | (mantissa << 13));
    return bits_to_f32(sign | ((exponent + 112) << 23) | (mantissa << 13)); /* rebias 15 -> 127 */
}

/* bfloat16 is the top half of a float32. */
static inline float bf16_to_f32(uint16_t b) { return bits_to_f32((uint32_t)b << 16); }

static inline float load_f32(const uint8_t *src, dfc_dtype dt, int64_t i)
{
    switch (dt) {
    case DFC_DT_F32: {
        float v;
        memcpy(&v, src + 4 * i, 4);
        return v;
    }
    case DFC_DT_F16: return f16_to_f32(dfc_rd16(src + 2 * i));
    case DFC_DT_BF16: return bf16_to_f32(dfc_rd16(src + 2 * i));
    case DFC_DT_F64: {
        double v;
        memcpy(&v, src + 8 * i, 8);
        return (float)v;
    }
    case DFC_DT_I64: {
        int64_t v;
        memcpy(&v, src + 8 * i, 8);
        return (float)v;
    }
    case DFC_DT_I32: {
        int32_t v;
        memcpy(&v, src + 4 * i, 4);
        return (float)v;
    }
    case DFC_DT_I16: return (float)(int16_t)dfc_rd16(src + 2 * i);
    case DFC_DT_I8: return (float)(int8_t)src[i];
    case DFC_DT_U8: return (float)src[i];
    case DFC_DT_BOOL: return src[i] ? 1.0f : 0.0f;
    }
    return 0.0f;
}

void dfc_convert_to_f32(float *dst, const uint8_t *src, dfc_dtype dt, int64_t n)
{
    if (dt == DFC_DT_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++)
        dst[i] = load_f32(src, dt, i);
}

void dfc_gather_to_f32(float *dst, const uint8_t *src, dfc_dtype dt, int ndim, const int64_t *shape,
                       const int64_t *strides)
{
    /* Pad to 4 dims (size 1, stride 0) so one loop nest covers every rank. */
    int64_t n[4] = {1, 1, 1, 1}, s[4] = {0, 0, 0, 0};
    for (int i = 0; i < ndim; i++) {
        n[4 - ndim + i] = shape[i];
        s[4 - ndim + i] = strides[i];
    }
    int64_t out = 0;
    for (int64_t a = 0; a < n[0]; a++)
        for (int64_t b = 0; b < n[1]; b++)
            for (int64_t c = 0; c < n[2]; c++) {
                int64_t base = a * s[0] + b * s[1] + c * s[2];
                if (s[3] == 1) {
                    dfc_convert_to_f32(dst + out, src + (size_t)base * dfc_dtype_size(dt), dt, n[3]);
                    out += n[3];
                } else {
                    for (int64_t d = 0; d < n[3]; d++)
                        dst[out++] = load_f32(src, dt, base + d * s[3]);
                }
            }
}

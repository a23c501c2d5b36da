/* Vectorisable float math for the fast CPU kernels (the reference kernels use libm). */
#ifndef DIFFICE_FAST_MATH_H
#define DIFFICE_FAST_MATH_H

#include <stdint.h>

/* Compiles a hot loop for AVX-512, AVX2 and baseline x86-64, chosen at load time: wide vectors without building
 * the whole extension for one CPU (DIFFICE_MARCH=native does that). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(DIFFICE_NO_CLONES)
#define DFC_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DFC_VECTOR_CLONES
#endif

/* exp(x) for x <= 0 (softmax logits minus their row max, -|x| in a sigmoid), within 1 ulp of the correctly rounded float and free of float
 * branches so the softmax loop vectorises (under the default -ftrapping-math gcc will not if-convert a float
 * compare). Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial, 2^n built in the
 * exponent bits. x is clamped at -87 (exp = 1.6e-38, nothing next to the row max's 1) by an unsigned compare of
 * its bits, which for negative floats grow with |x|. */
static inline float dfc_expf_nonpositive(float x)
{
    union {
        float f;
        uint32_t u;
    } in = {.f = x};
    const uint32_t minus_87 = 0xc2ae0000u;
    in.u = in.u < minus_87 ? in.u : minus_87;
    x = in.f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to an integer */
    const float n = (x * 1.44269504088896341f + round_magic) - round_magic;
    float r = x - n * 0.693359375f; /* ln 2 in two parts, the first exact in 9 bits */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        uint32_t u;
        float f;
    } two_n = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * two_n.f;
}

/* sigmoid(x) from e = exp(-|x|), which never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below, 0 below -87
 * (where the float result underflows anyway). Selections are done on the bits so the loops vectorise. */
static inline float dfc_sigmoidf(float x)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = x}, neg_abs = {.f = x}, e, factor, out;
    neg_abs.u |= 0x80000000u;
    e.f = dfc_expf_nonpositive(neg_abs.f);
    const float r = 1.0f / (1.0f + e.f);
    const uint32_t negative = (uint32_t)((int32_t)v.u >> 31); /* all ones when x < 0 */
    const uint32_t one_bits = 0x3f800000u;
    factor.u = (e.u & negative) | (one_bits & ~negative);
    out.f = r * factor.f;
    const uint32_t underflow = (0u - (uint32_t)(neg_abs.u > 0xc2ae0000u)) & negative; /* x < -87 */
    out.u &= ~underflow;
    return out.f;
}

#endif

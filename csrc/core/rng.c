#include "rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Philox4x32 with 10 rounds (Salmon et al., SC'11): passes BigCrush; 4 x 32 random bits per counter. */
static void philox4x32_10(const uint32_t counter[4], const uint32_t key_in[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key_in[0], k1 = key_in[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* splitmix64 finaliser: mixes the seed, the sample key and the stream coordinates into one 64-bit key. */
static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void dfc_gaussian_noise(const dfc_noise_stream *s, float *out, int64_t n)
{
    uint64_t k = mix64(mix64(mix64(s->seed) ^ s->sample_key) ^ ((uint64_t)s->stream << 32 | s->iteration));
    const uint32_t key[2] = {(uint32_t)k, (uint32_t)(k >> 32)};
    const double two_pi = 6.283185307179586476925286766559;
    const double inv_2_32 = 1.0 / 4294967296.0;
    /* each counter gives 4 x 32 bits = two Box-Muller pairs = four normals */
    for (int64_t j = 0; j < n; j += 4) {
        const uint32_t counter[4] = {(uint32_t)(j >> 2), (uint32_t)((uint64_t)j >> 34), s->step, s->inner_step};
        uint32_t bits[4];
        philox4x32_10(counter, key, bits);
        float z[4];
        for (int pair = 0; pair < 2; pair++) {
            double u1 = ((double)bits[2 * pair] + 0.5) * inv_2_32; /* in (0, 1): log is finite */
            double u2 = ((double)bits[2 * pair + 1] + 0.5) * inv_2_32;
            double r = sqrt(-2.0 * log(u1));
            z[2 * pair] = (float)(r * cos(two_pi * u2));
            z[2 * pair + 1] = (float)(r * sin(two_pi * u2));
        }
        for (int q = 0; q < 4 && j + q < n; q++)
            out[j + q] = z[q];
    }
}

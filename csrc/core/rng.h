/* Counter-based Gaussian noise (Philox4x32-10, Box-Muller): the noise of sample b at iteration l and step i is a
 * pure function of (seed, the sample's key, stream, l, i, element). So results are bitwise reproducible, do not
 * depend on which other images share a batch or on the batch size, and a sample that retries with another
 * lambda_c sees the same noise. No state, no globals.
 *
 * The generator is a set of inline functions that C, the CUDA kernels and their host build share (the op
 * gaussian_noise runs it on every backend: the sampler draws its noise where its tensors live). */
#ifndef DIFFICE_RNG_H
#define DIFFICE_RNG_H

#include <math.h>
#include <stdint.h>

#include "also_device.h"

typedef struct dfc_noise_stream {
    uint64_t seed;
    uint64_t sample_key; /* identifies the image (e.g. a hash of its pixels), not its position in a batch */
    uint32_t stream;     /* what the noise is for (q_sample, a reverse step, DiME's inner chain, ...) */
    uint32_t iteration;
    uint32_t step;
    uint32_t inner_step;
} dfc_noise_stream;

/* Philox4x32 with 10 rounds (Salmon et al., SC'11): passes BigCrush; 4 x 32 random bits per counter. */
static DFC_ALSO_DEVICE inline void dfc_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* splitmix64's finaliser: mixes the seed, the sample key and the stream coordinates into one 64-bit key. */
static DFC_ALSO_DEVICE inline uint64_t dfc_mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The Philox key of a stream (its step and inner step go into the counter instead). */
static DFC_ALSO_DEVICE inline uint64_t dfc_noise_key(uint64_t seed, uint64_t sample_key, uint32_t stream,
                                                     uint32_t iteration)
{
    return dfc_mix64(dfc_mix64(dfc_mix64(seed) ^ sample_key) ^ ((uint64_t)stream << 32 | iteration));
}

/* Normals 4 group .. 4 group + 3 of the stream with that key: one counter's 4 x 32 bits, two Box-Muller pairs in
 * double, each normal rounded once to float. */
static DFC_ALSO_DEVICE inline void dfc_noise_group(uint64_t key, int64_t group, uint32_t step, uint32_t inner_step,
                                                   float z[4])
{
    const uint32_t k[2] = {(uint32_t)key, (uint32_t)(key >> 32)};
    const uint32_t counter[4] = {(uint32_t)group, (uint32_t)((uint64_t)group >> 32), step, inner_step};
    uint32_t bits[4];
    dfc_philox4x32_10(counter, k, bits);
    const double two_pi = 6.283185307179586476925286766559, inv_2_32 = 1.0 / 4294967296.0;
    for (int pair = 0; pair < 2; pair++) {
        const double u1 = ((double)bits[2 * pair] + 0.5) * inv_2_32; /* in (0, 1): log is finite */
        const double u2 = ((double)bits[2 * pair + 1] + 0.5) * inv_2_32;
        const double r = sqrt(-2.0 * log(u1));
        z[2 * pair] = (float)(r * cos(two_pi * u2));
        z[2 * pair + 1] = (float)(r * sin(two_pi * u2));
    }
}

/* out[begin..end) = normals begin..end-1 of the stream s (begin a multiple of 4). */
static DFC_ALSO_DEVICE inline void dfc_gaussian_noise_span(const dfc_noise_stream *s, float *out, int64_t begin,
                                                           int64_t end)
{
    const uint64_t key = dfc_noise_key(s->seed, s->sample_key, s->stream, s->iteration);
    for (int64_t j = begin; j < end; j += 4) {
        float z[4];
        dfc_noise_group(key, j >> 2, s->step, s->inner_step, z);
        for (int q = 0; q < 4 && j + q < end; q++)
            out[j + q] = z[q];
    }
}

/* Fills out[0..n) with standard normal float32 values of the given stream. */
static DFC_ALSO_DEVICE inline void dfc_gaussian_noise(const dfc_noise_stream *s, float *out, int64_t n)
{
    dfc_gaussian_noise_span(s, out, 0, n);
}

#endif

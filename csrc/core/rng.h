/* Counter-based Gaussian noise (Philox4x32-10, Box-Muller): the noise of sample b at iteration l and step i is a
 * pure function of (seed, the sample's key, stream, l, i, element). So results are bitwise reproducible, do not
 * depend on which other images share a batch or on the batch size, and a sample that retries with another
 * lambda_c sees the same noise. No state, no globals. */
#ifndef DIFFICE_RNG_H
#define DIFFICE_RNG_H

#include <stdint.h>

typedef struct dfc_noise_stream {
    uint64_t seed;
    uint64_t sample_key; /* identifies the image (e.g. a hash of its pixels), not its position in a batch */
    uint32_t stream;     /* what the noise is for (q_sample, a reverse step, DiME's inner chain, ...) */
    uint32_t iteration;
    uint32_t step;
    uint32_t inner_step;
} dfc_noise_stream;

/* Fills out[0..n) with standard normal float32 values of the given stream. */
void dfc_gaussian_noise(const dfc_noise_stream *s, float *out, int64_t n);

#endif

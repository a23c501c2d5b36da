/* What diffusion.cu and loss.cu share: per-row reductions in two passes, and staging host vectors together with
 * scratch of one's own. */
#ifndef DIFFICE_CUDA_ROWS_CUH
#define DIFFICE_CUDA_ROWS_CUH

#include "cuda_backend.cuh"

/* ---- per-row reductions ----
 * A row's m terms are summed in chunks of DFC_ROW_CHUNK values, one index per chunk (first pass, partials in
 * scratch), then one index per row adds its chunks in order (second pass): deterministic, and a row of one chunk is
 * summed in exactly the reference kernel's order. */
#define DFC_ROW_CHUNK 4096

static inline int64_t dfc_row_chunks(int64_t m)
{
    return m > DFC_ROW_CHUNK ? (m + DFC_ROW_CHUNK - 1) / DFC_ROW_CHUNK : 1;
}

/* Index i of the first pass over rows of m values in `chunks` chunks: its row *b and span [*j0, *j1). */
static DFC_HOST_DEVICE inline void dfc_row_chunk(int64_t i, int64_t chunks, int64_t m, int64_t *b, int64_t *j0,
                                                 int64_t *j1)
{
    *b = i / chunks;
    *j0 = i % chunks * DFC_ROW_CHUNK;
    *j1 = *j0 + DFC_ROW_CHUNK < m ? *j0 + DFC_ROW_CHUNK : m;
}

/* The second pass: row b's partials (`stride` doubles per chunk, component `at`) added in order. */
static DFC_HOST_DEVICE inline double dfc_row_total(const double *partials, int64_t b, int64_t chunks, int stride,
                                                   int at)
{
    double sum = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        sum += partials[(b * chunks + c) * stride + at];
    return sum;
}

/* The common case, out[r] = (float)(factor * sum / divisor) with sum row r's m terms added in order (term(r, j, &sum)
 * adds item j's, as the reference kernel's inner loop); partials: n * dfc_row_chunks(m) doubles of scratch. Term is
 * a functor struct, not a lambda: nvcc does not take a lambda's type as a template argument of the function that
 * encloses an extended lambda. */
template <class Term>
static dfc_status dfc_row_sums(dfc_backend *be, int64_t n, int64_t m, Term term, double *partials, double factor,
                               double divisor, float *out, const char *op, dfc_error *err)
{
    const int64_t chunks = dfc_row_chunks(m);
    DFC_TRY(dfc_cuda_for_each(be, n * chunks, op, err, [=] DFC_DEVICE(int64_t i) {
        int64_t r, j0, j1;
        dfc_row_chunk(i, chunks, m, &r, &j0, &j1);
        double sum = 0.0;
        for (int64_t j = j0; j < j1; j++)
            term(r, j, &sum);
        partials[i] = sum;
    }));
    return dfc_cuda_for_each(be, n, op, err, [=] DFC_DEVICE(int64_t r) {
        out[r] = (float)(factor * dfc_row_total(partials, r, chunks, 1, 0) / divisor);
    });
}

#endif

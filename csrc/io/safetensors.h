/* safetensors: the parser (an in-memory file into an empty collection) and the writer. Depends only on
 * weight_set.h; the path-level loader is dfc_load_safetensors in weights.h. */
#ifndef DIFFICE_IO_SAFETENSORS_H
#define DIFFICE_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "weight_set.h"

/* Fills the empty collection w from a whole safetensors file: dtypes F32/F16/BF16/F64 (and integer/bool dtypes),
 * converted to float32; "__metadata__" kept. Messages omit the path. */
dfc_status dfc_safetensors_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err);

/* Writes tensors (items[i].name/ndim/shape/data; numel is recomputed) as safetensors, header sorted by name like
 * the reference implementation and padded with spaces to a multiple of 8, with optional string metadata
 * (meta_count pairs, may be 0). Written to a temporary file in the same folder, then renamed.
 * half = 0: data holds numel float32 values (dtype F32); half = 1: numel IEEE binary16 values (dtype F16, half
 * the size; the caller rounds). */
dfc_status dfc_save_safetensors(const char *path, const dfc_weight *items, size_t count, const char *const *meta_keys,
                                const char *const *meta_values, size_t meta_count, int half, dfc_error *err);

#endif

/* Loaded weights: an ordered collection of named float32 tensors, and the readers/writer that fill it.
 *
 * Every tensor is named by its PyTorch module path ("input_blocks.0.0.weight"), has 0 to DFC_MAX_DIMS dims and is
 * stored dense row-major as float32 whatever the file held (float16/bfloat16/float64/integers are converted on
 * load). The collection owns all its memory (names, data, metadata) and dfc_weights_destroy frees it at once.
 *
 * Readers never execute anything from a file: safetensors is parsed by a strict JSON parser, npz by a zip + .npy
 * header parser, PyTorch checkpoints by a restricted unpickler that knows only the handful of globals torch.save
 * writes for a state_dict. Every size a file claims is checked against the file's real size before allocating;
 * a malformed file gives DFC_ERR_FORMAT with a message that starts with the path and names the problem. On any
 * failure a reader leaves nothing allocated and *out NULL. */
#ifndef DIFFICE_IO_WEIGHTS_H
#define DIFFICE_IO_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"

typedef struct dfc_weight {
    char *name;                  /* UTF-8, NUL-terminated */
    int ndim;                    /* 0 (a scalar) to DFC_MAX_DIMS */
    int64_t shape[DFC_MAX_DIMS]; /* dims past ndim are 1 */
    int64_t numel;               /* product of shape; may be 0 */
    float *data;                 /* numel floats, dense row-major (malloc'd); NULL once taken */
} dfc_weight;

typedef struct dfc_weights {
    dfc_weight *items; /* in file order */
    size_t count, capacity;
    size_t *slots;     /* open-addressing hash of names: item index + 1, 0 = empty */
    size_t slot_count; /* a power of two, at least 2 * count */
    char **meta_keys;  /* safetensors "__metadata__", in file order */
    char **meta_values;
    size_t meta_count, meta_capacity;
} dfc_weights;

dfc_status dfc_weights_create(dfc_weights **out, dfc_error *err);
void dfc_weights_destroy(dfc_weights *w);

/* Appends a tensor and returns its uninitialised data in *data. Fails (DFC_ERR_FORMAT, naming the tensor) on more
 * than DFC_MAX_DIMS dims, a negative dim, a name that is not UTF-8 or holds a NUL, or a duplicate name. */
dfc_status dfc_weights_add(dfc_weights *w, const char *name, size_t name_len, int ndim, const int64_t *shape,
                           float **data, dfc_error *err);

/* NULL when absent. */
const dfc_weight *dfc_weights_find(const dfc_weights *w, const char *name);

/* The tensor `name` viewed as a dfc_tensor after checking it has exactly this shape; a missing name or another
 * shape fails with DFC_ERR_SHAPE naming both. The view borrows the collection's data. */
dfc_status dfc_weights_get(const dfc_weights *w, const char *name, int ndim, const int64_t *shape, dfc_tensor *out,
                           dfc_error *err);

dfc_status dfc_weights_set_metadata(dfc_weights *w, const char *key, size_t key_len, const char *value,
                                    size_t value_len, dfc_error *err);

/* Hands item `index`'s data to the caller, who frees it with free(); the item keeps its name and shape. */
float *dfc_weights_take_data(dfc_weights *w, size_t index);

/* ---- readers: path -> new collection ---- */

/* Picks the format from the first bytes, not the extension: a zip holding <archive>/data.pkl is a PyTorch
 * checkpoint, a zip of .npy members is an npz, a pickle is a legacy PyTorch checkpoint, anything else is read
 * as safetensors. */
dfc_status dfc_load_weights(const char *path, dfc_weights **out, dfc_error *err);

/* safetensors: dtypes F32/F16/BF16/F64 (and integer/bool dtypes), converted to float32; "__metadata__" kept. */
dfc_status dfc_load_safetensors(const char *path, dfc_weights **out, dfc_error *err);

/* numpy .npz (np.savez / np.savez_compressed): keys lose ".npy" like np.load; little-endian float/int/bool
 * dtypes; fortran_order arrays are transposed to row-major. */
dfc_status dfc_load_npz(const char *path, dfc_weights **out, dfc_error *err);

/* torch.save'd state_dict, zip (torch >= 1.6) or legacy format. The state_dict is the top-level dict, or its
 * 'state_dict' entry if that is a dict, else 'model', else 'ema'. Non-tensor entries are skipped; a leading
 * "module." is stripped when every tensor name has it (DistributedDataParallel). */
dfc_status dfc_load_torch(const char *path, dfc_weights **out, dfc_error *err);

/* ---- writer ---- */

/* Writes tensors (items[i].name/ndim/shape/data; numel is recomputed) as safetensors, header sorted by name like
 * the reference implementation and padded with spaces to a multiple of 8, with optional string metadata
 * (meta_count pairs, may be 0). Written to a temporary file in the same folder, then renamed.
 * half = 0: data holds numel float32 values (dtype F32); half = 1: numel IEEE binary16 values (dtype F16, half
 * the size; the caller rounds). */
dfc_status dfc_save_safetensors(const char *path, const dfc_weight *items, size_t count,
                                const char *const *meta_keys, const char *const *meta_values, size_t meta_count,
                                int half, dfc_error *err);

#endif

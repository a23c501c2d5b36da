/* Loading weights files: path -> a new collection (weight_set.h), whatever the format. The top of csrc/io and the
 * header the Python bindings include: it brings in the collection and the safetensors writer too. Nothing else in
 * csrc/io includes it: the collection knows no format, the parsers (safetensors.h, npz.h, torch_pickle.h, over
 * zip.h) know only the collection, and weights.c picks the parser.
 *
 * Readers never execute anything from a file: safetensors is parsed by a strict JSON parser, npz by a zip + .npy
 * header parser, PyTorch checkpoints by a restricted unpickler that knows only the handful of globals torch.save
 * writes for a state_dict. Every size a file claims is checked against the file's real size before allocating;
 * a malformed file gives DFC_ERR_FORMAT with a message that starts with the path and names the problem. On any
 * failure a reader leaves nothing allocated and *out NULL. */
#ifndef DIFFICE_IO_WEIGHTS_H
#define DIFFICE_IO_WEIGHTS_H

#include "safetensors.h" /* dfc_save_safetensors, the writer */
#include "weight_set.h"

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

#endif

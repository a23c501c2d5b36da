/* PyTorch checkpoints (torch.save'd state_dicts): the parsers for the zip and the legacy format. Depend only on
 * weight_set.h and zip.h; the path-level loader is dfc_load_torch in weights.h. Messages omit the path. */
#ifndef DIFFICE_IO_TORCH_PICKLE_H
#define DIFFICE_IO_TORCH_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "weight_set.h"
#include "zip.h"

/* The <archive> of a member named <archive>/data.pkl (archive has no '/'), copied into buf; 0 if none. */
int dfc_torch_zip_archive(const dfc_zip *zip, char *buf, size_t len);

/* Fills the empty collection w from a zip checkpoint (torch >= 1.6); archive: the <archive> prefix of
 * <archive>/data.pkl. */
dfc_status dfc_torch_zip_parse(const dfc_zip *zip, const char *archive, dfc_weights *w, dfc_error *err);

/* Fills the empty collection w from a whole legacy checkpoint (_use_new_zipfile_serialization=False). */
dfc_status dfc_torch_legacy_parse(const uint8_t *data, size_t size, dfc_weights *w, dfc_error *err);

#endif

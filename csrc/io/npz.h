/* numpy .npz: the parser over an opened zip. Depends only on weight_set.h and zip.h; the path-level loader is
 * dfc_load_npz in weights.h. */
#ifndef DIFFICE_IO_NPZ_H
#define DIFFICE_IO_NPZ_H

#include "weight_set.h"
#include "zip.h"

/* Fills the empty collection w from every .npy member of zip: keys lose ".npy" like np.load; little-endian
 * float/int/bool dtypes; fortran_order arrays are transposed to row-major. Messages omit the path. */
dfc_status dfc_npz_parse(const dfc_zip *zip, dfc_weights *w, dfc_error *err);

#endif

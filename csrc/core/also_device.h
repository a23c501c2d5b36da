/* Marks the arithmetic helpers (csrc/ops's private headers, core/rng.h's generator) that the CUDA kernels (csrc/cuda) call on the device
 * too, so both backends run one copy of the formula: __host__ __device__ under nvcc, nothing in C and in the
 * emulated build. Such a helper reads only its arguments (no host arrays, no allocation, no errors). */
#ifndef DIFFICE_ALSO_DEVICE_H
#define DIFFICE_ALSO_DEVICE_H

#ifdef __CUDACC__
#define DFC_ALSO_DEVICE __host__ __device__
#else
#define DFC_ALSO_DEVICE
#endif

#endif

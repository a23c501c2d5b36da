/* DFC_KERNEL_HELPER marks a static inline helper of a csrc/ops header that the CUDA kernels (csrc/cuda) call as
 * well: nvcc compiles it for both host and device, so every backend runs the same arithmetic. Plain C elsewhere. */
#ifndef DIFFICE_KERNEL_HELPER_H
#define DIFFICE_KERNEL_HELPER_H

#ifdef __CUDACC__
#define DFC_KERNEL_HELPER __host__ __device__
#else
#define DFC_KERNEL_HELPER
#endif

#endif

/* How much memory the machine gives this process: the limit of the backends' memory budgets
 * (dfc_backend_reserve), and what is available now. */
#ifndef DIFFICE_MEMORY_H
#define DIFFICE_MEMORY_H

#include <stddef.h>

/* 90% of the memory this process may use: the machine's physical memory, or its cgroup's limit where lower (a
 * container, a SLURM job). A host backend's memory limit, so a batch too large for the machine fails with a clear
 * error instead of being killed by the kernel's out-of-memory handler. 0: unknown (no limit). */
size_t dfc_default_memory_limit(void);

/* The memory the kernel can give now without swapping (/proc/meminfo MemAvailable), in bytes; 0: unknown. */
size_t dfc_available_memory(void);

#endif

/* The backend registry and the host memory functions. A backend is found by its interface's name and driven only
 * through its interface: nothing here knows what a particular backend does. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/memory.h"
#include "ops.h"

/* Every backend this build has, the default first. "cuda" is a loader: the GPU code lives in a plugin library
 * beside _C, built where nvcc was found, so a CPU-only install needs no CUDA library at all. */
static const dfc_backend_iface *const registry[] = {&dfc_cpu_backend_iface, &dfc_ref_backend_iface,
                                                    &dfc_cuda_emulated_backend_iface, &dfc_cuda_loader_iface};
#define REGISTRY_SIZE ((int)(sizeof registry / sizeof registry[0]))

const char *dfc_backend_registered(int index)
{
    return index >= 0 && index < REGISTRY_SIZE ? registry[index]->name : NULL;
}

/* The one thread policy: num_threads <= 0 means every core. */
static int default_threads(int num_threads)
{
    if (num_threads > 0)
        return num_threads;
#ifdef _OPENMP
    return omp_get_num_procs();
#else
    return 1;
#endif
}

/* The registry's lookup by key (a name's first key_len characters); nothing dispatches on names. NULL if none. */
static const dfc_backend_iface *registry_find(const char *key, size_t key_len)
{
    for (int i = 0; i < REGISTRY_SIZE; i++)
        if (strlen(registry[i]->name) == key_len && strncmp(registry[i]->name, key, key_len) == 0)
            return registry[i];
    return NULL;
}

int dfc_backend_device_count(const char *name)
{
    const dfc_backend_iface *iface = registry_find(name, strlen(name));
    return iface ? iface->device_count() : -1;
}

int dfc_host_device_count(void) { return 1; }

/* DFC_OK when iface offers precision; else why not, with the precisions it offers. */
static dfc_status check_precision(const dfc_backend_iface *iface, dfc_precision precision, dfc_error *err)
{
    if (!dfc_precision_name((int)precision))
        return dfc_fail(err, DFC_ERR_VALUE, "backend: precision %d is not one of fp32 (0), tf32 (1), bf16 (2)",
                        (int)precision);
    if (iface->precisions & DFC_PRECISION_BIT(precision))
        return DFC_OK;
    char offered[64] = "";
    for (int p = 0; dfc_precision_name(p); p++)
        if (iface->precisions & DFC_PRECISION_BIT(p)) {
            size_t used = strlen(offered);
            snprintf(offered + used, sizeof offered - used, "%s'%s'", used ? ", " : "", dfc_precision_name(p));
        }
    return dfc_fail(err, DFC_ERR_VALUE, "backend: the %s backend does not offer precision '%s' (it offers %s)%s",
                    iface->name, dfc_precision_name((int)precision), offered,
                    precision != DFC_PRECISION_FP32 ? ": a GPU tensor-core mode ('cuda')" : "");
}

dfc_status dfc_backend_create(const char *name, int num_threads, dfc_precision precision, dfc_backend **out,
                              dfc_error *err)
{
    *out = NULL;
    /* "name" or "name:device" */
    const char *colon = strchr(name, ':');
    size_t key_len = colon ? (size_t)(colon - name) : strlen(name);
    int device = 0;
    if (colon) {
        char *end = NULL;
        long parsed = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || parsed < 0 || parsed > 1024)
            return dfc_fail(err, DFC_ERR_VALUE,
                            "backend: '%s' is not a backend name followed by ':' and a device number", name);
        device = (int)parsed;
    }
    const dfc_backend_iface *iface = registry_find(name, key_len);
    if (!iface) {
        char known[128] = "";
        for (int i = 0; i < REGISTRY_SIZE; i++) {
            size_t used = strlen(known);
            snprintf(known + used, sizeof known - used, "%s'%s'", i ? ", " : "", registry[i]->name);
        }
        return dfc_fail(err, DFC_ERR_VALUE, "backend: unknown backend '%s' (expected one of %s)", name, known);
    }
    if (colon && iface->host_memory) /* the host backends run on the CPU, which has no device numbers */
        return dfc_fail(err, DFC_ERR_VALUE, "backend: '%s': the %s backend has no devices to number", name,
                        iface->name);
    DFC_TRY(check_precision(iface, precision, err));
    dfc_backend *be = calloc(1, sizeof *be);
    if (!be)
        return dfc_fail(err, DFC_ERR_NOMEM, "backend: out of memory");
    be->iface = iface;
    be->ops = iface->ops;
    be->num_threads = default_threads(num_threads);
    be->device = device;
    be->precision = precision;
    be->memory_limit = dfc_default_memory_limit(); /* a GPU backend's create sets 0 */
    dfc_status st = iface->create(be, err);
    if (st != DFC_OK) {
        be->iface->destroy(be); /* releases what a create that failed half way obtained (the loader swaps iface) */
        free(be);
        return st;
    }
    *out = be;
    return DFC_OK;
}

void dfc_backend_destroy(dfc_backend *be)
{
    if (!be)
        return;
    be->iface->destroy(be);
    free(be);
}

/* ---- the memory budget ---- */

/* "1.5 GiB", "12.3 MiB" */
static const char *format_bytes(size_t bytes, char buf[32])
{
    const double gib = (double)bytes / (double)(1 << 30);
    if (gib >= 1.0)
        snprintf(buf, 32, "%.3g GiB", gib);
    else
        snprintf(buf, 32, "%.3g MiB", (double)bytes / (double)(1 << 20));
    return buf;
}

dfc_status dfc_backend_reserve(dfc_backend *be, size_t bytes, const char *what, dfc_error *err)
{
    if (!be)
        return DFC_OK;
    const size_t held = __atomic_add_fetch(&be->memory_held, bytes, __ATOMIC_RELAXED);
    const size_t limit = __atomic_load_n(&be->memory_limit, __ATOMIC_RELAXED); /* Python may set it */
    if (!limit)
        return DFC_OK;
    const int over_limit = held < bytes || held > limit;
    /* other processes' memory counts too: a buffer the kernel cannot give without swapping, with some room left
     * for everything else (Python, numpy, the kernel), is refused here, not met by its out-of-memory handler later
     * (checked for large buffers only: /proc is read for each) */
    const size_t room = (size_t)256 << 20;
    const size_t available = !over_limit && bytes >= ((size_t)64 << 20) ? dfc_available_memory() : 0;
    if (!over_limit && (!available || bytes + room <= available))
        return DFC_OK;
    __atomic_sub_fetch(&be->memory_held, bytes, __ATOMIC_RELAXED);
    char asked[32], allowed[32], held_before[32];
    format_bytes(bytes, asked);
    format_bytes(held - bytes, held_before);
    if (over_limit)
        return dfc_fail(err, DFC_ERR_NOMEM,
                        "%s: %s more would pass the %s backend's memory limit of %s (%s held by its arenas and "
                        "buffers; a smaller batch or image size needs less)",
                        what, asked, be->iface->name, format_bytes(limit, allowed), held_before);
    return dfc_fail(err, DFC_ERR_NOMEM,
                    "%s: %s more, but the machine has only %s available now (256 MiB of it kept free; %s held by the "
                    "%s backend's arenas and buffers; a smaller batch or image size needs less)",
                    what, asked, format_bytes(available, allowed), held_before, be->iface->name);
}

void dfc_backend_release(dfc_backend *be, size_t bytes)
{
    if (be)
        __atomic_sub_fetch(&be->memory_held, bytes, __ATOMIC_RELAXED);
}

/* ---- host memory ---- */

void *dfc_host_alloc(dfc_backend *be, size_t bytes, dfc_error *err)
{
    (void)be;
    size_t rounded = (bytes + DFC_BACKEND_ALIGN - 1) / DFC_BACKEND_ALIGN * DFC_BACKEND_ALIGN;
    void *p = rounded >= bytes ? aligned_alloc(DFC_BACKEND_ALIGN, rounded ? rounded : DFC_BACKEND_ALIGN) : NULL;
    if (!p)
        dfc_fail(err, DFC_ERR_NOMEM, "host memory: cannot allocate %zu bytes", bytes);
    return p;
}

void dfc_host_free(dfc_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

dfc_status dfc_host_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)err;
    memset(ptr, 0, bytes);
    return DFC_OK;
}

dfc_status dfc_host_copy_from_host(dfc_backend *be, void *dst, const void *host_src, size_t bytes, dfc_error *err)
{
    return dfc_host_copy(be, dst, host_src, bytes, err);
}

dfc_status dfc_host_copy_to_host(dfc_backend *be, void *host_dst, const void *src, size_t bytes, dfc_error *err)
{
    return dfc_host_copy(be, host_dst, src, bytes, err);
}

dfc_status dfc_host_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)err;
    memmove(dst, src, bytes);
    return DFC_OK;
}

/* ---- "cuda": the loader of the CUDA plugin ----
 * The plugin (libdiffice_cuda.so, next to _C's own library) is built by nvcc and links the CUDA runtime, cuBLAS
 * and cuDNN. Creating a "cuda" backend loads it, then hands the backend to the plugin's interface: from then on
 * be->iface is the plugin's, and the loader's other functions are never reached. The library stays loaded for the
 * life of the process (unloading the CUDA runtime while the driver holds its state is not safe). */

/* The plugin's interface, loading the library on first use; NULL with err set when it cannot be had. */
static const dfc_backend_iface *cuda_plugin(dfc_error *err)
{
    Dl_info self;
    if (!dladdr((void *)&dfc_backend_create, &self) || !self.dli_fname) {
        dfc_fail(err, DFC_ERR_BACKEND, "cuda: cannot locate diffice's C extension to find its CUDA plugin");
        return NULL;
    }
    char path[4096];
    const char *slash = strrchr(self.dli_fname, '/');
    int dir_len = slash ? (int)(slash - self.dli_fname) : 1;
    snprintf(path, sizeof path, "%.*s/libdiffice_cuda.so", dir_len, slash ? self.dli_fname : ".");
    struct stat st;
    if (stat(path, &st) != 0) {
        dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED,
                 "cuda: this diffice was built without CUDA (no %s): reinstall on a machine with nvcc on PATH "
                 "and the cuDNN and cuBLAS wheels (pip install 'diffice[cuda]'), without DIFFICE_CUDA=0",
                 path);
        return NULL;
    }
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) { /* as without a plugin or a device: this install cannot run CUDA here, and says why */
        dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED,
                 "cuda: cannot load the CUDA plugin: %s (the CUDA libraries come from pip install 'diffice[cuda]')",
                 dlerror());
        return NULL;
    }
    typedef const dfc_backend_iface *(*plugin_entry)(void);
    plugin_entry entry;
    *(void **)&entry = dlsym(library, "dfc_cuda_plugin_iface"); /* POSIX's way to a function pointer */
    if (!entry) {
        dfc_fail(err, DFC_ERR_BACKEND, "cuda: %s has no dfc_cuda_plugin_iface: %s", path, dlerror());
        return NULL;
    }
    return entry();
}

static dfc_status cuda_loader_create(dfc_backend *be, dfc_error *err)
{
    const dfc_backend_iface *plugin = cuda_plugin(err);
    if (!plugin)
        return err && err->code ? err->code : DFC_ERR_BACKEND;
    be->iface = plugin;
    be->ops = plugin->ops;
    return plugin->create(be, err);
}

static int cuda_loader_device_count(void)
{
    dfc_error ignored = {0};
    const dfc_backend_iface *plugin = cuda_plugin(&ignored);
    return plugin ? plugin->device_count() : 0;
}

static void cuda_loader_destroy(dfc_backend *be) { (void)be; }

static dfc_status cuda_loader_unloaded(dfc_error *err)
{
    return dfc_fail(err, DFC_ERR_BACKEND, "cuda: the backend was not created");
}

static dfc_status cuda_loader_synchronize(dfc_backend *be, dfc_error *err)
{
    (void)be;
    return cuda_loader_unloaded(err);
}

static void *cuda_loader_alloc(dfc_backend *be, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)bytes;
    cuda_loader_unloaded(err);
    return NULL;
}

static void cuda_loader_free(dfc_backend *be, void *ptr)
{
    (void)be;
    (void)ptr;
}

static dfc_status cuda_loader_zero(dfc_backend *be, void *ptr, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)ptr;
    (void)bytes;
    return cuda_loader_unloaded(err);
}

static dfc_status cuda_loader_copy(dfc_backend *be, void *dst, const void *src, size_t bytes, dfc_error *err)
{
    (void)be;
    (void)dst;
    (void)src;
    (void)bytes;
    return cuda_loader_unloaded(err);
}

const dfc_backend_iface dfc_cuda_loader_iface = {
    .name = "cuda",
    .ops = NULL, /* the plugin's, set by create */
    .host_memory = 0,
    .precisions = DFC_PRECISION_BIT(DFC_PRECISION_FP32) | DFC_PRECISION_BIT(DFC_PRECISION_TF32) |
                  DFC_PRECISION_BIT(DFC_PRECISION_BF16), /* the plugin's */
    .device_count = cuda_loader_device_count,
    .create = cuda_loader_create,
    .destroy = cuda_loader_destroy,
    .synchronize = cuda_loader_synchronize,
    .alloc = cuda_loader_alloc,
    .free = cuda_loader_free,
    .zero = cuda_loader_zero,
    .copy_from_host = cuda_loader_copy,
    .copy_to_host = cuda_loader_copy,
    .copy = cuda_loader_copy,
};

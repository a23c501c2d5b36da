/* The CUDA backend's op table, generated from DFC_OP_LIST: every op's cuda_<op> is declared with the table's exact
 * signature, so a missing or mistyped kernel does not link (the no-fallback table, tests/test_backend_table.py).
 * The kernels: elementwise.cu, norm.cu (norms, softmax, broadcast binary, timestep embedding), dense.cu (cuDNN
 * convolutions, cuBLAS linear and attention), spatial.cu and optim.cu (channels, pooling, resizing, the optimizer),
 * diffusion.cu and loss.cu (the diffusion arithmetic and the losses). */
#include "cuda_backend.cuh"

#define DFC_DECLARE_CUDA_OP(name) DFC_DECLARE_OP_(cuda, name)
DFC_OP_LIST(DFC_DECLARE_CUDA_OP)
#undef DFC_DECLARE_CUDA_OP

#ifdef DFC_CUDA_EMULATE
/* The last argument of every op is its dfc_error *. */
static inline dfc_error *dfc_last_error(dfc_error *, dfc_error *e) { return e; }
template <class T> static inline dfc_error *dfc_last_error(dfc_error *current, T) { return current; }

/* The emulated table runs every op inside the strict emulation's access window (cuda_backend.cuh), after checking
 * that each tensor it is given lives in this backend's memory: on a GPU a host pointer there (a network's weights
 * left in host memory, an array not staged) is a crash or garbage, here it is an error naming the op. */
template <class T> static inline int dfc_host_tensor_arg(dfc_backend *, const T &) { return 0; }
static inline int dfc_host_tensor_arg(dfc_backend *be, const dfc_tensor *t)
{
    return t && t->data && !dfc_cuda_is_backend_memory(be, t->data);
}
static inline int dfc_host_tensor_arg(dfc_backend *be, dfc_tensor *t)
{
    return dfc_host_tensor_arg(be, (const dfc_tensor *)t);
}

template <auto op, class Name> struct dfc_cuda_windowed;
template <class... Args, dfc_status (*op)(dfc_backend *, Args...), class Name> struct dfc_cuda_windowed<op, Name> {
    static dfc_status run(dfc_backend *be, Args... args)
    {
        int position = 0, host = 0;
        ((++position, host = host ? host : (dfc_host_tensor_arg(be, args) ? position : 0)), ...);
        if (host) {
            dfc_error *err = nullptr;
            ((err = dfc_last_error(err, args)), ...);
            return dfc_fail(err, DFC_ERR_VALUE,
                            "cuda_emulated: %s: tensor argument %d is not in the backend's memory (on a GPU this "
                            "would read a host pointer)",
                            Name::op, host);
        }
        dfc_cuda_window_open(be);
        dfc_status st = op(be, args...);
        dfc_cuda_window_close(be);
        return st;
    }
};
#define DFC_CUDA_ENTRY(name)                     \
    struct dfc_cuda_entry_name_##name {          \
        static constexpr const char *op = #name; \
    };
DFC_OP_LIST(DFC_CUDA_ENTRY)
#undef DFC_CUDA_ENTRY
#define DFC_CUDA_ENTRY(name) .name = &dfc_cuda_windowed<cuda_##name, dfc_cuda_entry_name_##name>::run,
extern "C" const dfc_ops dfc_cuda_emulated_ops;
const dfc_ops dfc_cuda_emulated_ops = {DFC_OP_LIST(DFC_CUDA_ENTRY)};
#else
/* The GPU table makes the backend's device current before each op: the current device is per host thread, and a
 * thread may hold backends of several devices ("cuda:0" and "cuda:1"), whose kernels and library calls must each
 * run on their own. */
template <auto op> struct dfc_cuda_on_device;
template <class... Args, dfc_status (*op)(dfc_backend *, Args...)> struct dfc_cuda_on_device<op> {
    static dfc_status run(dfc_backend *be, Args... args)
    {
        cudaSetDevice(dfc_cuda(be)->device); /* cannot fail for a device the backend was created on */
        return op(be, args...);
    }
};
#define DFC_CUDA_ENTRY(name) .name = &dfc_cuda_on_device<cuda_##name>::run,
extern "C" const dfc_ops dfc_cuda_ops;
const dfc_ops dfc_cuda_ops = {DFC_OP_LIST(DFC_CUDA_ENTRY)};
#endif
#undef DFC_CUDA_ENTRY

/* The CUDA backend's op table, generated from DFC_OP_LIST: every op is either declared here from its kernel file
 * (DFC_CUDA_OPS_DONE) or, until its kernel exists, answers NotImplementedError naming itself (DFC_CUDA_OPS_NOT_YET).
 * An op in neither list, or in both, does not compile; when the second list is empty the template below goes. */
#include "cuda_backend.cuh"

/* Each family's ops, done (a kernel file defines cuda_<op>) and not yet; a family's two lists are edited together
 * when its kernels land: elementwise.cu, norm.cu (norms, softmax, broadcast binary, timestep embedding), dense.cu
 * (cuDNN convolutions, cuBLAS linear and attention), spatial.cu (channels, pooling, resizing, optimizer),
 * diffusion.cu (diffusion arithmetic and losses). */
#define DFC_CUDA_ELEMENTWISE_DONE(X) \
    X(activation_forward)            \
    X(activation_backward)           \
    X(row_scale)                     \
    X(row_axpy)                      \
    X(scale)                         \
    X(fill)
#define DFC_CUDA_ELEMENTWISE_NOT_YET(X)

#define DFC_CUDA_NORM_DONE(X) \
    X(group_norm_forward)     \
    X(group_norm_backward)    \
    X(batch_norm_forward)     \
    X(batch_norm_backward)    \
    X(scale_shift_forward)    \
    X(scale_shift_backward)   \
    X(standardize_forward)    \
    X(standardize_backward)   \
    X(softmax_forward)        \
    X(softmax_backward)       \
    X(binary_forward)         \
    X(binary_backward)        \
    X(timestep_embedding)
#define DFC_CUDA_NORM_NOT_YET(X)

#define DFC_CUDA_DENSE_DONE(X) \
    X(conv2d_forward)          \
    X(conv2d_backward_input)   \
    X(conv2d_backward_weight)  \
    X(linear_forward)          \
    X(linear_backward_input)   \
    X(linear_backward_weight)  \
    X(attention_forward)       \
    X(attention_backward)
#define DFC_CUDA_DENSE_NOT_YET(X)

#define DFC_CUDA_SPATIAL_DONE(X)   \
    X(concat_channels)             \
    X(split_channels)              \
    X(upsample_nearest2x_forward)  \
    X(upsample_nearest2x_backward) \
    X(avg_pool2d_forward)          \
    X(avg_pool2d_backward)         \
    X(max_pool2d_forward)          \
    X(max_pool2d_backward)         \
    X(global_avg_pool_forward)     \
    X(global_avg_pool_backward)    \
    X(resize_bilinear_forward)     \
    X(resize_bilinear_backward)    \
    X(adamw_step)                  \
    X(ema_update)                  \
    X(sum_squares)
#define DFC_CUDA_SPATIAL_NOT_YET(X)

#define DFC_CUDA_DIFFUSION_DONE(X) \
    X(q_sample)                    \
    X(p_mean_variance_forward)     \
    X(p_mean_variance_backward)    \
    X(sample_step)                 \
    X(change_map)                  \
    X(masked_blend)                \
    X(distance_penalty_forward)    \
    X(distance_penalty_backward)   \
    X(nonfinite_rows)              \
    X(target_probability)          \
    X(diffusion_vb_forward)        \
    X(diffusion_vb_backward)       \
    X(cross_entropy_forward)       \
    X(cross_entropy_backward)      \
    X(mse_forward)                 \
    X(mse_backward)                \
    X(logit_loss_forward)          \
    X(logit_loss_backward)         \
    X(bce_with_logits_forward)     \
    X(bce_with_logits_backward)    \
    X(normalized_distance_forward) \
    X(normalized_distance_backward)
#define DFC_CUDA_DIFFUSION_NOT_YET(X)

#define DFC_CUDA_OPS_DONE(X)     \
    DFC_CUDA_ELEMENTWISE_DONE(X) \
    DFC_CUDA_NORM_DONE(X) DFC_CUDA_DENSE_DONE(X) DFC_CUDA_SPATIAL_DONE(X) DFC_CUDA_DIFFUSION_DONE(X)
#define DFC_CUDA_OPS_NOT_YET(X)     \
    DFC_CUDA_ELEMENTWISE_NOT_YET(X) \
    DFC_CUDA_NORM_NOT_YET(X) DFC_CUDA_DENSE_NOT_YET(X) DFC_CUDA_SPATIAL_NOT_YET(X) DFC_CUDA_DIFFUSION_NOT_YET(X)

#define DFC_DECLARE_CUDA_OP(name) DFC_DECLARE_OP_(cuda, name)
DFC_CUDA_OPS_DONE(DFC_DECLARE_CUDA_OP)
#undef DFC_DECLARE_CUDA_OP

/* The last argument of every op is its dfc_error *. */
static inline dfc_error *dfc_last_error(dfc_error *, dfc_error *e) { return e; }
template <class T> static inline dfc_error *dfc_last_error(dfc_error *current, T) { return current; }

template <class Fn, class Name> struct dfc_cuda_not_yet;
template <class... Args, class Name> struct dfc_cuda_not_yet<dfc_status(dfc_backend *, Args...), Name> {
    static dfc_status run(dfc_backend *, Args... args)
    {
        dfc_error *err = nullptr;
        ((err = dfc_last_error(err, args)), ...);
        return dfc_fail(err, DFC_ERR_NOT_IMPLEMENTED, "%s: not implemented on the CUDA backend yet", Name::op);
    }
};

#define DFC_CUDA_NOT_YET_ENTRY(name)             \
    struct dfc_cuda_op_name_##name {             \
        static constexpr const char *op = #name; \
    };                                           \
    static constexpr auto cuda_##name =          \
        &dfc_cuda_not_yet<__typeof__(*((dfc_ops *)0)->name), dfc_cuda_op_name_##name>::run;
DFC_CUDA_OPS_NOT_YET(DFC_CUDA_NOT_YET_ENTRY)
#undef DFC_CUDA_NOT_YET_ENTRY

#ifdef DFC_CUDA_EMULATE
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
#define DFC_CUDA_ENTRY(name) DFC_OP_ENTRY_(cuda, name)
extern "C" const dfc_ops dfc_cuda_ops;
const dfc_ops dfc_cuda_ops = {DFC_OP_LIST(DFC_CUDA_ENTRY)};
#endif
#undef DFC_CUDA_ENTRY

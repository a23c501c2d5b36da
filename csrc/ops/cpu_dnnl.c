/* Every oneDNN call in diffice lives in this file: the engine and stream of the "cpu" backend, matrix products,
 * convolutions and linear layers. Tensors stay NCHW at the interface; primitives pick their own layouts and we
 * reorder at the boundary. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <oneapi/dnnl/dnnl.h>

#include "cpu.h"

struct dfc_cpu_state {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int num_threads;
};

static dfc_status dnnl_check(dnnl_status_t s, const char *what, dfc_error *err)
{
    if (s == dnnl_success)
        return DFC_OK;
    if (s == dnnl_out_of_memory)
        return dfc_fail(err, DFC_ERR_NOMEM, "oneDNN: %s: out of memory", what);
    return dfc_fail(err, DFC_ERR_BACKEND, "oneDNN: %s failed with status %d", what, (int)s);
}

#define DNNL_TRY(call, what)                                        \
    do {                                                            \
        if ((st = dnnl_check((call), (what), err)) != DFC_OK)       \
            goto done;                                              \
    } while (0)

dfc_status dfc_cpu_state_create(int num_threads, dfc_cpu_state **out, dfc_error *err)
{
    dfc_status st = DFC_OK;
    dfc_cpu_state *s = calloc(1, sizeof *s);
    if (!s)
        return dfc_fail(err, DFC_ERR_NOMEM, "cpu backend: out of memory");
    s->num_threads = num_threads;
    DNNL_TRY(dnnl_engine_create(&s->engine, dnnl_cpu, 0), "engine creation");
    DNNL_TRY(dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags), "stream creation");
    *out = s;
    return DFC_OK;
done:
    dfc_cpu_state_destroy(s);
    return st;
}

void dfc_cpu_state_destroy(dfc_cpu_state *s)
{
    if (!s)
        return;
    if (s->stream)
        dnnl_stream_destroy(s->stream);
    if (s->engine)
        dnnl_engine_destroy(s->engine);
    free(s);
}

/* oneDNN's OpenMP runtime uses the calling thread's thread count. */
static void set_threads(const dfc_backend *be)
{
#ifdef _OPENMP
    omp_set_num_threads(be->num_threads);
#else
    (void)be;
#endif
}

/* Runs a primitive built from pd with the given (arg, memory) pairs and waits. */
static dfc_status execute(dfc_cpu_state *s, const_dnnl_primitive_desc_t pd, int nargs, const dnnl_exec_arg_t *args,
                          const char *what, dfc_error *err)
{
    dfc_status st = DFC_OK;
    dnnl_primitive_t prim = NULL;
    DNNL_TRY(dnnl_primitive_create(&prim, pd), what);
    DNNL_TRY(dnnl_primitive_execute(prim, s->stream, nargs, args), what);
    DNNL_TRY(dnnl_stream_wait(s->stream), what);
done:
    if (prim)
        dnnl_primitive_destroy(prim);
    return st;
}

dfc_status dfc_dnnl_matmul(dfc_backend *be, int64_t batch, int64_t m, int64_t n, int64_t k,
                           dfc_matmul_operand a, dfc_matmul_operand b, dfc_matmul_operand c, float alpha,
                           float beta, dfc_error *err)
{
    dfc_cpu_state *s = be->impl;
    dfc_status st = DFC_OK;
    dnnl_memory_desc_t a_md = NULL, b_md = NULL, c_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_memory_t a_mem = NULL, b_mem = NULL, c_mem = NULL;
    if (beta != 0.0f && beta != 1.0f)
        return dfc_fail(err, DFC_ERR_VALUE, "matmul: beta must be 0 or 1, got %g", (double)beta);
    set_threads(be);

    dnnl_dims_t a_dims = {batch, m, k}, b_dims = {batch, k, n}, c_dims = {batch, m, n};
    dnnl_dims_t a_strides = {a.strides[0], a.strides[1], a.strides[2]};
    dnnl_dims_t b_strides = {b.strides[0], b.strides[1], b.strides[2]};
    dnnl_dims_t c_strides = {c.strides[0], c.strides[1], c.strides[2]};
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&a_md, 3, a_dims, dnnl_f32, a_strides), "matmul A descriptor");
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&b_md, 3, b_dims, dnnl_f32, b_strides), "matmul B descriptor");
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&c_md, 3, c_dims, dnnl_f32, c_strides), "matmul C descriptor");
    DNNL_TRY(dnnl_primitive_attr_create(&attr), "matmul attributes");
    if (alpha != 1.0f || beta != 0.0f) {
        DNNL_TRY(dnnl_post_ops_create(&post_ops), "matmul post-ops");
        /* Order matters: scale the product first, then add the old C. */
        if (alpha != 1.0f)
            DNNL_TRY(dnnl_post_ops_append_eltwise(post_ops, dnnl_eltwise_linear, alpha, 0.0f), "matmul scale");
        if (beta != 0.0f)
            DNNL_TRY(dnnl_post_ops_append_sum(post_ops, 1.0f, 0, dnnl_data_type_undef), "matmul accumulate");
        DNNL_TRY(dnnl_primitive_attr_set_post_ops(attr, post_ops), "matmul post-ops");
    }
    DNNL_TRY(dnnl_matmul_primitive_desc_create(&pd, s->engine, a_md, b_md, NULL, c_md, attr), "matmul");
    DNNL_TRY(dnnl_memory_create(&a_mem, a_md, s->engine, a.data), "matmul A memory");
    DNNL_TRY(dnnl_memory_create(&b_mem, b_md, s->engine, b.data), "matmul B memory");
    DNNL_TRY(dnnl_memory_create(&c_mem, c_md, s->engine, c.data), "matmul C memory");
    {
        dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}};
        st = execute(s, pd, 3, args, "matmul", err);
    }
done:
    if (a_mem) dnnl_memory_destroy(a_mem);
    if (b_mem) dnnl_memory_destroy(b_mem);
    if (c_mem) dnnl_memory_destroy(c_mem);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (a_md) dnnl_memory_desc_destroy(a_md);
    if (b_md) dnnl_memory_desc_destroy(b_md);
    if (c_md) dnnl_memory_desc_destroy(c_md);
    return st;
}

/* ---- convolution and linear: to be written (stubs fall back to the reference kernels) ---- */
#include "ref.h"

dfc_status cpu_conv2d_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_conv2d_params p, dfc_tensor *y, dfc_error *err)
{
    return ref_conv2d_forward(be, x, weight, bias, p, y, err);
}
dfc_status cpu_conv2d_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight,
                                     dfc_conv2d_params p, dfc_tensor *dx, dfc_error *err)
{
    return ref_conv2d_backward_input(be, dy, weight, p, dx, err);
}
dfc_status cpu_conv2d_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_conv2d_params p,
                                      dfc_tensor *dweight, dfc_tensor *dbias, dfc_error *err)
{
    return ref_conv2d_backward_weight(be, dy, x, p, dweight, dbias, err);
}
dfc_status cpu_linear_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *weight, const dfc_tensor *bias,
                              dfc_tensor *y, dfc_error *err)
{
    return ref_linear_forward(be, x, weight, bias, y, err);
}
dfc_status cpu_linear_backward_input(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *weight, dfc_tensor *dx,
                                     dfc_error *err)
{
    return ref_linear_backward_input(be, dy, weight, dx, err);
}
dfc_status cpu_linear_backward_weight(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x, dfc_tensor *dweight,
                                      dfc_tensor *dbias, dfc_error *err)
{
    return ref_linear_backward_weight(be, dy, x, dweight, dbias, err);
}

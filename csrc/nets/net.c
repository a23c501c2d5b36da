/* The network calls of a caller whose arrays are in host memory (net.h): the staging around dfc_net_forward and
 * dfc_net_backward, so the Python binding only converts arrays and a C program needs no backend memory of its own. */
#include "net.h"

dfc_status dfc_net_forward_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_arena *scratch,
                                     dfc_tensor *x, dfc_tensor *cond, void **tape, dfc_tensor *outputs, dfc_error *err)
{
    DFC_TRY(dfc_net_sync(net, be, err));
    DFC_TRY(dfc_input_into_arena(be, arena, x, err));
    if (cond)
        DFC_TRY(dfc_input_into_arena(be, arena, cond, err));
    return dfc_net_forward(net, be, arena, scratch, x, cond && cond->data ? cond : NULL, tape, outputs, err);
}

dfc_status dfc_net_vjp_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, dfc_tensor *x, dfc_tensor *cond,
                                 dfc_tensor *douts, dfc_tensor *dx, dfc_tensor *grads, const char *op, dfc_error *err)
{
    dfc_tensor outputs[DFC_NET_MAX_OUTPUTS];
    void *tape = NULL;
    DFC_TRY(dfc_net_forward_from_host(net, be, arena, NULL, x, cond, &tape, outputs, err));
    for (int k = 0; k < net->num_outputs; k++) {
        if (douts[k].data)
            DFC_TRY(dfc_check_shape(&douts[k], op, net->output_names[k], outputs[k].ndim, outputs[k].shape, err));
    }
    return dfc_net_backward_from_host(net, be, arena, tape, douts, dx, grads, err);
}

dfc_status dfc_net_backward_from_host(const dfc_net *net, dfc_backend *be, dfc_arena *arena, const void *tape,
                                      dfc_tensor *douts, dfc_tensor *dx, dfc_tensor *grads, dfc_error *err)
{
    dfc_tensor none = {0}, dx_be, grads_be;
    if (!dx)
        dx = &none;
    for (int k = 0; k < net->num_outputs; k++)
        DFC_TRY(dfc_input_into_arena(be, arena, &douts[k], err));
    DFC_TRY(dfc_output_in_arena(arena, dx, &dx_be, err));
    DFC_TRY(dfc_output_in_arena(arena, grads, &grads_be, err));
    DFC_TRY(dfc_net_backward(net, be, arena, tape, douts, dx->data ? &dx_be : NULL, grads_be.data, err));
    if (dx->data)
        DFC_TRY(dfc_copy_tensor_to_host(be, dx, &dx_be, err));
    return grads->data ? dfc_copy_tensor_to_host(be, grads, &grads_be, err) : DFC_OK;
}

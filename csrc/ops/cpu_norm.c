/* Fast CPU group norm (stub: falls back to the reference kernel until written). */
#include "cpu.h"
#include "ref.h"

dfc_status cpu_group_norm_forward(dfc_backend *be, const dfc_tensor *x, const dfc_tensor *gamma,
                                  const dfc_tensor *beta, int groups, float eps, dfc_tensor *y, dfc_tensor *mean,
                                  dfc_tensor *rstd, dfc_error *err)
{
    return ref_group_norm_forward(be, x, gamma, beta, groups, eps, y, mean, rstd, err);
}

dfc_status cpu_group_norm_backward(dfc_backend *be, const dfc_tensor *dy, const dfc_tensor *x,
                                   const dfc_tensor *gamma, const dfc_tensor *mean, const dfc_tensor *rstd,
                                   int groups, float eps, dfc_tensor *dx, dfc_tensor *dgamma, dfc_tensor *dbeta,
                                   dfc_error *err)
{
    return ref_group_norm_backward(be, dy, x, gamma, mean, rstd, groups, eps, dx, dgamma, dbeta, err);
}

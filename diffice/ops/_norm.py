"""Normalisation ops: group norm (per-sample statistics, as torch.nn.GroupNorm) and inference batch norm."""

from __future__ import annotations

from typing import Literal, overload

import numpy as np

from .._native import _C
from ._backend import Layout, get_backend, is_nhwc

__all__ = ["group_norm", "group_norm_act", "group_norm_backward", "batch_norm", "batch_norm_backward"]


@overload
def group_norm(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = ...,
    beta: np.ndarray | None = ...,
    *,
    eps: float = ...,
    backend: str = ...,
    return_stats: Literal[False] = ...,
) -> np.ndarray: ...


@overload
def group_norm(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = ...,
    beta: np.ndarray | None = ...,
    *,
    eps: float = ...,
    backend: str = ...,
    return_stats: Literal[True],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@overload
def group_norm(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = ...,
    beta: np.ndarray | None = ...,
    *,
    eps: float = ...,
    backend: str = ...,
    return_stats: bool = ...,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def group_norm(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    backend: str = "cpu",
    return_stats: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group norm over x (N, C, ...) (images (N, C, H, W), sequences (N, C, T)); ``groups`` must divide C.

    Each (sample, group) block of C/groups channels is normalised by its mean and biased variance:
    y = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c]. gamma, beta: (C,) or None (1 and 0).
    Returns y (x's shape), or (y, mean, rstd) with mean, rstd = 1/sqrt(var + eps) of shape (N, groups) when
    return_stats is true (pass them to group_norm_backward to skip recomputing them).
    """
    y, mean, rstd = _C.group_norm_forward(get_backend(backend), x, groups, gamma, beta, float(eps))
    return (y, mean, rstd) if return_stats else y


def group_norm_act(
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    add: np.ndarray | None = None,
    scale_shift: np.ndarray | None = None,
    silu: bool = True,
    x_layout: Layout = "nchw",
    y_layout: Layout = "nchw",
    backend: str = "cpu",
) -> np.ndarray:
    """A UNet block's normalisation in one pass (forward only): y = silu(g (1 + scale) + shift) with
    g = group_norm(x + add[n, c], groups) gamma + beta.

    x: (N, C, H, W), or (N, H, W, C) with x_layout="nhwc"; add: (N, C) or None (the time embedding's projection);
    scale_shift: (N, 2C) = [scale | shift] or None (use_scale_shift_norm); silu: False leaves the activation out.
    Returns y with x's values in y_layout: (N, C, H, W), or (N, H, W, C) for "nhwc" (what the next convolution
    reads without a reorder on the "cpu" backend).
    """
    op = "group_norm_act"
    return _C.group_norm_act_forward(
        get_backend(backend),
        x,
        add,
        groups,
        gamma,
        beta,
        scale_shift,
        float(eps),
        bool(silu),
        is_nhwc(x_layout, op, "x_layout"),
        is_nhwc(y_layout, op, "y_layout"),
    )


def group_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    groups: int,
    gamma: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    mean: np.ndarray | None = None,
    rstd: np.ndarray | None = None,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of group_norm given dy (x's shape): returns (dx, dgamma, dbeta).

    dgamma, dbeta (C,) are None when gamma is None (no affine parameters). mean, rstd (N, groups): the saved
    statistics from group_norm(..., return_stats=True), or None to recompute them from x with eps.
    """
    return _C.group_norm_backward(get_backend(backend), dy, x, groups, gamma, mean, rstd, float(eps))


def batch_norm(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    backend: str = "cpu",
) -> np.ndarray:
    """Inference batch norm over x (N, C, ...): y = (x - running_mean[c]) / sqrt(running_var[c] + eps) * gamma[c]
    + beta[c]. running_mean, running_var, gamma, beta: (C,); gamma, beta None mean 1 and 0."""
    return _C.batch_norm_forward(get_backend(backend), x, running_mean, running_var, gamma, beta, float(eps))


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    *,
    eps: float = 1e-5,
    backend: str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of batch_norm (running statistics are constants): returns (dx (x's shape), dgamma (C,),
    dbeta (C,)). dgamma is the gradient of the scale even when gamma is None (then taken as 1)."""
    return _C.batch_norm_backward(get_backend(backend), dy, x, running_mean, running_var, gamma, float(eps))

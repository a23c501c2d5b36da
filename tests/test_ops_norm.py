"""Group norm and inference batch norm against PyTorch autograd (float64 reference)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops

GN_TOL = 1e-5  # tighter than the project's 1e-4 for group norm: measured errors are ~2e-7

GN_CASES = [
    # (shape, groups)
    ((3, 64, 13, 19), 32),
    ((3, 96, 13, 19), 32),
    ((2, 96, 29), 32),
    ((3, 35, 13, 19), 1),
    ((3, 35, 13, 19), 5),
    ((3, 35, 13, 19), 7),
    ((3, 35, 29), 5),
    ((3, 35, 29), 35),
    ((4, 12), 3),
]


def _gn_reference(x, groups, gamma, beta, dy, eps=1e-5):
    xt = t64(x, requires_grad=True)
    gt = t64(gamma, requires_grad=True) if gamma is not None else None
    bt = t64(beta, requires_grad=True) if beta is not None else None
    yt = F.group_norm(xt, groups, gt, bt, eps=eps)
    yt.backward(t64(dy))
    return yt, xt.grad, gt.grad if gt is not None else None, bt.grad if bt is not None else None


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape, groups", GN_CASES)
def test_group_norm_affine(rng, backend, shape, groups):
    c = shape[1]
    x = randn(rng, *shape, scale=2.0) + np.float32(0.5)
    gamma, beta, dy = randn(rng, c), randn(rng, c), randn(rng, *shape)
    yt, dxt, dgt, dbt = _gn_reference(x, groups, gamma, beta, dy)
    y, mean, rstd = ops.group_norm(x, groups, gamma, beta, backend=backend, return_stats=True)
    assert mean.shape == rstd.shape == (shape[0], groups)
    assert rel_err(y, yt) <= GN_TOL
    xg = t64(x).reshape(shape[0], groups, -1)
    assert rel_err(mean, xg.mean(-1)) <= 1e-6
    assert rel_err(rstd, 1.0 / torch.sqrt(xg.var(-1, unbiased=False) + 1e-5)) <= 1e-6
    # with the saved statistics and recomputing them
    for saved in [dict(mean=mean, rstd=rstd), {}]:
        dx, dgamma, dbeta = ops.group_norm_backward(dy, x, groups, gamma, backend=backend, **saved)
        assert rel_err(dx, dxt) <= GN_TOL
        assert rel_err(dgamma, dgt) <= GN_TOL
        assert rel_err(dbeta, dbt) <= GN_TOL


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_norm_without_affine(rng, backend):
    shape, groups = (3, 35, 13, 19), 7
    x, dy = randn(rng, *shape), randn(rng, *shape)
    yt, dxt, _, _ = _gn_reference(x, groups, None, None, dy, eps=1e-3)
    assert rel_err(ops.group_norm(x, groups, eps=1e-3, backend=backend), yt) <= GN_TOL
    dx, dgamma, dbeta = ops.group_norm_backward(dy, x, groups, eps=1e-3, backend=backend)
    assert dgamma is None and dbeta is None
    assert rel_err(dx, dxt) <= GN_TOL


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_norm_large_mean_small_spread(rng, backend):
    # |mean| >> std: a naive E[x^2] - E[x]^2 in float would cancel catastrophically.
    shape, groups = (2, 64, 11, 13), 32
    x = randn(rng, *shape, scale=0.01) + np.float32(300.0)
    gamma, beta, dy = randn(rng, 64), randn(rng, 64), randn(rng, *shape)
    yt, dxt, dgt, dbt = _gn_reference(x, groups, gamma, beta, dy)
    assert rel_err(ops.group_norm(x, groups, gamma, beta, backend=backend), yt) <= GN_TOL
    dx, dgamma, dbeta = ops.group_norm_backward(dy, x, groups, gamma, backend=backend)
    assert rel_err(dx, dxt) <= GN_TOL
    assert rel_err(dgamma, dgt) <= GN_TOL
    assert rel_err(dbeta, dbt) <= GN_TOL


@pytest.mark.parametrize("backend", ["cpu", "cuda_emulated"])
def test_group_norm_unet_like_size(rng, backend):
    # A UNet level's group size (4 channels x 56 x 72 = 16128 values per group): long sums must stay accurate
    # (and span many chunks of the CUDA kernels' two-pass sums).
    shape, groups = (2, 128, 56, 72), 32
    x = randn(rng, *shape, scale=3.0) + np.float32(1.0)
    gamma, beta, dy = randn(rng, 128), randn(rng, 128), randn(rng, *shape)
    yt, dxt, dgt, dbt = _gn_reference(x, groups, gamma, beta, dy)
    y, mean, rstd = ops.group_norm(x, groups, gamma, beta, backend=backend, return_stats=True)
    assert rel_err(y, yt) <= GN_TOL
    dx, dgamma, dbeta = ops.group_norm_backward(dy, x, groups, gamma, mean=mean, rstd=rstd, backend=backend)
    assert rel_err(dx, dxt) <= GN_TOL
    assert rel_err(dgamma, dgt) <= GN_TOL
    assert rel_err(dbeta, dbt) <= GN_TOL


def test_group_norm_backends_agree(rng):
    x, dy = randn(rng, 3, 64, 13, 19), randn(rng, 3, 64, 13, 19)
    gamma, beta = randn(rng, 64), randn(rng, 64)
    y_ref = ops.group_norm(x, 32, gamma, beta, backend="ref")
    y_cpu = ops.group_norm(x, 32, gamma, beta, backend="cpu")
    assert rel_err(y_cpu, y_ref) <= 1e-6
    for got, want in zip(
        ops.group_norm_backward(dy, x, 32, gamma, backend="cpu"),
        ops.group_norm_backward(dy, x, 32, gamma, backend="ref"),
    ):
        assert rel_err(got, want) <= 1e-5


def _gn_act_reference(x, groups, gamma, beta, add, ss, silu, eps=1e-5):
    """PyTorch in float64: silu(group_norm(x + add) (1 + scale) + shift), as guided-diffusion's ResBlock."""
    h = t64(x)
    if add is not None:
        h = h + t64(add)[:, :, None, None]
    g = F.group_norm(h, groups, t64(gamma) if gamma is not None else None, t64(beta) if beta is not None else None, eps)
    if ss is not None:
        scale, shift = t64(ss)[:, :, None, None].chunk(2, dim=1)
        g = g * (1 + scale) + shift
    return F.silu(g) if silu else g


def _to(layout, a):
    return a.transpose(0, 2, 3, 1).copy() if layout == "nhwc" else a


def _from(layout, a):
    return a.transpose(0, 3, 1, 2) if layout == "nhwc" else a


LAYOUTS = [("nchw", "nchw"), ("nchw", "nhwc"), ("nhwc", "nhwc"), ("nhwc", "nchw")]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("x_layout, y_layout", LAYOUTS)
@pytest.mark.parametrize("steps", ["add", "scale_shift", "plain", "no_silu"])
def test_group_norm_act(rng, backend, x_layout, y_layout, steps):
    """GroupNorm + (time-embedding add | scale-shift) + SiLU in one pass, in each pair of layouts, against PyTorch's
    unfused steps."""
    shape, groups = (3, 35, 13, 19), 7
    x = randn(rng, *shape, scale=2.0) + np.float32(0.5)
    gamma, beta = randn(rng, 35), randn(rng, 35)
    add = randn(rng, 3, 35) if steps == "add" else None
    ss = randn(rng, 3, 70, scale=0.5) if steps == "scale_shift" else None
    silu = steps != "no_silu"
    kw = dict(add=add, scale_shift=ss, silu=silu, x_layout=x_layout, y_layout=y_layout, backend=backend)
    y = ops.group_norm_act(_to(x_layout, x), groups, gamma, beta, **kw)
    assert y.shape == _to(y_layout, x).shape
    assert rel_err(_from(y_layout, y), _gn_act_reference(x, groups, gamma, beta, add, ss, silu)) <= GN_TOL


@pytest.mark.parametrize("x_layout, y_layout", LAYOUTS)
def test_group_norm_act_unet_sizes_and_large_mean(rng, x_layout, y_layout):
    """A UNet level's size (2 x 128 x 56 x 72, 4 channels per group; tiles of 32 pixels end inside a row), a
    mean far above the spread (the statistics' shifted sums), no affine parameters: the fast kernel against
    PyTorch and the reference kernel."""
    shape, groups = (2, 128, 56, 71), 32
    x = randn(rng, *shape, scale=0.05) + np.float32(40.0)
    add = randn(rng, 2, 128)
    want = _gn_act_reference(x, groups, None, None, add, None, True)
    kw = dict(add=add, x_layout=x_layout, y_layout=y_layout)
    got = _from(y_layout, ops.group_norm_act(_to(x_layout, x), groups, backend="cpu", **kw))
    assert rel_err(got, want) <= GN_TOL
    ref = _from(y_layout, ops.group_norm_act(_to(x_layout, x), groups, backend="ref", **kw))
    assert rel_err(got, ref) <= 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_norm_act_bad_inputs(backend):
    x = np.zeros((2, 35, 4, 4), np.float32)
    with pytest.raises(ValueError, match="group_norm_act: add has shape"):
        ops.group_norm_act(x, 5, add=np.zeros((2, 34), np.float32), backend=backend)
    with pytest.raises(ValueError, match="group_norm_act: ss has shape"):
        ops.group_norm_act(x, 5, scale_shift=np.zeros((2, 35), np.float32), backend=backend)
    with pytest.raises(ValueError, match="group_norm_act: groups"):
        ops.group_norm_act(x, 4, backend=backend)
    with pytest.raises(ValueError, match="group_norm_act: x"):
        ops.group_norm_act(np.zeros((2, 35, 16), np.float32), 5, backend=backend)
    with pytest.raises(ValueError, match="group_norm_act: y_layout must be 'nchw' or 'nhwc'"):
        ops.group_norm_act(x, 5, y_layout="NHWC", backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_norm_bad_inputs(backend):
    x = np.zeros((2, 35, 4, 4), np.float32)
    with pytest.raises(ValueError) as info:
        ops.group_norm(x, 32, backend=backend)
    assert "group_norm" in str(info.value) and "groups (32)" in str(info.value) and "35" in str(info.value)
    with pytest.raises(ValueError, match="groups"):
        ops.group_norm(x, 0, backend=backend)
    with pytest.raises(ValueError, match="group_norm: gamma"):
        ops.group_norm(x, 5, np.ones(34, np.float32), backend=backend)
    with pytest.raises(ValueError, match="group_norm: beta"):
        ops.group_norm(x, 5, None, np.ones((35, 1), np.float32), backend=backend)
    with pytest.raises(TypeError, match="group_norm: x.*float32"):
        ops.group_norm(x.astype(np.float64), 5, backend=backend)
    with pytest.raises(ValueError, match="group_norm: x"):
        ops.group_norm(np.zeros(35, np.float32), 5, backend=backend)
    with pytest.raises(ValueError, match="group_norm_backward: dy"):
        ops.group_norm_backward(np.zeros((2, 35, 4, 5), np.float32), x, 5, backend=backend)
    with pytest.raises(ValueError, match="group_norm_backward: mean"):
        ops.group_norm_backward(
            x, x, 5, mean=np.zeros((2, 7), np.float32), rstd=np.ones((2, 5), np.float32), backend=backend
        )
    with pytest.raises(ValueError, match="mean and rstd"):
        ops.group_norm_backward(x, x, 5, mean=np.zeros((2, 5), np.float32), backend=backend)


# ---- batch norm ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 7, 13, 19), (3, 11, 29), (5, 11)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_inference(rng, backend, shape, affine):
    c = shape[1]
    x, dy = randn(rng, *shape, scale=2.0), randn(rng, *shape)
    rmean = randn(rng, c)
    rvar = (rng.random(c) * 2 + 0.1).astype(np.float32)
    gamma, beta = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    eps = 1.001e-5
    xt = t64(x, requires_grad=True)
    gt = t64(gamma if affine else np.ones(c, np.float32), requires_grad=True)
    bt = t64(beta if affine else np.zeros(c, np.float32), requires_grad=True)
    yt = F.batch_norm(xt, t64(rmean), t64(rvar), gt, bt, training=False, eps=eps)
    yt.backward(t64(dy))
    y = ops.batch_norm(x, rmean, rvar, gamma, beta, eps=eps, backend=backend)
    assert rel_err(y, yt) <= 1e-5
    dx, dgamma, dbeta = ops.batch_norm_backward(dy, x, rmean, rvar, gamma, eps=eps, backend=backend)
    assert rel_err(dx, xt.grad) <= 1e-5
    assert rel_err(dgamma, gt.grad) <= 1e-5
    assert rel_err(dbeta, bt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_batch_norm_bad_inputs(backend):
    x = np.zeros((2, 5, 4, 4), np.float32)
    ones = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="batch_norm: running_mean"):
        ops.batch_norm(x, np.zeros(4, np.float32), ones, backend=backend)
    with pytest.raises(ValueError, match="batch_norm: running_var"):
        ops.batch_norm(x, ones, -ones, backend=backend)
    with pytest.raises(ValueError, match="batch_norm: gamma"):
        ops.batch_norm(x, ones, ones, np.ones(6, np.float32), backend=backend)
    with pytest.raises(TypeError, match="batch_norm: running_var"):
        ops.batch_norm(x, ones, ones.astype(np.float64), backend=backend)
    with pytest.raises(ValueError, match="batch_norm_backward: dy"):
        ops.batch_norm_backward(np.zeros((2, 5, 4, 3), np.float32), x, ones, ones, backend=backend)

"""Cross-entropy and mean squared error against PyTorch autograd (float64 reference), all reductions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops

REDUCTIONS = ["mean", "sum", "none"]


def _dloss(rng, reduction, n):
    return randn(rng, n) if reduction == "none" else float(rng.standard_normal())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n, k", [(3, 5), (13, 11), (1, 2), (7, 1000)])
def test_cross_entropy(rng, backend, reduction, n, k):
    logits = randn(rng, n, k, scale=3.0)
    targets = rng.integers(0, k, size=n)
    dloss = _dloss(rng, reduction, n)
    lt = t64(logits, requires_grad=True)
    loss_t = F.cross_entropy(lt, torch.tensor(targets), reduction=reduction)
    loss_t.backward(t64(dloss) if reduction == "none" else torch.tensor(dloss, dtype=torch.float64))
    loss = ops.cross_entropy(logits, targets, reduction=reduction, backend=backend)
    if reduction == "none":
        assert loss.shape == (n,) and loss.dtype == np.float32
    else:
        assert isinstance(loss, float)
    assert rel_err(np.asarray(loss), loss_t) <= 1e-5
    dlogits = ops.cross_entropy_backward(logits, targets, reduction=reduction, dloss=dloss, backend=backend)
    assert rel_err(dlogits, lt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_cross_entropy_large_logits_stay_finite(backend):
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]], np.float32)
    targets = np.array([2, 1])
    loss = ops.cross_entropy(logits, targets, reduction="none", backend=backend)
    want = F.cross_entropy(t64(logits), torch.tensor(targets), reduction="none")
    assert np.all(np.isfinite(loss)) and rel_err(loss, want) <= 1e-6
    d = ops.cross_entropy_backward(logits, targets, backend=backend)
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_cross_entropy_bad_inputs(backend):
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError) as info:
        ops.cross_entropy(logits, np.array([0, 4, 1]), backend=backend)
    assert "cross_entropy" in str(info.value) and "targets[1] = 4" in str(info.value) and "[0, 4)" in str(info.value)
    with pytest.raises(ValueError, match=r"cross_entropy_backward: targets\[0\] = -1"):
        ops.cross_entropy_backward(logits, np.array([-1, 0, 0]), backend=backend)
    with pytest.raises(TypeError, match="cross_entropy: targets.*integer"):
        ops.cross_entropy(logits, np.array([0.0, 1.0, 2.0]), backend=backend)
    with pytest.raises(ValueError, match="cross_entropy: targets must have 3 entries"):
        ops.cross_entropy(logits, np.array([0, 1]), backend=backend)
    with pytest.raises(ValueError, match="cross_entropy: logits"):
        ops.cross_entropy(np.zeros((3, 4, 2), np.float32), np.array([0, 1, 2]), backend=backend)
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy(logits, np.array([0, 1, 2]), reduction="avg", backend=backend)
    with pytest.raises(ValueError, match="dloss"):
        ops.cross_entropy_backward(logits, np.array([0, 1, 2]), reduction="none", dloss=1.0, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 5, 13, 19), (3, 7, 29), (5, 11), (7,)])
def test_mse(rng, backend, reduction, shape):
    a, b = randn(rng, *shape), randn(rng, *shape)
    n = shape[0]
    dloss = _dloss(rng, reduction, n)
    at, bt = t64(a, requires_grad=True), t64(b, requires_grad=True)
    if reduction == "none":
        # diffice's 'none' is the per-sample mean over the non-batch dims
        loss_t = F.mse_loss(at, bt, reduction="none").reshape(n, -1).mean(1)
        loss_t.backward(t64(dloss))
    else:
        loss_t = F.mse_loss(at, bt, reduction=reduction)
        loss_t.backward(torch.tensor(dloss, dtype=torch.float64))
    loss = ops.mse(a, b, reduction=reduction, backend=backend)
    assert rel_err(np.asarray(loss), loss_t) <= 1e-5
    da, db = ops.mse_backward(a, b, reduction=reduction, dloss=dloss, backend=backend)
    assert rel_err(da, at.grad) <= 1e-5
    assert rel_err(db, bt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_mse_bad_inputs(backend):
    a = np.zeros((3, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"mse: b has shape \(3, 4, 6\)"):
        ops.mse(a, np.zeros((3, 4, 6), np.float32), backend=backend)
    with pytest.raises(TypeError, match="mse: b.*float32"):
        ops.mse(a, a.astype(np.float64), backend=backend)
    with pytest.raises(ValueError, match="mse_backward: b"):
        ops.mse_backward(a, np.zeros((3, 5, 4), np.float32), backend=backend)
    with pytest.raises(ValueError, match="mse_backward: dloss"):
        ops.mse_backward(a, a, reduction="none", dloss=np.ones(2, np.float32), backend=backend)

"""The network-side ops (softmax over any axis, the logit loss, binary cross-entropy with logits, cross-entropy of one
logit, per-plane standardisation, the normalised feature distance, fill) and the pixel losses composed of
distance_penalty and mse, against PyTorch autograd in float64, on both backends, and the fast kernels against the
reference ones. (The flip decision, target_probability, is tested in test_ops_diffusion.py.)"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_BACKENDS, BACKENDS, randn, rel_err, t64

from diffice import ops, pixel_loss


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((3, 5, 13, 19), 1),
        ((3, 5, 13, 19), 0),
        ((3, 5, 13, 19), -2),
        ((2, 7, 11), 1),
        ((5, 11), 0),
        ((7,), -1),
        ((3, 5, 13, 19), 3),
    ],
)
def test_softmax_over_any_axis(rng, backend, shape, axis):
    x, dy = randn(rng, *shape, scale=3.0), randn(rng, *shape)
    yt = torch.softmax(t64(x), dim=axis)
    y = ops.softmax(x, axis=axis, backend=backend)
    assert rel_err(y, yt) <= 1e-6
    # The backward's reference takes the float32 y the op is given: dx = y (dy - <y, dy>) cancels where y is nearly
    # one-hot, so y's own rounding (not the op) would dominate a reference made from x.
    dx_want = torch._softmax_backward_data(t64(dy), t64(y), axis, torch.float64)
    assert rel_err(ops.softmax_backward(dy, y, axis=axis, backend=backend), dx_want) <= 1e-5


def test_softmax_axis_out_of_range():
    with pytest.raises(ValueError, match="softmax: axis 2 is out of range for 2 dimensions"):
        ops.softmax(np.zeros((2, 3), np.float32), axis=2)
    with pytest.raises(ValueError, match="softmax_backward: axis -3"):
        ops.softmax_backward(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), axis=-3)


def torch_logit_loss(z, y):
    c = z.shape[1]
    rows = torch.arange(z.shape[0])
    if c == 1:
        ly = torch.where(y == 1, z[:, 0], -z[:, 0])
    elif c == 2:
        ly = z[rows, y] - z[rows, 1 - y]
    else:
        ly = z[rows, y]
    return -ly


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n, c", [(7, 1), (5, 2), (9, 13)])
def test_logit_loss(rng, backend, n, c):
    logits, dloss = randn(rng, n, c, scale=3.0), randn(rng, n)
    targets = rng.integers(0, max(c, 2), n)
    zt = t64(logits, requires_grad=True)
    want = torch_logit_loss(zt, torch.from_numpy(targets))
    want.backward(t64(dloss))
    assert rel_err(ops.logit_loss(logits, targets, backend=backend), want) <= 1e-6
    assert rel_err(ops.logit_loss_backward(dloss, logits, targets, backend=backend), zt.grad) <= 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_cross_entropy_of_one_logit_is_binary(rng, backend):
    """One logit stands for two classes (the probability rule): BCE with logits towards targets 0/1."""
    logits, dloss = randn(rng, 9, 1, scale=3.0), randn(rng, 9)
    logits[0] = 40.0
    targets = rng.integers(0, 2, 9)
    zt = t64(logits, requires_grad=True)
    want = F.binary_cross_entropy_with_logits(zt[:, 0], t64(targets), reduction="none")
    want.backward(t64(dloss))
    loss = ops.cross_entropy(logits, targets, reduction="none", backend=backend)
    assert rel_err(loss, want) <= 1e-6
    grad = ops.cross_entropy_backward(logits, targets, reduction="none", dloss=dloss, backend=backend)
    assert rel_err(grad, zt.grad) <= 1e-6
    with pytest.raises(ValueError, match=r"cross_entropy: targets\[0\] = 2 is out of range \[0, 2\)"):
        ops.cross_entropy(logits, np.full(9, 2), backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5, 7), (5,)])
def test_bce_with_logits(rng, backend, shape):
    logits, dloss = randn(rng, *shape, scale=4.0), randn(rng, shape[0])
    targets = rng.integers(0, 2, shape).astype(np.float32)
    targets.flat[0] = 0.25  # soft targets too
    zt = t64(logits, requires_grad=True)
    want = F.binary_cross_entropy_with_logits(zt, t64(targets), reduction="none").reshape(shape[0], -1).mean(1)
    want.backward(t64(dloss))
    assert rel_err(ops.bce_with_logits(logits, targets, backend=backend), want) <= 1e-6
    assert rel_err(ops.bce_with_logits_backward(dloss, logits, targets, backend=backend), zt.grad) <= 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 2, 13, 19), (1, 5, 8, 8)])
def test_standardize(rng, backend, shape):
    x, dy = randn(rng, *shape, scale=2.0) + 3.0, randn(rng, *shape)
    xt = t64(x, requires_grad=True)
    mean = xt.mean(dim=(2, 3), keepdim=True)
    std = ((xt - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    yt = 255.0 * (xt - mean) / std
    yt.backward(t64(dy))
    assert rel_err(ops.standardize(x, 255.0, backend=backend), yt) <= 1e-6
    assert rel_err(ops.standardize_backward(dy, x, 255.0, backend=backend), xt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_standardize_divides_a_constant_plane_by_one(rng, backend):
    """A constant plane (std 0) is divided by 1, as scikit-learn's StandardScaler does: zeros forward, and the
    backward of y = scale (x - mean), scale (dy - mean(dy)); the other planes as usual (float64 numpy)."""
    x, dy = randn(rng, 2, 3, 5, 7), randn(rng, 2, 3, 5, 7)
    x[1, 2] = 0.5
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    centred = x64 - x64.mean(axis=(2, 3), keepdims=True)
    std = np.sqrt((centred**2).mean(axis=(2, 3), keepdims=True))
    std[1, 2] = 1.0
    xh = centred / std
    want_y = 255.0 * xh
    mean_dy = dy64.mean(axis=(2, 3), keepdims=True)
    want_dx = 255.0 / std * (dy64 - mean_dy - xh * (dy64 * xh).mean(axis=(2, 3), keepdims=True))
    y = ops.standardize(x, 255.0, backend=backend)
    dx = ops.standardize_backward(dy, x, 255.0, backend=backend)
    assert np.all(y[1, 2] == 0) and rel_err(y, want_y) <= 1e-6
    assert rel_err(dx, want_dx) <= 1e-6 and rel_err(dx[1, 2], 255.0 * (dy64[1, 2] - dy64[1, 2].mean())) <= 1e-6


def torch_normalized_distance(a, b):
    def unit(f):
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)

    d = (unit(a) - unit(b)).pow(2).sum(dim=1)
    return d.reshape(d.shape[0], -1).mean(dim=1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 7, 13, 19), (3, 5, 1, 129), (1, 64, 3, 3), (2, 3, 11)])
def test_normalized_distance(rng, backend, shape):
    a, b, dloss = randn(rng, *shape), randn(rng, *shape), randn(rng, shape[0])
    at = t64(a, requires_grad=True)
    want = torch_normalized_distance(at, t64(b))
    want.backward(t64(dloss))
    assert rel_err(ops.normalized_distance(a, b, backend=backend), want) <= 1e-6
    assert rel_err(ops.normalized_distance_backward(dloss, a, b, backend=backend), at.grad) <= 1e-5


def torch_pixel_loss(a, b, kind):
    d = a - b
    if kind == "l1":
        return d.abs().reshape(d.shape[0], -1).sum(1)
    if kind == "l2":
        return d.pow(2).reshape(d.shape[0], -1).sum(1)
    return torch.norm(d, p=2, dim=1).reshape(d.shape[0], -1).sum(1)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["l1", "l2", "l2_channel_norm"])
@pytest.mark.parametrize("shape", [(3, 2, 9, 13), (2, 5, 7), (4, 3)])
def test_pixel_loss_of_any_rank(rng, backend, kind, shape):
    """diffice.pixel_loss through distance_penalty (l1, l2_channel_norm) and mse (l2), below four dims too."""
    a, b = randn(rng, *shape), randn(rng, *shape)
    at = t64(a, requires_grad=True)
    want = torch_pixel_loss(at, t64(b), kind)
    want.sum().backward()
    loss, grad = pixel_loss(a, b, kind, backend=backend)
    assert rel_err(loss, want) <= 1e-6
    assert rel_err(grad, at.grad) <= 1e-6


@pytest.mark.parametrize(
    "case",
    [
        lambda be, r: ops.normalized_distance_backward(r(3), r(3, 70, 5, 31), r(3, 70, 5, 31), backend=be),
        lambda be, r: ops.normalized_distance(r(3, 70, 5, 31), r(3, 70, 5, 31), backend=be),
        lambda be, r: ops.softmax(r(3, 6, 17, 5), axis=1, backend=be),
    ],
)
def test_fast_kernels_match_the_reference(rng, case):
    draws = []

    def r(*shape):
        draws.append(randn(rng, *shape))
        return draws[-1]

    want = case("ref", r)
    drawn = iter(list(draws))
    got = case("cpu", lambda *shape: next(drawn))
    assert rel_err(got, want) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_fill(rng, backend):
    like = randn(rng, 3, 5, 7)
    np.testing.assert_array_equal(ops.fill(like, -2.5, backend=backend), np.full((3, 5, 7), -2.5, np.float32))
    assert not np.any(ops.fill(randn(rng, 4), 0.0, backend=backend))


def test_bad_inputs_name_the_op_and_argument(rng):
    a = randn(rng, 2, 3, 4, 4)
    with pytest.raises(ValueError, match="normalized_distance: b has shape"):
        ops.normalized_distance(a, randn(rng, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="pixel_loss: kind"):
        pixel_loss(a, a, "l3")
    with pytest.raises(ValueError, match="bce_with_logits: targets has shape"):
        ops.bce_with_logits(a, randn(rng, 2, 3))
    with pytest.raises(TypeError, match="logit_loss: targets.*integer"):
        ops.logit_loss(randn(rng, 2, 3), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"logit_loss: targets\[1\] = 3"):
        ops.logit_loss(randn(rng, 2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="standardize: x"):
        ops.standardize(randn(rng, 2, 3))

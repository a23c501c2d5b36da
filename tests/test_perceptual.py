"""Perceptual losses (DiME's mse, MONAI's normalized) and pixel losses against PyTorch autograd."""

import numpy as np
import pytest
import torch
from conftest import BACKENDS, randn, rel_err
from resnet_reference import perceptual_loss as torch_perceptual_loss
from test_resnet import KINK, SIZES, kink_insensitive, torch_model

from diffice import PerceptualLoss, ResNetFeatures, pixel_loss

WEIGHT = 30.0  # Diff-ICE's lambda_p (DiME's l_perc)


def images(rng, n, c, h, w):
    return rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)


@pytest.mark.parametrize("variant", ["mse", "normalized"])
@pytest.mark.parametrize(
    "depth, layout, in_channels, taps, backend",
    [
        (50, "radimagenet", 1, ("layer4",), "cpu"),
        (50, "torchvision", 3, ("layer1", "layer2", "layer3"), "cpu"),
        (18, "radimagenet", 3, ("stem", "layer2", "layer4"), "ref"),
        (18, "torchvision", 1, ("stem", "layer1", "layer3", "layer4"), "ref"),
    ],
)
def test_loss_and_gradient_match_pytorch(rng, variant, depth, layout, in_channels, taps, backend):
    """Loss and gradient against autograd (inputs whose gradient is insensitive to ReLU round-off: test_resnet)."""
    net = ResNetFeatures.random(depth, layout, in_channels, taps, seed=int(rng.integers(1 << 30)), backend=backend)
    model = torch_model(net)
    h, w = SIZES[depth, backend][0]
    state = {}

    def compute(first):
        if first:
            state["a"], state["b"] = images(rng, 3, in_channels, h, w), images(rng, 3, in_channels, h, w)
        at = torch.tensor(state["a"], dtype=torch.float64, requires_grad=True)
        want = torch_perceptual_loss(model, at, torch.from_numpy(state["b"]).double(), variant, WEIGHT)
        want.sum().backward()
        return at.grad.numpy(), want.detach().numpy()

    want_grad, want = kink_insensitive(compute, KINK[backend])
    a, b = state["a"], state["b"]
    loss = PerceptualLoss(net, variant, weight=WEIGHT)
    assert not loss.has_reference
    loss.set_reference(b)
    assert loss.has_reference
    value, grad = loss.loss_and_grad(a)
    assert value.shape == (3,) and grad.shape == a.shape
    assert rel_err(value, want) <= 1e-4
    assert rel_err(grad, want_grad) <= 1e-4
    assert rel_err(loss.loss(a), want) <= 1e-4
    # a == b: zero loss
    assert np.abs(loss.loss(b)).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("variant", ["mse", "normalized"])
def test_batch_independence(rng, variant):
    """Sample i's loss and gradient do not depend on the other samples, nor on the batch size.

    On the reference kernels, whose per-sample arithmetic does not depend on the batch (oneDNN's blocking does,
    at float32 round-off)."""
    net = ResNetFeatures.random(
        18, "radimagenet", 1, ("layer2", "layer4"), seed=int(rng.integers(1 << 30)), backend="ref"
    )
    a, b = images(rng, 4, 1, 64, 72), images(rng, 4, 1, 64, 72)
    loss = PerceptualLoss(net, variant, weight=WEIGHT)
    loss.set_reference(b)
    value, grad = loss.loss_and_grad(a)
    for i in range(4):
        single = PerceptualLoss(net, variant, weight=WEIGHT)
        single.set_reference(b[i : i + 1])
        vi, gi = single.loss_and_grad(a[i : i + 1])
        assert rel_err(vi, value[i : i + 1]) <= 1e-5
        assert rel_err(gi, grad[i : i + 1]) <= 1e-5
    # changing the other samples leaves sample 0 alone
    a2 = a.copy()
    a2[1:] = images(rng, 3, 1, 64, 72)
    v2, g2 = loss.loss_and_grad(a2)
    assert rel_err(v2[:1], value[:1]) <= 1e-5 and rel_err(g2[:1], grad[:1]) <= 1e-5


def test_reference_is_cached_and_replaced(rng):
    net = ResNetFeatures.random(18, "torchvision", 1, ("layer3",), seed=5)
    a, b, c = images(rng, 2, 1, 48, 48), images(rng, 2, 1, 48, 48), images(rng, 2, 1, 48, 48)
    loss = PerceptualLoss(net, "normalized", weight=2.0)
    loss.set_reference(b)
    first = loss.loss(a)
    net.forward(c)  # other work on the network does not disturb the cached reference
    assert np.array_equal(loss.loss(a), first)
    loss.set_reference(c)
    other = PerceptualLoss(net, "normalized", weight=2.0)
    other.set_reference(c)
    assert np.array_equal(loss.loss(a), other.loss(a))
    assert not np.allclose(loss.loss(a), first)


def test_perceptual_bad_inputs(rng):
    net = ResNetFeatures.random(18, "torchvision", 1, ("layer2",), seed=1)
    loss = PerceptualLoss(net, "mse", weight=WEIGHT)
    a = images(rng, 2, 1, 32, 32)
    with pytest.raises(ValueError, match="set_reference"):
        loss.loss(a)
    with pytest.raises(ValueError, match="variant"):
        PerceptualLoss(net, "lpips")
    with pytest.raises(ValueError, match="weight"):
        PerceptualLoss(net, "mse", weight=float("nan"))
    with pytest.raises(ValueError, match="b"):
        loss.set_reference(images(rng, 2, 3, 32, 32))
    loss.set_reference(a)
    with pytest.raises(ValueError, match="reference"):
        loss.loss(images(rng, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="reference"):
        loss.loss_and_grad(images(rng, 2, 1, 32, 40))
    with pytest.raises(TypeError, match="a"):
        loss.loss(a.astype(np.float64))
    bad = a.copy()
    bad[1, 0, 2, 2] = np.inf
    with pytest.raises(ValueError, match="a"):
        loss.loss(bad)


def torch_pixel_loss(a, b, kind):
    d = a - b
    if kind == "l1":
        return d.abs().flatten(1).sum(1)
    if kind == "l2":
        return (d**2).flatten(1).sum(1)
    return torch.norm(d, p=2, dim=1).flatten(1).sum(1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["l1", "l2", "l2_channel_norm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_losses_match_pytorch(rng, kind, channels, backend):
    a, b = randn(rng, 3, channels, 13, 19), randn(rng, 3, channels, 13, 19)
    b[0, :, 2, 3] = a[0, :, 2, 3]  # equal pixels: zero gradient (sign(0), and the norm's 0 / 0)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    want = torch_pixel_loss(at, torch.from_numpy(b).double(), kind)
    want.sum().backward()
    value, grad = pixel_loss(a, b, kind, backend=backend)
    assert rel_err(value, want) <= 1e-5
    assert rel_err(grad, at.grad) <= 1e-5
    assert not np.any(grad[0, :, 2, 3])
    # per sample: sample 0 alone gives the same loss and gradient
    v0, g0 = pixel_loss(a[:1], b[:1], kind, backend=backend)
    assert np.array_equal(v0, value[:1]) and np.array_equal(g0, grad[:1])


def test_pixel_loss_bad_inputs(rng):
    a = randn(rng, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="kind"):
        pixel_loss(a, a, "l3")
    with pytest.raises(ValueError, match="pixel_loss"):
        pixel_loss(a, randn(rng, 2, 1, 8, 9))
    with pytest.raises(TypeError, match="b"):
        pixel_loss(a, a.astype(np.float64))

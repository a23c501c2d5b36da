"""Elementwise ops against PyTorch autograd (float64 reference)."""
import numpy as np
import pytest
import torch

from diffice import ops
from conftest import BACKENDS, randn, rel_err, t64

ACTIVATIONS = {
    "relu": (ops.relu, ops.relu_backward, torch.relu),
    "silu": (ops.silu, ops.silu_backward, torch.nn.functional.silu),
    "sigmoid": (ops.sigmoid, ops.sigmoid_backward, torch.sigmoid),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(3, 5, 13, 19), (7, 11), (17,)])
def test_activation_forward_backward(rng, backend, name, shape):
    forward, backward, reference = ACTIVATIONS[name]
    x = randn(rng, *shape, scale=3.0)
    dy = randn(rng, *shape)
    xt = t64(x, requires_grad=True)
    yt = reference(xt)
    yt.backward(t64(dy))
    assert rel_err(forward(x, backend=backend), yt) <= 1e-6
    assert rel_err(backward(dy, x, backend=backend), xt.grad) <= 1e-6


def test_sigmoid_extreme_inputs_stay_finite():
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32)
    y = ops.sigmoid(x)
    assert np.all(np.isfinite(y)) and y[0] == 0.0 and y[-1] == 1.0


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (np.zeros((2, 3), dtype=np.float64), TypeError, ["x", "float32", "float64"]),
        ([1.0, 2.0], TypeError, ["x", "numpy.ndarray"]),
        (np.zeros((2, 3, 4, 5, 6), dtype=np.float32), ValueError, ["x", "dimensions", "5"]),
        (np.zeros((4, 6), dtype=np.float32)[:, ::2], ValueError, ["x", "contiguous"]),
        (np.array([1.0, np.nan], dtype=np.float32), ValueError, ["x", "non-finite"]),
        (np.zeros((0, 3), dtype=np.float32), ValueError, ["x", "empty"]),
    ],
)
def test_activation_rejects_bad_input(bad, exc, words):
    with pytest.raises(exc) as info:
        ops.silu(bad)
    for word in words:
        assert word in str(info.value)


def test_activation_backward_shape_mismatch_names_tensors():
    with pytest.raises(ValueError, match="dy"):
        ops.relu_backward(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ops.relu(np.zeros(3, np.float32), backend="gpu")

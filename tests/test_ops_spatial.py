"""Spatial ops (upsample, pooling, bilinear resize) against PyTorch autograd (float64 reference)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops

TOL = 1e-5


def torch_forward_backward(fn, x, dy_shape_rng):
    """fn(x) in float64 with autograd; returns (y, dy, dx) for a random dy of y's shape."""
    xt = t64(x, requires_grad=True)
    yt = fn(xt)
    dy = randn(dy_shape_rng, *yt.shape)
    yt.backward(t64(dy))
    return yt, dy, xt.grad


# ---- nearest x2 upsample ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 13, 19), (1, 7, 1, 1), (2, 11, 7, 9)])
def test_upsample_nearest2x(rng, backend, shape):
    x = randn(rng, *shape)
    yt, dy, dxt = torch_forward_backward(lambda a: F.interpolate(a, scale_factor=2, mode="nearest"), x, rng)
    y = ops.upsample_nearest2x(x, backend=backend)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt) == 0.0
    assert rel_err(ops.upsample_nearest2x_backward(dy, backend=backend), dxt) <= TOL


# ---- average pool ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "shape, kernel, stride",
    [
        ((3, 5, 13, 19), 2, None),  # odd sizes: last row/col get zero gradient
        ((3, 7, 13, 19), 3, 2),  # overlapping windows
        ((2, 11, 7, 9), (2, 3), (1, 2)),
        ((3, 5, 12, 18), 2, 2),
        ((1, 5, 7, 9), (7, 9), None),  # one window covering everything
    ],
)
def test_avg_pool2d(rng, backend, shape, kernel, stride):
    x = randn(rng, *shape)
    yt, dy, dxt = torch_forward_backward(lambda a: F.avg_pool2d(a, kernel, stride), x, rng)
    assert rel_err(ops.avg_pool2d(x, kernel, stride, backend=backend), yt) <= TOL
    dx = ops.avg_pool2d_backward(dy, x.shape, kernel, stride, backend=backend)
    assert rel_err(dx, dxt) <= TOL
    if shape[2:] == (13, 19) and kernel == 2:
        assert np.all(dx[:, :, 12, :] == 0) and np.all(dx[:, :, :, 18] == 0)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 5, 9, 11), 3, 1, 1),  # FID Inception's branch_pool: 3x3/1, pad 1, count_include_pad=False
        ((3, 4, 8, 7), 3, 2, 1),
        ((1, 3, 6, 9), (4, 3), (2, 1), (2, 1)),
        ((2, 2, 1, 1), 3, 1, 1),  # a 1x1 image: every window holds the one pixel
    ],
)
def test_avg_pool2d_padding_not_counted(rng, backend, shape, kernel, stride, padding):
    x = randn(rng, *shape)
    yt, dy, dxt = torch_forward_backward(
        lambda a: F.avg_pool2d(a, kernel, stride, padding, count_include_pad=False), x, rng
    )
    assert rel_err(ops.avg_pool2d(x, kernel, stride, padding, backend=backend), yt) <= TOL
    assert rel_err(ops.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, backend=backend), dxt) <= TOL


# ---- max pool ----

MAX_POOL_CASES = [
    ((3, 5, 13, 19), 2, None, 0),  # SonoNet 2x2/2, odd sizes
    ((3, 7, 13, 19), 3, 2, 1),  # ResNet stem 3x3/2 pad 1
    ((2, 11, 7, 9), (3, 2), (2, 1), (1, 0)),
    ((2, 5, 8, 10), 3, 1, 1),
    ((1, 3, 2, 2), 2, 2, 1),  # windows mostly padding
]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape, kernel, stride, padding", MAX_POOL_CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d(rng, backend, shape, kernel, stride, padding, ties):
    # Small integers (some negative, so a window's max can sit next to the padding) force ties: the gradient
    # must go to the first maximum in scan order, as PyTorch routes it.
    x = rng.integers(-2, 2, size=shape).astype(np.float32) if ties else randn(rng, *shape)
    yt, dy, dxt = torch_forward_backward(lambda a: F.max_pool2d(a, kernel, stride, padding), x, rng)
    assert rel_err(ops.max_pool2d(x, kernel, stride, padding, backend=backend), yt) == 0.0
    assert rel_err(ops.max_pool2d_backward(dy, x, kernel, stride, padding, backend=backend), dxt) <= TOL


# ---- global average pool ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 13, 19), (2, 11, 7, 9), (3, 7, 1, 1)])
def test_global_avg_pool(rng, backend, shape):
    x = randn(rng, *shape, scale=2.0)
    yt, dy, dxt = torch_forward_backward(lambda a: F.adaptive_avg_pool2d(a, 1).flatten(1), x, rng)
    assert rel_err(ops.global_avg_pool(x, backend=backend), yt) <= TOL
    assert rel_err(ops.global_avg_pool(x, backend=backend), x.astype(np.float64).mean(axis=(2, 3))) <= TOL
    assert rel_err(ops.global_avg_pool_backward(dy, x.shape, backend=backend), dxt) <= TOL


# ---- bilinear resize ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "shape, size",
    [
        ((3, 5, 13, 19), (29, 7)),  # taller, narrower
        ((3, 5, 13, 19), (5, 33)),  # shorter, wider
        ((3, 7, 13, 19), (13, 19)),  # identity
        ((2, 11, 7, 9), (56, 72)),  # 8x up
        ((2, 5, 13, 19), (1, 1)),
        ((2, 5, 1, 9), (4, 3)),  # single input row
        ((1, 3, 224, 288), (7, 9)),  # strong downsizing (no antialias)
    ],
)
def test_resize_bilinear(rng, backend, shape, size):
    x = randn(rng, *shape)
    fn = lambda a: F.interpolate(a, size=size, mode="bilinear", align_corners=False, antialias=False)  # noqa: E731
    yt, dy, dxt = torch_forward_backward(fn, x, rng)
    assert rel_err(ops.resize_bilinear(x, size, backend=backend), yt) <= TOL
    assert rel_err(ops.resize_bilinear_backward(dy, x.shape, backend=backend), dxt) <= TOL


def test_resize_bilinear_matches_torch_float32(rng):
    # The float32 PyTorch op (what a PyTorch preprocessing pipeline runs) agrees to a few float32 roundings.
    x = randn(rng, 2, 3, 13, 19)
    want = F.interpolate(torch.from_numpy(x), size=(29, 7), mode="bilinear", align_corners=False)
    assert rel_err(ops.resize_bilinear(x, (29, 7)), want) <= 5e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_overwrites_output_and_is_linear(rng, backend):
    # Calling twice gives the same result (outputs are overwritten, not accumulated).
    x = randn(rng, 2, 5, 13, 19)
    dy = randn(rng, 2, 5, 6, 9)
    a = ops.max_pool2d_backward(dy, x, 2, backend=backend)
    b = ops.max_pool2d_backward(dy, x, 2, backend=backend)
    assert np.array_equal(a, b)


# ---- bad inputs ----

X = np.zeros((2, 3, 13, 19), np.float32)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: ops.upsample_nearest2x(X.astype(np.float64)), TypeError, ["upsample_nearest2x", "x", "float32"]),
        (lambda: ops.upsample_nearest2x(X[0]), ValueError, ["upsample_nearest2x", "x", "dimensions"]),
        (lambda: ops.upsample_nearest2x_backward(X), ValueError, ["upsample_nearest2x_backward", "dy", "even"]),
        (lambda: ops.avg_pool2d(X, 14), ValueError, ["avg_pool2d", "kernel"]),
        (lambda: ops.avg_pool2d(X, 0), ValueError, ["avg_pool2d", "kernel"]),
        (lambda: ops.avg_pool2d(X, 2, 0), ValueError, ["avg_pool2d", "stride"]),
        (lambda: ops.avg_pool2d(X, 2.5), TypeError, ["avg_pool2d", "kernel"]),
        (lambda: ops.avg_pool2d(X, (2, 2, 2)), TypeError, ["avg_pool2d", "kernel"]),
        (
            lambda: ops.avg_pool2d_backward(np.zeros((2, 3, 6, 8), np.float32), X.shape, 2),
            ValueError,
            ["avg_pool2d_backward", "dy", "(2, 3, 6, 9)"],
        ),
        (
            lambda: ops.avg_pool2d_backward(np.zeros((2, 4, 6, 9), np.float32), X.shape, 2),
            ValueError,
            ["avg_pool2d_backward", "x_shape"],
        ),
        (
            lambda: ops.avg_pool2d_backward(np.zeros((2, 3, 6, 9), np.float32), (2, 3, 13), 2),
            ValueError,
            ["avg_pool2d_backward", "x_shape"],
        ),
        (lambda: ops.max_pool2d(X, 3, 2, 2), ValueError, ["max_pool2d", "padding"]),
        (lambda: ops.max_pool2d(X, 3, 2, -1), ValueError, ["max_pool2d", "padding"]),
        (
            lambda: ops.max_pool2d_backward(np.zeros((2, 3, 6, 9), np.float32), X, 3, 2, 1),
            ValueError,
            ["max_pool2d_backward", "dy", "(2, 3, 7, 10)"],
        ),
        (
            lambda: ops.max_pool2d_backward(np.zeros((2, 3, 6, 9), np.float32), X.astype(np.float64), 2),
            TypeError,
            ["max_pool2d_backward", "x", "float32"],
        ),
        (lambda: ops.global_avg_pool(np.zeros((2, 3, 4), np.float32)), ValueError, ["global_avg_pool", "x"]),
        (
            lambda: ops.global_avg_pool_backward(np.zeros((2, 4), np.float32), X.shape),
            ValueError,
            ["global_avg_pool_backward", "x_shape"],
        ),
        (
            lambda: ops.global_avg_pool_backward(np.zeros((2, 3, 1, 1), np.float32), X.shape),
            ValueError,
            ["global_avg_pool_backward", "dy", "dimensions"],
        ),
        (lambda: ops.resize_bilinear(X, (0, 5)), ValueError, ["resize_bilinear", "size"]),
        (lambda: ops.resize_bilinear(X, 5.0), TypeError, ["resize_bilinear", "size"]),
        (
            lambda: ops.resize_bilinear(np.full((1, 1, 2, 2), np.inf, np.float32), (3, 3)),
            ValueError,
            ["resize_bilinear", "x", "non-finite"],
        ),
        (
            lambda: ops.resize_bilinear_backward(np.zeros((2, 4, 5, 5), np.float32), X.shape),
            ValueError,
            ["resize_bilinear_backward", "x_shape"],
        ),
        (
            lambda: ops.resize_bilinear_backward(np.zeros((2, 3, 5, 5), np.float32), (2, 3, -1, 4)),
            ValueError,
            ["resize_bilinear_backward", "x_shape", "positive"],
        ),
    ],
)
def test_spatial_rejects_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_c_ops_check_output_shapes(backend):
    # The C ops validate on their own (for C callers); reach them with a shape the binding passes through.
    with pytest.raises(ValueError, match="max_pool2d_backward: dy has shape"):
        ops.max_pool2d_backward(np.zeros((2, 3, 5, 5), np.float32), X, 2, backend=backend)

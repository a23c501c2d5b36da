"""Elementwise ops against PyTorch autograd (float64 reference)."""

import numpy as np
import pytest
import torch
from conftest import ALL_BACKENDS, BACKENDS, randn, rel_err, t64

from diffice import ops

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
        (np.array([1.0, np.nan], dtype=np.float32), ValueError, ["x", "non-finite", "nan at flat index 1"]),
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


# ---- softmax ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(17,), (7, 11), (3, 5, 29), (3, 4, 13, 19)])
def test_softmax_forward_backward(rng, backend, shape):
    x = randn(rng, *shape, scale=4.0)
    dy = randn(rng, *shape)
    xt = t64(x, requires_grad=True)
    yt = torch.softmax(xt, dim=-1)
    yt.backward(t64(dy))
    y = ops.softmax(x, backend=backend)
    assert rel_err(y, yt) <= 1e-6
    dx = ops.softmax_backward(dy, y, backend=backend)
    # The backward starts from the float32 y; torch's own backward from that same y is the exact reference.
    want = torch._softmax_backward_data(t64(dy), t64(y), -1, torch.float64)
    assert rel_err(dx, want) <= 1e-6
    assert rel_err(dx, xt.grad) <= 1e-4  # and end to end, including y's float32 rounding


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape, axis", [((3, 5, 13, 19), 1), ((3, 5, 13, 19), -3), ((7, 11), 0), ((3, 5, 29), -2)])
def test_softmax_over_any_axis(rng, backend, shape, axis):
    x = randn(rng, *shape, scale=4.0)
    dy = randn(rng, *shape)
    y = ops.softmax(x, axis=axis, backend=backend)
    assert rel_err(y, torch.softmax(t64(x), dim=axis)) <= 1e-6
    want = torch._softmax_backward_data(t64(dy), t64(y), axis, torch.float64)
    assert rel_err(ops.softmax_backward(dy, y, axis=axis, backend=backend), want) <= 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_softmax_large_inputs_stay_finite(backend):
    x = np.array([[1e4, 0.0, -1e4], [88.0, 89.0, 90.0]], np.float32)
    y = ops.softmax(x, backend=backend)
    assert np.all(np.isfinite(y)) and rel_err(y, torch.softmax(t64(x), -1)) <= 1e-6


def test_softmax_bad_inputs():
    with pytest.raises(ValueError, match="softmax_backward: dy"):
        ops.softmax_backward(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match="softmax: x"):
        ops.softmax(np.zeros((2, 3), np.float16))
    with pytest.raises(ValueError, match="softmax: axis 2 is out of range for 2 dimensions"):
        ops.softmax(np.zeros((2, 3), np.float32), axis=2)
    with pytest.raises(TypeError, match="softmax: axis: expected an integer, got float"):
        ops.softmax(np.zeros((2, 3), np.float32), axis=1.0)


# ---- broadcast add / mul ----

A_SHAPE = (3, 5, 13, 19)
B_SHAPES = {
    "per-channel (C,)": (5,),
    "per-channel (1,C,1,1)": (1, 5, 1, 1),
    "per-sample (N,)": (3,),
    "per-sample (N,1,1,1)": (3, 1, 1, 1),
    "per-sample-channel": (3, 5, 1, 1),
    "rows": (1, 1, 13, 1),
    "full": A_SHAPE,
}


def _torch_b_shape(b_shape):
    """The numpy-broadcastable shape diffice gives a 1-D b against (N, C, H, W)."""
    if b_shape == (5,):
        return (1, 5, 1, 1)
    if b_shape == (3,):
        return (3, 1, 1, 1)
    return b_shape


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize("b_name", B_SHAPES)
def test_binary_broadcast(rng, backend, kind, b_name):
    b_shape = B_SHAPES[b_name]
    a, b, dy = randn(rng, *A_SHAPE), randn(rng, *b_shape), randn(rng, *A_SHAPE)
    forward = {"add": ops.add, "mul": ops.mul}[kind]
    backward = {"add": ops.add_backward, "mul": ops.mul_backward}[kind]
    at, bt = t64(a, requires_grad=True), t64(b, requires_grad=True)
    bb = bt.reshape(_torch_b_shape(b_shape))
    yt = at + bb if kind == "add" else at * bb
    yt.backward(t64(dy))
    assert rel_err(forward(a, b, backend=backend), yt) <= 1e-6
    da, db = backward(dy, a, b, backend=backend)
    assert db.shape == b_shape
    assert rel_err(da, at.grad) <= 1e-6
    assert rel_err(db, bt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["add", "mul"])
@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((7, 11), (7, 1)),
        ((7, 11), (11,)),
        ((17,), (17,)),
        ((17,), (1,)),
        ((3, 7, 29), (1, 7, 1)),
        ((3, 7, 29), (3, 1, 29)),
    ],
)
def test_binary_other_ranks(rng, backend, kind, a_shape, b_shape):
    a, b, dy = randn(rng, *a_shape), randn(rng, *b_shape), randn(rng, *a_shape)
    at, bt = t64(a, requires_grad=True), t64(b, requires_grad=True)
    yt = at + bt if kind == "add" else at * bt
    yt.backward(t64(dy))
    forward, backward = (ops.add, ops.add_backward) if kind == "add" else (ops.mul, ops.mul_backward)
    assert rel_err(forward(a, b, backend=backend), yt) <= 1e-6
    da, db = backward(dy, a, b, backend=backend)
    assert rel_err(da, at.grad) <= 1e-6
    assert rel_err(db, bt.grad) <= 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_binary_rejects_bad_broadcast(backend):
    a = np.zeros((3, 5, 4, 4), np.float32)
    with pytest.raises(ValueError) as info:
        ops.add(a, np.zeros((1, 4, 1, 1), np.float32), backend=backend)
    assert "add" in str(info.value) and "(1, 4, 1, 1)" in str(info.value) and "(3, 5, 4, 4)" in str(info.value)
    with pytest.raises(ValueError, match=r"mul: b with shape \(5, 4\)"):
        ops.mul(a, np.zeros((5, 4), np.float32), backend=backend)
    with pytest.raises(ValueError, match=r"mul: b with shape \(7,\)"):
        ops.mul(a, np.zeros(7, np.float32), backend=backend)
    with pytest.raises(ValueError, match=r"mul_backward: .*\(3, 5, 4, 2\)"):
        ops.mul_backward(a, a, np.zeros((3, 5, 4, 2), np.float32), backend=backend)
    with pytest.raises(ValueError, match="add_backward: dy"):
        ops.add_backward(np.zeros((3, 5, 4, 3), np.float32), a, np.zeros(5, np.float32), backend=backend)
    with pytest.raises(TypeError, match="add: b.*float32"):
        ops.add(a, np.zeros(5, np.float64), backend=backend)


# ---- channel concat / split ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("tail", [(13, 19), (29,), ()])
@pytest.mark.parametrize("sizes", [[5, 7, 11], [3], [1, 2]])
def test_concat_split(rng, backend, tail, sizes):
    xs = [randn(rng, 3, c, *tail) for c in sizes]
    dy = randn(rng, 3, sum(sizes), *tail)
    xts = [t64(x, requires_grad=True) for x in xs]
    yt = torch.cat(xts, dim=1)
    yt.backward(t64(dy))
    y = ops.concat(xs, backend=backend)
    assert rel_err(y, yt) == 0.0
    for got, x in zip(ops.split(y, sizes, backend=backend), xs):
        assert np.array_equal(got, x)
    for got, xt in zip(ops.concat_backward(dy, sizes, backend=backend), xts):
        assert rel_err(got, xt.grad) == 0.0
    # split's backward is concat: autograd through torch.split
    st = t64(dy, requires_grad=True)
    parts = torch.split(st, sizes, dim=1)
    dys = [randn(rng, *p.shape) for p in parts]
    torch.autograd.backward(parts, [t64(d) for d in dys])
    assert rel_err(ops.split_backward(dys, backend=backend), st.grad) == 0.0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_concat_split_bad_inputs(backend):
    a = np.zeros((3, 5, 4, 4), np.float32)
    with pytest.raises(ValueError) as info:
        ops.concat([a, a, np.zeros((3, 2, 4, 5), np.float32)], backend=backend)
    assert "concat" in str(info.value) and "xs[2]" in str(info.value) and "(3, 2, 4, 5)" in str(info.value)
    with pytest.raises(ValueError, match=r"concat: xs\[1\]"):
        ops.concat([a, np.zeros((3, 2, 4), np.float32)], backend=backend)
    with pytest.raises(TypeError, match=r"concat: xs\[0\].*float32"):
        ops.concat([a.astype(np.float64), a], backend=backend)
    with pytest.raises(ValueError, match="concat: xs"):
        ops.concat([], backend=backend)
    with pytest.raises(ValueError, match="split: sizes add up to 6, but x has 5"):
        ops.split(a, [2, 4], backend=backend)
    with pytest.raises(ValueError, match=r"split: sizes\[1\]: expected an integer in \[1, 5\], got 0"):
        ops.split(a, [5, 0], backend=backend)


# ---- UNet ops (issue 15, unetnet) ----


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 13, 19), (2, 7, 29), (4, 3)])
def test_scale_shift_forward_backward(rng, backend, shape):
    """guided-diffusion's out_norm(h) * (1 + scale) + shift with scale, shift = chunk(emb_out, 2, dim=1)."""
    n, c = shape[:2]
    x, ss, dy = randn(rng, *shape), randn(rng, n, 2 * c), randn(rng, *shape)
    xt, sst = t64(x, requires_grad=True), t64(ss, requires_grad=True)
    scale, shift = torch.chunk(sst.reshape(n, 2 * c, *([1] * (len(shape) - 2))), 2, dim=1)
    yt = xt * (1 + scale) + shift
    yt.backward(t64(dy))
    assert rel_err(ops.scale_shift(x, ss, backend=backend), yt) <= 1e-6
    dx, dss = ops.scale_shift_backward(dy, x, ss, backend=backend)
    assert rel_err(dx, xt.grad) <= 1e-6 and rel_err(dss, sst.grad) <= 1e-6


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scale_shift_is_the_float32_mul_then_add(rng, backend):
    # the UNet's numbers before the op existed: binary mul by (1 + scale), then binary add of shift, in float32
    x, ss, dy = randn(rng, 2, 5, 7, 3), randn(rng, 2, 10), randn(rng, 2, 5, 7, 3)
    one_plus_scale = (np.float32(1) + ss[:, :5]).reshape(2, 5, 1, 1)
    shift = np.ascontiguousarray(ss[:, 5:]).reshape(2, 5, 1, 1)
    want = ops.add(ops.mul(x, one_plus_scale, backend=backend), shift, backend=backend)
    assert np.array_equal(ops.scale_shift(x, ss, backend=backend), want)
    dx, dss = ops.scale_shift_backward(dy, x, ss, backend=backend)
    dx_mul, dscale = ops.mul_backward(dy, x, one_plus_scale, backend=backend)
    _, dshift = ops.add_backward(dy, x, shift, backend=backend)
    assert np.array_equal(dx, dx_mul)
    assert np.array_equal(dss, np.concatenate([dscale.reshape(2, 5), dshift.reshape(2, 5)], axis=1))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_scale_shift_bad_inputs(backend):
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"scale_shift: ss has shape \(2, 3\), expected \(2, 6\)"):
        ops.scale_shift(x, np.zeros((2, 3), np.float32), backend=backend)
    with pytest.raises(ValueError, match="scale_shift_backward.*dy"):
        ops.scale_shift_backward(np.zeros((2, 3, 4, 5), np.float32), x, np.zeros((2, 6), np.float32), backend=backend)
    with pytest.raises(TypeError, match="scale_shift.*ss.*float32"):
        ops.scale_shift(x, np.zeros((2, 6)), backend=backend)

"""The CUDA norm family (csrc/cuda/norm.cu) through "cuda_emulated" against the reference kernels, where the CUDA
kernels do something of their own: the two-pass sums (partials per chunk of 1024 values in the backend's scratch,
then one index per output summing its chunks in order) at sizes around and across chunk boundaries, the scratch
shared by the passes of one op and reused by the next op, and the host-side checks fed by read-backs.
The op tests of test_ops_norm.py, test_ops_elementwise.py, test_ops_net.py and test_ops_attention.py cover the
ops' contracts (vs PyTorch) on cuda_emulated too."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn, rel_err

from diffice import ops

EMU = "cuda_emulated"


# (shape, groups): values per group below, at and above one chunk, several chunks with a partial last one; inner
# sizes (the per-channel sums' planes) likewise
@pytest.mark.parametrize(
    "shape, groups",
    [((2, 6, 10, 17), 3), ((2, 4, 16, 16), 1), ((3, 12, 33, 31), 4), ((2, 8, 3, 1025), 8), ((1, 2, 4097), 2)],
)
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_chunked_sums_match_the_reference(rng, shape, groups, affine):
    c = shape[1]
    x, dy = randn(rng, *shape, scale=3.0) + np.float32(2.0), randn(rng, *shape)
    gamma, beta = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    want, want_mean, want_rstd = ops.group_norm(x, groups, gamma, beta, backend="ref", return_stats=True)
    got, mean, rstd = ops.group_norm(x, groups, gamma, beta, backend=EMU, return_stats=True)
    assert rel_err(got, want) <= 1e-6
    assert rel_err(mean, want_mean) <= 1e-6 and rel_err(rstd, want_rstd) <= 1e-6
    want_grads = ops.group_norm_backward(dy, x, groups, gamma, backend="ref")
    for stats in ({}, {"mean": mean, "rstd": rstd}):  # recomputed, and from the saved statistics
        for g, w in zip(ops.group_norm_backward(dy, x, groups, gamma, backend=EMU, **stats), want_grads):
            assert (g is None and w is None) or rel_err(g, w) <= 1e-5


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (3, 2, 45, 47), (1, 1, 1, 3000)])
def test_batch_norm_and_standardize_chunked_sums_match_the_reference(rng, shape):
    c = shape[1]
    x, dy = randn(rng, *shape, scale=2.0) + np.float32(1.0), randn(rng, *shape)
    rmean, rvar = randn(rng, c), (rng.random(c) + 0.5).astype(np.float32)
    gamma, beta = randn(rng, c), randn(rng, c)
    assert (
        rel_err(
            ops.batch_norm(x, rmean, rvar, gamma, beta, backend=EMU),
            ops.batch_norm(x, rmean, rvar, gamma, beta, backend="ref"),
        )
        <= 1e-6
    )
    for g, w in zip(
        ops.batch_norm_backward(dy, x, rmean, rvar, gamma, backend=EMU),
        ops.batch_norm_backward(dy, x, rmean, rvar, gamma, backend="ref"),
    ):
        assert rel_err(g, w) <= 1e-6
    assert rel_err(ops.standardize(x, 255.0, backend=EMU), ops.standardize(x, 255.0, backend="ref")) <= 1e-6
    want = ops.standardize_backward(dy, x, 255.0, backend="ref")
    assert rel_err(ops.standardize_backward(dy, x, 255.0, backend=EMU), want) <= 1e-6


def test_the_scratch_grows_between_ops(rng):
    # a small op, a large one (the scratch grows), a small one again (it is reused): each as the reference
    for shape in [(1, 4, 3, 3), (4, 8, 64, 65), (2, 4, 5, 5)]:
        x = randn(rng, *shape)
        assert rel_err(ops.group_norm(x, 2, backend=EMU), ops.group_norm(x, 2, backend="ref")) <= 1e-6


def test_sums_that_must_be_the_reference_bit_for_bit(rng):
    # one index per output with the reference's loop: softmax rows, broadcast sums, scale-shift planes
    x, dy = randn(rng, 3, 5, 13, 19, scale=4.0), randn(rng, 3, 5, 13, 19)
    for axis in (0, 1, -1):
        y = ops.softmax(x, axis=axis, backend="ref")
        assert np.array_equal(ops.softmax(x, axis=axis, backend=EMU), y)
        want = ops.softmax_backward(dy, y, axis=axis, backend="ref")
        assert np.array_equal(ops.softmax_backward(dy, y, axis=axis, backend=EMU), want)
    for b_shape in [(1, 5, 1, 1), (3, 1, 13, 1), (1, 1, 1, 19), (3, 5, 13, 19)]:
        b = randn(rng, *b_shape)
        for kind in ("add", "mul"):
            for g, w in zip(
                getattr(ops, kind + "_backward")(dy, x, b, backend=EMU),
                getattr(ops, kind + "_backward")(dy, x, b, backend="ref"),
            ):
                assert np.array_equal(g, w)
    ss = randn(rng, 3, 10)
    assert np.array_equal(ops.scale_shift(x, ss, backend=EMU), ops.scale_shift(x, ss, backend="ref"))
    for g, w in zip(
        ops.scale_shift_backward(dy, x, ss, backend=EMU), ops.scale_shift_backward(dy, x, ss, backend="ref")
    ):
        assert np.array_equal(g, w)


def test_batch_norm_checks_running_var_read_back():
    x, ones = np.zeros((2, 5, 4, 4), np.float32), np.ones(5, np.float32)
    var = ones.copy()
    var[3] = -1.0
    with pytest.raises(ValueError, match=r"batch_norm: running_var\[3\] \+ eps"):
        ops.batch_norm(x, ones, var, backend=EMU)
    with pytest.raises(ValueError, match=r"batch_norm_backward: running_var\[3\] \+ eps"):
        ops.batch_norm_backward(x, x, ones, var, backend=EMU)

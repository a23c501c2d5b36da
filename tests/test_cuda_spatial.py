"""What the CUDA spatial and optimizer kernels (csrc/cuda/spatial.cu, optim.cu) do differently from the reference
ones, through the cuda_emulated backend: the backwards gather per dx element what the reference scatters, in the
same order (so the bytes agree), and the sum of squares reduces in passes through the backend scratch (so its
double does not depend on the thread count, and its scratch grows with the input). The ops' assertions against
PyTorch run on cuda_emulated in test_ops_spatial.py, test_ops_optim.py and test_ops_elementwise.py."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import randn

from diffice import ops
from diffice._native import _C

EMU = "cuda_emulated"


@pytest.mark.parametrize(
    "shape, size",
    [((2, 3, 13, 19), (29, 7)), ((2, 3, 13, 19), (5, 33)), ((1, 2, 7, 9), (56, 72)), ((1, 2, 1, 9), (4, 3))],
)
def test_resize_bilinear_backward_gathers_the_reference_sum(rng, shape, size):
    dy = randn(rng, shape[0], shape[1], *size)
    assert np.array_equal(
        ops.resize_bilinear_backward(dy, shape, backend=EMU), ops.resize_bilinear_backward(dy, shape, backend="ref")
    )


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (3, 1, 1), ((4, 3), (2, 1), (2, 1)), (2, 2, 0)])
def test_pool_backwards_gather_the_reference_sum(rng, kernel, stride, padding):
    x = rng.integers(-2, 2, size=(2, 3, 11, 9)).astype(np.float32)  # ties: the first maximum takes the gradient
    y = ops.max_pool2d(x, kernel, stride, padding, backend="ref")
    dy = randn(rng, *y.shape)
    got = ops.max_pool2d_backward(dy, x, kernel, stride, padding, backend=EMU)
    assert np.array_equal(got, ops.max_pool2d_backward(dy, x, kernel, stride, padding, backend="ref"))
    got = ops.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, backend=EMU)
    assert np.array_equal(got, ops.avg_pool2d_backward(dy, x.shape, kernel, stride, padding, backend="ref"))


# 2048 elements per chunk and partial sums per group: one pass, two, and three (which also grows the scratch)
@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 2048 * 2048 + 5])
def test_sum_squares_passes_do_not_depend_on_the_thread_count(rng, n):
    x = randn(rng, n)
    sums = {_C.sum_squares(_C.Backend(EMU, threads), x) for threads in (1, 2, 3)}
    assert len(sums) == 1
    want = float((x.astype(np.float64) ** 2).sum())
    assert abs(sums.pop() - want) <= 1e-12 * want


def test_concat_split_many_parts(rng):
    xs = [randn(rng, 2, c, 3, 5) for c in (1, 4, 2, 7, 1, 3, 5, 2, 9)]
    y = ops.concat(xs, backend=EMU)
    assert np.array_equal(y, np.concatenate(xs, axis=1))
    for got, x in zip(ops.split(y, [x.shape[1] for x in xs], backend=EMU), xs):
        assert np.array_equal(got, x)

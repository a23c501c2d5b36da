"""What only the CUDA diffusion and loss kernels (csrc/cuda/diffusion.cu, loss.cu) need tested beyond the op tests:
rows longer than one reduction chunk (4096 values: two passes through scratch, partial sums added in order), the
scratch shared between staged host vectors and partial results, and the int flags read back from the device."""

import numpy as np
import pytest
from conftest import randn, rel_err

from diffice import ops
from diffice._native import _C

CHUNK = 4096  # rows.cuh's DFC_ROW_CHUNK
BIG = (3, 3, 47, 59)  # 8319 values per row: three chunks, the last one partial


def _same(fn, tol=1e-7):
    """fn(backend) on the reference and the emulated CUDA kernels: equal up to the order of the chunk sums."""
    ref, cuda = fn("ref"), fn("cuda_emulated")
    for a, c in zip(ref if isinstance(ref, tuple) else (ref,), cuda if isinstance(cuda, tuple) else (cuda,)):
        assert np.asarray(a).shape == np.asarray(c).shape
        assert rel_err(c, a) <= tol
    return ref


def test_rows_of_several_chunks(rng):
    assert int(np.prod(BIG[1:])) > 2 * CHUNK
    a, b = randn(rng, *BIG), randn(rng, *BIG)
    dloss = randn(rng, BIG[0])
    _same(lambda be: ops.mse(a, b, reduction="none", backend=be))
    _same(lambda be: ops.bce_with_logits(a, (b > 0).astype(np.float32), backend=be))
    _same(lambda be: ops.distance_penalty(a, b, 0.3, 1.7, backend=be))
    _same(lambda be: ops.distance_penalty_backward(a, b, 0.3, 1.7, dloss=dloss, backend=be))
    wide = (2, 3, 97, 89)  # 8633 positions per sample: the normalised distance chunks positions
    fa, fb = randn(rng, *wide), randn(rng, *wide)
    _same(lambda be: ops.normalized_distance(fa, fb, backend=be))
    _same(lambda be: ops.change_map(np.tanh(fa), np.tanh(fb), backend=be), tol=0.0)


def test_diffusion_vb_of_long_rows_stages_coefs_and_partials(rng):
    n = BIG[0]
    x0 = (rng.integers(0, 256, size=BIG) / 127.5 - 1).astype(np.float32)
    xt = randn(rng, *BIG)
    mo = randn(rng, n, 2 * BIG[1], *BIG[2:], scale=0.5)
    idx = np.array([0, 7, 93])
    arrays = _C.Diffusion(1000, "linear", "100", 0).arrays()
    coefs, first = ops.vb_coefs(arrays, idx, 0.1), ops.vb_coefs(arrays, idx[:1], 0.1)
    dvb = randn(rng, n)
    # a small op first, then a bigger one: the scratch grows between the two and the staged arrays move with it
    small = [np.ascontiguousarray(t[:1, :, :3, :3]) for t in (mo, x0, xt)]
    _same(lambda be: ops.diffusion_vb(*small, first, backend=be))
    _same(lambda be: ops.diffusion_vb(mo, x0, xt, coefs, backend=be))
    _same(lambda be: ops.diffusion_vb_backward(mo, x0, xt, coefs, dvb=dvb, backend=be))


def test_nonfinite_flags_come_back_from_every_chunk(rng):
    x = randn(rng, 4, *BIG[1:])
    x[1].flat[-1] = np.inf  # the last value of the last chunk
    x[2].flat[CHUNK] = np.nan  # the first value of the second chunk
    y, bad = ops.nonfinite_rows(x, backend="cuda_emulated")
    assert bad.tolist() == [False, True, True, False]
    assert not y[[1, 2]].any() and np.array_equal(y[[0, 3]], x[[0, 3]])


@pytest.mark.parametrize("k", [1, 3, 1000])
def test_targets_and_flags_share_the_scratch(rng, k):
    n = 37
    logits = randn(rng, n, k, scale=3.0)
    targets = rng.integers(0, max(k, 2), size=n)
    dloss = randn(rng, n)
    _same(lambda be: ops.target_probability(logits, targets, backend=be), tol=0.0)
    _same(lambda be: ops.cross_entropy(logits, targets, reduction="none", backend=be), tol=0.0)
    _same(lambda be: ops.cross_entropy_backward(logits, targets, reduction="none", dloss=dloss, backend=be), tol=0.0)
    _same(lambda be: ops.logit_loss_backward(dloss, logits, targets, backend=be), tol=0.0)

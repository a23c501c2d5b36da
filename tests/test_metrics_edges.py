"""diffice.evaluation.metrics at its edges, against float64 references written from the definitions (README
"Metrics", docs/method.md section 7, ACE's eval_utils/cout_metrics.py): COUT on 8-bit images (ties of the 8-bit
change), non-finite inputs and counterfactuals, mean_interval's arguments."""

import numpy as np
import pytest
from scipy import special

from diffice.evaluation import metrics


class PixelClassifier:
    """logits (N, 2) = (0, w . x): every pixel has its own weight, so the order in which COUT inserts pixels
    matters."""

    def __init__(self, rng, shape, scale=4.0):
        d = int(np.prod(shape))
        self.w = rng.standard_normal(d) * scale / np.sqrt(d)

    def z(self, x):
        return np.asarray(x, np.float64).reshape(len(x), -1) @ self.w

    def logits(self, x):
        z = self.z(x)
        return np.stack([np.zeros_like(z), z], axis=1).astype(np.float32)


def cout_of_order(f, x, cf, order, steps=50):
    """ACE's COUT of one image x, cf (1, H, W) for a given pixel order (most changed first), float64."""
    _, h, w = x.shape
    hw = h * w
    step = max(1, hw // steps)
    p1 = lambda img: special.softmax(f.logits(img[None].astype(np.float32)).astype(np.float64), axis=1)[0, 1]  # noqa: E731
    label = int(p1(x) > 0.5)
    c = lambda img: p1(img) if label == 1 else 1 - p1(img)  # noqa: E731
    curve = [c(x.astype(np.float64))]
    m = np.zeros(hw)
    for start in range(0, hw, step):
        m[order[start : start + step]] = 1
        mk = m.reshape(1, h, w)
        curve.append(c(cf.astype(np.float64) * mk + x.astype(np.float64) * (1 - mk)))
    curve = np.array(curve)
    auc = lambda s: (s[0] / 2 + s[1:-1].sum() + s[-1] / 2) * step / hw  # noqa: E731
    return auc(1 - curve) - auc(curve)


@pytest.mark.parametrize("size", [(9, 11), (16, 20)])
def test_cout_of_8bit_images_keeps_equal_8bit_changes_in_row_major_order(rng, size):
    """Saved PNGs become u / 127.5 - 1 in float32, where two pixels with the same 8-bit change differ by rounding
    (~1e-7); the documented order (most changed first, ties row-major) is that of the 8-bit change itself."""
    f = PixelClassifier(rng, (1,) + size)
    ux = rng.integers(60, 196, (3, 1) + size)
    uc = np.clip(ux + rng.choice([-40, -20, 0, 20, 40], ux.shape), 0, 255)  # few distinct changes: many ties
    x = metrics.classifier_input(ux.astype(np.uint8))
    cf = metrics.classifier_input(uc.astype(np.uint8))
    want = []
    for i in range(len(x)):
        change = np.abs(uc[i] - ux[i]).sum(axis=0).ravel()
        order = np.lexsort((np.arange(change.size), -change))  # most changed first, ties row-major
        want.append(cout_of_order(f, x[i], cf[i], order))
    got = metrics.cout(f, x, cf, 1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # the same images in float64 (exact u / 127.5 - 1) give the same COUT
    x64, cf64 = ux / 127.5 - 1.0, uc / 127.5 - 1.0
    np.testing.assert_allclose(metrics.cout(f, x64, cf64, 1), want, rtol=1e-6, atol=1e-6)


def test_cout_of_float_images_orders_by_the_exact_change(rng):
    """Off the 8-bit grid the order is that of sum_c |cf - x|, computed without float32 round-off."""
    f = PixelClassifier(rng, (1, 7, 9))
    x = rng.uniform(-0.9, 0.9, (4, 1, 7, 9)).astype(np.float32)
    cf = np.clip(x + rng.normal(0, 0.5, x.shape), -1, 1).astype(np.float32)
    want = []
    for i in range(len(x)):
        change = np.abs(cf[i].astype(np.float64) - x[i].astype(np.float64)).sum(axis=0).ravel()
        want.append(cout_of_order(f, x[i], cf[i], np.lexsort((np.arange(change.size), -change))))
    np.testing.assert_allclose(metrics.cout(f, x, cf, 1), want, rtol=1e-9, atol=1e-12)


def test_evaluate_rejects_non_finite_images_unless_excluded(rng):
    f = PixelClassifier(rng, (1, 6, 7))
    x = rng.uniform(-1, 1, (5, 1, 6, 7)).astype(np.float32)
    cf = np.clip(x + 0.5, -1, 1).astype(np.float32)
    bad = cf.copy()
    bad[2, 0, 1, 1] = np.nan
    bad[4, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"counterfactuals 2, 4 .*not finite.*exclude"):
        metrics.evaluate(x, bad, 1, classifier=f)
    exclude = np.array([False, False, True, False, True])
    got = metrics.evaluate(x, bad, 1, classifier=f, exclude=exclude)
    want = metrics.evaluate(x[~exclude], cf[~exclude], 1, classifier=f)
    for name in ("FR", "MAD", "BKL", "COUT"):
        assert got[name].get("value") == want[name].get("value"), name
    xb = x.copy()
    xb[0, 0, 2, 3] = -np.inf
    with pytest.raises(ValueError, match=r"inputs 0 .*not finite.*inputs must be finite"):
        metrics.evaluate(xb, cf, 1, classifier=f, exclude=np.array([True, False, False, False, False]))


def test_mean_interval_rejects_what_has_no_interval():
    v = np.arange(5.0)
    for bad in (np.array([]), np.zeros((2, 2))):
        with pytest.raises(ValueError, match="values"):
            metrics.mean_interval(bad)
    for level in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            metrics.mean_interval(v, level=level)
    with pytest.raises(ValueError, match="resamples"):
        metrics.mean_interval(v, resamples=0)
    assert metrics.mean_interval(np.array([0.25])) == (0.25, 0.25)


def test_cosine_similarity_of_zero_rows_and_of_mismatched_shapes(rng):
    a, b = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    a[1] = 0.0
    got = metrics.cosine_similarity(a, b)
    want = [float(a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i]))) for i in (0, 2)]
    np.testing.assert_allclose(got[[0, 2]], want, rtol=1e-12)
    assert got[1] == 0.0
    for bad in (b[:2], b.T, b[None]):
        with pytest.raises(ValueError, match="must be \\(N, d\\) of one shape"):
            metrics.cosine_similarity(a, bad)

"""Path figures: shape, overlay colours, text rows."""

import numpy as np

from diffice.evaluation.figures import PALETTE, overlay, path_figure


def test_overlay_colours_labelled_pixels_only(rng):
    img = np.zeros((1, 6, 8), np.float32)
    labels = np.zeros((6, 8), np.int64)
    labels[2:4, 2:4] = 1
    out = overlay(img, labels, alpha=0.5, scale=1)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])
    np.testing.assert_array_equal(out[2, 2], np.round(0.5 * 128 + 0.5 * PALETTE[1]).astype(np.uint8))
    assert overlay(img, None, scale=3).shape == (18, 24, 3)


def test_path_figure_layout(rng):
    n, L, h, w = 2, 3, 16, 20
    x = rng.uniform(-1, 1, (n, 1, h, w)).astype(np.float32)
    cfs = rng.uniform(-1, 1, (L, n, 1, h, w)).astype(np.float32)
    prob = rng.uniform(0, 1, (L + 1, n))
    seg = rng.integers(0, 4, (L + 1, n, h, w))
    fig = path_figure(x, cfs, prob, seg, row_titles=["a", "b"], class_names=["bg", "TH", "CSP", "FP"])
    assert fig.ndim == 3 and fig.shape[2] == 3
    assert fig.shape[1] > (L + 1) * 2 * w and fig.shape[0] > n * 2 * h

"""conv2d and linear, forward and backward, against PyTorch autograd (float64 reference)."""

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ALL_BACKENDS, randn, rel_err, t64

from diffice import ops
from diffice._native import _C

TOL = 1e-5

# (N, Ci, H, W, Co, kernel, stride, padding); kernel/stride/padding are ints or (h, w) pairs.
CONV_CASES = [
    (3, 5, 13, 19, 7, 1, 1, 0),
    (3, 5, 13, 19, 7, 3, 1, 1),
    (3, 7, 13, 19, 11, 3, 2, 1),
    (3, 11, 13, 19, 5, 5, 1, 2),
    (3, 5, 13, 19, 7, 5, 2, 2),
    (3, 5, 13, 19, 11, 3, 2, 0),
    (3, 7, 14, 20, 5, 1, 2, 0),  # even sizes at stride 2: the last row and column are never read
    (3, 5, 13, 19, 7, 7, 2, 3),  # ResNet stem geometry
    (3, 3, 13, 19, 11, (3, 5), (1, 2), (1, 2)),  # non-square kernel, per-axis stride and padding
    (1, 5, 4, 6, 7, 3, 1, 0),  # output 2x4 from a tiny input
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv_reference(x, w, b, dy, stride, padding):
    xt, wt = t64(x, requires_grad=True), t64(w, requires_grad=True)
    bt = t64(b, requires_grad=True) if b is not None else None
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    yt.backward(t64(dy))
    return yt, xt.grad, wt.grad, bt.grad if bt is not None else None


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)).replace(" ", ""))
def test_conv2d_forward_backward(rng, backend, with_bias, case):
    n, ci, h, w, co, k, stride, padding = case
    kh, kw = _pair(k)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    x = randn(rng, n, ci, h, w)
    weight = randn(rng, co, ci, kh, kw, scale=0.3)
    bias = randn(rng, co) if with_bias else None
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    dy = randn(rng, n, co, ho, wo)
    yt, dxt, dwt, dbt = _conv_reference(x, weight, bias, dy, (sh, sw), (ph, pw))

    y = ops.conv2d(x, weight, bias, stride=stride, padding=padding, backend=backend)
    assert rel_err(y, yt) <= TOL
    dx = ops.conv2d_backward_input(dy, weight, x.shape, stride=stride, padding=padding, backend=backend)
    assert rel_err(dx, dxt) <= TOL
    dw, db = ops.conv2d_backward_weight(
        dy, x, weight.shape, bias=with_bias, stride=stride, padding=padding, backend=backend
    )
    assert rel_err(dw, dwt) <= TOL
    if with_bias:
        assert rel_err(db, dbt) <= TOL
    else:
        assert db is None


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_conv2d_repeated_calls_use_new_data(rng, backend):
    """The cpu backend caches primitives per shape: later calls, interleaved with other shapes, must see new data."""
    shapes = [(2, 5, 13, 19), (2, 5, 7, 9)]
    weight = randn(rng, 7, 5, 3, 3)
    for _ in range(2):
        for shape in shapes:
            x = randn(rng, *shape)
            want = F.conv2d(t64(x), t64(weight), padding=1)
            assert rel_err(ops.conv2d(x, weight, padding=1, backend=backend), want) <= TOL
            weight = randn(rng, 7, 5, 3, 3)


def test_conv2d_backends_in_parallel_threads(rng):
    """Two Python threads, each with its own cpu backend (get_backend is per thread), run convolutions at once."""
    x = randn(rng, 3, 5, 13, 19)
    weights = [randn(rng, 7, 5, 3, 3), randn(rng, 11, 5, 5, 5)]
    wants = [F.conv2d(t64(x), t64(w), padding=1) for w in weights]
    errors = [[], []]

    def work(i):
        for _ in range(20):
            errors[i].append(rel_err(ops.conv2d(x, weights[i], padding=1), wants[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors[0]) == len(errors[1]) == 20
    assert max(errors[0] + errors[1]) <= TOL


# (leading dims of x, In, Out)
LINEAR_CASES = [((3,), 11, 7), ((13,), 5, 19), ((1,), 64, 3), ((3, 5), 7, 11), ((), 11, 5), ((2, 3, 4), 5, 7)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
def test_linear_forward_backward(rng, backend, with_bias, case):
    lead, fin, fout = case
    x = randn(rng, *lead, fin)
    weight = randn(rng, fout, fin, scale=0.3)
    bias = randn(rng, fout) if with_bias else None
    dy = randn(rng, *lead, fout)
    xt, wt = t64(x, requires_grad=True), t64(weight, requires_grad=True)
    bt = t64(bias, requires_grad=True) if with_bias else None
    yt = F.linear(xt, wt, bt)
    yt.backward(t64(dy))

    assert rel_err(ops.linear(x, weight, bias, backend=backend), yt) <= TOL
    assert rel_err(ops.linear_backward_input(dy, weight, backend=backend), xt.grad) <= TOL
    dw, db = ops.linear_backward_weight(dy, x, bias=with_bias, backend=backend)
    assert rel_err(dw, wt.grad) <= TOL
    if with_bias:
        assert rel_err(db, bt.grad) <= TOL
    else:
        assert db is None


def test_linear_cache_eviction(rng):
    """More distinct shapes than the cpu backend's primitive cache holds, then the first again."""
    weight = randn(rng, 3, 4)
    for rows in list(range(1, 150)) + [1, 2]:
        x = randn(rng, rows, 4)
        assert rel_err(ops.linear(x, weight), F.linear(t64(x), t64(weight))) <= TOL


def test_large_batch_runs_in_slices_with_a_bounded_workspace(rng):
    """A convolution whose images would need more than 128 MiB of oneDNN copies runs in batch slices (here 2 + 1
    images of ~50 MB each): the same numbers as PyTorch, and the backend keeps the slice's copies, not the batch's."""
    backend = _C.Backend("cpu", 0)  # a fresh backend: its workspace holds only what this test ran
    x = randn(rng, 3, 96, 250, 300)
    weight, bias = randn(rng, 72, 96, 3, 3, scale=0.05), randn(rng, 72)
    y = _C.conv2d_forward(backend, x, weight, bias, (1, 1), (1, 1), False, False)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(weight)
    yt = F.conv2d(xt, wt, torch.tensor(bias), padding=1)
    assert rel_err(y, yt) <= TOL
    dy = randn(rng, *y.shape)
    dx = _C.conv2d_backward_input(backend, dy, weight, x.shape, (1, 1), (1, 1))
    yt.backward(torch.tensor(dy))
    assert rel_err(dx, xt.grad) <= TOL
    per_image = (x[0].nbytes + y[0].nbytes) / 2**20
    held = _C.onednn_workspace_bytes(backend) / 2**20
    assert held <= 128 + 8, f"workspace {held:.0f} MiB for {per_image:.0f} MiB of copies per image"
    with pytest.raises(ValueError, match="ref"):
        _C.onednn_workspace_bytes(_C.Backend("ref", 0))


@pytest.mark.parametrize("backend", ["ref", "cpu"])
@pytest.mark.parametrize("x_layout, y_layout", [("nhwc", "nchw"), ("nchw", "nhwc"), ("nhwc", "nhwc")])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_takes_and_gives_channels_last(rng, backend, x_layout, y_layout, stride):
    """An NHWC x or y ((N, H, W, C) arrays): the numbers of the NCHW convolution, in the other layout; on the cpu
    backend the convolution then reads and writes oneDNN's own layout without a reorder."""
    x, weight, bias = randn(rng, 3, 13, 11, 17), randn(rng, 9, 13, 3, 3), randn(rng, 9)
    want = F.conv2d(t64(x), t64(weight), t64(bias), stride=stride, padding=1).numpy()
    x_in = x.transpose(0, 2, 3, 1).copy() if x_layout == "nhwc" else x
    y = ops.conv2d(x_in, weight, bias, stride=stride, padding=1, x_layout=x_layout, y_layout=y_layout, backend=backend)
    assert y.shape == (want.transpose(0, 2, 3, 1).shape if y_layout == "nhwc" else want.shape)
    assert rel_err(y.transpose(0, 3, 1, 2) if y_layout == "nhwc" else y, want) <= TOL


def _conv_nhwc(x_nhwc, weight, bias, y_layout):
    """A 3x3, padding 1 conv2d of channels-last x on the cpu backend, returned NCHW."""
    y = ops.conv2d(x_nhwc, weight, bias, padding=1, x_layout="nhwc", y_layout=y_layout)
    return y.transpose(0, 3, 1, 2) if y_layout == "nhwc" else y


def _direct(monkeypatch, conv, *args, **kwargs):
    """conv(*args, **kwargs) with the direct kernels (DIFFICE_NO_WINOGRAD=1), the environment restored afterwards."""
    with monkeypatch.context() as m:
        m.setenv("DIFFICE_NO_WINOGRAD", "1")
        return conv(*args, **kwargs)


@pytest.mark.parametrize("y_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_3x3_convolutions(rng, monkeypatch, y_layout, with_bias):
    """The cpu backend's 3x3 / stride 1 / padding 1 convolutions with 32 or more channels in and out and at least
    60 4x4 tiles per image run as Winograd F(4x4, 3x3) (csrc/ops/cpu_winograd.c): heights and widths off the
    tile (the last tiles stick out of the image by 1-3 pixels), batches, channel counts off the vector width,
    several blocks per image, a deep sum (Ci = 150), NCHW or NHWC output. Against PyTorch in float64 at the op
    tolerance, and not bit for bit the direct convolution (DIFFICE_NO_WINOGRAD=1), so the Winograd path is the
    one tested."""
    for n, ci, co, h, w in [(2, 64, 67, 45, 59), (3, 66, 80, 51, 50), (1, 150, 64, 49, 53), (1, 64, 64, 71, 69)]:
        x, weight = randn(rng, n, ci, h, w), randn(rng, co, ci, 3, 3)
        bias = randn(rng, co) if with_bias else None
        want = F.conv2d(t64(x), t64(weight), t64(bias) if with_bias else None, padding=1).numpy()
        args = (x.transpose(0, 2, 3, 1).copy(), weight, bias)
        got = _conv_nhwc(*args, y_layout)
        assert rel_err(got, want) <= TOL, (n, ci, co, h, w)
        direct = _direct(monkeypatch, _conv_nhwc, *args, y_layout)
        assert rel_err(direct, want) <= TOL and not np.array_equal(got, direct), (n, ci, co, h, w)


def test_winograd_kernel_at_any_size(rng, monkeypatch):
    """DIFFICE_WINOGRAD_ALWAYS=1 takes the Winograd kernel wherever the geometry allows (benchmarks/winograd.py
    measures where it pays with it): images down to 1 pixel (fewer tiles than the 4 blocks an image is cut
    into), 1-3 channels, forward and input gradient, against PyTorch in float64."""
    monkeypatch.setenv("DIFFICE_WINOGRAD_ALWAYS", "1")
    for n, ci, co, h, w in [(2, 13, 11, 9, 15), (1, 1, 3, 1, 1), (3, 2, 5, 1, 6), (1, 7, 1, 5, 2), (2, 9, 33, 17, 4)]:
        x, weight, bias, dy = randn(rng, n, ci, h, w), randn(rng, co, ci, 3, 3), randn(rng, co), randn(rng, n, co, h, w)
        xt = t64(x, requires_grad=True)
        y = F.conv2d(xt, t64(weight), t64(bias), padding=1)
        y.backward(t64(dy))
        got = ops.conv2d(x, weight, bias, padding=1)
        assert rel_err(got, y.detach()) <= TOL, (n, ci, co, h, w)
        assert rel_err(ops.conv2d_backward_input(dy, weight, x.shape, padding=1), xt.grad) <= TOL, (n, ci, co, h, w)
        if h * w > 1:  # one pixel: a single product either way
            assert not np.array_equal(got, _direct(monkeypatch, ops.conv2d, x, weight, bias, padding=1))


def test_winograd_input_gradient(rng, monkeypatch):
    """conv2d_backward_input of a 3x3 / stride 1 / padding 1 convolution on the cpu backend is the Winograd
    convolution of dy with the transposed, 180-degree-turned kernels (dx and dy swap the channel counts): against
    PyTorch's autograd, and not bit for bit the direct kernel's."""
    for n, ci, co, h, w in [(2, 64, 75, 45, 59), (1, 130, 64, 49, 50), (3, 70, 66, 30, 87)]:
        x, weight, dy = randn(rng, n, ci, h, w), randn(rng, co, ci, 3, 3), randn(rng, n, co, h, w)
        xt = t64(x, requires_grad=True)
        F.conv2d(xt, t64(weight), padding=1).backward(t64(dy))
        got = ops.conv2d_backward_input(dy, weight, x.shape, padding=1)
        assert rel_err(got, xt.grad) <= TOL, (n, ci, co, h, w)
        direct = _direct(monkeypatch, ops.conv2d_backward_input, dy, weight, x.shape, padding=1)
        assert rel_err(direct, xt.grad) <= TOL and not np.array_equal(got, direct), (n, ci, co, h, w)


def test_winograd_runs_only_where_it_pays(rng, monkeypatch):
    """Winograd takes a 3x3 / stride 1 / padding 1 convolution with 32 or more channels in and out and 60 or more
    4x4 tiles per image; any other runs the direct kernel, to the bit (csrc/ops/cpu_winograd.c says why)."""
    cases = [  # (ci, co, h, w, stride, Winograd?)
        (32, 32, 17, 48, 1, True),  # 5 x 12 = 60 tiles
        (32, 32, 20, 44, 1, False),  # 5 x 11 = 55
        (31, 96, 40, 40, 1, False),  # too few input channels
        (96, 31, 40, 40, 1, False),  # too few output channels
        (64, 64, 90, 90, 2, False),  # strided
    ]
    for ci, co, h, w, stride, winograd in cases:
        x, weight = randn(rng, 1, ci, h, w), randn(rng, co, ci, 3, 3)
        got = ops.conv2d(x, weight, stride=stride, padding=1)
        direct = _direct(monkeypatch, ops.conv2d, x, weight, stride=stride, padding=1)
        assert np.array_equal(got, direct) != winograd, (ci, co, h, w, stride)


@pytest.mark.parametrize("x_nhwc", [True, False])
def test_winograd_results_do_not_depend_on_the_batch_or_the_threads(rng, x_nhwc):
    """An image's Winograd convolution is the same bytes alone or in a batch, NCHW or NHWC in, on 1, 2 or 3 threads
    (its tiles' blocks follow from the image's shape only, each sgemm runs on one thread), as the direct kernels'
    results are: a metric over batches of 32 (diffice.evaluation.metrics) then equals the whole set's to the bit."""
    n, ci, co, h, w = 3, 64, 72, 45, 59
    x, weight = randn(rng, n, ci, h, w), randn(rng, co, ci, 3, 3)
    xs = x.transpose(0, 2, 3, 1).copy() if x_nhwc else x
    outs = [_C.conv2d_forward(_C.Backend("cpu", k), xs, weight, None, (1, 1), (1, 1), x_nhwc, False) for k in (1, 2, 3)]
    one_by_one = [
        _C.conv2d_forward(_C.Backend("cpu", 2), xs[i : i + 1].copy(), weight, None, (1, 1), (1, 1), x_nhwc, False)
        for i in range(n)
    ]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert np.array_equal(outs[0], np.concatenate(one_by_one))
    assert rel_err(outs[0], F.conv2d(t64(x), t64(weight), padding=1)) <= TOL


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_conv2d_layout_errors(backend):
    with pytest.raises(ValueError, match="conv2d_forward: x_layout must be 'nchw' or 'nhwc'"):
        ops.conv2d(X, W, x_layout="chw", backend=backend)  # type: ignore[arg-type]
    if backend.startswith("cuda"):  # cuDNN's convolutions here take NCHW only
        with pytest.raises(ValueError, match="conv2d_forward: x and y must be NCHW here"):
            ops.conv2d(X, W, y_layout="nhwc", backend=backend)


# ---- bad inputs: each error names the op and the argument ----

X = np.zeros((3, 5, 13, 19), np.float32)
W = np.zeros((7, 5, 3, 3), np.float32)


def _conv(x=X, w=W, b=None, **kw):
    return lambda backend: ops.conv2d(x, w, b, backend=backend, **kw)


def _nan_weight():
    w = W.copy()
    w[1, 2, 0, 1] = np.nan
    return w


BAD_CONV = {
    "channel mismatch": (
        _conv(w=np.zeros((7, 6, 3, 3), np.float32)),
        ValueError,
        ["conv2d_forward", "weight has 6 input channels but x has 5"],
    ),
    "weight rank": (_conv(w=np.zeros((7, 5, 3), np.float32)), ValueError, ["conv2d_forward", "weight", "4 dim"]),
    "x rank": (_conv(x=np.zeros((5, 13, 19), np.float32)), ValueError, ["conv2d_forward", "x", "4 dim"]),
    "float64": (_conv(x=X.astype(np.float64)), TypeError, ["conv2d_forward", "x", "float32"]),
    "non-contiguous": (
        _conv(x=np.zeros((3, 5, 13, 38), np.float32)[..., ::2]),
        ValueError,
        ["conv2d_forward", "x", "contiguous"],
    ),
    "nan": (_conv(w=_nan_weight()), ValueError, ["conv2d_forward", "weight", "non-finite"]),
    "kernel too large": (
        _conv(x=np.zeros((1, 5, 4, 19), np.float32), w=np.zeros((7, 5, 7, 3), np.float32), padding=1),
        ValueError,
        ["conv2d_forward", "kernel height 7", "padded input height 6"],
    ),
    "bias shape": (_conv(b=np.zeros(5, np.float32)), ValueError, ["conv2d_forward", "bias", "(7,)"]),
    "negative padding": (_conv(padding=(1, -1)), ValueError, ["conv2d_forward", "padding"]),
    "zero stride": (_conv(stride=0), ValueError, ["conv2d_forward", "stride"]),
    "float stride": (_conv(stride=1.5), TypeError, ["conv2d_forward", "stride"]),
    "backward_input dy inconsistent": (
        lambda be: ops.conv2d_backward_input(
            np.zeros((3, 7, 6, 10), np.float32), W, X.shape, stride=2, padding=1, backend=be
        ),
        ValueError,
        ["conv2d_backward_input", "dy has shape (3, 7, 6, 10), expected (3, 7, 7, 10)"],
    ),
    "backward_input channel mismatch": (
        lambda be: ops.conv2d_backward_input(
            np.zeros((3, 7, 13, 19), np.float32), W, (3, 4, 13, 19), padding=1, backend=be
        ),
        ValueError,
        ["conv2d_backward_input", "weight has 5 input channels but dx has 4"],
    ),
    "backward_input bad x_shape": (
        lambda be: ops.conv2d_backward_input(np.zeros((3, 7, 13, 19), np.float32), W, (3, 5, 13), backend=be),
        ValueError,
        ["conv2d_backward_input", "x_shape"],
    ),
    "backward_weight channel mismatch": (
        lambda be: ops.conv2d_backward_weight(
            np.zeros((3, 7, 13, 19), np.float32), X, (7, 6, 3, 3), padding=1, backend=be
        ),
        ValueError,
        ["conv2d_backward_weight", "dweight has 6 input channels but x has 5"],
    ),
    "backward_weight batch mismatch": (
        lambda be: ops.conv2d_backward_weight(np.zeros((2, 7, 13, 19), np.float32), X, W.shape, padding=1, backend=be),
        ValueError,
        ["conv2d_backward_weight", "dy has shape (2, 7, 13, 19), expected (3, 7, 13, 19)"],
    ),
    "linear feature mismatch": (
        lambda be: ops.linear(np.zeros((3, 5), np.float32), np.zeros((7, 6), np.float32), backend=be),
        ValueError,
        ["linear_forward", "weight has 6 input features but x has 5"],
    ),
    "linear bias shape": (
        lambda be: ops.linear(
            np.zeros((3, 5), np.float32), np.zeros((7, 5), np.float32), np.zeros(5, np.float32), backend=be
        ),
        ValueError,
        ["linear_forward", "bias"],
    ),
    "linear weight rank": (
        lambda be: ops.linear(np.zeros((3, 5), np.float32), np.zeros((7, 5, 1), np.float32), backend=be),
        ValueError,
        ["linear_forward", "weight", "2 dim"],
    ),
    "linear float64": (
        lambda be: ops.linear(np.zeros((3, 5), np.float64), np.zeros((7, 5), np.float32), backend=be),
        TypeError,
        ["linear_forward", "x", "float32"],
    ),
    "linear non-contiguous": (
        lambda be: ops.linear(np.zeros((2, 3, 10), np.float32)[..., ::2], np.zeros((7, 5), np.float32), backend=be),
        ValueError,
        ["linear_forward", "x", "contiguous"],
    ),
    "linear backward_input mismatch": (
        lambda be: ops.linear_backward_input(np.zeros((3, 6), np.float32), np.zeros((7, 5), np.float32), backend=be),
        ValueError,
        ["linear_backward_input", "dy has shape (3, 6), expected (3, 7)"],
    ),
    "linear backward_weight rows": (
        lambda be: ops.linear_backward_weight(np.zeros((4, 7), np.float32), np.zeros((3, 5), np.float32), backend=be),
        ValueError,
        ["linear_backward_weight", "dy"],
    ),
    "linear nan": (
        lambda be: ops.linear_backward_weight(
            np.full((3, 7), np.inf, np.float32), np.zeros((3, 5), np.float32), backend=be
        ),
        ValueError,
        ["linear_backward_weight", "dy", "non-finite"],
    ),
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("name", BAD_CONV)
def test_bad_inputs_raise_naming_op_and_argument(backend, name):
    call, exc, words = BAD_CONV[name]
    with pytest.raises(exc) as info:
        call(backend)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"

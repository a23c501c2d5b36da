"""Reliability (issue 9): argument checks where Python meets C, thread safety of shared models, and no memory
growth across repeated forward/VJP and explain calls."""

from __future__ import annotations

import ctypes
import gc
import threading
import tracemalloc

import numpy as np
import pytest
from conftest import tiny_plane_classifier, tiny_unet
from test_explain import H, LinearClassifier, PixelL2, W, images

from diffice import _C, GaussianDiffusion, PerceptualLoss, ResNetFeatures, Segmenter, UNet
from diffice.explain.explainer import Explainer
from diffice.ops import get_backend

# Tiny random models often call every input the target already: the SuspiciousRunWarning that says so is
# noise in tests about something else (the tests about the warning itself catch it with pytest.warns).
pytestmark = pytest.mark.filterwarnings("ignore::diffice.SuspiciousRunWarning")


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True)


@pytest.fixture(scope="module")
def nets():
    clf = tiny_plane_classifier()
    perc = PerceptualLoss(ResNetFeatures.random(depth=18, in_channels=1, taps=("layer1",), seed=3), variant="mse")
    return clf, perc


KW = dict(method="diff-ice", iterations=2, tau=3, lambda_c=(5.0, 50.0), lambda_p=2.0)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(tau=0), ValueError, "tau"),
        (dict(tau=-3), ValueError, "tau"),
        (dict(tau=40), ValueError, "tau"),
        (dict(tau=2.5), TypeError, "tau"),
        (dict(iterations=0), ValueError, "iterations"),
        (dict(lambda_c=()), ValueError, "lambda_c"),
        (dict(lambda_c="40"), ValueError, "lambda_c"),
        (dict(lambda_c=(1.0, float("nan"))), ValueError, r"lambda_c\[1\]"),
        (dict(lambda_c=(-1.0,)), ValueError, r"lambda_c\[0\]"),
        (dict(lambda_p=float("inf")), ValueError, "lambda_p"),
        (dict(lambda_p=-1.0), ValueError, "lambda_p"),
        (dict(mask_threshold=-0.5), ValueError, "mask_threshold"),
        (dict(method="dice"), ValueError, "method"),
        (dict(class_loss="mse"), ValueError, "class_loss"),
        (dict(grad_at="next"), ValueError, "grad_at"),
        (dict(backend="tpu"), ValueError, "backend"),
        (dict(guidance="magic"), ValueError, "guidance"),
    ],
)
def test_explainer_config_errors_name_the_argument(tiny, kwargs, exc, match):
    unet, d = tiny
    with pytest.raises(exc, match=match):
        Explainer(unet, d, LinearClassifier(), PixelL2(), **kwargs)


def test_explain_input_errors_name_the_argument(tiny, rng):
    unet, d = tiny
    ex = Explainer(unet, d, LinearClassifier(classes=3), PixelL2(), tau=2, iterations=1, lambda_c=(1.0,))
    x = images(rng, 2)
    cases = [
        (dict(x=x[:0]), ValueError, "no images"),
        (dict(x=x[0]), ValueError, r"\(N, C, H, W\)"),
        (dict(x=x.astype(np.float64)), TypeError, "float32"),
        (dict(x=np.where(x > 0, 1.5, x).astype(np.float32)), ValueError, r"\[-1, 1\]"),
        (dict(x=np.full_like(x, -1.0001)), ValueError, r"\[-1, 1\]"),
        (dict(x=np.full_like(x, np.inf)), ValueError, "non-finite"),
        (dict(x=np.zeros((2, 2, H, W), np.float32)), ValueError, "channels"),
        (dict(target=3), ValueError, "target 3 is not a class"),
        (dict(target=-1), ValueError, "target -1"),
        (dict(target=[0, 1, 2]), ValueError, "target"),
        (dict(target=1.5), TypeError, "target"),
        (dict(target=True), TypeError, "target"),
        (dict(target="1"), TypeError, "target"),
        (dict(keys=[1]), ValueError, "keys"),
        (dict(keys=[1.5, 2.5]), ValueError, "keys"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(progress=3), TypeError, "progress"),
    ]
    for over, exc, match in cases:
        args = dict(x=x, target=1)
        args.update(over)
        xx = args.pop("x")
        with pytest.raises(exc, match=match):
            ex.explain(xx, **args)
    # the edges are allowed: exactly -1 and 1, the last class, one target per image
    ok = ex.explain(np.clip(x * 10, -1, 1).astype(np.float32), target=[2, 0])
    assert ok.counterfactuals.shape == (1, 2, 1, H, W)


def test_backend_refuses_another_threads_state():
    """A Backend holds its thread's oneDNN stream and primitive cache: using it from another thread is refused
    (get_backend gives each thread its own)."""
    be = get_backend("cpu")
    a = np.ones((2, 3), np.float32)
    caught = []

    def other():
        try:
            _C.activation_forward(be, "silu", a)
        except RuntimeError as exc:
            caught.append(str(exc))
        _C.activation_forward(get_backend("cpu"), "silu", a)  # the thread's own backend works

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert caught and "another thread" in caught[0] and "get_backend" in caught[0]


def test_backend_and_diffusion_refuse_a_second_init():
    """__init__ again would free a Backend (or Diffusion) that arenas, copies of parameters or a running sampler
    still use: refused, the object stays usable."""
    be = _C.Backend("cpu")
    with pytest.raises(RuntimeError, match=r"Backend: already initialised \(make a new Backend instead\)"):
        be.__init__("ref")
    assert be.name == "cpu"
    assert _C.activation_forward(be, "relu", np.ones((2, 3), np.float32)).shape == (2, 3)
    d = _C.Diffusion(steps=10)
    with pytest.raises(RuntimeError, match="Diffusion: already initialised"):
        d.__init__(steps=20)
    assert d.arrays()["betas"].shape == (10,)


# ---------------------------------------------------------------- concurrency


def _run_threads(fns):
    results, errors = [None] * len(fns), []
    barrier = threading.Barrier(len(fns))

    def worker(i):
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    return results


@pytest.mark.parametrize("guidance", ["native", "python"])
def test_two_threads_same_models_match_running_alone(tiny, nets, rng, guidance):
    """Two explainers over the same UNet, classifier and perceptual loss, in two threads at once, each with its own
    images: the same counterfactuals as each run alone. With guidance='python' both share one PerceptualLoss whose
    reference (set_reference) each needs to be its own images'."""
    unet, d = tiny
    clf, perc = nets
    xa, xb = images(rng, 2), images(rng, 3)
    exa = Explainer(unet, d, clf, perc, guidance=guidance, **KW)
    exb = Explainer(unet, d, clf, perc, guidance=guidance, **KW)
    alone_a, alone_b = exa.explain(xa, seed=1), exb.explain(xb, seed=2)
    for _ in range(1):
        ra, rb = _run_threads([lambda: exa.explain(xa, seed=1), lambda: exb.explain(xb, seed=2)])
        np.testing.assert_array_equal(ra.counterfactuals, alone_a.counterfactuals)
        np.testing.assert_array_equal(rb.counterfactuals, alone_b.counterfactuals)
        np.testing.assert_array_equal(ra.prob_target, alone_a.prob_target)
        np.testing.assert_array_equal(rb.lambda_used, alone_b.lambda_used)


def test_two_threads_separate_models_match_running_alone(tiny, rng):
    unet, d = tiny
    other_unet = UNet.random(unet.config, seed=9)
    xa, xb = images(rng, 2), images(rng, 2)
    exa = Explainer(unet, d, LinearClassifier(seed=1), PixelL2(), **KW)
    exb = Explainer(other_unet, d, LinearClassifier(seed=2), PixelL2(), **KW)
    alone = [exa.explain(xa, seed=5).counterfactuals, exb.explain(xb, seed=5).counterfactuals]
    got = _run_threads([lambda: exa.explain(xa, seed=5), lambda: exb.explain(xb, seed=5)])
    np.testing.assert_array_equal(got[0].counterfactuals, alone[0])
    np.testing.assert_array_equal(got[1].counterfactuals, alone[1])


def test_shared_perceptual_loss_from_threads(nets, rng):
    """set_reference and loss on one C PerceptualLoss from 4 threads: each call sees a whole reference (never freed
    under it) -- the loss of a against b when the reference is b is 0 whatever the other threads do."""
    _, perc = nets
    refs = [images(rng, 2) for _ in range(4)]

    def hammer(i):
        def run():
            worst = 0.0
            for _ in range(15):
                perc.set_reference(refs[i])
                worst = max(worst, float(np.abs(perc.loss(refs[(i + 1) % 4])).max()))
            return worst

        return run

    assert all(v >= 0 for v in _run_threads([hammer(i) for i in range(4)]))
    perc.set_reference(refs[0])
    assert float(np.abs(perc.loss(refs[0])).max()) == 0.0


# ---------------------------------------------------------------- leaks


def _c_heap_bytes() -> int:
    """Bytes the C allocator has handed out (glibc mallinfo2: in-use arena chunks + mmapped blocks); falls back to
    the resident set size where mallinfo2 is missing."""
    try:
        libc = ctypes.CDLL(None)

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (n, ctypes.c_size_t)
                for n in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]

        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)
    except (AttributeError, OSError):
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _growth(call, warmup: int, repeats: int):
    """(C heap growth, traced Python growth) in bytes over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        call()
    gc.collect()
    tracemalloc.start()
    try:
        py0, c0 = tracemalloc.get_traced_memory()[0], _c_heap_bytes()
        for _ in range(repeats):
            call()
        gc.collect()
        py1, c1 = tracemalloc.get_traced_memory()[0], _c_heap_bytes()
    finally:
        tracemalloc.stop()
    return c1 - c0, py1 - py0


def test_no_growth_over_1000_forward_vjp_calls(rng):
    seg = Segmenter.random(classes=3, width=4, levels=2, groups=2, seed=1)
    x16 = np.ascontiguousarray(images(rng, 2)[:, :, :16, :16])
    dseg = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)

    def call():
        seg.forward(x16)
        seg.vjp(x16, dseg)

    c_growth, py_growth = _growth(call, warmup=50, repeats=1000)
    # a leak of one 16x16 float map per call would be 1 MB; tracemalloc's own bookkeeping is a few kB
    assert c_growth < 256 * 1024, f"C heap grew {c_growth} bytes over 1000 forward/VJP calls"
    assert py_growth < 64 * 1024, f"Python memory grew {py_growth} bytes over 1000 forward/VJP calls"


def test_no_growth_over_100_explain_calls(tiny, nets, rng):
    unet, d = tiny
    clf, perc = nets
    x = images(rng, 1)
    native = Explainer(unet, d, clf, perc, method="diff-ice", iterations=1, tau=1, lambda_c=(5.0,), lambda_p=1.0)

    def call():
        native.explain(x, seed=3)

    c_growth, py_growth = _growth(call, warmup=5, repeats=100)
    assert c_growth < 512 * 1024, f"C heap grew {c_growth} bytes over 100 explain calls"
    assert py_growth < 128 * 1024, f"Python memory grew {py_growth} bytes over 100 explain calls"

"""The C sampler: one guided step against a numpy reference, lambda_c search semantics, determinism, batch
independence, the baselines' distinctive properties, bad inputs, interruption."""

import numpy as np
import pytest
import torch
from conftest import tiny_plane_classifier, tiny_unet, torch_class_probabilities
from gd_reference import UNetModel

from diffice import _C, GaussianDiffusion, classification_loss, ops
from diffice.explain.explainer import Explainer, image_keys
from diffice.ops import get_backend

# Tiny random models often call every input the target already: the SuspiciousRunWarning that says so is
# noise in tests about something else (the tests about the warning itself catch it with pytest.warns).
pytestmark = pytest.mark.filterwarnings("ignore::diffice.SuspiciousRunWarning")

H, W = 16, 24


class LinearClassifier:
    """logits_k = <w_k, x> + b_k: a classifier whose gradient is known exactly."""

    def __init__(self, seed=0, classes=2):
        rng = np.random.default_rng(seed)
        self.w = (rng.standard_normal((classes, 1, H, W)) / (H * W) ** 0.5).astype(np.float32)
        self.b = np.zeros(classes, np.float32)

    def forward(self, x):
        return np.einsum("nchw,kchw->nk", x, self.w) + self.b

    def vjp(self, x, dlogits):
        return np.einsum("nk,kchw->nchw", dlogits, self.w).astype(np.float32)


class PixelL2:
    """Lp(a, b) = mean (a - b)^2 per sample."""

    def set_reference(self, b):
        self.b = b.copy()

    def loss_and_grad(self, a):
        d = a - self.b
        m = d[0].size
        return (d**2).reshape(len(a), -1).mean(axis=1).astype(np.float32), (2 * d / m).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    unet = tiny_unet()
    diffusion = GaussianDiffusion(1000, "linear", "40", learn_sigma=True)
    return unet, diffusion


def images(rng, n):
    return np.clip(rng.standard_normal((n, 1, H, W)) * 0.5, -1, 1).astype(np.float32)


def test_one_guided_step_matches_numpy_reference(tiny, rng):
    """tau = 2: q_sample at index 2, then steps at i = 1 (with noise) and i = 0 (without), by hand."""
    unet, d = tiny
    clf, perc = LinearClassifier(), PixelL2()
    x = images(rng, 3)
    ex = Explainer(unet, d, clf, perc, method="diff-ice-1", tau=2, lambda_c=(7.0,), lambda_p=3.0)
    res = ex.explain(x, target=1, seed=11, record_steps=True)
    keys = image_keys(x)
    z = d.q_sample(x, 2, ops.gaussian_noise((1, H, W), 11, keys, 1, 0, 0, 0))
    perc.set_reference(x)
    for step, i in enumerate([1, 0]):
        out = unet.forward(z, d.model_timesteps([i] * 3))
        mean, var, logvar, x0 = d.p_mean_variance(out, z, i)
        _, dlogits = classification_loss(clf.forward(x0).astype(np.float32), np.ones(3, np.int64))
        g = clf.vjp(x0, 7.0 * dlogits) + 3.0 * perc.loss_and_grad(x0)[1]
        noise = ops.gaussian_noise((1, H, W), 11, keys, 2, 0, step, 0)
        z = mean - var * g + (i != 0) * np.exp(0.5 * logvar) * noise
        np.testing.assert_allclose(res.steps_x0[0, step], x0, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.steps_xt[0, step], z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.counterfactuals[0], z, rtol=1e-5, atol=1e-5)


class ScriptedGuidance:
    """Zero gradient; classify says 'flipped' for the rows listed per pass, and records what it was asked."""

    def __init__(self, flips_per_pass):
        self.flips_per_pass = flips_per_pass
        self.passes = []
        self.calls = 0

    def loss_and_grad(self, x0, rows, lambda_c, lambda_p):
        if not self.passes or self.passes[-1][0] != tuple(rows) or self.passes[-1][1] != float(lambda_c[0]):
            self.passes.append((tuple(rows), float(lambda_c[0])))
        n = len(rows)
        return np.zeros_like(x0), np.zeros(n, np.float32), np.zeros(n, np.float32)

    def classify(self, x, rows):
        self.calls += 1
        if self.calls == 1:  # the input
            return np.zeros(len(rows), np.float32), np.zeros(len(rows), np.int32)
        flips = self.flips_per_pass[self.calls - 2]
        is_target = np.array([r in flips for r in rows], np.int32)
        return is_target.astype(np.float32), is_target


def test_lambda_search_retries_only_unflipped_samples(tiny, rng):
    unet, d = tiny
    x = images(rng, 4)
    # iteration 1: pass 1 flips {0, 2}; pass 2 (rows 1, 3) flips {3}; pass 3 (row 1) flips nothing
    # iteration 2: pass 1 flips everything
    guidance = ScriptedGuidance([{0, 2}, {3}, set(), {0, 1, 2, 3}])
    cfg = Explainer(
        unet, d, LinearClassifier(), lambda_p=0.0, method="diff-ice", iterations=2, tau=2, lambda_c=(1.0, 2.0, 3.0)
    ).config.c_config(0, False)
    out = _C.sample(cfg, unet._c, d._c, guidance, get_backend("cpu"), x, image_keys(x))
    assert [p for p in guidance.passes] == [((0, 1, 2, 3), 1.0), ((1, 3), 2.0), ((1,), 3.0), ((0, 1, 2, 3), 1.0)]
    np.testing.assert_array_equal(out["lambda_used"], [[1, 3, 1, 2], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out["flipped"], [[1, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(out["prob_target"][1], [1, 0, 1, 1])


def test_retry_uses_the_same_noise(tiny, rng):
    """A sample that retries with the next lambda starts from the same z_tau: with no guidance, the same result."""
    unet, d = tiny
    x = images(rng, 2)
    guidance = ScriptedGuidance([set(), set()])
    cfg = Explainer(
        unet, d, LinearClassifier(), method="diff-ice-1", tau=3, lambda_c=(1.0, 2.0), lambda_p=0.0
    ).config.c_config(5, False)
    out = _C.sample(cfg, unet._c, d._c, guidance, get_backend("cpu"), x, image_keys(x))
    cfg["lambda_c"] = [1.0]
    once = _C.sample(cfg, unet._c, d._c, ScriptedGuidance([set()]), get_backend("cpu"), x, image_keys(x))
    np.testing.assert_array_equal(out["counterfactuals"], once["counterfactuals"])


def test_deterministic_and_batch_independent(tiny, rng):
    unet, d = tiny
    x = images(rng, 3)
    ex = Explainer(
        unet,
        d,
        LinearClassifier(),
        PixelL2(),
        method="diff-ice",
        iterations=2,
        tau=4,
        lambda_c=(5.0, 10.0),
        lambda_p=1.0,
    )
    a = ex.explain(x, seed=3)
    b = ex.explain(x, seed=3)
    np.testing.assert_array_equal(a.counterfactuals, b.counterfactuals)
    assert not np.array_equal(ex.explain(x, seed=4).counterfactuals, a.counterfactuals)
    alone = ex.explain(np.ascontiguousarray(x[1:2]), seed=3)
    np.testing.assert_allclose(alone.counterfactuals[:, 0], a.counterfactuals[:, 1], rtol=0, atol=1e-4)
    swapped = ex.explain(np.ascontiguousarray(x[::-1]), seed=3)
    np.testing.assert_allclose(swapped.counterfactuals[:, ::-1], a.counterfactuals, rtol=0, atol=1e-4)


def test_result_shapes_and_probabilities(tiny, rng):
    unet, d = tiny
    x = images(rng, 2)
    clf = LinearClassifier()
    res = Explainer(unet, d, clf, PixelL2(), iterations=3, tau=3).explain(x, target=[1, 0])
    assert res.counterfactuals.shape == (3, 2, 1, H, W)
    assert res.prob_target.shape == (4, 2) and res.lambda_used.shape == (3, 2)
    p = np.exp(clf.forward(x)) / np.exp(clf.forward(x)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.prob_target[0], [p[0, 1], p[1, 0]], rtol=1e-5)
    assert res.peak_bytes > 0 and np.all(res.iteration_seconds > 0) and np.all(res.nonfinite_step == -1)
    assert res.unet_evaluations >= 3 * 3 * 2


def test_dime_runs_its_nested_chain(tiny, rng):
    unet, d = tiny
    x = images(rng, 2)
    tau = 4
    res = Explainer(
        unet, d, LinearClassifier(), PixelL2(), method="dime", tau=tau, lambda_c=(1e-3,), lambda_p=0.0
    ).explain(x)
    # tau guided steps plus an unguided chain to 0 after each step but the last: tau + tau (tau - 1) / 2 per image
    assert res.unet_evaluations == 2 * (tau + tau * (tau - 1) // 2)
    assert res.counterfactuals.shape[0] == 1


def test_fastdime_mask_keeps_unchanged_pixels(tiny, rng):
    unet, d = tiny
    x = images(rng, 2)
    res = Explainer(
        unet,
        d,
        LinearClassifier(),
        PixelL2(),
        method="fastdime",
        tau=6,
        mask_warmup=0,
        mask_threshold=1.0,
        mask_dilation=3,
        lambda_c=(1.0,),
    ).explain(x)
    # a threshold of 1 keeps every pixel whose dilated difference is below the per-image maximum
    kept = np.isclose(res.counterfactuals[0], x, atol=0)
    assert kept.mean() > 0.5


def test_xt_gradient_is_the_chain_rule_through_the_unet(tiny, rng):
    """tau = 1: the single step is z0 = mean - var * g_z with g_z = dL(x0_hat(z)) / dz, checked with torch autograd
    through the reference UNet."""
    unet, d = tiny
    clf = LinearClassifier(seed=2)
    x = images(rng, 2)
    lam = 3.0
    res = Explainer(
        unet, d, clf, None, method="diff-ice-1-xt", tau=1, lambda_c=(lam,), lambda_p=0.0, clip=False
    ).explain(x, target=1, seed=1, record_steps=True)
    keys = image_keys(x)
    z = d.q_sample(x, 1, ops.gaussian_noise((1, H, W), 1, keys, 1, 0, 0, 0))
    model = UNetModel(unet.config).double()
    model.load_state_dict({k: torch.from_numpy(v).double() for k, v in unet.state_dict().items()})
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    out = model(zt, torch.tensor(d.model_timesteps([0, 0])))
    x0 = d.sqrt_recip_alphas_cumprod[0] * zt - d.sqrt_recipm1_alphas_cumprod[0] * out[:, :1]
    logits = torch.einsum("nchw,kchw->nk", x0, torch.from_numpy(clf.w).double())
    loss = lam * torch.nn.functional.cross_entropy(logits, torch.ones(2, dtype=torch.long), reduction="sum")
    loss.backward()
    mean, var, _, _ = d.p_mean_variance(unet.forward(z, d.model_timesteps([0, 0])), z, 0, clip=False)
    want = mean - var * zt.grad.numpy()
    np.testing.assert_allclose(res.counterfactuals[0], want, rtol=1e-4, atol=1e-4)


def test_bad_inputs(tiny, rng):
    unet, d = tiny
    clf = LinearClassifier()
    with pytest.raises(ValueError, match="tau"):
        Explainer(unet, d, clf, lambda_p=0.0, tau=40)
    with pytest.raises(ValueError, match="method"):
        Explainer(unet, d, clf, lambda_p=0.0, method="magic")
    with pytest.raises(ValueError, match="lambda_c"):
        Explainer(unet, d, clf, lambda_p=0.0, lambda_c=())
    with pytest.raises(ValueError, match=r"lambda_p=30 but no perceptual loss"):  # the default lambda_p, no Lp
        Explainer(unet, d, clf, tau=2)
    with pytest.raises(ValueError, match=r"lambda_p=0.5 but no perceptual loss"):
        Explainer(unet, d, clf, None, tau=2, lambda_p=0.5)
    ex = Explainer(unet, d, clf, lambda_p=0.0, tau=2)
    with pytest.raises(ValueError, match="non-finite"):
        ex.explain(np.full((1, 1, H, W), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ex.explain(np.full((1, 1, H, W), 3.0, np.float32))
    with pytest.raises(ValueError, match="channels"):
        ex.explain(np.zeros((1, 3, H, W), np.float32))
    with pytest.raises(TypeError, match="float32"):
        ex.explain(np.zeros((1, 1, H, W)))


def test_progress_and_interruption(tiny, rng):
    unet, d = tiny
    x = images(rng, 1)
    seen = []
    ex = Explainer(unet, d, LinearClassifier(), lambda_p=0.0, tau=3, iterations=2, lambda_c=(1.0,))
    ex.explain(x, progress=lambda *a: seen.append(a))
    assert [s[2] for s in seen] == [1, 2, 3, 1, 2, 3] and {s[0] for s in seen} == {0, 1}
    with pytest.raises(KeyboardInterrupt):
        ex.explain(x, progress=lambda it, k, step, steps, active: step == 2)


def test_guidance_errors_surface(tiny, rng):
    unet, d = tiny

    class Broken(LinearClassifier):
        def vjp(self, x, dlogits):
            raise RuntimeError("my model failed")

    with pytest.raises(RuntimeError, match="my model failed"):
        Explainer(unet, d, Broken(), lambda_p=0.0, tau=2).explain(images(rng, 1))


def test_native_guidance_matches_python_guidance(tiny, rng):
    """diffice's own networks: the loss computed in C gives the same counterfactuals as through Python."""
    from diffice import PerceptualLoss, ResNetFeatures

    unet, d = tiny
    clf = tiny_plane_classifier()
    perc = PerceptualLoss(ResNetFeatures.random(depth=18, in_channels=1, taps=("layer1",), seed=3), variant="mse")
    x = images(rng, 3)
    kw = dict(method="diff-ice", iterations=2, tau=3, lambda_c=(5.0, 50.0), lambda_p=2.0)
    native = Explainer(unet, d, clf, perc, guidance="native", **kw).explain(x, seed=2)
    python = Explainer(unet, d, clf, perc, guidance="python", **kw).explain(x, seed=2)
    np.testing.assert_allclose(native.counterfactuals, python.counterfactuals, rtol=0, atol=1e-4)
    np.testing.assert_allclose(native.prob_target, python.prob_target, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(native.lambda_used, python.lambda_used)
    assert native.segmentation.shape == (3, 3, H, W)
    with pytest.raises(ValueError, match="native"):
        Explainer(unet, d, LinearClassifier(), lambda_p=0.0, guidance="native")


# ---- single-logit (C = 1) and two-logit classifiers: one probability convention on both guidance paths ----


def native_classifier(classes, x, scale=30.0):
    """A diffice network with `classes` logits (the native guidance runs it in C): a SonoNet-4 whose last batch
    norm is rescaled so that its logits on x are centred at 0 and spread over about +-0.2 (not saturated)."""
    from diffice import SonoNet

    net = SonoNet.random(k=4, in_channels=1, num_classes=classes, seed=2, standardize=False)
    z = logits_of(net, x)
    sd = net.state_dict()
    gamma, beta = sd["adaption.4.weight"], sd["adaption.4.bias"]
    sd["adaption.4.weight"] = (scale * gamma).astype(np.float32)
    sd["adaption.4.bias"] = (-scale * (z.mean(axis=0) - beta)).astype(np.float32)
    net.load_state_dict(sd)
    return net


def logits_of(clf, x):
    out = clf.forward(np.ascontiguousarray(x))
    return np.asarray(getattr(out, "logits", out), np.float64)


@pytest.mark.parametrize("classes", [1, 2])
@pytest.mark.parametrize("guidance", ["python", "native"])
def test_target_probability_and_flips_for_one_and_two_logits(tiny, rng, classes, guidance):
    """prob_target is p(target) of the input and of each counterfactual (sigmoid / 1 - sigmoid for one logit),
    flipped is 'the predicted class is the target' (l > 0 for one logit), for targets 0 and 1."""
    unet, d = tiny
    x = images(rng, 4)
    clf = LinearClassifier(seed=5, classes=classes) if guidance == "python" else native_classifier(classes, x)
    ex = Explainer(unet, d, clf, lambda_p=0.0, guidance=guidance, iterations=2, tau=2, lambda_c=(20.0,))
    for target in ([0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]):
        res = ex.explain(x, target=target, seed=1)
        rows = np.arange(len(x))
        for l, imgs in enumerate([x] + list(res.counterfactuals)):
            z = logits_of(clf, imgs)
            p = torch_class_probabilities(z)[rows, target]
            np.testing.assert_allclose(res.prob_target[l], p, rtol=1e-4, atol=1e-6)
            if l == 0:
                continue
            predicted = (z[:, 0] > 0).astype(int) if classes == 1 else z.argmax(axis=1)
            clear = np.abs(z[:, 0] if classes == 1 else z[:, 1] - z[:, 0]) > 1e-4  # not on the boundary
            np.testing.assert_array_equal(res.flipped[l - 1][clear], (predicted == target)[clear])
            np.testing.assert_array_equal(res.flipped[l - 1][clear], (res.prob_target[l] > 0.5)[clear])


@pytest.mark.parametrize("classes", [1, 2])
def test_python_guidance_loss_and_gradient_are_cross_entropy(rng, classes):
    """Lc is BCE-with-logits for one logit and cross-entropy for two (torch, float64); the gradient w.r.t. the
    image, scaled by lambda_c, raises every target probability."""
    from diffice.explain.explainer import PythonGuidance

    clf = LinearClassifier(seed=7, classes=classes)
    clf.b[:] = rng.uniform(-0.5, 0.5, classes).astype(np.float32)
    x0 = images(rng, 4)
    targets = np.array([0, 1, 1, 0])
    lam = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    g = PythonGuidance(clf, None, x0, targets, "ce")
    grad, loss_c, loss_p = g.loss_and_grad(x0, np.arange(4), lam, 0.0)
    xt = torch.tensor(x0.astype(np.float64), requires_grad=True)
    logits = torch.einsum("nchw,kchw->nk", xt, torch.tensor(clf.w, dtype=torch.float64)) + torch.tensor(clf.b)
    t = torch.tensor(targets)
    if classes == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], t.double(), reduction="none")
    else:
        loss = torch.nn.functional.cross_entropy(logits, t, reduction="none")
    (loss * torch.tensor(lam, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(loss_c, loss.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(loss_p, 0)
    before, _ = g.classify(x0, np.arange(4))
    step = grad / np.linalg.norm(grad.reshape(4, -1), axis=1)[:, None, None, None]
    after, _ = g.classify(np.ascontiguousarray(x0 - 0.05 * step), np.arange(4))
    assert np.all(after > before)


def test_single_logit_native_guidance_matches_python_guidance(tiny, rng):
    """A one-logit diffice classifier: the C guidance (BCE, sigmoid) and the Python one give the same run."""
    unet, d = tiny
    x = images(rng, 4)
    clf = native_classifier(1, x)
    kw = dict(method="diff-ice", iterations=2, tau=3, lambda_c=(5.0, 50.0))
    native = Explainer(unet, d, clf, lambda_p=0.0, guidance="native", **kw).explain(x, target=[0, 1, 1, 0], seed=2)
    python = Explainer(unet, d, clf, lambda_p=0.0, guidance="python", **kw).explain(x, target=[0, 1, 1, 0], seed=2)
    np.testing.assert_allclose(native.counterfactuals, python.counterfactuals, rtol=0, atol=1e-4)
    np.testing.assert_allclose(native.prob_target, python.prob_target, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(native.lambda_used, python.lambda_used)
    np.testing.assert_array_equal(native.flipped, python.flipped)


@pytest.mark.parametrize("guidance", ["python", "native"])
def test_target_out_of_range_names_the_value_and_the_classes(tiny, rng, guidance):
    unet, d = tiny
    x = images(rng, 3)
    for classes, want in ((1, "2 classes"), (2, "2 classes"), (3, "3 classes")):
        clf = LinearClassifier(classes=classes) if guidance == "python" else native_classifier(classes, x)
        ex = Explainer(unet, d, clf, lambda_p=0.0, guidance=guidance, tau=2)
        bad = max(classes, 2)
        with pytest.raises(ValueError, match=rf"target {bad} is not a class .*{want}"):
            ex.explain(x, target=[1, 0, bad])  # the bad value, not the first target past the logit count
        with pytest.raises(ValueError, match=rf"target -1 is not a class .*{want}"):
            ex.explain(x, target=[1, -1, 0])


def test_the_nonfinite_flag_describes_the_result_kept_for_each_image():
    """nonfinite_step[l, b] stayed set by an earlier lambda_c pass that blew up even when a later pass's finite,
    flipped result was the one kept, so metrics and sweeps left valid counterfactuals out (method review)."""
    from diffice.explain.demo import demo_phantoms, load_demo_models

    x = demo_phantoms(2).images.astype(np.float32)
    r = load_demo_models().explainer(iterations=1, tau=6, lambda_c=[3e38, 40.0]).explain(x, seed=0, warn=False)
    assert (r.lambda_used[0] == 40.0).all() and np.isfinite(r.counterfactuals).all()
    np.testing.assert_array_equal(r.nonfinite_step, -1)
    # a result that is kept non-finite is still marked: the largest lambda_c last
    r = load_demo_models().explainer(iterations=1, tau=6, lambda_c=[3e38]).explain(x, seed=0, warn=False)
    assert (r.nonfinite_step[0] >= 0).all()

"""diffice.models.probabilities: the one logits -> probabilities convention (softmax for C >= 2, sigmoid for a single
logit), against torch, and the places that use it: SonoNet / PlaneClassifier outputs, the classifier training
loss and its validation, the sweep's 'input is the target', the metrics."""

import numpy as np
import pytest
import torch
from conftest import tiny_plane_classifier, tiny_unet, torch_class_probabilities

from diffice.models.probabilities import predicted_class, probabilities, sigmoid


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_probabilities_and_predicted_class(rng, classes):
    z = (rng.standard_normal((7, classes)) * 3).astype(np.float32)
    z[0] = 1000.0
    z[1] = -1000.0
    with np.errstate(over="raise", invalid="raise"):  # no overflow for large logits of either sign
        p = probabilities(z, axis=1)
    assert p.shape == (7, max(classes, 2)) and p.dtype == np.float64
    np.testing.assert_allclose(p, torch_class_probabilities(z), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    want = (z[:, 0] > 0).astype(np.int64) if classes == 1 else z.argmax(axis=1)
    np.testing.assert_array_equal(predicted_class(z, axis=1), want)
    np.testing.assert_array_equal(predicted_class(z, axis=1), p.argmax(axis=1))
    # any axis: the classes along it
    np.testing.assert_allclose(probabilities(z.T, axis=0), p.T, rtol=1e-15)


def test_single_logit_edge_values():
    z = np.array([[0.0], [1e-3], [-1e-3], [40.0], [-800.0]], np.float32)
    p = probabilities(z)
    np.testing.assert_allclose(p[:, 1], torch.sigmoid(torch.tensor(z[:, 0], dtype=torch.float64)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(p[:, 0], 1 - p[:, 1], rtol=0, atol=0)
    np.testing.assert_array_equal(predicted_class(z), [0, 1, 0, 1, 0])  # l > 0: class 1; l = 0: class 0
    with np.errstate(over="raise", invalid="raise"):
        np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="at least one class"):
        probabilities(np.zeros((3, 0)))


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_sononet_and_plane_classifier_outputs(rng, classes):
    from diffice import PlaneClassifier, SonoNet

    x = np.clip(rng.standard_normal((3, 1, 16, 16)) * 0.5, -1, 1).astype(np.float32)
    net = SonoNet.random(k=4, in_channels=1, num_classes=classes, seed=3, standardize=False)
    plane = PlaneClassifier(
        tiny_plane_classifier().segmenter,
        SonoNet.random(k=4, in_channels=4, num_classes=classes, seed=4, standardize=False),
    )
    for clf in (net, plane):
        out = clf.forward(x)
        want = torch_class_probabilities(out.logits)
        assert out.probabilities.shape == (3, max(classes, 2))
        np.testing.assert_allclose(out.probabilities, want, rtol=1e-5)
    np.testing.assert_allclose(net.probabilities(x), torch_class_probabilities(net.logits(x)), rtol=1e-5)
    logits = net.forward(x).logits
    want = (logits[:, 0] > 0) if classes == 1 else logits.argmax(axis=1)
    np.testing.assert_array_equal(net.forward(x).predicted, want)


@pytest.mark.parametrize("classes", [1, 3])
def test_training_cross_entropy_is_torch(rng, classes):
    """One logit: binary cross-entropy with logits (targets 0/1); more: cross-entropy; mean over the batch."""
    from diffice.train.networks import cross_entropy_grad

    z = rng.standard_normal((6, classes)).astype(np.float32) * 2
    t = rng.integers(0, max(classes, 2), 6)
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    if classes == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(zt[:, 0], torch.tensor(t, dtype=torch.float64))
    else:
        loss = torch.nn.functional.cross_entropy(zt, torch.tensor(t))
    loss.backward()
    got, grad = cross_entropy_grad(z, t)
    assert got == pytest.approx(loss.item(), rel=1e-6)  # the C cross_entropy op: float32 per-sample losses
    assert grad.shape == z.shape
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_classifier_validation_uses_the_predicted_class(rng):
    """train_networks.evaluate('classifier'): a one-logit model predicts class 1 where its logit is > 0."""
    from diffice.train.networks import TrainingSet, evaluate

    class OneLogit:
        def logits(self, x):
            return x.mean(axis=(2, 3)).astype(np.float32)  # (N, 1)

    x = np.array([-0.5, 0.5, 0.2, -0.1], np.float32)[:, None, None, None] * np.ones((1, 1, 4, 4), np.float32)
    data = TrainingSet(images=x, files=list("abcd"), labels=np.array([0, 1, 1, 1]))
    assert evaluate("classifier", OneLogit(), data)["accuracy"] == pytest.approx(0.75)


def test_sweep_input_is_target_for_a_single_logit_classifier(rng):
    """diffice.explain.cluster.compute_unit: 'f classifies the input as the target' is l > 0 == target for one logit."""
    from diffice import GaussianDiffusion
    from diffice.explain.cluster import compute_unit

    class OneLogit:
        def forward(self, x):
            return (x.mean(axis=(1, 2, 3)) * 10.0)[:, None].astype(np.float32)

        def vjp(self, x, dlogits):
            return np.broadcast_to(dlogits[:, :, None, None] * 10.0 / x[0].size, x.shape).astype(np.float32)

    x = np.concatenate([np.full((2, 1, 16, 24), -0.3, np.float32), np.full((2, 1, 16, 24), 0.3, np.float32)])
    models = (tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True), OneLogit(), None)
    for target, want in ((1, [False, False, True, True]), (0, [True, True, False, False])):
        task = dict(
            unit="u", method=dict(method="diff-ice-1", tau=1, lambda_c=[1.0], lambda_p=0.0), x=x, target=target, seed=0
        )
        out = compute_unit(task, models=models)
        np.testing.assert_array_equal(out["input_is_target"], want)
        np.testing.assert_allclose(out["prob_target"][0], probabilities(OneLogit().forward(x))[:, target], rtol=1e-6)


def test_metrics_single_logit_is_the_two_logit_classifier(rng):
    """f with one logit l and f with logits (0, l) are the same classifier: the same validity metrics."""
    from diffice.evaluation import metrics

    class One:
        def forward(self, x):
            return (x.mean(axis=(1, 2, 3)) * 8.0)[:, None]

    class Two(One):
        def forward(self, x):
            l = One.forward(self, x)
            return np.concatenate([np.zeros_like(l), l], axis=1)

    x = np.clip(rng.standard_normal((6, 1, 8, 8)) * 0.4 - 0.2, -1, 1).astype(np.float32)
    cfs = np.clip(x + rng.uniform(0, 0.6, x.shape), -1, 1).astype(np.float32)
    a = metrics.evaluate(x, cfs, 1, classifier=One())
    b = metrics.evaluate(x, cfs, 1, classifier=Two())
    assert a["FR"]["n"] > 0
    for name in ("FR", "MAD", "BKL", "COUT"):
        assert a[name]["n"] == b[name]["n"]
        assert a[name]["value"] == pytest.approx(b[name]["value"], abs=1e-12)

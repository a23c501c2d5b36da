"""SonoNet-k in C against an independent PyTorch SonoNet with the same weights; the released SonoNet-16 on the
authors' 13 example frames; the target-class view; loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKENDS, SHARED, randn, rel_err
from sononet_reference import SonoNetReference, float32_gates

import diffice
from diffice.models.sononet import CLASSES, ClassifierOutput, SonoNet, TargetClassView, sononet_preprocess

WEIGHTS = SHARED / "weights" / "sononet" / "SonoNet16.npz"
REFERENCE = SHARED / "weights" / "sononet" / "reference_13_frames.npz"
EXAMPLES = SHARED / "data" / "sononet_examples"
needs_shared = pytest.mark.skipif(
    not WEIGHTS.exists() or not REFERENCE.exists(),
    reason=f"SonoNet weights and example frames not found under {SHARED}",
)

# file name -> class name (shared/data/sononet_examples/README.md)
FILE_CLASS = {
    "3VV": "3VV",
    "4CH": "4CH",
    "ABDOMINAL": "Abdominal",
    "BRAIN-CB": "Brain (Cb.)",
    "BRAIN-TV": "Brain (Tv.)",
    "FEMUR": "Femur",
    "KIDNEYS": "Kidneys",
    "LIPS": "Lips",
    "LVOT": "LVOT",
    "PROFILE": "Profile",
    "RVOT": "RVOT",
    "SPINE-CORONAL": "Spine (cor.)",
    "SPINE-SAGITTAL": "Spine (sag.)",
}


def torch_model(net: SonoNet) -> SonoNetReference:
    model = SonoNetReference(net.k, net.in_channels, net.num_classes, net.standardize).double().eval()
    state = {k: torch.from_numpy(v.astype(np.float64)) for k, v in net.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(m.endswith("num_batches_tracked") for m in missing), (missing, unexpected)
    return model


def gates_of(net: SonoNet, model: SonoNetReference, x: np.ndarray):
    """The ReLU masks and pool indices of the float32 forward net computes (same ops, same backend)."""
    from functools import partial

    return float32_gates(
        model,
        x,
        partial(diffice.ops.conv2d, backend=net.backend),
        partial(diffice.ops.batch_norm, backend=net.backend),
        partial(diffice.ops.max_pool2d, kernel=2, backend=net.backend),
        net.standardize,
    )


def worst_module_gradient_error(grads, model) -> float:
    """Largest relative error of a module's parameter gradients (conv weight; BN gamma and beta together)."""
    modules = {}
    for name, p in model.named_parameters():
        modules.setdefault(name.rsplit(".", 1)[0], []).append((grads[name].ravel(), p.grad.numpy().ravel()))
    errors = [
        (rel_err(np.concatenate([g for g, _ in pairs]), np.concatenate([w for _, w in pairs])), module)
        for module, pairs in modules.items()
    ]
    worst = max(errors)
    assert worst[0] <= 1e-4, worst
    return worst[0]


CASES = [  # k, in_channels, classes, H, W, standardize
    (8, 1, 14, 64, 80, True),
    (16, 4, 2, 48, 96, True),
    (8, 4, 2, 64, 80, False),
    (16, 1, 14, 48, 96, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, cin, classes, h, w, standardize", CASES)
def test_forward_vjp_and_weight_gradients_match_pytorch(rng, backend, k, cin, classes, h, w, standardize):
    net = SonoNet.random(k, cin, classes, standardize, seed=int(rng.integers(1 << 30)), backend=backend)
    model = torch_model(net)
    x = randn(rng, 3, cin, h, w, scale=30.0) + 100.0 if standardize else randn(rng, 3, cin, h, w)
    dlogits = randn(rng, 3, classes)
    dcam = randn(rng, 3, classes, h // 16, w // 16)
    dfeatures = randn(rng, 3, 8 * k, h // 16, w // 16)

    with torch.no_grad():
        logits, cam, features = model(torch.from_numpy(x).double())
    out = net.forward(x)
    assert rel_err(out.logits, logits) <= 1e-4
    assert rel_err(out.cam, cam) <= 1e-4
    assert rel_err(out.features, features) <= 1e-4
    # the probabilities against the softmax of the logits just checked: the logits' fp32 rounding, ~1e-6 of their
    # scale (hundreds with standardize), would move torch's own probabilities by up to |logit| times that
    own = torch.from_numpy(out.logits.astype(np.float64))
    assert rel_err(out.probabilities, torch.softmax(own, 1)) <= 1e-6
    assert np.array_equal(out.predicted, own.argmax(1).numpy())

    # gradients: float64 along the float32 forward's ReLU/pool branch (see sononet_reference.py)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits, cam, features = model(xt, gates_of(net, model, x))
    # input gradient from dlogits and dcam (the sampler's case), then the weight gradients of the same scalar
    loss = (logits * torch.from_numpy(dlogits)).sum() + (cam * torch.from_numpy(dcam)).sum()
    loss.backward(retain_graph=True)
    assert rel_err(net.vjp(x, dlogits=dlogits, dcam=dcam), xt.grad) <= 1e-4
    dx, grads = net.gradients(x, dlogits=dlogits, dcam=dcam)
    assert rel_err(dx, xt.grad) <= 1e-4
    worst_module_gradient_error(grads, model)
    for name, g in grads.items():
        if "running" in name:
            assert not np.any(g), f"{name} got a gradient"

    # each output alone, and all three
    for douts in (
        dict(dlogits=dlogits),
        dict(dcam=dcam),
        dict(dfeatures=dfeatures),
        dict(dlogits=dlogits, dcam=dcam, dfeatures=dfeatures),
    ):
        xt.grad = None
        parts = dict(dlogits=logits, dcam=cam, dfeatures=features)
        total = sum((parts[name] * torch.from_numpy(d)).sum() for name, d in douts.items())
        (gx,) = torch.autograd.grad(total, xt, retain_graph=True)
        assert rel_err(net.vjp(x, **douts), gx) <= 1e-4, sorted(douts)


def test_features_gradient_leaves_the_adaptation_layer_at_zero(rng):
    net = SonoNet.random(8, seed=1)
    x = randn(rng, 2, 1, 32, 48)
    _, grads = net.gradients(x, dfeatures=randn(rng, 2, 64, 2, 3))
    assert all(not np.any(g) for name, g in grads.items() if name.startswith("adaption"))
    assert np.any(grads["features.0.0.0.weight"])


def test_inference_memory_is_released_between_layers(rng):
    net = SonoNet.random(16, seed=2)
    x = randn(rng, 2, 1, 224, 288)
    net.forward(x)
    inference = net.last_peak_bytes
    net.vjp(x, dlogits=randn(rng, 2, 14))
    training = net.last_peak_bytes
    one_activation = 2 * 16 * 224 * 288 * 4
    # input and output of one op (plus the kept outputs), against every intermediate for the backward
    assert inference <= 2.5 * one_activation, (inference, one_activation)
    assert training > 4 * inference


def test_standardization_is_per_image_and_scale_invariant(rng):
    net = SonoNet.random(8, seed=3)
    x = randn(rng, 2, 1, 32, 32)
    a = net.forward(x).logits
    b = net.forward(x * np.float32(7.0) + np.float32(3.0)).logits
    assert rel_err(b, a) <= 1e-4
    one = net.forward(x[1:]).logits
    assert rel_err(one, a[1:]) <= 1e-5


def test_target_class_view_matches_pytorch(rng):
    net = SonoNet.random(8, 1, 14, seed=4)
    model = torch_model(net)
    target = 5
    view = TargetClassView(net, target=target)
    x = randn(rng, 3, 1, 32, 48)
    dl = randn(rng, 3, 2)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    logits = model(xt, gates_of(net, model, x))[0]
    others = torch.cat([logits[:, :target], logits[:, target + 1 :]], 1)
    binary = torch.stack([torch.logsumexp(others, 1), logits[:, target]], 1)
    (binary * torch.from_numpy(dl)).sum().backward()

    out = view.forward(x)
    assert isinstance(out, ClassifierOutput)
    assert rel_err(out.logits, binary) <= 1e-4
    p = view.probabilities(x)
    assert rel_err(p[:, 1], torch.softmax(logits, 1)[:, target]) <= 1e-4
    assert rel_err(p.sum(1), np.ones(3)) <= 1e-6
    assert rel_err(view.vjp(x, dl), xt.grad) <= 1e-4
    assert view.CLASSES == ("not Brain (Tv.)", "Brain (Tv.)")
    with pytest.raises(ValueError, match="dlogits"):
        view.vjp(x, randn(rng, 3, 14))
    with pytest.raises(ValueError, match="target 14"):
        TargetClassView(net, target=14)


def test_bad_inputs_raise_clear_errors(rng):
    net = SonoNet.random(8, seed=5)
    with pytest.raises(ValueError, match="channels"):
        net.forward(randn(rng, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        net.forward(randn(rng, 1, 32, 32))
    with pytest.raises(TypeError, match="float32"):
        net.forward(np.zeros((1, 1, 32, 32)))
    with pytest.raises(ValueError, match="16x16"):
        net.forward(randn(rng, 1, 1, 8, 32))
    # a blank frame is no error: standardised to zeros (std 0 divides by 1), whatever its value
    blank = net.forward(np.ones((2, 1, 32, 32), np.float32)).logits
    black = net.forward(np.full((2, 1, 32, 32), -1, np.float32)).logits
    assert np.all(np.isfinite(blank)) and np.array_equal(blank, black)
    with pytest.raises(ValueError, match="logits has shape"):
        net.vjp(randn(rng, 2, 1, 32, 32), dlogits=randn(rng, 2, 13))
    with pytest.raises(ValueError, match="cam has shape"):
        net.vjp(randn(rng, 2, 1, 32, 32), dcam=randn(rng, 2, 14, 3, 2))
    with pytest.raises(ValueError, match="at least one"):
        net.vjp(randn(rng, 2, 1, 32, 32))
    with pytest.raises(ValueError, match="k must be a positive int"):
        SonoNet(k=0)


def test_save_and_state_dict_files_round_trip(rng, tmp_path):
    net = SonoNet.random(8, 4, 2, seed=6)
    x = randn(rng, 2, 4, 32, 48)
    want = net.forward(x).logits
    net.save(tmp_path / "s.safetensors")
    again = SonoNet.from_file(tmp_path / "s.safetensors")
    assert (again.k, again.in_channels, again.num_classes) == (8, 4, 2)
    assert np.array_equal(again.forward(x).logits, want)
    # a PyTorch state_dict, num_batches_tracked included
    model = SonoNetReference(8, 4, 2).float()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()}, strict=False)
    torch.save(model.state_dict(), tmp_path / "s.pt")
    assert np.array_equal(SonoNet.from_file(tmp_path / "s.pt").forward(x).logits, want)


@needs_shared
def test_loading_errors_name_the_file(tmp_path):
    arrays = dict(np.load(WEIGHTS))
    cases = {
        "missing.npz": {k: v for k, v in arrays.items() if k != "arr_74"},
        "extra.npz": {**arrays, "arr_75": np.zeros(3, np.float32)},
        "shapes.npz": {**arrays, "arr_1": np.zeros(5, np.float32)},
    }
    for name, content in cases.items():
        np.savez(tmp_path / name, **content)
        with pytest.raises(ValueError, match=name):
            SonoNet.from_file(tmp_path / name)
    (tmp_path / "frame.png").write_bytes((EXAMPLES / "3VV.png").read_bytes())
    with pytest.raises(ValueError, match="frame.png"):
        SonoNet.from_file(tmp_path / "frame.png")
    net = SonoNet.random(8, seed=7)
    state = net.state_dict()
    del state["adaption.4.running_var"]
    diffice.io.save_safetensors(tmp_path / "partial.safetensors", state)
    with pytest.raises(ValueError, match="partial.safetensors.*adaption.4.running_var"):
        SonoNet.from_file(tmp_path / "partial.safetensors")


@pytest.fixture(scope="module")
def real():
    if not WEIGHTS.exists() or not REFERENCE.exists():
        pytest.skip(f"SonoNet weights and example frames not found under {SHARED}")
    from PIL import Image

    ref = np.load(REFERENCE)
    frames = {str(n): np.asarray(Image.open(EXAMPLES / f"{n}.png")) for n in ref["names"]}
    return SonoNet.from_file(WEIGHTS), ref, frames


def test_preprocessing_reproduces_the_reference_inputs(real):
    _, ref, frames = real
    x = np.stack([sononet_preprocess(frames[str(n)]) for n in ref["names"]])
    assert x.shape == (13, 1, 224, 288) and x.dtype == np.float32
    assert rel_err(x, ref["x"]) <= 1e-5
    # gray and float frames go through the same steps
    gray = frames["3VV"].mean(axis=2)
    assert rel_err(sononet_preprocess(gray), ref["x"][0]) <= 2e-2
    with pytest.raises(ValueError, match="975x735"):
        sononet_preprocess(frames["3VV"][:700])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sononet16_predicts_every_example_frame(real, backend):
    net, ref, frames = real
    net.backend = backend
    x = np.stack([sononet_preprocess(frames[str(n)]) for n in ref["names"]])
    out = net.forward(x)
    assert [CLASSES[i] for i in out.predicted] == [FILE_CLASS[str(n)] for n in ref["names"]]
    stored = ref["logits"].astype(np.float64)
    if np.allclose(stored.sum(axis=1), 1.0, atol=1e-5) and stored.min() >= 0:
        # the reference file's `logits` are the port's softmax outputs: compare probabilities and log-probabilities
        assert rel_err(out.probabilities, stored) <= 1e-4
        log_p = out.logits - np.log(np.exp(out.logits.astype(np.float64)).sum(axis=1, keepdims=True))
        assert rel_err(log_p, np.log(stored)) <= 1e-4
    else:
        assert rel_err(out.logits, stored) <= 1e-4
    # and the raw logits against the PyTorch reference with the same converted weights
    with torch.no_grad():
        logits = torch_model(net)(torch.from_numpy(ref["x"]).double())[0]
    assert rel_err(net.forward(ref["x"]).logits, logits) <= 1e-4
    net.backend = "cpu"


def test_real_weights_convert_inv_std_back_to_variance(real):
    net, _, _ = real
    arrays = np.load(WEIGHTS)
    var = net.state_dict()["features.0.0.1.running_var"].astype(np.float64)
    assert rel_err(1.0 / np.sqrt(var + 1e-4), arrays["arr_4"]) <= 1e-6
    assert np.array_equal(net.state_dict()["features.0.0.1.bias"], arrays["arr_1"])  # beta
    assert np.array_equal(net.state_dict()["features.0.0.1.weight"], arrays["arr_2"])  # gamma


def test_a_mismatched_output_gradient_names_the_call(rng):
    # the shape check runs in the core (dfc_net_vjp_from_host) for vjp and gradients alike, named by the caller
    net = SonoNet.random(8, seed=1)
    x = randn(rng, 2, 1, 32, 48)
    for call in (net.vjp, net.gradients):
        with pytest.raises(
            ValueError, match=rf"Network.{call.__name__}: logits has shape \(2, 5\), expected \(2, 14\)"
        ):
            call(x, dlogits=randn(rng, 2, 5))

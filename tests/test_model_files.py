"""Model files load by their own metadata everywhere (issue 14, item 2), and a run that looks broken says so.

- `diffice explain` and `diffice sweep` with the bundled demo models as files compute what the Python API computes on
  the same pixels (the CLI once rebuilt the classifier's SonoNet with standardize=True against the file's metadata:
  p_target 1.0 at iteration 0, every "counterfactual" flipped);
- one loader (diffice.models.files): the file's description wins, third-party files go through the class's from_file, a
  description of another kind is an error naming the file;
- SuspiciousRunWarning: every input already the target, or every image the target at the first guided step.
Tiny runs: 64x80 phantoms, 20 respaced steps, tau 2, one iteration.
"""

import csv
import json
import warnings

import numpy as np
import pytest

from diffice import GaussianDiffusion, PlaneClassifier, SonoNet, SuspiciousRunWarning, UNet
from diffice.cli import main
from diffice.data.images import load_image, save_png
from diffice.explain.demo import MODELS_DIR, demo_phantoms, load_demo_models
from diffice.explain.explainer import Explainer
from diffice.models.files import load_classifier, load_model, load_run_models

SIZE = (64, 80)
METHOD = dict(method="diff-ice", iterations=1, tau=2, lambda_c=[40.0], lambda_p=3000.0)


def run_toml(images=None, out=None, target=1, kind="plane", sweep=False):
    text = f"""
[models]
unet = "{MODELS_DIR / "ddpm.safetensors"}"
classifier = "{MODELS_DIR / "classifier.safetensors"}"
classifier_kind = "{kind}"
perceptual_kind = "pixel-l2"
[diffusion]
respacing = "20"
[method]
method = "diff-ice"
iterations = 1
tau = 2
lambda_c = [40]
lambda_p = 3000
[run]
image_size = [{SIZE[0]}, {SIZE[1]}]
batch_size = 2
seed = 0
target = {target}
"""
    if sweep:
        text += f'[sweep]\nimages = "{images}"\nout = "{out}"\nstore_format = "float16"\nmethod = ["diff-ice"]\n'
    return text


@pytest.fixture(scope="module")
def demo():
    return load_demo_models()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """images/: three phantoms (f: two non-standard, one standard plane); nsp/: the two non-standard ones."""
    root = tmp_path_factory.mktemp("pngs")
    batch = demo_phantoms(3)
    for i, image in enumerate(batch.images):
        save_png(root / "images" / f"p{i}.png", image)
    return root


def pixels(folder, names):
    return np.stack([load_image(folder / n, SIZE) for n in names]).astype(np.float32)


def api_explain(demo, x, target=1):
    diffusion = GaussianDiffusion(1000, "linear", "20", learn_sigma=True)
    return Explainer(demo.unet, diffusion, demo.classifier, demo.perceptual, **METHOD).explain(x, target=target, seed=0)


@pytest.fixture(scope="module")
def nsp_folder(folders, demo):
    """The phantoms f does not classify as the standard plane (class 1), alone in a folder."""
    names = sorted(p.name for p in (folders / "images").iterdir())
    p = demo.classifier.forward(pixels(folders / "images", names)).probabilities[:, 1]
    assert (p < 0.5).sum() >= 2 and (p > 0.5).sum() >= 1, p  # the phantoms of demo_phantoms(3)
    out = folders / "nsp"
    out.mkdir()
    for n, q in zip(names, p):
        if q < 0.5:
            (out / n).write_bytes((folders / "images" / n).read_bytes())
    return out


# ---- (a) diffice explain == the API on the same pixels ----


def test_cli_explain_with_bundled_model_files_matches_the_api(tmp_path, folders, demo, capsys):
    (tmp_path / "run.toml").write_text(run_toml())
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                "--config",
                str(tmp_path / "run.toml"),
                "--images",
                str(folders / "images"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "results.csv")))
    names = sorted({r["image"] for r in rows})
    x = pixels(folders / "images", names)
    want = api_explain(demo, x)
    got0 = np.array([float(r["prob_target"]) for n in names for r in rows if r["image"] == n and r["iteration"] == "0"])
    got1 = np.array([float(r["prob_target"]) for n in names for r in rows if r["image"] == n and r["iteration"] == "1"])
    np.testing.assert_allclose(got0, demo.classifier.forward(x).probabilities[:, 1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got0, want.prob_target[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got1, want.prob_target[1], rtol=0, atol=1e-4)
    assert 0.0 < got0.min() and got0.max() < 1.0 and not (got0 > 0.5).all()  # not saturated
    # a normal run: no warning
    assert "WARNING" not in err and not (out / "warnings.json").exists()


# ---- (b) diffice sweep == the API on the same pixels ----


def test_cli_sweep_with_bundled_model_files_matches_the_api(tmp_path, folders, demo, capsys):
    from diffice.explain.sweep import SweepStore

    out = tmp_path / "sweep"
    (tmp_path / "sweep.toml").write_text(run_toml(folders / "images", out, sweep=True))
    assert main(["sweep", "--config", str(tmp_path / "sweep.toml"), "--quiet"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    with SweepStore(out / "results.sqlite") as store:
        names = store.image_names()
        [config] = store.configs()
        r = store.results(config)
        assert store.meta("warnings") is None
    x = pixels(folders / "images", names)
    want = api_explain(demo, x)
    np.testing.assert_allclose(r.prob_target[:, 0], demo.classifier.forward(x).probabilities[:, 1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r.prob_target[:, 0], want.prob_target[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(r.prob_target[:, 1], want.prob_target[1], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(r.input_is_target, want.input_is_target)


# ---- (c) the guard ----


class FlipsOnAnyChange:
    """A classifier that calls its reference images class 0 and anything else class 1 (a broken f: everything the
    sampler makes 'flips' at once)."""

    def __init__(self, x):
        self.x = x

    def forward(self, a):
        same = np.array([any(np.array_equal(img, r) for r in self.x) for img in a])
        return np.stack([np.where(same, 2.0, -2.0), np.where(same, -2.0, 2.0)], axis=1).astype(np.float32)

    def vjp(self, a, dlogits):
        return np.zeros_like(a)


def test_explainer_warns_when_every_input_is_already_the_target(nsp_folder, demo):
    x = pixels(nsp_folder, sorted(p.name for p in nsp_folder.iterdir()))
    with pytest.warns(
        SuspiciousRunWarning,
        match=r"every input \(2 of 2\) is already classified as the target "
        r"class 0.*wrong preprocessing.*wrong target.*classifier file",
    ):
        result = api_explain(demo, x, target=0)
    assert result.input_is_target.all()


def test_explainer_warns_when_every_image_flips_at_the_first_guided_step(nsp_folder, demo):
    x = pixels(nsp_folder, sorted(p.name for p in nsp_folder.iterdir()))
    diffusion = GaussianDiffusion(1000, "linear", "20", learn_sigma=True)
    explainer = Explainer(demo.unet, diffusion, FlipsOnAnyChange(x), None, **dict(METHOD, lambda_p=0.0))
    with pytest.warns(
        SuspiciousRunWarning,
        match=r"every image \(2 of 2\) is already classified as the target "
        r"class 1 at the first guided step.*lambda_c = 40.*wrong target",
    ):
        result = explainer.explain(x, target=1, seed=0)
    assert result.first_step_target.all() and not result.input_is_target.any()
    assert result.first_step_prob.shape == (2,) and (result.first_step_prob > 0.5).all()


def test_no_warning_in_a_normal_run(nsp_folder, demo):
    x = pixels(nsp_folder, sorted(p.name for p in nsp_folder.iterdir()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SuspiciousRunWarning)
        result = api_explain(demo, x, target=1)
    assert not result.input_is_target.any() and not result.first_step_target.all()
    np.testing.assert_allclose(result.first_step_prob, demo.classifier.forward(x).probabilities[:, 1], atol=0.5)


def test_cli_explain_prints_and_records_the_warning(tmp_path, nsp_folder, capsys):
    (tmp_path / "run.toml").write_text(run_toml(target=0))
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the command prints it whatever the filters say
        assert (
            main(
                [
                    "explain",
                    "--config",
                    str(tmp_path / "run.toml"),
                    "--images",
                    str(nsp_folder),
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
    captured = capsys.readouterr()
    assert "diffice explain: WARNING: every input (2 of 2) is already classified as the target" in captured.err
    assert "warnings.json" in captured.out
    [entry] = json.loads((out / "warnings.json").read_text())
    assert entry["warning"] == "SuspiciousRunWarning" and "every input (2 of 2)" in entry["message"]
    assert main(["metrics", str(out), "--no-cout"]) == 0
    assert "diffice metrics: WARNING recorded by the run" in capsys.readouterr().err


def test_run_explain_checks_the_whole_run_across_batches(tmp_path, nsp_folder, demo):
    from diffice.explain.config import load_config
    from diffice.explain.run import run_explain

    x = pixels(nsp_folder, sorted(p.name for p in nsp_folder.iterdir()))
    cfg = load_config(None, dict(METHOD, image_size=list(SIZE), batch_size=1, lambda_p=0.0))
    diffusion = GaussianDiffusion(1000, "linear", "20", learn_sigma=True)
    models = (demo.unet, diffusion, FlipsOnAnyChange(x), None)
    with pytest.warns(SuspiciousRunWarning, match=r"every image \(2 of 2\).*first guided step"):
        summary = run_explain(cfg, str(nsp_folder), str(tmp_path / "out"), progress=False, models=models)
    assert len(summary["warnings"]) == 1
    assert "first guided step" in json.loads((tmp_path / "out" / "warnings.json").read_text())[0]["message"]


def test_cli_sweep_prints_and_records_the_warning(tmp_path, nsp_folder, capsys):
    from diffice.explain.sweep import SweepStore

    out = tmp_path / "sweep"
    (tmp_path / "sweep.toml").write_text(run_toml(nsp_folder, out, target=0, sweep=True))
    assert main(["sweep", "--config", str(tmp_path / "sweep.toml"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "diffice sweep: WARNING: every input (2 of 2) is already classified as the target" in captured.err
    with SweepStore(out / "results.sqlite") as store:
        [entry] = store.meta("warnings")
    assert "every input (2 of 2)" in entry["message"]
    assert "WARNING" in (out / "tables.md").read_text() and "WARNING" in captured.out


def test_a_resumed_sweep_checks_the_first_guided_step_over_every_finished_unit(tmp_path, nsp_folder, demo):
    """The first-step check of a sweep stopped after its first unit and resumed covers both units' images (it once
    covered only the units of the resumed invocation: "every image (1 of 1)")."""
    from diffice.explain.sweep import SweepStore, load_sweep
    from diffice.explain.sweep.runner import run_sweep

    x = pixels(nsp_folder, sorted(p.name for p in nsp_folder.iterdir()))
    out = tmp_path / "sweep"
    text = run_toml(nsp_folder, out, sweep=True).replace("lambda_p = 3000", "lambda_p = 0")
    (tmp_path / "sweep.toml").write_text(text.replace("batch_size = 2", "batch_size = 1"))
    spec = load_sweep(str(tmp_path / "sweep.toml"))
    models = (demo.unet, GaussianDiffusion(1000, "linear", "20", learn_sigma=True), FlipsOnAnyChange(x), None)

    def stop(done, total, executor):
        raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, progress=False, models=models, on_unit=stop)
    with pytest.warns(SuspiciousRunWarning, match=r"every image \(2 of 2\).*first guided step"):
        summary = run_sweep(spec, progress=False, models=models)
    assert summary["ran"] == 1 and len(summary["warnings"]) == 1
    with SweepStore(out / "results.sqlite") as store:
        [entry] = store.meta("warnings")
        [config] = store.configs()
        verdicts = store.first_step_verdicts(config["config_id"])
    assert "every image (2 of 2)" in entry["message"]
    assert verdicts["first_step_target"].tolist() == [True, True]
    assert verdicts["input_is_target"].tolist() == [False, False]


# ---- the loader ----


def test_classifier_files_load_by_their_own_description(tmp_path, demo):
    x = demo_phantoms(2).images.astype(np.float32)
    want = demo.classifier.forward(x).logits
    path = MODELS_DIR / "classifier.safetensors"
    for loaded in (load_classifier("plane", str(path)), PlaneClassifier.from_file(path), load_model(path)):
        assert loaded.classifier.standardize is False
        np.testing.assert_array_equal(loaded.forward(x).logits, want)
    with pytest.raises(
        ValueError,
        match=r"classifier.safetensors: the file holds a PlaneClassifier.*'sononet'.*"
        r"classifier_kind = 'plane'",
    ):
        load_classifier("sononet", str(path))
    with pytest.raises(ValueError, match=r"oracle.safetensors: the file holds a ConceptOracle"):
        SonoNet.from_file(MODELS_DIR / "oracle.safetensors")


def test_cli_refuses_a_classifier_file_of_another_kind(tmp_path, folders, capsys):
    (tmp_path / "run.toml").write_text(run_toml(kind="sononet"))
    assert (
        main(
            [
                "explain",
                "--config",
                str(tmp_path / "run.toml"),
                "--images",
                str(folders / "images"),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "classifier.safetensors: the file holds a PlaneClassifier" in capsys.readouterr().err


def test_sononet_save_keeps_standardize_and_third_party_files_still_load(tmp_path, rng):
    from diffice.io import save_safetensors

    net = SonoNet.random(4, 1, 14, standardize=False, seed=3)
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    net.save(tmp_path / "s.safetensors")
    for again in (
        SonoNet.from_file(tmp_path / "s.safetensors"),
        load_classifier("sononet", str(tmp_path / "s.safetensors"), 5).classifier,
    ):
        assert again.standardize is False
        np.testing.assert_array_equal(again.forward(x).logits, net.forward(x).logits)
    # a state_dict without a description (the authors' weights, a PyTorch port): standardize=True as before
    np.savez(tmp_path / "plain.npz", **net.state_dict())
    save_safetensors(tmp_path / "plain.safetensors", net.state_dict())
    for name in ("plain.npz", "plain.safetensors"):
        view = load_classifier("sononet", str(tmp_path / name), 5)
        assert view.classifier.standardize is True and view.target == 5


def test_unet_attention_layout_comes_from_the_file(tmp_path, rng):
    """A DDPM from diffice train ddpm records num_heads; [models] num_heads (default 4) does not override it."""
    from diffice.explain.config import load_config
    from diffice.io import save_safetensors
    from diffice.train.ddpm import _config_json

    unet = UNet.random(
        dict(
            in_channels=1,
            model_channels=32,
            num_res_blocks=1,
            channel_mult=(1, 2),
            attention_resolutions=(2,),
            learn_sigma=True,
            num_heads=2,
        ),
        seed=1,
    )
    save_safetensors(
        tmp_path / "ddpm.safetensors",
        unet.state_dict(),
        metadata={"format": "guided-diffusion UNetModel", "diffice_config": _config_json(unet.config)},
    )
    cfg = load_config(
        None,
        dict(
            unet=str(tmp_path / "ddpm.safetensors"),
            classifier=str(MODELS_DIR / "classifier.safetensors"),
            perceptual_kind="pixel-l2",
        ),
    )
    assert cfg["models"]["num_heads"] == 4
    loaded = load_run_models(cfg)[0]
    assert loaded.config["num_heads"] == 2
    x = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x, [10]), unet.forward(x, [10]))


TINY_UNET = dict(in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2,))


def test_a_network_saved_inside_another_module_is_refused_naming_its_prefix(tmp_path):
    """A PyTorch Lightning .ckpt ('state_dict' of the LightningModule: 'model.*' keys beside the trainer's entries):
    one line naming the key found and the state_dict to save, for the UNet and for SonoNet."""
    torch = pytest.importorskip("torch")

    def lightning_ckpt(name, attribute, state_dict):
        sd = {f"{attribute}.{k}": torch.from_numpy(v) for k, v in state_dict.items()}
        extra = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.4.0", "optimizer_states": []}
        torch.save(dict(extra, state_dict=sd, hyper_parameters={"lr": 1e-4}), tmp_path / name)
        return tmp_path / name

    unet_file = lightning_ckpt("unet.ckpt", "model", UNet.random(TINY_UNET, seed=0).state_dict())
    with pytest.raises(ValueError) as info:
        UNet.from_file(unet_file, num_heads=2)
    msg = str(info.value)
    assert msg.startswith(f"{unet_file}: not a guided-diffusion UNet checkpoint: missing 'time_embed.0.weight'")
    assert "the file has it as 'model.time_embed.0.weight'" in msg
    assert "torch.save(lightning_module.model.state_dict(), path)" in msg and "\n" not in msg

    sononet_file = lightning_ckpt("sononet.ckpt", "net", SonoNet.random(4, 1, 14, seed=0).state_dict())
    with pytest.raises(ValueError, match=r"the file has it as 'net\.features\.0\.0\.0\.weight'.*lightning_module\.net"):
        load_classifier("sononet", str(sononet_file))


def test_a_classifier_state_dict_of_the_other_kind_says_which_kind_to_pass(tmp_path):
    """A PyTorch-port SonoNet state_dict given as a plane classifier (the default kind) says to pass
    --classifier-kind sononet, as the authors' .npz does; a plane classifier's state_dict given as sononet says
    plane."""
    torch = pytest.importorskip("torch")
    sononet = {k: torch.from_numpy(v) for k, v in SonoNet.random(4, 1, 14, seed=0).state_dict().items()}
    torch.save({"state_dict": sononet, "epoch": 1}, tmp_path / "sononet.pt")
    with pytest.raises(ValueError, match=r"sononet\.pt: .*pass --classifier-kind sononet"):
        load_classifier("plane", str(tmp_path / "sononet.pt"))
    from diffice import Segmenter

    plane = PlaneClassifier(Segmenter.random(4, 8, 2, 4, seed=0), SonoNet.random(4, 5, 2, seed=0))
    torch.save({k: torch.from_numpy(v) for k, v in plane.state_dict().items()}, tmp_path / "plane.pt")
    with pytest.raises(ValueError) as info:
        load_classifier("sononet", str(tmp_path / "plane.pt"))
    assert str(info.value) == (
        f"{tmp_path / 'plane.pt'}: not SonoNet weights but, by its segmenter.* and classifier.* tensors, a plane "
        'classifier f = l(s(x), x): pass --classifier-kind plane (models.classifier_kind = "plane")'
    )

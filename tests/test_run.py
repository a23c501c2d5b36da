"""`diffice explain`'s runner: outputs, results table, unreadable images, interruption and resumption."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from diffice import GaussianDiffusion
from diffice.run import load_config, run_explain
from conftest import tiny_plane_classifier, tiny_unet
from test_explain import H, W, LinearClassifier, PixelL2


@pytest.fixture(scope="module")
def models():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40"), LinearClassifier(), PixelL2()


def write_images(folder, rng, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(folder / f"img{i}.png")


def config(**over):
    cfg = load_config(None, dict(image_size=[H, W], batch_size=2, tau=3, iterations=2, lambda_c=[1.0, 2.0]))
    for k, v in over.items():
        for section in cfg.values():
            if k in section:
                section[k] = v
    return cfg


def test_outputs_and_results_table(tmp_path, rng, models):
    write_images(tmp_path / "in", rng, 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"garbage")
    summary = run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    assert summary["explained"] == 3 and summary["failed"] == 1
    for i in range(3):
        d = tmp_path / "out" / f"img{i}"
        assert {p.name for p in d.iterdir()} == {"input.png", "iteration_1.png", "iteration_2.png", "strip.png"}
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 3 * 3 and {r["iteration"] for r in rows} == {"0", "1", "2"}
    assert "broken.png" in (tmp_path / "out" / "errors.csv").read_text()


def test_interrupted_run_resumes_without_loss(tmp_path, rng, models, monkeypatch):
    write_images(tmp_path / "in", rng, 5)
    unet, diffusion, clf, perc = models
    from diffice import explain as explain_module

    calls = {"explain": 0}
    original = explain_module.Explainer.explain

    def counting_explain(self, *args, **kwargs):
        calls["explain"] += 1
        return original(self, *args, **kwargs)

    class Interrupting(LinearClassifier):
        def vjp(self, x, dlogits):
            if calls["explain"] == 2:  # in the middle of the second batch, as a Ctrl-C would
                raise KeyboardInterrupt
            return super().vjp(x, dlogits)

    monkeypatch.setattr(explain_module.Explainer, "explain", counting_explain)
    with pytest.raises(KeyboardInterrupt):
        run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False,
                    models=(unet, diffusion, Interrupting(), perc))
    monkeypatch.undo()
    records = sorted(p.stem for p in (tmp_path / "out" / "records").glob("*.json"))
    assert records == ["img0", "img1"]
    assert not list((tmp_path / "out").rglob("*.tmp"))
    for r in records:
        json.loads((tmp_path / "out" / "records" / f"{r}.json").read_text())
    first = (tmp_path / "out" / "img0" / "iteration_2.png").read_bytes()
    summary = run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    assert summary["skipped_done"] == 2 and summary["explained"] == 3
    assert (tmp_path / "out" / "img0" / "iteration_2.png").read_bytes() == first
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert sorted({r["image"] for r in rows}) == [f"img{i}.png" for i in range(5)]


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[method]\nlambda_z = 3\n")
    with pytest.raises(ValueError, match="lambda_z"):
        load_config(str(bad), {})
    bad.write_text("[nonsense]\n")
    with pytest.raises(ValueError, match="nonsense"):
        load_config(str(bad), {})
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.toml"), {})
    good = tmp_path / "good.toml"
    good.write_text('[models]\nunet = "m.safetensors"\n[method]\ntau = 50\n')
    cfg = load_config(str(good), {"tau": 60})
    assert cfg["method"]["tau"] == 60 and cfg["models"]["unet"] == str(tmp_path / "m.safetensors")


def test_cli_explain_with_model_files(tmp_path, rng, models):
    """`diffice explain` end to end: a UNet, a plane classifier and a perceptual ResNet from files."""
    from diffice import ResNetFeatures
    from diffice.cli import main

    unet = models[0]
    unet.save(tmp_path / "ddpm.safetensors")
    tiny_plane_classifier().save(tmp_path / "f.safetensors")
    ResNetFeatures.random(depth=18, in_channels=1, taps=("layer1",), seed=3).save(tmp_path / "resnet.safetensors")
    (tmp_path / "run.toml").write_text(f"""
[models]
unet = "ddpm.safetensors"
num_heads = 1
classifier = "f.safetensors"
classifier_kind = "plane"
perceptual = "resnet.safetensors"
perceptual_kind = "resnet18"
perceptual_taps = ["layer1"]
[diffusion]
respacing = "40"
[method]
iterations = 2
tau = 3
lambda_c = [10, 20]
lambda_p = 1.0
[run]
image_size = [{H}, {W}]
batch_size = 2
""")
    write_images(tmp_path / "in", rng, 3)
    code = main(["explain", "--config", str(tmp_path / "run.toml"), "--images", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out"), "--quiet", "--tau", "2"])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 3 * 3
    assert main(["explain", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--quiet"]) == 2


def test_resuming_with_other_settings_is_refused(tmp_path, rng, models):
    write_images(tmp_path / "in", rng, 2)
    run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    # the batch size does not change results: resuming with another one is fine
    assert run_explain(config(batch_size=1), tmp_path / "in", tmp_path / "out", progress=False,
                       models=models)["skipped_done"] == 2
    with pytest.raises(ValueError, match=r"other settings \(method.tau: 3 -> 4"):
        run_explain(config(tau=4), tmp_path / "in", tmp_path / "out", progress=False, models=models)

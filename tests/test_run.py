"""`diffice explain`'s runner: outputs, results table, unreadable images, interruption and resumption."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_plane_classifier, tiny_unet
from PIL import Image
from test_explain import H, LinearClassifier, PixelL2, W

from diffice import GaussianDiffusion
from diffice.explain.config import load_config
from diffice.explain.run import run_explain

# Tiny random models often call every input the target already: the SuspiciousRunWarning that says so is
# noise in tests about something else (the tests about the warning itself catch it with pytest.warns).
pytestmark = pytest.mark.filterwarnings("ignore::diffice.SuspiciousRunWarning")


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
    from diffice.explain import explainer as explain_module

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
        run_explain(
            config(), tmp_path / "in", tmp_path / "out", progress=False, models=(unet, diffusion, Interrupting(), perc)
        )
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


@pytest.mark.parametrize("device", ["cpu", "cuda_emulated"])
def test_cli_explain_with_model_files(tmp_path, rng, models, device):
    """`diffice explain` end to end: a UNet, a plane classifier and a perceptual ResNet from files; --device runs
    models and sampler on another backend (the emulated GPU: the same results as the CPU's, to fp32 rounding)."""
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
    code = main(
        [
            "explain",
            "--config",
            str(tmp_path / "run.toml"),
            "--images",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--tau",
            "2",
            "--device",
            device,
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 3 * 3
    if device != "cpu":  # the same run on the CPU
        cfg = ["--config", str(tmp_path / "run.toml"), "--images", str(tmp_path / "in"), "--quiet", "--tau", "2"]
        assert main(["explain", *cfg, "--out", str(tmp_path / "out_cpu")]) == 0
        cpu_rows = list(csv.DictReader(open(tmp_path / "out_cpu" / "results.csv")))
        for a, b in zip(rows, cpu_rows):
            assert abs(float(a["prob_target"]) - float(b["prob_target"])) < 1e-3, (a, b)
            assert [a[k] for k in ("image", "iteration", "lambda_c", "flipped")] == [
                b[k] for k in ("image", "iteration", "lambda_c", "flipped")
            ]
    assert main(["explain", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--quiet"]) == 2


def test_resuming_with_other_settings_is_refused(tmp_path, rng, models):
    write_images(tmp_path / "in", rng, 2)
    run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    # the batch size does not change results: resuming with another one is fine
    assert (
        run_explain(config(batch_size=1), tmp_path / "in", tmp_path / "out", progress=False, models=models)[
            "skipped_done"
        ]
        == 2
    )
    with pytest.raises(ValueError, match=r"other settings \(method.tau: 3 -> 4"):
        run_explain(config(tau=4), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    # a folder written before a setting existed (here: precision) resumes when the setting has its default
    settings_path = tmp_path / "out" / "run_settings.json"
    settings = json.loads(settings_path.read_text())
    del settings["method"]["precision"]
    settings_path.write_text(json.dumps(settings))
    assert run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)["skipped_done"] == 2
    with pytest.raises(ValueError, match=r"other settings \(method.precision: 'fp32' -> 'tf32'"):
        run_explain(config(precision="tf32"), tmp_path / "in", tmp_path / "out", progress=False, models=models)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from conftest import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("models"))


def file_flags(model_files, *extra):
    """`diffice explain` flags for the tiny model files, a pixel Lp and a short run."""
    return [
        "--unet",
        str(model_files / "ddpm.safetensors"),
        "--num-heads",
        "1",
        "--classifier",
        str(model_files / "f.safetensors"),
        "--perceptual-kind",
        "pixel-l2",
        "--respacing",
        "10",
        "--tau",
        "2",
        "--iterations",
        "1",
        "--lambda-c",
        "5",
        "--lambda-p",
        "1",
        "--image-size",
        str(H),
        str(W),
        "--quiet",
        *extra,
    ]


def test_diffusion_variance_chooses_the_reverse_steps_variance(tmp_path, rng, model_files):
    """[diffusion] variance: the learned range of a learn_sigma UNet (default), or beta~ / beta with its v ignored;
    the run's results differ, and a bad name is an error naming the key."""
    from diffice.cli import main
    from diffice.models.files import load_run_models

    base = dict(unet=str(model_files / "ddpm.safetensors"), num_heads=1, classifier=str(model_files / "f.safetensors"))
    kinds = {}
    for variance, kind in [("learned", "learned_range"), ("small", "learned_output_fixed_small"), ("large", None)]:
        cfg = load_config(None, dict(base, variance=variance))
        assert cfg["diffusion"]["variance"] == variance
        unet, diffusion = load_run_models(cfg)[:2]
        assert unet.config["learn_sigma"] and diffusion.learn_sigma
        kinds[variance] = diffusion.variance_type
        assert kind is None or diffusion.variance_type == kind
    assert kinds["large"] == "learned_output_fixed_large"
    with pytest.raises(
        ValueError,
        match=r"diffusion.variance \(--variance\) must be one of \['learned', 'small', 'large'\], got 'tiny'",
    ):
        load_run_models(load_config(None, dict(base, variance="tiny")))
    with pytest.raises(ValueError, match="diffusion.variance"):  # checked before any model file is read
        load_run_models(load_config(None, dict(base, unet="missing.safetensors", variance="tiny")))
    write_images(tmp_path / "in", rng, 1)
    out = {}
    for variance in ("learned", "small"):
        flags = file_flags(model_files, "--images", str(tmp_path / "in"), "--out", str(tmp_path / variance))
        assert main(["explain", *flags, "--variance", variance]) == 0
        out[variance] = np.asarray(Image.open(next((tmp_path / variance).rglob("iteration_1.png"))))
    assert not np.array_equal(out["learned"], out["small"])


def test_lambda_p_without_a_perceptual_loss_is_an_error(tmp_path, rng, model_files):
    """lambda_p > 0 with no Lp file or pixel kind used to be ignored silently (the explainer drops lambda_p)."""
    write_images(tmp_path / "in", rng, 1)
    cfg = load_config(
        None,
        dict(
            unet=str(model_files / "ddpm.safetensors"),
            num_heads=1,
            classifier=str(model_files / "f.safetensors"),
            respacing="10",
            image_size=[H, W],
            tau=2,
            iterations=1,
            lambda_c=[5.0],
            lambda_p=30.0,
        ),
    )
    with pytest.raises(ValueError, match=r"method.lambda_p = 30 .*models.perceptual.*pixel-l2"):
        run_explain(cfg, tmp_path / "in", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    cfg["method"]["lambda_p"] = 0.0  # no fidelity term: said explicitly
    assert run_explain(cfg, tmp_path / "in", tmp_path / "out0", progress=False)["explained"] == 1
    cfg["method"]["lambda_p"], cfg["models"]["perceptual_kind"] = 30.0, "pixel-l2"  # an explicit pixel Lp
    assert run_explain(cfg, tmp_path / "in", tmp_path / "out1", progress=False)["explained"] == 1
    # the same for a sweep over files models
    from diffice.explain.sweep import load_sweep

    data = {
        "models": {"unet": "u.safetensors", "classifier": "f.safetensors"},
        "sweep": {"phantoms": 2},
        "method": {"lambda_p": 0.0},
    }
    assert load_sweep(None, data=dict(data, sweep={"phantoms": 2, "lambda_p": [0.0]}))
    with pytest.raises(ValueError, match="lambda_p = 30"):
        load_sweep(None, data=dict(data, sweep={"phantoms": 2, "lambda_p": [0.0, 30.0]}))


def test_unwritable_out_is_a_one_line_error_naming_it(tmp_path, rng, model_files, capsys):
    from diffice.cli import main

    write_images(tmp_path / "in", rng, 1)
    (tmp_path / "afile").write_text("not a folder")
    for out, reason in (
        (tmp_path / "afile" / "out", "Not a directory"),
        (tmp_path / "afile", "a file"),
        (Path("/proc/diffice-no-such-dir/out"), "No such file or directory"),
    ):
        assert main(["explain", "--images", str(tmp_path / "in"), "--out", str(out)] + file_flags(model_files)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"diffice explain: error: cannot write the output folder {out}: ") and reason in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_run_failing_at_start_up_leaves_nothing_behind(tmp_path, rng, model_files, capsys):
    from diffice.cli import main

    write_images(tmp_path / "in", rng, 2)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    images = ["--images", str(tmp_path / "in")]
    out = tmp_path / "results" / "run1"  # its parent does not exist either
    failing = [
        file_flags(model_files, "--unet", str(tmp_path / "bad.safetensors")),  # a bad model file
        file_flags(model_files, "--classifier", str(tmp_path / "missing.safetensors")),
        file_flags(model_files, "--tau", "0"),  # bad settings
        file_flags(model_files, "--tau", "10"),  # tau >= the 10 respaced steps
        file_flags(model_files, "--image-size", "4", "4"),  # too small for the UNet
    ]
    for flags in failing:
        assert main(["explain"] + images + ["--out", str(out)] + flags) == 2, flags
        assert not (tmp_path / "results").exists(), flags
    assert main(["explain", "--images", str(tmp_path / "missing"), "--out", str(out)] + file_flags(model_files)) == 2
    assert not (tmp_path / "results").exists()
    capsys.readouterr()

    # a folder that was there before is kept, and so are a previous run's results
    (tmp_path / "mine").mkdir()
    assert main(["explain"] + images + ["--out", str(tmp_path / "mine")] + failing[0]) == 2
    assert list((tmp_path / "mine").iterdir()) == []
    assert main(["explain"] + images + ["--out", str(out)] + file_flags(model_files)) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["explain"] + images + ["--out", str(out)] + failing[0]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    # where the models load elsewhere (a Dask cluster), a run whose first batch fails also takes back its start
    class FailingExecutor:
        description = "a cluster"
        dashboard = None

        def run(self, tasks, progress=None):
            next(iter(tasks))
            raise RuntimeError("the workers cannot load the models")

    cfg = load_config(
        None, dict(unet=str(tmp_path / "bad.safetensors"), classifier="f", lambda_p=0.0, image_size=[H, W])
    )
    with pytest.raises(RuntimeError, match="workers"):
        run_explain(cfg, tmp_path / "in", tmp_path / "cluster" / "out", progress=False, executor=FailingExecutor())
    assert not (tmp_path / "cluster").exists()
    with pytest.raises(RuntimeError, match="workers"):
        run_explain(cfg, tmp_path / "in", tmp_path / "mine", progress=False, executor=FailingExecutor())
    assert list((tmp_path / "mine").iterdir()) == []


def test_models_demo_uses_the_bundled_models_and_the_demo_settings(tmp_path, capsys):
    from diffice.cli import main
    from diffice.explain.cluster import models_spec
    from diffice.explain.demo import DEMO_DIFFUSION, DEMO_METHOD, DEMO_SIZE

    cfg = load_config(None, {"preset": "demo"})
    assert {k: cfg["method"][k] for k in DEMO_METHOD} == DEMO_METHOD
    assert cfg["diffusion"] == DEMO_DIFFUSION and cfg["run"]["image_size"] == list(DEMO_SIZE)
    assert cfg["models"]["perceptual_kind"] == "pixel-l2"
    assert models_spec(cfg) == dict(source="demo", folder=None, device="cpu")
    assert load_config(None, {"preset": "demo", "lambda_p": 300.0, "tau": 20})["method"]["lambda_p"] == 300.0
    toml = tmp_path / "demo.toml"
    toml.write_text('[models]\npreset = "demo"\n[method]\ntau = 20\n')
    cfg = load_config(str(toml), {})
    assert cfg["method"]["tau"] == 20 and cfg["method"]["lambda_p"] == DEMO_METHOD["lambda_p"]
    with pytest.raises(ValueError, match=r"chooses every model; remove models.unet"):
        load_config(None, {"preset": "demo", "unet": "x.safetensors"})
    with pytest.raises(ValueError, match=r"remove diffusion.respacing"):
        load_config(None, {"preset": "demo", "respacing": "50"})
    assert cfg["diffusion"]["variance"] == "small"  # beta~ at the demo's 100 steps (docs/artefacts.md)
    with pytest.raises(ValueError, match=r"remove diffusion.variance"):
        load_config(None, {"preset": "demo", "variance": "learned"})
    with pytest.raises(ValueError, match="preset"):
        load_config(None, {"preset": "other"})

    # two of the demo's own non-standard-plane phantoms (random noise images were sometimes both classified as the
    # standard plane already, and the metrics below then had nothing to judge)
    from diffice.explain.demo import demo_phantoms

    (tmp_path / "in").mkdir()
    for i, image in enumerate(demo_phantoms(2).images[:, 0]):
        Image.fromarray(np.round((image + 1) * 127.5).astype(np.uint8)).save(tmp_path / "in" / f"img{i}.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                "--models",
                "demo",
                "--images",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--quiet",
                "--iterations",
                "1",
                "--tau",
                "2",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2 * 2
    settings = json.loads((out / "run_settings.json").read_text())
    assert settings["models"]["preset"] == "demo" and settings["method"]["lambda_p"] == DEMO_METHOD["lambda_p"]
    with Image.open(out / "img0" / "iteration_1.png") as im:
        assert im.size == (DEMO_SIZE[1], DEMO_SIZE[0])
    capsys.readouterr()
    # diffice metrics judges such a run with the demo's classifier and oracle
    assert main(["metrics", str(out), "--no-cout"]) == 0
    report = capsys.readouterr().out
    assert "MQD: skipped" not in report and "FR: skipped" not in report


def test_resuming_checks_each_image_is_still_the_one_explained(tmp_path, rng, models):
    """A record remembers its image's file (name and sha256): a different image under the same stem is refused by
    name, never given the old results; an image whose PNGs went missing is explained again."""
    write_images(tmp_path / "in", rng, 2)
    out = tmp_path / "out"
    run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    record = json.loads((out / "records" / "img0.json").read_text())
    assert len(record["input_sha256"]) == 64
    (out / "img0" / "iteration_2.png").unlink()
    summary = run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    assert summary["explained"] == 1 and summary["skipped_done"] == 1 and (out / "img0" / "iteration_2.png").is_file()
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "in" / "img1.png")
    with pytest.raises(ValueError, match=r"img1\.png: .*holds the results of another image \(has other bytes\)"):
        run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    (tmp_path / "in" / "img1.png").rename(tmp_path / "in" / "img1.tif")
    with pytest.raises(ValueError, match=r"another image \(was 'img1\.png'\); .*delete .*img1\.json"):
        run_explain(config(), tmp_path / "in", out, progress=False, models=models)


def test_a_second_writer_of_the_same_folder_is_refused(tmp_path, rng, models):
    """Two runs into one output folder: the second stops at once (RunBusyError naming the folder) instead of doing
    the same work beside the first; the folder is left as the first has it."""
    from diffice.explain.run import LOCK_FILE, RunBusyError, WriterLock

    write_images(tmp_path / "in", rng, 1)
    out = tmp_path / "out"
    run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "in" / "new.png")
    with WriterLock(out / LOCK_FILE, "held"):  # as another process's run would hold it
        with pytest.raises(RunBusyError, match=f"{out}: another diffice run is writing this folder"):
            run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    assert sorted(p.stem for p in (out / "records").glob("*.json")) == ["img0"]


def test_damaged_records_and_shared_stems_are_named(tmp_path, rng, models, capsys):
    write_images(tmp_path / "in", rng, 1)
    out = tmp_path / "out"
    run_explain(config(), tmp_path / "in", out, progress=True, models=models)
    capsys.readouterr()
    summary = run_explain(config(), tmp_path / "in", out, progress=True, models=models)
    assert summary["skipped_done"] == 1 and capsys.readouterr().err == ""  # nothing left to do: no progress bar
    (out / "records" / "img0.json").write_text("{")
    with pytest.raises(ValueError, match=r"img0\.json: not valid JSON"):
        run_explain(config(), tmp_path / "in", out, progress=False, models=models)
    (tmp_path / "in" / "img0.png").rename(tmp_path / "in" / "img0.tif")
    write_images(tmp_path / "in", rng, 1)
    with pytest.raises(ValueError, match=r"img0\.png and img0\.tif share the file name stem 'img0'"):
        run_explain(config(), tmp_path / "in", tmp_path / "out2", progress=False, models=models)


def test_resuming_with_a_changed_model_file_is_refused(tmp_path, rng, model_files, capsys):
    """A run whose models come from its settings' files records each file's sha256 (run_settings.json
    "model_files"); resuming it after the file at the same path changed (a retrained classifier) is refused, naming
    the file, instead of mixing two models' results in one folder. The same file resumes."""
    import shutil

    from diffice.cli import main
    from diffice.io import file_digest

    models = tmp_path / "models"
    shutil.copytree(model_files, models)
    write_images(tmp_path / "in", rng, 2)
    flags = file_flags(models, "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert main(["explain", *flags]) == 0
    recorded = json.loads((tmp_path / "out" / "run_settings.json").read_text())["model_files"]
    assert recorded == {
        "unet": file_digest(models / "ddpm.safetensors"),
        "classifier": file_digest(models / "f.safetensors"),
    }
    assert main(["explain", *flags]) == 0  # the same files: everything is done, nothing refused
    capsys.readouterr()
    clf = tiny_plane_classifier()
    clf.segmenter._randomize(7)
    clf.save(models / "f.safetensors")
    assert main(["explain", *flags]) == 2
    err = capsys.readouterr().err
    assert f"holds results made with another classifier file: {models / 'f.safetensors'} has changed" in err
    assert file_digest(models / "f.safetensors")[:12] in err and recorded["classifier"][:12] in err


def test_model_paths_from_flags_are_recorded_absolute_and_old_relative_records_still_resume(tmp_path, monkeypatch):
    """explain --classifier f/model.safetensors recorded the path as typed, so diffice metrics run from another folder
    did not find the run's classifier; a folder recorded that way by an older diffice still resumes from where the
    path names the same file."""
    from diffice.cli import main
    from diffice.explain.demo import MODELS_DIR

    models = tmp_path / "models"
    models.mkdir()
    for name in ("ddpm", "classifier"):
        (models / f"{name}.safetensors").write_bytes((MODELS_DIR / f"{name}.safetensors").read_bytes())
    images = tmp_path / "images"
    images.mkdir()
    np.save(images / "a.npy", np.zeros((64, 80), np.float32))
    monkeypatch.chdir(tmp_path)
    args = ["explain", "--unet", "models/ddpm.safetensors", "--classifier", "models/classifier.safetensors"]
    args += ["--perceptual-kind", "pixel-l2", "--lambda-p", "3000", "--image-size", "64", "80", "--steps", "1000"]
    args += ["--respacing", "20", "--iterations", "1", "--tau", "2", "--images", "images", "--out", "out", "-q"]
    assert main(args) == 0
    settings = json.loads((tmp_path / "out" / "run_settings.json").read_text())
    assert settings["models"]["classifier"] == str(models / "classifier.safetensors")
    # the same folder as an older diffice wrote it: relative paths
    settings["models"].update(unet="models/ddpm.safetensors", classifier="models/classifier.safetensors")
    (tmp_path / "out" / "run_settings.json").write_text(json.dumps(settings))
    np.save(images / "b.npy", np.full((64, 80), 0.5, np.float32))
    assert main(args) == 0  # resumed: b explained, a kept
    assert len(list((tmp_path / "out" / "records").glob("*.json"))) == 2


def test_image_names_that_are_not_utf8_are_kept_as_their_bytes(tmp_path, rng, models):
    """A Latin-1 file name (an old scanner export, LANG=C), which Python reads with surrogate escapes, failed the
    run after every image was explained ("'utf-8' codec can't encode character '\\udcf6'", no results.csv, the
    same on every rerun); results.csv and errors.csv now hold the name's bytes, as the file system has them."""
    import os

    write_images(tmp_path / "in", rng, 1)
    name = os.fsdecode(b"f\xf6tus.png")
    (tmp_path / "in" / "img0.png").rename(tmp_path / "in" / name)
    (tmp_path / "in" / os.fsdecode(b"br\xfbken.png")).write_bytes(b"garbage")
    summary = run_explain(config(), tmp_path / "in", tmp_path / "out", progress=False, models=models)
    assert summary["explained"] == 1 and summary["failed"] == 1
    rows = (tmp_path / "out" / "results.csv").read_bytes().splitlines()
    assert len(rows) == 4 and all(r.startswith(b"f\xf6tus.png,") for r in rows[1:])
    assert b"br\xfbken.png" in (tmp_path / "out" / "errors.csv").read_bytes()
    assert (tmp_path / "out" / name[:-4] / "strip.png").is_file()

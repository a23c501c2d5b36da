"""A model file is what its caller needs, or an error naming the file, what it holds and what was expected.

- ``diffice metrics --classifier`` / ``--oracle`` check the kind (the concept oracle as f once gave wrong numbers
  silently, a UNet as the oracle an AttributeError);
- a plane classifier file without its diffice description is refused, not built with guessed settings (SonoNet's
  standardize=True against a model trained with False: every image [1, 0]);
- a UNet file with a flattened / mis-shaped weight is a ValueError naming the tensor, its shape and the expected
  one (once an IndexError, or a MemoryError from a 36864-channel level);
- an empty / null / invalid ``diffice_model`` metadata says so plainly.
"""

import json

import numpy as np
import pytest
from conftest import write_sononet_authors_npz

from diffice import PlaneClassifier, Segmenter, SonoNet, UNet
from diffice.evaluation import metrics
from diffice.evaluation.run_judges import load_metrics_models
from diffice.explain.demo import MODELS_DIR, demo_phantoms
from diffice.io import load_safetensors_metadata, load_weights, save_safetensors
from diffice.models.files import load_classifier, load_model, save_model
from diffice.models.oracle import ConceptOracle
from diffice.models.sononet import TargetClassView

CLASSIFIER = MODELS_DIR / "classifier.safetensors"
ORACLE = MODELS_DIR / "oracle.safetensors"
DDPM = MODELS_DIR / "ddpm.safetensors"


# ---- diffice metrics: the kind of --classifier and --oracle ----


def test_metrics_refuses_the_oracle_as_classifier_and_a_unet_as_oracle():
    with pytest.raises(ValueError) as info:
        metrics.load_metrics_classifier(ORACLE)
    msg = str(info.value)
    assert str(ORACLE) in msg and "holds a ConceptOracle" in msg and "PlaneClassifier or SonoNet" in msg
    assert "classifier_kind" not in msg  # no hint that does not fit
    with pytest.raises(ValueError) as info:
        metrics.load_metrics_oracle(DDPM)
    msg = str(info.value)
    assert str(DDPM) in msg and "UNet" in msg and "ConceptOracle" in msg
    with pytest.raises(ValueError, match=r"classifier.safetensors: the file holds a PlaneClassifier.*ConceptOracle"):
        metrics.load_metrics_oracle(CLASSIFIER)
    assert type(metrics.load_metrics_classifier(CLASSIFIER)).__name__ == "PlaneClassifier"
    assert type(metrics.load_metrics_oracle(ORACLE)).__name__ == "ConceptOracle"


def test_evaluate_refuses_models_of_the_wrong_kind():
    x = demo_phantoms(2).images.astype(np.float32)
    oracle = load_model(ORACLE)
    f = load_model(CLASSIFIER)
    with pytest.raises(ValueError, match="the classifier f is a concept oracle"):
        metrics.evaluate(x, x, 1, classifier=oracle)
    with pytest.raises(ValueError, match="the oracle is a PlaneClassifier, not a concept oracle"):
        metrics.evaluate(x, x, 1, classifier=f, oracle=f)
    seg = Segmenter.random(classes=3, width=8, levels=2, groups=4)
    with pytest.raises(ValueError, match=r"logits \(N, classes\).*got shape \(2, 3, 64, 80\)"):
        metrics.evaluate(x, x, 1, classifier=seg)


def test_metrics_models_of_a_results_folder(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "run_settings.json").write_text(json.dumps({"models": {"preset": "demo"}}))
    with pytest.raises(ValueError, match="oracle.safetensors: the file holds a ConceptOracle"):
        load_metrics_models(root, classifier=ORACLE)
    with pytest.raises(ValueError, match="ddpm.safetensors: the file holds a UNet"):
        load_metrics_models(root, oracle=DDPM)
    logged = []
    f, oracle = load_metrics_models(root, log=logged.append)
    assert type(f).__name__ == "PlaneClassifier" and type(oracle).__name__ == "ConceptOracle"
    assert "the demo models (from" in logged[0]
    f, oracle = load_metrics_models(root, classifier=CLASSIFIER, oracle=ORACLE)
    assert type(f).__name__ == "PlaneClassifier" and type(oracle).__name__ == "ConceptOracle"
    (root / "run_settings.json").write_text("{")
    with pytest.raises(ValueError, match=r"run_settings.json: not valid JSON \(Expecting"):
        load_metrics_models(root)
    (root / "run_settings.json").write_text("")
    with pytest.raises(ValueError, match=r"run_settings.json: not valid JSON \(the file is empty\)"):
        load_metrics_models(root)
    (root / "run_settings.json").write_text(json.dumps({"models": 3}))
    with pytest.raises(ValueError, match="run_settings.json: not a diffice run_settings.json"):
        load_metrics_models(root)
    (root / "warnings.json").write_text("[1")
    with pytest.raises(ValueError, match=r"warnings.json: not valid JSON"):
        metrics.recorded_warnings(root)
    (root / "warnings.json").write_text('[{"at": "x", "message": "m"}]')
    assert metrics.recorded_warnings(root) == [{"at": "x", "message": "m"}]


def test_a_multiclass_sononet_is_seen_as_the_run_saw_it(tmp_path):
    net = SonoNet.random(k=4, num_classes=14, standardize=False)
    path = tmp_path / "s.safetensors"
    save_model(path, net)
    settings = tmp_path / "run_settings.json"
    with pytest.raises(ValueError, match=r"s.safetensors: a SonoNet with 14 classes"):
        metrics.load_metrics_classifier(path)
    settings.write_text(json.dumps({"models": {"classifier_kind": "plane"}}))
    with pytest.raises(ValueError, match=r"s.safetensors: a SonoNet with 14 classes"):
        metrics.load_metrics_classifier(path, settings)
    settings.write_text(json.dumps({"models": {"classifier_kind": "sononet", "target_class": 7}}))
    view = metrics.load_metrics_classifier(path, settings)
    assert isinstance(view, TargetClassView) and view.target == 7
    binary = tmp_path / "b.safetensors"
    save_model(binary, SonoNet.random(k=4, num_classes=2, standardize=False))
    assert isinstance(metrics.load_metrics_classifier(binary), SonoNet)


# ---- a plane classifier file without its description ----


def test_plane_classifier_without_description_is_refused_not_guessed(tmp_path):
    bare = tmp_path / "cls_nometa.safetensors"
    save_safetensors(bare, load_weights(CLASSIFIER))
    for load in (
        lambda: load_classifier("plane", str(bare)),
        lambda: PlaneClassifier.from_file(bare),
        lambda: load_model(bare, expect="PlaneClassifier"),
    ):
        with pytest.raises(ValueError) as info:
            load()
        msg = str(info.value)
        assert msg.startswith(str(bare)) and "diffice_model" in msg
        assert "classifier_factory" in msg and "standardize" in msg and "groups" in msg and ".save(" in msg
    with pytest.raises(ValueError, match=r"missing: classifier_factory.*\)\. Load it"):
        PlaneClassifier.from_file(bare, groups=8)
    # the settings given explicitly: the model the described file holds
    spec = json.loads(load_safetensors_metadata(CLASSIFIER)["diffice_model"])
    f = PlaneClassifier.from_file(
        bare,
        classifier_factory=lambda sd: SonoNet.from_state_dict(sd, standardize=spec["classifier"]["standardize"]),
        groups=spec["segmenter"]["config"]["groups"],
    )
    x = demo_phantoms(4).images.astype(np.float32)
    np.testing.assert_array_equal(f.forward(x).logits, load_model(CLASSIFIER).forward(x).logits)
    # saved by diffice, it loads everywhere
    f.save(tmp_path / "resaved.safetensors")
    np.testing.assert_array_equal(
        load_classifier("plane", str(tmp_path / "resaved.safetensors")).logits(x), f.logits(x)
    )
    # not a plane classifier at all: that is said first
    save_safetensors(tmp_path / "stray.safetensors", {"a.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"stray.safetensors: PlaneClassifier state_dict: unexpected keys"):
        load_classifier("plane", str(tmp_path / "stray.safetensors"))


# ---- UNet files with mis-shaped tensors ----


@pytest.mark.parametrize(
    "key, ndim",
    [
        ("input_blocks.0.0.weight", 4),
        ("input_blocks.3.0.out_layers.3.weight", 4),
        ("time_embed.0.weight", 2),
        ("out.2.weight", 4),
        ("input_blocks.1.0.emb_layers.1.weight", 2),
    ],
)
def test_unet_flattened_weight_names_the_tensor(tmp_path, key, ndim):
    w = load_weights(DDPM)
    shape = w[key].shape
    w[key] = w[key].reshape(-1)
    flat = f"({int(np.prod(shape))},)"
    with pytest.raises(ValueError) as info:
        UNet.from_state_dict(w)
    msg = str(info.value)
    assert f"'{key}' has shape {flat} (ndim 1)" in msg and f"(ndim {ndim})" in msg
    path = tmp_path / "u.safetensors"
    save_safetensors(path, w, load_safetensors_metadata(DDPM))
    with pytest.raises(ValueError, match=rf"^{path}: tensor '{key}' has shape"):
        UNet.from_file(path)
    with pytest.raises(ValueError, match=rf"^{path}: tensor '{key}' has shape"):
        load_model(path)


def test_unet_inconsistent_weights_are_named_before_allocating():
    w = load_weights(DDPM)
    w["input_blocks.3.0.out_layers.3.weight"] = np.zeros((64, 32, 3, 3), np.float32)
    with pytest.raises(
        ValueError, match=r"'input_blocks.3.0.out_layers.3.weight' has shape \(64, 32, 3, 3\).*\(64, 64"
    ):
        UNet.from_state_dict(w)
    w = load_weights(DDPM)
    w["input_blocks.1.0.emb_layers.1.weight"] = np.zeros((48, 128), np.float32)
    with pytest.raises(ValueError, match=r"emb_layers.1.weight' has shape \(48, 128\).*\(32, 128\) or"):
        UNet.from_state_dict(w)
    w = load_weights(DDPM)
    w["time_embed.0.weight"] = np.zeros((100, 32), np.float32)
    with pytest.raises(ValueError, match=r"'time_embed.0.weight' has shape \(100, 32\).*needs \(128, 32\)"):
        UNet.from_state_dict(w)
    w = {k: v for k, v in load_weights(DDPM).items() if not k.startswith("output_blocks.")}
    with pytest.raises(ValueError, match=r"no 'output_blocks\.\*' tensors"):
        UNet.from_state_dict(w)
    # a tensor the config is not read from: the strict load lists it
    w = load_weights(DDPM)
    w["input_blocks.2.0.in_layers.2.weight"] = w["input_blocks.2.0.in_layers.2.weight"].reshape(-1)
    with pytest.raises(ValueError, match=r"input_blocks.2.0.in_layers.2.weight: checkpoint \(9216,\)"):
        UNet.from_state_dict(w)


# ---- empty or invalid diffice_model metadata ----


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("null", "is invalid: 'null'"),
        ("[]", "is invalid: '\\[\\]'"),
        ("{", "is not valid JSON"),
        ("{}", "is invalid: it has no 'type'"),
        ('{"type": 3}', "is invalid: it has type 3"),
        ('{"type": "UNetModel"}', "is invalid: it has type 'UNetModel'"),
    ],
)
def test_invalid_description_says_so(tmp_path, text, says):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, load_weights(CLASSIFIER), {"diffice_model": text})
    for load in (
        lambda: load_model(path),
        lambda: load_classifier("plane", str(path)),
        lambda: PlaneClassifier.from_file(path),
        lambda: SonoNet.from_file(path),
        lambda: load_model(path, expect="ConceptOracle"),
    ):
        with pytest.raises(ValueError, match=rf"^{path}: its 'diffice_model' metadata {says}") as info:
            load()
        assert "expected a JSON object" in str(info.value) and "PlaneClassifier" in str(info.value)
        assert "holds a ?" not in str(info.value)


def test_incomplete_description_names_the_missing_setting(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, load_weights(CLASSIFIER), {"diffice_model": '{"type": "PlaneClassifier"}'})
    with pytest.raises(ValueError, match=r"m.safetensors: its diffice_model description of a PlaneClassifier lacks"):
        load_model(path)
    spec = json.loads(load_safetensors_metadata(CLASSIFIER)["diffice_model"])
    spec["segmenter"] = None
    save_safetensors(path, load_weights(CLASSIFIER), {"diffice_model": json.dumps(spec)})
    with pytest.raises(ValueError, match=r"^\S*m.safetensors: "):
        load_classifier("plane", str(path))


def test_cli_metrics_refuses_models_of_the_wrong_kind(tmp_path, capsys):
    """Exit 2 and one line naming the problem (with the cli's metrics loading through load_metrics_models, the
    line also names the file)."""
    from diffice.cli import main
    from diffice.data.images import save_png

    root = tmp_path / "run"
    x = demo_phantoms(2).images.astype(np.float32)
    (root / "records").mkdir(parents=True)
    for i in range(2):
        save_png(root / f"img_{i}" / "input.png", x[i])
        save_png(root / f"img_{i}" / "iteration_1.png", x[i])
        rows = [dict(iteration=0), dict(iteration=1, flipped=False, nonfinite_step=-1)]
        (root / "records" / f"img_{i}.json").write_text(
            json.dumps(dict(image=f"img_{i}.png", target=1, iterations=rows))
        )
    assert main(["metrics", str(root), "--no-cout", "--classifier", str(ORACLE)]) == 2
    err = capsys.readouterr().err
    assert "ConceptOracle" in err and "Traceback" not in err
    assert main(["metrics", str(root), "--no-cout", "--oracle", str(DDPM)]) == 2
    err = capsys.readouterr().err
    assert "UNet" in err and "concept oracle" in err and "Traceback" not in err
    # --sononet (FSD, SonoSim) given another model: the flag and the weights it takes, no config setting to change
    assert main(["metrics", str(root), "--no-cout", "--sononet", str(CLASSIFIER)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"diffice metrics: error: --sononet (for FSD and SonoSim): {CLASSIFIER}: the file holds a ")
    assert err.endswith(
        "give SonoNet weights (the authors' .npz, a SonoNet-k state_dict or a SonoNet saved by diffice)"
    )
    assert "classifier_kind" not in err
    assert main(["metrics", str(root), "--no-cout", "--classifier", str(CLASSIFIER), "--oracle", str(ORACLE)]) == 0
    out = capsys.readouterr().out
    assert "FR: inputs f classifies" in out and "MQD: all 2 inputs" in out


# ---- the wrong kind of file: short messages that say what to do ----


def test_sononet_weights_as_a_plane_classifier_say_which_kind_to_pass(tmp_path):
    """The authors' .npz (arr_0 ... arr_74) as classifier_kind 'plane': a few keys, how many, and the kind to pass
    (it once listed all 75 keys in 906 characters); a stray file gets the short list and no such hint."""
    np.savez(tmp_path / "SonoNet16.npz", *[np.zeros(2, np.float32) for _ in range(75)])
    with pytest.raises(ValueError) as info:
        load_classifier("plane", str(tmp_path / "SonoNet16.npz"))
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'SonoNet16.npz'}: PlaneClassifier state_dict: unexpected keys")
    assert "... (75 in all)" in msg and msg.count("arr_") == 3 and len(msg) < 400
    assert msg.endswith(
        'this looks like SonoNet weights: pass --classifier-kind sononet (models.classifier_kind = "sononet")'
    )
    save_safetensors(tmp_path / "stray.safetensors", {f"w{i}": np.zeros(1, np.float32) for i in range(9)})
    with pytest.raises(ValueError) as info:
        load_classifier("plane", str(tmp_path / "stray.safetensors"))
    msg = str(info.value)
    assert "['w0', 'w1', 'w2'] ... (9 in all)" in msg and "SonoNet" not in msg


def test_a_concept_oracle_as_the_plane_classifier_is_not_called_sononet_weights(tmp_path):
    """diffice explain --classifier oracle/model.safetensors (diffice train oracle without --segmenter: a
    ConceptOracle, its SonoNet's tensors without prefix) said "this looks like SonoNet weights: pass
    --classifier-kind sononet", which only led to another error; a diffice file says what it holds. A SonoNet saved
    by diffice, given as a plane classifier, keeps the hint."""
    path = tmp_path / "oracle.safetensors"
    save_model(str(path), ConceptOracle(SonoNet.random(k=4, num_classes=4, seed=0), ["TH", "CSP", "FP", "sharp"]))
    with pytest.raises(ValueError) as info:
        load_classifier("plane", str(path))
    msg = str(info.value)
    assert "holds a ConceptOracle" in msg and "--classifier-kind" not in msg and "SonoNet weights" not in msg


def test_a_sononet_saved_by_diffice_as_a_plane_classifier_says_to_pass_sononet(tmp_path):
    path = tmp_path / "sononet.safetensors"
    save_model(str(path), SonoNet.random(k=4, num_classes=14, seed=0))
    with pytest.raises(ValueError) as info:
        load_classifier("plane", str(path))
    assert "holds a SonoNet" in str(info.value) and "pass --classifier-kind sononet" in str(info.value)


def test_target_class_outside_sononets_classes_names_the_setting_and_the_classes(tmp_path):
    SonoNet.random(8, seed=2).save(tmp_path / "s.safetensors")
    with pytest.raises(ValueError) as info:
        load_classifier("sononet", str(tmp_path / "s.safetensors"), target_class=20)
    assert str(info.value) == (
        "models.target_class (--target-class): target 20 is not a class of a 14-class classifier "
        "(its classes are 0..13)"
    )


def test_a_folder_as_a_model_file_says_it_is_a_folder(tmp_path):
    """Every loader (load_model and the classes' from_file, SonoNet's once a raw [Errno 21]) says the same."""
    folder = tmp_path / "somedir"
    folder.mkdir()
    for load in (load_model, SonoNet.from_file, PlaneClassifier.from_file, Segmenter.from_file, UNet.from_file):
        with pytest.raises(IsADirectoryError) as info:
            load(folder)
        assert str(info.value) == f"{folder} is a folder, not a model file", load
    with pytest.raises(IsADirectoryError, match="is a folder, not a model file"):
        load_classifier("plane", str(folder))
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_metrics_takes_the_sononet_authors_npz_that_guided_the_run(tmp_path):
    """diffice explain --classifier-kind sononet --classifier SonoNet16.npz (the authors' file, no diffice
    description) made the run; diffice metrics judged it by default with that file but refused the same file given
    as --classifier ("no 'diffice_model' description ... needs a PlaneClassifier or SonoNet")."""
    net = SonoNet.random(k=4, num_classes=14)
    path = write_sononet_authors_npz(net, tmp_path / "SonoNet4.npz")
    settings = tmp_path / "run_settings.json"
    settings.write_text(json.dumps({"models": {"classifier_kind": "sononet", "target_class": 5}}))
    view = metrics.load_metrics_classifier(path, settings)
    assert isinstance(view, TargetClassView) and view.target == 5
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 32, 48)).astype(np.float32)
    assert np.allclose(view.forward(x).logits, TargetClassView(net, 5).forward(x).logits, atol=1e-4)
    # without a SonoNet run's settings a 14-class SonoNet is still refused, naming the file
    with pytest.raises(ValueError, match=r"SonoNet4.npz: a SonoNet with 14 classes"):
        metrics.load_metrics_classifier(path)
    # and a file of another kind without a description keeps its error
    np.savez(tmp_path / "other.npz", w=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"other.npz"):
        metrics.load_metrics_classifier(tmp_path / "other.npz", settings)


def test_metrics_says_when_the_classifier_is_not_the_one_that_guided_the_run(tmp_path):
    """run_settings.json records the sha256 of the classifier that guided the run; a --classifier of other bytes
    (or a file at the run's path that has changed since) judged FR, MAD, BKL and COUT silently: FR 0 on a run whose
    every record flipped. It now says so (the run is still judged: judging with another f is allowed)."""
    from diffice.io import file_digest

    root = tmp_path / "run"
    root.mkdir()
    guided = tmp_path / "f.safetensors"
    other = tmp_path / "g.safetensors"
    save_model(guided, SonoNet.random(k=4, num_classes=2, standardize=False, seed=1))
    save_model(other, SonoNet.random(k=4, num_classes=2, standardize=False, seed=2))
    settings = {"models": {"classifier": str(guided), "classifier_kind": "sononet", "target_class": 1}}
    settings["model_files"] = {"classifier": file_digest(guided)}
    (root / "run_settings.json").write_text(json.dumps(settings))
    said: list[str] = []
    load_metrics_models(root, classifier=guided, log=said.append)
    assert not any("NOT the classifier" in s for s in said)
    load_metrics_models(root, classifier=other, log=said.append)
    assert any(s.startswith(f"classifier {other} (--classifier): NOT the classifier that guided the run") for s in said)
    # the run's own path, whose file changed after the run
    said.clear()
    other.replace(guided)
    load_metrics_models(root, log=said.append)
    assert len(said) == 1 and "NOT the classifier that guided the run" in said[0] and str(guided) in said[0]


def test_metrics_says_when_the_runs_classifier_is_not_found(tmp_path, monkeypatch):
    """diffice explain --classifier f/model.safetensors records the path as typed; diffice metrics run from another
    folder skipped FR, MAD, BKL and COUT as "no classifier given", without a word about the run's classifier."""
    root = tmp_path / "results"
    root.mkdir()
    (root / "run_settings.json").write_text(json.dumps({"models": {"classifier": "f/model.safetensors"}}))
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    f, oracle = load_metrics_models(root, log=said.append)
    assert f is None and oracle is None
    assert said == [
        f"the run's classifier f/model.safetensors (from {root / 'run_settings.json'}) is not found from {tmp_path}: "
        "the metrics of f are skipped; give it with --classifier FILE"
    ]

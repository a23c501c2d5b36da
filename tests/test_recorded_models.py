"""Which models made a run (run_settings.json "demo_models", "images_given") and what `diffice metrics` / `pairs`
make of it; `python -m diffice.explain.demo_pack`, which no longer overwrites the bundled models unasked."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import diffice.explain.demo as demo_module
from diffice import phantoms
from diffice.cli import main
from diffice.explain.demo import MODELS_DIR, load_demo_models, pack
from diffice.explain.demo_pack import main as pack_main

FAST = ["--iterations", "1", "--tau", "2", "--quiet"]


def sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def own_demo(tmp_path_factory):
    """`diffice demo --models mym2 --n 2` into dm1: the user's own copy of the demo models."""
    root = tmp_path_factory.mktemp("own")
    shutil.copytree(MODELS_DIR, root / "mym2")
    assert main(["demo", "--models", str(root / "mym2"), "--n", "2", "--out", str(root / "dm1"), *FAST]) == 0
    return root


@pytest.fixture
def demo_copy(own_demo, tmp_path):
    shutil.copytree(own_demo / "mym2", tmp_path / "mym2")
    shutil.copytree(own_demo / "dm1", tmp_path / "dm1")
    settings = json.loads((tmp_path / "dm1" / "run_settings.json").read_text())
    settings["demo_models"]["folder"] = str((tmp_path / "mym2").resolve())
    (tmp_path / "dm1" / "run_settings.json").write_text(json.dumps(settings))
    return tmp_path


@pytest.fixture
def asked(monkeypatch):
    """The folders `diffice metrics` loads demo models from."""
    folders = []
    real = demo_module.load_demo_models

    def spy(folder=None, backend="cpu"):
        folders.append(None if folder is None else str(folder))
        return real(folder, backend)

    monkeypatch.setattr(demo_module, "load_demo_models", spy)
    return folders


def test_demo_records_its_models(own_demo):
    settings = json.loads((own_demo / "dm1" / "run_settings.json").read_text())
    assert settings["demo_models"] == {
        "folder": str((own_demo / "mym2").resolve()),
        "classifier_sha256": sha(MODELS_DIR / "classifier.safetensors"),
        "oracle_sha256": sha(MODELS_DIR / "oracle.safetensors"),
    }
    assert settings["images_given"] == 2


def test_metrics_uses_the_recorded_demo_models(demo_copy, asked, capsys):
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout"]) == 0
    assert asked == [str((demo_copy / "mym2").resolve())]
    assert "that made the run" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["differ", "gone"])
def test_metrics_refuses_other_or_missing_models(demo_copy, asked, capsys, change):
    models = demo_copy / "mym2"
    if change == "differ":
        shutil.copy(MODELS_DIR / "oracle.safetensors", models / "classifier.safetensors")
    else:
        shutil.rmtree(models)
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diffice metrics: error: ")
    assert f"made with the demo models in {models.resolve()}" in err
    assert ("differs" if change == "differ" else "is missing") in err
    assert "--demo-models" in err and "--classifier" in err and "--oracle" in err
    assert asked == []
    # pointing at the run's models (moved elsewhere) works
    shutil.copytree(MODELS_DIR, demo_copy / "moved")
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout", "--demo-models", str(demo_copy / "moved")]) == 0
    assert asked == [str(demo_copy / "moved")]
    # and the note names the folder they were loaded from, not only the one the run recorded
    note = capsys.readouterr().err
    assert f"the demo models in {demo_copy / 'moved'}: the same files as the demo models in {models.resolve()}" in note


def test_explain_preset_demo_records_the_variables_models(tmp_path, monkeypatch, asked, capsys):
    shutil.copytree(MODELS_DIR, tmp_path / "mym2")
    images = tmp_path / "images"
    images.mkdir()
    b = phantoms.generate(2, (64, 80), seed=3, standard_fraction=0.0)
    for i in range(2):
        Image.fromarray(((b.images[i, 0] + 1) * 127.5).astype(np.uint8)).save(images / f"s{i}.png")
    monkeypatch.setenv("DIFFICE_DEMO_MODELS", str(tmp_path / "mym2"))
    out = str(tmp_path / "r")
    assert main(["explain", "--models", "demo", "--images", str(images), "--out", out, *FAST]) == 0
    settings = json.loads((tmp_path / "r" / "run_settings.json").read_text())
    assert settings["demo_models"]["folder"] == str((tmp_path / "mym2").resolve())
    monkeypatch.delenv("DIFFICE_DEMO_MODELS")
    asked.clear()
    capsys.readouterr()
    assert main(["metrics", out, "--no-cout"]) == 0
    assert asked == [str((tmp_path / "mym2").resolve())]
    # resuming with other demo models is refused
    shutil.copy(MODELS_DIR / "oracle.safetensors", tmp_path / "mym2" / "classifier.safetensors")
    (images / "s2.png").write_bytes((images / "s0.png").read_bytes())
    monkeypatch.setenv("DIFFICE_DEMO_MODELS", str(tmp_path / "mym2"))
    assert main(["explain", "--models", "demo", "--images", str(images), "--out", out, *FAST]) == 2
    assert "holds results made with the demo models in" in capsys.readouterr().err


def test_old_results_folders_still_use_the_default_models(demo_copy, asked):
    settings_path = demo_copy / "dm1" / "run_settings.json"
    settings = json.loads(settings_path.read_text())
    del settings["demo_models"], settings["images_given"]
    settings_path.write_text(json.dumps(settings))
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout"]) == 0
    assert asked == [None]


def test_unfinished_run_says_so(demo_copy, capsys):
    (demo_copy / "dm1" / "records" / "phantom_01_no_csp.json").unlink()
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout"]) == 0
    assert "(1 images) (not every image: 1 of 2 explained; a stopped run resumes" in capsys.readouterr().out
    assert main(["pairs", str(demo_copy / "dm1"), "--out", str(demo_copy / "sheet.html")]) == 0
    assert "(not every image: 1 of 2 explained; a stopped run resumes" in capsys.readouterr().out


def test_finished_run_says_nothing_more(demo_copy, capsys):
    assert main(["metrics", str(demo_copy / "dm1"), "--no-cout"]) == 0
    assert "unfinished" not in capsys.readouterr().out


@pytest.mark.parametrize("command", ["metrics", "pairs"])
def test_missing_or_file_results_folder(tmp_path, capsys, command):
    extra = ["--out", str(tmp_path / "s.html")] if command == "pairs" else []
    assert main([command, str(tmp_path / "nonexist"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'nonexist'}: not found" in err
    (tmp_path / "f.txt").write_text("x")
    assert main([command, str(tmp_path / "f.txt"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'f.txt'}: not a folder" in err


def test_missing_demo_json_hint_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"demo_pack WORKDIR --dest {tmp_path}'"):
        load_demo_models(tmp_path)


def test_pack_does_not_overwrite_the_bundled_models_unasked(tmp_path, capsys):
    before = {p.name: sha(p) for p in MODELS_DIR.iterdir()}
    with pytest.raises(ValueError, match="bundled with diffice.*--replace-bundled"):
        pack(tmp_path)
    with pytest.raises(ValueError, match="--replace-bundled"):
        pack(tmp_path, MODELS_DIR)
    with pytest.raises(SystemExit) as info:
        pack_main([str(tmp_path)])
    assert info.value.code == 2 and "--dest" in capsys.readouterr().err
    assert pack_main([str(tmp_path), "--dest", str(MODELS_DIR)]) == 2
    assert "--replace-bundled" in capsys.readouterr().err
    assert {p.name: sha(p) for p in MODELS_DIR.iterdir()} == before


def test_pack_module_runs_without_a_runpy_warning():
    r = subprocess.run([sys.executable, "-m", "diffice.explain.demo_pack", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--replace-bundled" in r.stdout
    assert "RuntimeWarning" not in r.stderr and "found in sys.modules" not in r.stderr

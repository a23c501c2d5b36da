"""What a new user runs into with `diffice train ... --resume` and with their own labels and masks: a folder of
another kind of run, changed settings, and class indices with gaps are one-line errors (or a one-line note for an
optimizer setting), never a traceback, a silent change or silent extra classes."""

import json

import numpy as np
import pytest
from PIL import Image

from diffice import phantoms
from diffice.cli import main
from diffice.io import load_safetensors_metadata
from diffice.train.networks import load_training_set, train_supervised

UNET = ["--model-channels", "32", "--channel-mult", "1,1", "--num-res-blocks", "1", "--attention-ds", ""]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A phantom set and one finished 2-step run of each kind (segmenter, classifier, oracle, ddpm)."""
    root = tmp_path_factory.mktemp("runs")
    phantoms.write_dataset(root / "set", 8, size=(32, 40), seed=5)
    common = ["--images", str(root / "set" / "images"), "--steps", "2", "--batch-size", "2", "--quiet"]
    labels = ["--labels", str(root / "set" / "labels.csv")]
    seg = ["--masks", str(root / "set" / "masks"), "--width", "8", "--levels", "2", "--groups", "4"]
    commands = {
        "segmenter": ["train", "segmenter", *common, *seg],
        "classifier": ["train", "classifier", *common, *labels, "--k", "2"],
        "oracle": ["train", "oracle", *common, *labels, "--k", "2"],
        "ddpm": ["train", "ddpm", *common, *UNET, "--num-heads", "1"],
    }
    commands["classifier"] += ["--segmenter", str(root / "segmenter" / "model.safetensors")]
    for kind, args in commands.items():
        assert main(args + ["--out", str(root / kind)]) == 0, kind
    return root, commands


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "kind, folder, held, type_name",
    [
        ("oracle", "segmenter", "a segmenter", "a Segmenter"),
        ("classifier", "oracle", "an oracle", "a ConceptOracle"),
        ("segmenter", "ddpm", "a ddpm", "a guided-diffusion UNet"),
        ("ddpm", "segmenter", "a segmenter", "a Segmenter"),
        ("segmenter", "classifier", "a classifier", "a PlaneClassifier"),
    ],
)
def test_resume_into_another_kind_of_run_is_one_error_and_changes_nothing(runs, kind, folder, held, type_name, capsys):
    root, commands = runs
    out = root / folder
    before = snapshot(out)
    capsys.readouterr()
    assert main(commands[kind] + ["--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    article = "an" if kind == "oracle" else "a"
    assert err == [
        f"diffice train {kind}: error: {out}: holds {held} training run (model.safetensors is {type_name}), not "
        f"{article} {kind} run; use another --out"
    ]
    assert snapshot(out) == before


def test_resume_with_another_architecture_is_an_error(runs, capsys):
    root, commands = runs
    for kind, option, saved, given in [
        ("segmenter", "--width", "8", "16"),
        ("oracle", "--k", "2", "4"),
        ("ddpm", "--model-channels", "32", "64"),
    ]:
        out = root / kind
        before = snapshot(out)
        capsys.readouterr()
        assert main(commands[kind] + ["--out", str(out), "--resume", "--steps", "3", option, given]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{option} {given} differs from the resumed run's {saved}" in err[0], err
        assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["segmenter", "ddpm"])
def test_resume_with_fewer_steps_than_done_is_an_error(runs, kind, capsys):
    root, commands = runs
    out = root / kind
    before = snapshot(out)
    capsys.readouterr()
    assert main(commands[kind] + ["--out", str(out), "--resume", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has 2 steps, more than --steps 1" in err[0], err
    assert snapshot(out) == before


def test_resume_with_another_lr_says_so_and_keeps_it(runs, tmp_path, capsys):
    root, _ = runs
    kw = dict(masks=root / "set" / "masks", batch_size=2, width=8, levels=2, groups=4, progress=False)
    train_supervised("segmenter", root / "set" / "images", tmp_path, steps=1, lr=0.01, **kw)
    capsys.readouterr()
    train_supervised("segmenter", root / "set" / "images", tmp_path, steps=2, lr=0.5, resume=True, **kw)
    assert "train segmenter: --lr 0.5 differs from the run's 0.01: continuing with 0.5" in capsys.readouterr().err
    kw.pop("batch_size")  # not given on resume: the run's own (2, not the default 16), as lr (0.5, not 1e-3)
    train_supervised("segmenter", root / "set" / "images", tmp_path, steps=3, resume=True, **kw)
    assert "differs" not in capsys.readouterr().err
    settings = json.loads(load_safetensors_metadata(tmp_path / "model.safetensors")["diffice_training"])
    assert settings["lr"] == 0.5 and settings["batch_size"] == 2 and settings["width"] == 8


def test_masks_stored_as_0_255_without_classes_txt_are_refused(runs, tmp_path):
    root, _ = runs
    (tmp_path / "masks").mkdir()
    for f in sorted((root / "set" / "images").iterdir()):
        Image.fromarray(np.where(np.arange(40)[None, :] < 20, 0, 255).repeat(32, 0).astype(np.uint8)).save(
            tmp_path / "masks" / f.name
        )
    with pytest.raises(ValueError, match=r"masks use the values \[0, 255\], leaving class\(es\) 1..254 unused") as e:
        load_training_set(root / "set" / "images", masks=tmp_path / "masks")
    assert "store it as 0/1, or give" in str(e.value) and "classes.txt" in str(e.value)
    # with a classes.txt of two names beside the masks (what the error suggests), 0/255 masks are read as 0/1: they
    # were refused with "label 255 but only 2 classes"
    (tmp_path / "classes.txt").write_text("background\nhead\n")
    data = load_training_set(root / "set" / "images", masks=tmp_path / "masks")
    assert data.classes == ["background", "head"] and set(np.unique(data.masks).tolist()) == {0, 1}
    (tmp_path / "classes.txt").unlink()
    # 0/1 masks train as 2 classes
    for f in (tmp_path / "masks").iterdir():
        Image.fromarray((np.asarray(Image.open(f)) > 0).astype(np.uint8)).save(f)
    assert load_training_set(root / "set" / "images", masks=tmp_path / "masks").classes == ["class0", "class1"]


def test_labels_with_a_gap_are_refused(runs, tmp_path):
    root, _ = runs
    rows = (root / "set" / "labels.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("label")
    first = rows[1].split(",")
    first[col] = "7"
    (tmp_path / "labels.csv").write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"labels.csv: labels use the values \[0, 1, 7\], leaving class\(es\) 2..6"):
        train_supervised(
            "classifier",
            root / "set" / "images",
            tmp_path / "out",
            labels=tmp_path / "labels.csv",
            segmenter=root / "segmenter" / "model.safetensors",
            steps=1,
            progress=False,
        )
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("kind", ["segmenter", "ddpm"])
def test_resume_keeps_the_runs_size(runs, tmp_path, kind, capsys):
    """A run started with --size goes on at that size when --size is left out (it went on at the images' own size,
    silently), and another --size is an error, like the other settings that change what is trained on."""
    root, commands = runs
    out = tmp_path / kind
    steps = commands[kind].index("--steps")
    base = commands[kind][:steps] + commands[kind][steps + 2 :]
    assert main(base + ["--out", str(out), "--steps", "1", "--size", "16", "20"]) == 0
    assert main(base + ["--out", str(out), "--steps", "2", "--resume"]) == 0
    if kind == "segmenter":
        assert json.loads((out / "metrics.json").read_text())["image_size"] == [16, 20]
    else:
        with np.load(out / "train_state.npz") as state:
            assert json.loads(str(state["hparams"]))["size"] == [16, 20]
    before = snapshot(out)
    capsys.readouterr()
    assert main(base + ["--out", str(out), "--steps", "3", "--resume", "--size", "32", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size 32,40 differs from the resumed run's 16,20" in err[0], err
    assert snapshot(out) == before


def test_ddpm_size_is_never_ignored_for_an_array(tmp_path):
    from diffice.train.ddpm import train_ddpm

    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((2, 16, 20), np.float32))
    tiny = dict(model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(), num_heads=1)
    with pytest.raises(ValueError, match=r"the images are 16 x 20 pixels \(height x width\), not the size \(--size\) "):
        train_ddpm(npy, tmp_path / "d", tiny, steps=1, batch_size=2, size=(32, 40), progress=False)
    assert not (tmp_path / "d" / "train_state.npz").exists()
    train_ddpm(npy, tmp_path / "d", tiny, steps=1, batch_size=2, size=(16, 20), progress=False)


def test_resume_with_another_segmenter_is_an_error(runs, tmp_path, capsys):
    """A resumed classifier (or oracle) goes on with the segmenter frozen in the run: another --segmenter file was
    silently not used; now it is an error, and the run's own file is taken."""
    root, commands = runs
    other = tmp_path / "other"
    seg_args = commands["segmenter"][2:] + ["--out", str(other), "--seed", "7"]
    assert main(["train", "segmenter", *seg_args]) == 0
    classifier = commands["classifier"][:-1] + [str(other / "model.safetensors")]
    out = root / "classifier"
    before = snapshot(out)
    capsys.readouterr()
    assert main(classifier + ["--out", str(out), "--resume", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--segmenter {other / 'model.safetensors'} is not the segmenter frozen in" in err[0], err
    assert snapshot(out) == before
    oracle = commands["oracle"] + ["--segmenter", str(root / "segmenter" / "model.safetensors")]
    assert main(oracle + ["--out", str(root / "oracle"), "--resume", "--steps", "3"]) == 2
    assert "sees the images alone, without a segmenter; leave --segmenter out" in capsys.readouterr().err
    assert main(commands["classifier"] + ["--out", str(tmp_path / "c")]) == 0  # the run's own segmenter: taken
    assert main(commands["classifier"] + ["--out", str(tmp_path / "c"), "--resume", "--steps", "3"]) == 0


def test_classes_txt_naming_classes_no_mask_uses_is_a_warning(runs, tmp_path):
    from diffice.train.networks import TrainingDataWarning

    root, _ = runs
    (tmp_path / "masks").mkdir()
    for f in (root / "set" / "masks").iterdir():
        (tmp_path / "masks" / f.name).write_bytes(f.read_bytes())
    names = (root / "set" / "classes.txt").read_text().split()
    (tmp_path / "classes.txt").write_text("\n".join(names + ["extra"]) + "\n")
    with pytest.warns(TrainingDataWarning, match=rf"no mask uses class\(es\) {len(names)} \(extra\) of the "):
        data = load_training_set(root / "set" / "images", masks=tmp_path / "masks")
    assert data.classes == names + ["extra"]


def test_resume_on_another_image_set_is_an_error(runs, tmp_path, capsys):
    """The validation split is drawn over the image files: resuming on more, fewer or renamed images would move
    images the run trained on into the held-out set (it went on silently)."""
    root, commands = runs
    out = tmp_path / "run"
    seg = commands["segmenter"]
    images = seg.index("--images") + 1
    assert main(seg + ["--out", str(out)]) == 0
    files = sorted((root / "set" / "images").iterdir())
    for case in ("fewer", "renamed"):
        folder = tmp_path / case / "images"
        masks = tmp_path / case / "masks"
        folder.mkdir(parents=True)
        masks.mkdir()
        for i, f in enumerate(files[:-1] if case == "fewer" else files):
            name = "renamed.png" if case == "renamed" and i == 0 else f.name
            (folder / name).write_bytes(f.read_bytes())
            (masks / name).write_bytes((root / "set" / "masks" / f.name).read_bytes())
        (tmp_path / case / "classes.txt").write_bytes((root / "set" / "classes.txt").read_bytes())
        args = seg[:images] + [str(folder)] + seg[images + 1 :]
        args[args.index("--masks") + 1] = str(masks)
        before = snapshot(out)
        capsys.readouterr()
        assert main(args + ["--out", str(out), "--resume", "--steps", "3"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        held = f"{len(files) - 1} images, not the {len(files)}" if case == "fewer" else "images of other file names"
        assert len(err) == 1 and f"{folder} holds {held}" in err[0], err
        assert snapshot(out) == before
    assert main(seg + ["--out", str(out), "--resume", "--steps", "3"]) == 0


def test_a_second_ctrl_c_says_how_to_go_on(runs, tmp_path, capsys, monkeypatch):
    """A second Ctrl-C stops training mid-step without a checkpoint of its own: the message says --resume goes on
    from the last one (it said "run the same command again", which refuses a folder holding a run)."""
    import os
    import signal

    import diffice.train.networks as networks

    root, commands = runs
    clip, calls = networks.clip_grad_norm, []

    def clip_and_interrupt_twice(grads, max_norm=0.0, num_threads=0):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return clip(grads, max_norm, num_threads)

    monkeypatch.setattr(networks, "clip_grad_norm", clip_and_interrupt_twice)
    seg = commands["segmenter"] + ["--out", str(tmp_path), "--checkpoint-every", "2"]
    steps = seg.index("--steps") + 1
    seg[steps] = "5"
    assert main(seg) == 130
    assert "interrupted: stopped without saving; the run's last checkpoint, if one was saved, goes on with " in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(networks, "clip_grad_norm", clip)
    assert main(seg) == 2  # the same command refuses the folder
    assert main(seg + ["--resume"]) == 0
    with np.load(tmp_path / "train_state.npz") as state:
        assert int(state["step"]) == 5
    steps_logged = [line.split(",")[0] for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert steps_logged == ["1", "2", "3", "4", "5"]  # step 3's row, logged before the stop, not kept twice


def test_a_second_ctrl_c_while_a_checkpoint_is_saved_leaves_it_whole_and_no_litter(runs, tmp_path, monkeypatch):
    """Ctrl-C, then a second one while the checkpoint's files are renamed into place: the renames all happen (the
    files stay of one step, so --resume works; they were split between two steps), the KeyboardInterrupt comes
    after them, and no temporary '.<name>.new' file is left (they were, forever)."""
    import os
    import signal

    import diffice.train.checkpoints as checkpoints

    root, commands = runs
    seg = commands["segmenter"] + ["--out", str(tmp_path), "--checkpoint-every", "2"]
    seg[seg.index("--steps") + 1] = "4"
    assert main(seg) == 0
    replace, renamed = os.replace, []

    def replace_and_interrupt(src, dst):
        replace(src, dst)
        renamed.append(dst)
        if len(renamed) == 1:  # between the model file's rename and train_state.npz's
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(checkpoints.os, "replace", replace_and_interrupt)
    run = checkpoints.TrainingRun(tmp_path, "test", ["step"])
    model = tmp_path / "model.safetensors"
    contents = {model: lambda: ({"w": np.zeros(2, np.float32)}, {"step": "9"})}
    with pytest.raises(KeyboardInterrupt):
        run.save(9, contents, lambda: {})
    assert len(renamed) == 2 and run.saved_step is None
    with np.load(tmp_path / "train_state.npz") as state:
        assert int(state["step"]) == 9  # with the model file's step
    assert load_safetensors_metadata(model)["step"] == "9"
    assert not list(tmp_path.glob(".*.new"))

    def fail_after_writing(path, tensors, metadata=None):  # a second Ctrl-C (or a full disk) while writing
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_safetensors", fail_after_writing)
    with pytest.raises(KeyboardInterrupt):
        run.save(10, contents, lambda: {})
    assert not list(tmp_path.glob(".*.new")) and load_safetensors_metadata(model)["step"] == "9"
    (tmp_path / ".model.safetensors.new").write_bytes(b"left by a run killed with SIGKILL")
    run.load(resume=True)
    assert not list(tmp_path.glob(".*.new"))


def test_an_image_name_that_is_not_utf8_trains_and_resumes(runs, tmp_path):
    """The supervised runs digest their image set's file names; a Latin-1 name (read with surrogate escapes) made
    that digest fail: "'utf-8' codec can't encode character '\\udcf6'" before the first step."""
    import os

    root, commands = runs
    for sub in ("images", "masks"):
        (tmp_path / "set" / sub).mkdir(parents=True)
        for i, f in enumerate(sorted((root / "set" / sub).iterdir())):
            name = os.fsdecode(b"f\xf6tus.png") if i == 0 else f.name
            (tmp_path / "set" / sub / name).write_bytes(f.read_bytes())
    (tmp_path / "set" / "classes.txt").write_bytes((root / "set" / "classes.txt").read_bytes())
    seg = commands["segmenter"] + ["--out", str(tmp_path / "seg")]
    seg[seg.index("--images") + 1] = str(tmp_path / "set" / "images")
    seg[seg.index("--masks") + 1] = str(tmp_path / "set" / "masks")
    assert main(seg) == 0
    seg[seg.index("--steps") + 1] = "3"
    assert main(seg + ["--resume"]) == 0


def test_sigterm_saves_a_checkpoint_as_ctrl_c_does(runs, tmp_path, capsys, monkeypatch):
    """SLURM's scancel and a job's walltime send SIGTERM (SIGKILL follows after KillWait): training stopped at once
    and lost every step since its last checkpoint; it now finishes the step, saves, and --resume goes on."""
    import os
    import signal

    import diffice.train.networks as networks

    root, commands = runs
    clip, calls = networks.clip_grad_norm, []

    def clip_and_terminate(grads, max_norm=0.0, num_threads=0):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return clip(grads, max_norm, num_threads)

    monkeypatch.setattr(networks, "clip_grad_norm", clip_and_terminate)
    seg = commands["segmenter"] + ["--out", str(tmp_path), "--checkpoint-every", "100"]
    seg[seg.index("--steps") + 1] = "5"
    previous = signal.getsignal(signal.SIGTERM)
    assert main(seg) == 130
    assert signal.getsignal(signal.SIGTERM) is previous  # restored after the run
    assert f"interrupted: checkpoint saved at step 3 in {tmp_path}" in capsys.readouterr().err  # -q too
    with np.load(tmp_path / "train_state.npz") as state:
        assert int(state["step"]) == 3  # the step in flight finished and was saved
    monkeypatch.setattr(networks, "clip_grad_norm", clip)
    assert main(seg + ["--resume"]) == 0
    with np.load(tmp_path / "train_state.npz") as state:
        assert int(state["step"]) == 5

"""The training settings a user gives (diffice train ddpm|segmenter|classifier|oracle and the Python API): bad ones
are a ValueError naming the setting before anything trains, never a silent coercion; the log's seconds column and
the reported losses say what they are."""

import csv
import os
import shutil

import numpy as np
import pytest

import diffice.train.ddpm as train_mod
from diffice import Segmenter, phantoms
from diffice._native import _C
from diffice.cli import main
from diffice.data.images import AspectRatioWarning
from diffice.train.checkpoints import check_grad_clip, check_seed
from diffice.train.ddpm import _Progress, clip_grad_norm, train_ddpm
from diffice.train.networks import load_training_set, pixel_cross_entropy_grad, train_network, train_supervised

TINY = dict(model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_resolutions=(), num_heads=1)


def images(n=4, size=16):
    return np.random.default_rng(0).uniform(-1, 1, (n, 1, size, size)).astype(np.float32)


def log_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    phantoms.write_dataset(folder, 6, size=(32, 40), seed=3)
    return folder


def supervised(phantom_set, out, **kw):
    args = dict(masks=phantom_set / "masks", steps=1, batch_size=2, width=8, levels=2, groups=4, progress=False)
    args.update(kw)
    return train_supervised("segmenter", phantom_set / "images", out, **args)


def tiny_segmenter_run(out, steps, resume=False):
    seg = Segmenter(classes=3, width=8, levels=2, groups=4)
    seg._randomize(0)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 3, (2, 16, 16))
    return train_network(
        seg,
        lambda rng: (x, y),
        lambda outputs, t: (lambda loss, g: (loss, (g,)))(*pixel_cross_entropy_grad(outputs[0], t)),
        steps=steps,
        progress=False,
        out_dir=out,
        resume=resume,
        checkpoint_every=100,
    )


# ---- grad_clip: a finite number >= 0 (0: off) ----


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "1"])
def test_bad_grad_clip_is_refused(value, tmp_path, phantom_set):
    want = r"grad_clip \(--grad-clip\) must be a finite number >= 0 \(0: no clipping\)"
    with pytest.raises(ValueError, match=r"train_ddpm: " + want):
        train_ddpm(images(), tmp_path / "d", TINY, steps=1, batch_size=2, grad_clip=value, progress=False)
    with pytest.raises(ValueError, match=r"train segmenter: grad_clip \(--grad-clip\) must be a finite number >= 0"):
        supervised(phantom_set, tmp_path / "s", grad_clip=value)
    with pytest.raises(ValueError, match=r"clip_grad_norm: max_norm must be a finite number >= 0"):
        clip_grad_norm(np.ones(3, np.float32), value)
    assert not (tmp_path / "d" / "train_state.npz").exists()


def test_grad_clip_zero_and_positive_are_taken():
    assert check_grad_clip("w", 0) == 0.0 and check_grad_clip("w", 2) == 2.0 and check_grad_clip("w", 1e6) == 1e6


def test_cli_refuses_a_negative_grad_clip(tmp_path, capsys, phantom_set):
    args = ["--out", str(tmp_path / "x"), "--steps", "1", "--grad-clip", "-1", "--quiet"]
    assert main(["train", "segmenter", "--images", str(phantom_set / "images"), "--masks", "m", *args]) == 2
    assert "grad_clip (--grad-clip) must be a finite number >= 0 (0: no clipping), got -1.0" in capsys.readouterr().err
    ddpm = ["train", "ddpm", "--images", str(phantom_set / "images"), "--channel-mult", "1,2", "--attention-ds", "2"]
    assert main([*ddpm, *args]) == 2
    assert "train_ddpm: grad_clip (--grad-clip) must be a finite number >= 0 (0: no clipping), got -1.0" in (
        capsys.readouterr().err
    )


# ---- every setting's error names its flag (what the user typed) ----


@pytest.mark.parametrize(
    "flag, value, want",
    [
        ("--lr", "-1", "lr (--lr) must be a finite number >= 0, got -1.0"),
        ("--lr", "nan", "lr (--lr) must be a finite number >= 0, got nan"),
        ("--weight-decay", "-1", "weight_decay (--weight-decay) must be a finite number >= 0, got -1.0"),
        ("--val-fraction", "1.5", "val_fraction (--val-fraction) must be in (0, 1), got 1.5"),
        ("--val-fraction", "0", "val_fraction (--val-fraction) must be in (0, 1), got 0.0"),
        ("--steps", "0", "steps (--steps) must be >= 1, got 0"),
        ("--checkpoint-every", "0", "checkpoint_every (--checkpoint-every) must be >= 1, got 0"),
    ],
)
def test_supervised_setting_errors_name_the_flag(flag, value, want, tmp_path, capsys, phantom_set):
    args = ["train", "segmenter", "--images", str(phantom_set / "images"), "--masks", str(phantom_set / "masks")]
    assert main([*args, "--out", str(tmp_path / "x"), "--quiet", flag, value]) == 2
    assert f"diffice train segmenter: error: train segmenter: {want}\n" == capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "flags, want",
    [
        (["--lr", "-1"], "lr (--lr) must be a finite number >= 0, got -1.0"),
        (["--weight-decay", "inf"], "weight_decay (--weight-decay) must be a finite number >= 0, got inf"),
        (["--ema-rate", "2"], "ema_rate (--ema-rate) must be in [0, 1], got 2.0"),
        (["--log-every", "0"], "log_every (--log-every) must be >= 1, got 0"),
        (["--diffusion-steps", "0"], "diffusion_steps (--diffusion-steps) must be >= 1, got 0"),
        (["--model-channels", "8"], "GroupNorm32 needs a multiple of 32 (the UNet's layout comes from --model-"),
        (["--num-heads", "0"], "do not split into heads: 0 (the UNet's layout comes from --model-channels,"),
    ],
)
def test_ddpm_setting_errors_name_the_flag(flags, want, tmp_path, capsys, phantom_set):
    args = ["train", "ddpm", "--images", str(phantom_set / "images"), "--out", str(tmp_path / "x"), "--quiet"]
    tiny = ["--model-channels", "32", "--channel-mult", "1,2", "--attention-ds", "2", "--steps", "1"]
    assert main([*args, *tiny, "--batch-size", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffice train ddpm: error: train_ddpm: ") and want in err and err.count("\n") == 1
    assert not (tmp_path / "x" / "train_state.npz").exists()


# ---- attention_resolutions: downsample factors the UNet's levels reach ----


@pytest.mark.parametrize("attention, channel_mult", [((3,), (1, 1)), ((4,), (1, 1)), ((2, 8, 16), (1, 2, 2))])
def test_attention_factors_that_never_occur_are_refused(attention, channel_mult, tmp_path):
    config = dict(TINY, attention_resolutions=attention, channel_mult=channel_mult)
    valid = ", ".join(str(2**level) for level in range(len(channel_mult)))
    with pytest.raises(
        ValueError, match=rf"attention_resolutions \(--attention-ds\) .*the downsample factors are {valid};"
    ):
        train_ddpm(images(), tmp_path, config, steps=1, batch_size=2, progress=False)


def test_attention_factors_the_levels_reach_are_taken(tmp_path):
    config = dict(TINY, attention_resolutions=(1, 2))
    assert train_ddpm(images(), tmp_path, config, steps=1, batch_size=2, progress=False).step == 1


def test_cli_default_attention_ds_with_two_levels_is_refused(tmp_path, capsys, phantom_set):
    args = ["train", "ddpm", "--images", str(phantom_set / "images"), "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*args, "--channel-mult", "1,2", "--steps", "1", "--batch-size", "2"]) == 2
    assert "--attention-ds) 8, 16 never occur(s) with 2 UNet levels" in capsys.readouterr().err


# ---- seed: an integer >= 0 ----


@pytest.mark.parametrize("value", [-1, 1.5, True, "0"])
def test_bad_seed_is_refused(value, tmp_path, phantom_set):
    want = rf"seed \(--seed\) must be an integer >= 0 \(numpy's default_rng takes any of them\), got {value!r}"
    with pytest.raises(ValueError, match=r"train_ddpm: " + want.replace(".", r"\.")):
        train_ddpm(images(), tmp_path / "d", TINY, steps=1, batch_size=2, seed=value, progress=False)
    with pytest.raises(ValueError, match=r"train segmenter: seed \(--seed\) must be an integer >= 0"):
        supervised(phantom_set, tmp_path / "s", seed=value)


def test_large_seeds_are_taken():
    assert check_seed("w", 2**70) == 2**70 and check_seed("w", np.int64(3)) == 3


# ---- batch_size ----


def test_ddpm_batch_larger_than_the_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size \(--batch-size\) must be at most the number of training "):
        train_ddpm(images(n=3), tmp_path, TINY, steps=1, batch_size=100_000, progress=False)
    assert train_ddpm(images(n=3), tmp_path / "ok", TINY, steps=1, batch_size=3, progress=False).step == 1


def test_supervised_batch_beyond_memory_is_refused_before_allocating(tmp_path, phantom_set):
    with pytest.raises(ValueError, match=r"train segmenter: batch_size \(--batch-size\) 1000000000000 is too large"):
        supervised(phantom_set, tmp_path, batch_size=10**12)
    with pytest.raises(ValueError, match=r"train segmenter: batch_size \(--batch-size\) must be >= 1, got 0"):
        supervised(phantom_set, tmp_path / "zero", batch_size=0)


def test_the_batch_limit_is_the_c_backends_limit():
    # the guard asks the C core for its limit (one rule), the one a backend applies to its arenas (the rule itself:
    # tests/test_memory_budget.py)
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    assert 0 < _C.default_memory_limit() == _C.Backend("cpu", 1).memory_limit <= pages // 10 * 9 * page


def test_out_of_memory_in_a_step_names_the_batch_size(tmp_path, monkeypatch):
    def no_memory(*args, **kw):
        raise MemoryError("arena: 123 more bytes would pass the memory limit of 45 bytes (0 held)")

    monkeypatch.setattr(train_mod, "loss_and_gradients", no_memory)
    with pytest.raises(MemoryError, match=r"step 1 with batch_size \(--batch-size\) 2 of 16x16 images ran out of "):
        train_ddpm(images(), tmp_path, TINY, steps=1, batch_size=2, progress=False)
    with pytest.raises(MemoryError, match=r"\(arena: 123 more bytes would pass the memory limit of 45 bytes"):
        train_ddpm(images(), tmp_path / "b", TINY, steps=1, batch_size=2, progress=False)

    def no_batch(rng):
        raise MemoryError("Unable to allocate 9 GiB")

    seg = Segmenter(classes=3, width=8, levels=2, groups=4)
    with pytest.raises(MemoryError, match=r"drawing the batch of step 1 ran out of memory \(Unable to allocate 9 GiB"):
        train_network(seg, no_batch, lambda o, t: (0.0, (None,)), steps=1, progress=False)


# ---- the log and the reported losses ----


def test_seconds_continue_across_a_resume(tmp_path):
    train_ddpm(images(), tmp_path / "d", TINY, steps=10, batch_size=2, progress=False)
    train_ddpm(images(), tmp_path / "d", TINY, steps=20, batch_size=2, progress=False, resume=True)
    tiny_segmenter_run(tmp_path / "s", 10)
    tiny_segmenter_run(tmp_path / "s", 20, resume=True)
    for run in ("d", "s"):
        rows = log_rows(tmp_path / run / "loss.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, 21))
        seconds = [float(r["seconds"]) for r in rows]
        assert seconds == sorted(seconds), (run, seconds)
        assert seconds[10] >= seconds[9] > 0


def test_reported_losses_say_which_they_are(tmp_path, capsys):
    result = train_ddpm(images(), tmp_path, TINY, steps=5, batch_size=2, log_every=3, progress=True)
    losses = [float(r["loss"]) for r in log_rows(result.log_path)]
    assert result.last_loss == pytest.approx(losses[-1], rel=1e-5)
    assert result.mean_steps == 3 and result.mean_loss == pytest.approx(np.mean(losses[-3:]), rel=1e-5)
    assert f"loss {result.mean_loss:.4f} (mean of last 3 steps)" in capsys.readouterr().err
    bar = _Progress(2, 0, False, 10)
    assert bar.note() == "" and np.isnan(bar.mean_loss)
    bar.step_done(1, 0.5)
    assert bar.note() == "loss 0.5000 (last step)"


# ---- a loss that goes non-finite ----


def test_non_finite_loss_names_the_checkpoint_kept(tmp_path):
    seg = Segmenter(classes=3, width=8, levels=2, groups=4)
    seg._randomize(0)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 16, 16)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 3, (2, 16, 16))
    calls = []

    def loss_grad(outputs, t):
        loss, g = pixel_cross_entropy_grad(outputs[0], t)
        calls.append(1)
        return (float("nan") if len(calls) == 3 else loss), (g,)

    def run(out, checkpoint_every):
        calls.clear()
        kw = dict(steps=5, progress=False, out_dir=out, checkpoint_every=checkpoint_every)
        return train_network(seg, lambda rng: (x, y), loss_grad, **kw)

    with pytest.raises(FloatingPointError, match=r"at step 3; the checkpoint of step 2 in .* is kept; resume it"):
        run(tmp_path / "a", 2)
    with pytest.raises(FloatingPointError, match=r"at step 3; no checkpoint was saved yet \(nothing to resume in"):
        run(tmp_path / "b", 4)
    assert not (tmp_path / "b" / "train_state.npz").exists()


def test_cli_non_finite_loss_is_one_line(tmp_path, capsys, phantom_set):
    args = ["--images", str(phantom_set / "images"), "--masks", str(phantom_set / "masks"), "--out", str(tmp_path)]
    args += ["--width", "8", "--levels", "2", "--groups", "4", "--batch-size", "2", "--steps", "20", "--quiet"]
    assert main(["train", "segmenter", *args, "--lr", "1e30", "--grad-clip", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffice train segmenter: error: train_network: non-finite loss"), err
    assert err.count("\n") == 1, err
    assert "no checkpoint was saved yet" in err and "--lr" in err and "Traceback" not in err


# ---- the labels CSV ----


@pytest.mark.parametrize("case", ["duplicate", "short"])
def test_bad_rows_of_the_labels_csv_are_one_error_naming_the_line(case, tmp_path, phantom_set):
    lines = (phantom_set / "labels.csv").read_text().splitlines()
    first = lines[1].split(",")[0]
    if case == "duplicate":  # a second row for the first image, with the other label: was silently taken
        cells = lines[1].split(",")
        cells[1] = str(1 - int(cells[1]))
        lines.append(",".join(cells))
        expected = rf"lines 2 and {len(lines)} are both rows for '{first}'; give each image one row"
    else:  # a row cut short: was a TypeError from int(None)
        lines[1] = f"{first},1"
        expected = rf"line 2 \({first}\) has no value in column 'TH': it has fewer fields than the header"
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=expected):
        load_training_set(phantom_set / "images", labels=labels, concept_columns=["TH", "CSP"])
    with pytest.raises(ValueError, match=expected):
        train_supervised("oracle", phantom_set / "images", tmp_path / "o", labels=labels, steps=1, progress=False)
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_a_mask_of_another_shape_than_its_image_is_refused(tmp_path, phantom_set):
    from PIL import Image

    masks = tmp_path / "masks"
    shutil.copytree(phantom_set / "masks", masks)
    (tmp_path / "classes.txt").write_bytes((phantom_set / "classes.txt").read_bytes())
    files = sorted(masks.iterdir())
    with Image.open(files[0]) as m:  # half the resolution, same aspect ratio: an annotation at another scale
        m.resize((m.width // 2, m.height // 2), Image.Resampling.NEAREST).save(files[0])
    with Image.open(files[1]) as m:  # already at the training size (48 x 48 here): fine
        m.resize((48, 48), Image.Resampling.NEAREST).save(files[1])
    with pytest.warns(AspectRatioWarning):
        ts = load_training_set(phantom_set / "images", (48, 48), masks=masks)
    assert ts.masks is not None and ts.masks.shape[1:] == (48, 48)
    shutil.copy(phantom_set / "masks" / files[1].name, files[1])  # 48 x 48 fits only the size just used
    with Image.open(files[2]) as m:  # transposed: the shape of neither its image nor the size
        m.transpose(Image.Transpose.TRANSPOSE).save(files[2])
    expected = rf"{files[2].name}: the mask is 40 x 32 pixels .* neither its image {files[2].name} \(32 x 40\)"
    for size in (None, (64, 80)):
        with pytest.raises(ValueError, match=expected):  # was silently resized (stretched) to fit
            load_training_set(phantom_set / "images", size, masks=masks)


def test_the_oracles_label_is_0_or_1(tmp_path, phantom_set):
    lines = (phantom_set / "labels.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("label")] = "2"  # the classifier takes it (a third class); the oracle's rule cannot
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{cells[0]}: column 'label' must be 0 or 1, got 2"):
        train_supervised("oracle", phantom_set / "images", tmp_path / "o", labels=labels, steps=1, progress=False)
    ts = load_training_set(phantom_set / "images", labels=labels)  # the classifier's reading: labels >= 0
    assert ts.labels is not None and ts.labels[0] == 2


# ---- images of different sizes without a size ----


def test_images_of_different_sizes_without_a_size_are_refused(tmp_path, phantom_set):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted((phantom_set / "images").iterdir()):
        (folder / f.name).write_bytes(f.read_bytes())
    odd = sorted(folder.iterdir())[2]
    with Image.open(odd) as img:
        img.resize((48, 36)).save(odd)  # 1.07 times the aspect ratio: not even an AspectRatioWarning
    expected = rf"{odd.name} is 36 x 48 pixels \(height x width\) but 000000.png is 32 x 40; give a size \(--size H W\)"
    with pytest.raises(ValueError, match=expected):  # was silently resized to the first image's size
        load_training_set(folder)
    with pytest.raises(ValueError, match=expected):
        train_supervised("segmenter", folder, tmp_path / "s", masks=phantom_set / "masks", steps=1, progress=False)
    with pytest.raises(ValueError, match=expected):
        train_ddpm(folder, tmp_path / "d", TINY, steps=1, batch_size=2, progress=False)
    assert load_training_set(folder, size=(32, 40)).images.shape == (6, 1, 32, 40)


# ---- --out ----


def test_an_out_that_is_a_file_is_one_error_naming_it(tmp_path, capsys, phantom_set):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    common = ["--images", str(phantom_set / "images"), "--out", str(afile), "--steps", "1", "--quiet"]
    ddpm = ["train", "ddpm", *common, "--channel-mult", "1,2", "--attention-ds", "2"]
    seg = ["train", "segmenter", *common, "--masks", str(phantom_set / "masks")]
    for args, who in [(ddpm, "train_ddpm"), (seg, "train segmenter")]:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        # was "diffice train: error: [Errno 17] File exists: '...'"
        assert err == [
            f"diffice train {args[1]}: error: {who}: the output folder {afile} is a file, not a folder; give another "
            "--out"
        ]
    assert afile.read_text() == "keep me"
    assert main([*ddpm[:5], str(afile / "sub"), *ddpm[6:]]) == 2
    assert f"cannot create the output folder {afile / 'sub'} (Not a directory)" in capsys.readouterr().err


def test_a_size_the_network_cannot_take_names_the_size_before_writing(tmp_path, phantom_set):
    # was the network's own error from inside the first step ("Segmenter.forward: x is 30x38; ..."), after
    # loss.csv was written
    out = tmp_path / "s"
    with pytest.raises(ValueError, match=r"train segmenter: the images are 30 x 38 pixels \(height x width; --size"):
        supervised(phantom_set, out, size=(30, 38), levels=3)
    labels = phantom_set / "labels.csv"
    with pytest.raises(ValueError, match=r"train oracle: the images are 8 x 10 pixels .*SonoNet needs at least one"):
        train_supervised("oracle", phantom_set / "images", out, labels=labels, size=(8, 10), steps=1, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_resuming_a_finished_ddpm_run_says_there_is_nothing_to_train(tmp_path, capsys, phantom_set):
    args = ["train", "ddpm", "--images", str(phantom_set / "images"), "--out", str(tmp_path), "--steps", "1"]
    args += ["--batch-size", "2", "--channel-mult", "1,2", "--attention-ds", "2", "--model-channels", "32"]
    assert main(args) == 0
    before = (tmp_path / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    # was "step 1: last step's loss nan, mean of the last 0 steps nan; wrote ..."
    assert "nan" not in out and f"the run in {tmp_path} already has 1 steps, nothing to train" in out, out
    assert (tmp_path / "model.safetensors").read_bytes() == before

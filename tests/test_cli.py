"""The command line: `diffice info`, `diffice check` (every op, fast backend vs reference kernels) and the flags of
`diffice explain`."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from conftest import read_first_line_and_close, write_sononet_authors_npz

from diffice.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    assert "onednn" in capsys.readouterr().out


def test_check_passes_and_lists_every_op(capsys):
    assert main(["check", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "all ops agree" in out and "MISMATCH" not in out
    for op in ("conv2d", "group_norm", "attention", "resize_bilinear", "cross_entropy"):
        assert op in out


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "diffice", "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "diffice" in done.stdout


def test_unknown_command_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "diffice", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def _explain_parser():
    from diffice.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["explain"]


def test_explain_help_describes_every_flag_and_its_allowed_values():
    from diffice.explain.config import SECTIONS
    from diffice.explain.explainer import METHODS

    actions = {a.dest: a for a in _explain_parser()._actions}
    for section, defaults in SECTIONS.items():
        for key in defaults:
            text = actions[key].help
            assert not text.startswith("default:") and len(text.split("(default:")[0]) > 20, key
            assert f"[{section}] {key}" in text, key
    choices = {
        k: actions[k].choices
        for k in (
            "classifier_kind",
            "perceptual_kind",
            "perceptual_variant",
            "method",
            "schedule",
            "class_loss",
            "grad_at",
            "preset",
            "perceptual_taps",
        )
    }
    assert choices["classifier_kind"] == ["plane", "sononet"]
    assert choices["perceptual_kind"] == [
        "resnet50",
        "resnet18",
        "resnet50-radimagenet",
        "resnet18-radimagenet",
        "pixel-l1",
        "pixel-l2",
    ]
    assert choices["method"] == list(METHODS) and choices["preset"] == ["demo"]
    assert all(choices.values())
    assert actions["preset"].option_strings[0] == "--models"
    # --target (the direction of the counterfactuals) and --target-class (SonoNet's class that is the standard
    # plane) say what they are, and each points at the other
    target, target_class = actions["target"].help, actions["target_class"].help
    assert "towards" in target and "--target-class" in target
    assert "sononet" in target_class and "14 classes" in target_class and "--target" in target_class
    helptext = _explain_parser().format_help()
    assert "--models {demo}" in helptext and "--clip {true,false}" in helptext


def test_explain_flags_refuse_values_outside_their_choices(capsys):
    base = ["explain", "--images", "in", "--out", "out"]
    for flag, value in (
        ("--classifier-kind", "resnet"),
        ("--perceptual-kind", "vgg16"),
        ("--method", "dime2"),
        ("--clip", "maybe"),
        ("--models", "bundled"),
        ("--precision", "fp16"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(base + [flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert flag in err and value in err


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_explain_with_a_precision_the_device_lacks_says_so(tmp_path, capsys, precision):
    """--precision tf32 or bf16 on the CPU: exit 2 and the backend's reason, before any image is explained."""
    from diffice.data.images import save_png

    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    code = main(["explain", "--models", "demo", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--precision", precision, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"the cpu backend does not offer precision '{precision}' (it offers 'fp32')" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_explain_on_a_device_this_machine_lacks_says_why(tmp_path, capsys):
    """--device cuda where CUDA cannot run: exit 2 and the backend's reason in one line, no traceback."""
    import diffice
    from diffice.data.images import save_png

    if diffice.cuda_available():
        pytest.skip("a GPU is present: the error path is not reachable")
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    code = main(["explain", "--models", "demo", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--device", "cuda", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("diffice explain: error: cuda: ") and "Traceback" not in err


def test_explain_summary_points_at_the_failures(tmp_path, capsys):
    """An unreadable image: the summary line says where the failures and their reasons are."""
    from diffice.data.images import save_png

    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["explain", "--models", "demo", "--images", str(tmp_path / "in"), "--out", str(out),
                 "--iterations", "1", "--tau", "2", "--lambda-c", "40", "--quiet"])  # fmt: skip
    summary = capsys.readouterr().out
    assert code == 0 and "1 explained" in summary and "1 failed" in summary
    assert f"the failures and why in {out}/errors.csv" in summary
    assert "broken.png" in (out / "errors.csv").read_text()


def test_demo_and_explain_refuse_what_they_would_ignore(tmp_path, capsys):
    """demo --n with --images (n counts phantoms), demo --n 0 and an empty --out are one-line errors, exit 2."""
    assert main(["demo", "--images", str(tmp_path), "--n", "1", "--out", str(tmp_path / "d")]) == 2
    assert "--n is how many phantoms to make" in capsys.readouterr().err
    assert main(["demo", "--n", "0", "--out", str(tmp_path / "d0"), "--quiet"]) == 2
    assert "n (how many phantoms) must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["demo", "--n", "2", "--seed", "-1", "--out", str(tmp_path / "d1"), "--quiet"]) == 2
    assert "run.seed (--seed) must be" in capsys.readouterr().err and not (tmp_path / "d1").exists()  # nothing written
    assert main(["explain", "--models", "demo", "--images", str(tmp_path), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


def test_train_help_gives_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "ddpm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE batch size (paper: 16); at most the number of images (default: 16)" in text
    assert "(default: True)" not in text  # switches say nothing


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"diffice {command}: error: "), err
    return lines[0]


def test_demo_refuses_more_phantoms_than_it_can_hold_at_once(tmp_path, capsys, monkeypatch):
    """demo --n above MAX_PHANTOMS (the sweep's bound too) stops at once with one line, before any phantom is made
    (it once built all 100000000 in memory, silently)."""
    from diffice.data.phantoms import MAX_PHANTOMS
    from diffice.explain import demo_run

    def no_phantoms(*args, **kwargs):
        raise AssertionError("demo_phantoms called: the bound was not checked first")

    monkeypatch.setattr(demo_run, "demo_phantoms", no_phantoms)
    for n in (MAX_PHANTOMS + 1, 100_000_000):
        assert main(["demo", "--n", str(n), "--out", str(tmp_path / "d"), "--quiet"]) == 2
        line = _one_error_line(capsys.readouterr().err, "demo")
        assert f"must be at most MAX_PHANTOMS = {MAX_PHANTOMS}, got {n}" in line and "diffice phantoms" in line
    assert not (tmp_path / "d").exists()


def _demo_parser():
    from diffice.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["demo"]


def test_demo_help_states_the_range_of_n_and_every_file_it_writes():
    from diffice.data.phantoms import MAX_PHANTOMS

    n_help = next(a for a in _demo_parser()._actions if a.dest == "n").help
    assert f"1 to {MAX_PHANTOMS}" in n_help
    text = " ".join(_demo_parser().format_help().split())
    for name in ("figure.png", "results.csv", "iterations.csv", "summary.json", "inputs/"):
        assert name in text, name


def test_phantoms_refuses_n_below_one(tmp_path, capsys):
    """--n 0 and --n -1 once exited 0 with an empty dataset; now one line, exit 2, nothing written."""
    for n in ("0", "-1"):
        out = tmp_path / f"set{n}"
        assert main(["phantoms", "--out", str(out), "--n", n, "--quiet"]) == 2
        line = _one_error_line(capsys.readouterr().err, "phantoms")
        assert f"n must be a positive integer, got {n}" in line
        assert not out.exists()


def test_phantoms_refuses_an_out_that_holds_a_dataset(tmp_path, capsys):
    """phantoms --n 3 over a dataset of 4 once exited 0, replacing images 0-2 and labels.csv (the 4th image then had
    no row); now one line naming the folder, exit 2, nothing written."""
    out = tmp_path / "ow"
    assert main(["phantoms", "--out", str(out), "--n", "4", "--size", "32", "40", "--seed", "1", "--quiet"]) == 0
    capsys.readouterr()
    labels = (out / "labels.csv").read_bytes()
    assert main(["phantoms", "--out", str(out), "--n", "3", "--size", "32", "40", "--seed", "9", "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err, "phantoms")
    assert f"{out} already holds a dataset" in line and "use another --out or delete it" in line
    assert (out / "labels.csv").read_bytes() == labels and len(list((out / "images").iterdir())) == 4


def test_phantoms_refuses_a_seed_outside_0_to_2_pow_64(tmp_path, capsys):
    """the README: seeds are never taken modulo 2**64; phantoms took 99999999999999999999999."""
    for seed in ("99999999999999999999999", str(2**64), "-1"):
        out = tmp_path / "set"
        assert main(["phantoms", "--out", str(out), "--n", "1", "--seed", seed, "--quiet"]) == 2
        line = _one_error_line(capsys.readouterr().err, "phantoms")
        assert (
            f"seed must be a non-negative integer below 2**64 (seeds are never taken modulo 2**64), got {seed}" in line
        )
        assert not out.exists()


def test_a_file_as_images_and_a_folder_as_model_file_are_named_as_such(tmp_path, capsys):
    from diffice.data.images import save_png
    from diffice.explain.demo import MODELS_DIR

    (tmp_path / "one").mkdir()
    save_png(tmp_path / "one" / "a.png", np.zeros((64, 80), np.float32))
    png = tmp_path / "one" / "a.png"
    assert main(["explain", "--models", "demo", "--images", str(png), "--out", str(tmp_path / "o1")]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert line.endswith(f"expected a folder of images, got the file {png}")
    assert main(["demo", "--images", str(png), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert f"expected a folder of images, got the file {png}" in _one_error_line(capsys.readouterr().err, "demo")
    # train ddpm --images also takes a .npy array: the message says so
    assert main(["train", "ddpm", "--images", str(png), "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err, "train ddpm")
    assert f"expected a folder of images or a .npy array (N, H, W), got the file {png}" in line
    # a folder given as the classifier file
    models = tmp_path / "somedir"
    models.mkdir()
    args = ["explain", "--unet", str(MODELS_DIR / "ddpm.safetensors"), "--classifier", str(models)]
    args += ["--perceptual-kind", "pixel-l2", "--images", str(tmp_path / "one"), "--out", str(tmp_path / "o4")]
    assert main(args + ["--quiet"]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert line.endswith(f"{models} is a folder, not a model file") and "not found" not in line


def test_explain_names_the_classifier_kind_and_target_class_flags(tmp_path, capsys):
    """The SonoNet authors' .npz as a plane classifier: a short message that says to pass --classifier-kind sononet
    (it once listed all 75 keys); a --target-class SonoNet does not have: the flag and the classes."""
    from diffice import SonoNet
    from diffice.data.images import save_png
    from diffice.explain.demo import MODELS_DIR

    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    authors = tmp_path / "SonoNet16.npz"
    np.savez(authors, *[np.zeros(2, np.float32) for _ in range(75)])  # arr_0 ... arr_74, as the authors' file
    sononet = tmp_path / "sononet8.safetensors"
    SonoNet.random(8, seed=1).save(sononet)
    base = ["explain", "--unet", str(MODELS_DIR / "ddpm.safetensors"), "--perceptual-kind", "pixel-l2"]
    base += ["--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(base + ["--classifier", str(authors)]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert "... (75 in all)" in line and "this looks like SonoNet weights: pass --classifier-kind sononet" in line
    assert len(line) < 400 and "arr_70" not in line
    assert main(base + ["--classifier", str(sononet), "--classifier-kind", "sononet", "--target-class", "20"]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert "--target-class" in line and "target 20 is not a class of a 14-class classifier" in line
    assert "0..13" in line


def test_explain_a_target_f_does_not_have_names_the_flag_before_anything_is_written(tmp_path, capsys):
    """--target 5 with --classifier-kind sononet (SonoNet's Brain (Tv.) number given as the direction, which is 0 or
    1 of the binary f): one line naming --target and pointing at --target-class, exit 2, no output folder. It used to
    be the sampler's "target 5 is not a class of the classifier", naming neither, after the first batch was read."""
    from diffice import SonoNet
    from diffice.data.images import save_png
    from diffice.explain.demo import MODELS_DIR

    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    sononet = tmp_path / "sononet8.safetensors"
    SonoNet.random(8, seed=1).save(sononet)
    base = ["explain", "--unet", str(MODELS_DIR / "ddpm.safetensors"), "--perceptual-kind", "pixel-l2"]
    base += ["--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(base + ["--classifier", str(sononet), "--classifier-kind", "sononet", "--target", "5"]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert "run.target (--target) 5 is not a class of the guiding classifier f (2 classes, 0..1)" in line
    assert "--target-class ([models] target_class, now 5)" in line
    assert not (tmp_path / "out").exists()
    # a plane classifier f: the flag and its classes, no SonoNet hint
    assert main(base + ["--classifier", str(MODELS_DIR / "classifier.safetensors"), "--target", "2"]) == 2
    line = _one_error_line(capsys.readouterr().err, "explain")
    assert "run.target (--target) 2 is not a class of the guiding classifier f (2 classes, 0..1)" in line
    assert "--target-class" not in line and not (tmp_path / "out").exists()


def test_train_names_the_option_or_file_behind_a_malformed_value(tmp_path, capsys):
    """--channel-mult a,b said "invalid literal for int()", --concepts "" spoke of SonoNet's num_classes, a binary
    labels CSV of a utf-8 codec: each now names the option or the file."""
    from diffice.data.phantoms import write_dataset

    write_dataset(tmp_path / "set", 4, seed=0)
    images = str(tmp_path / "set" / "images")
    assert main(["train", "ddpm", "--images", images, "--out", str(tmp_path / "d"), "--steps", "1",
                 "--channel-mult", "a,b", "--quiet"]) == 2  # fmt: skip
    assert "--channel-mult: expected comma-separated integers, got 'a,b'" in _one_error_line(
        capsys.readouterr().err, "train ddpm"
    )
    labels = str(tmp_path / "set" / "labels.csv")
    assert main(["train", "oracle", "--images", images, "--labels", labels, "--out", str(tmp_path / "o"),
                 "--steps", "1", "--concepts", "", "--quiet"]) == 2  # fmt: skip
    assert "--concepts: expected at least one comma-separated name, got ''" in _one_error_line(
        capsys.readouterr().err, "train oracle"
    )
    binary = tmp_path / "labels.csv"
    binary.write_bytes(b"\xff\xfe\x00file,label\n")
    assert main(["train", "oracle", "--images", images, "--labels", str(binary), "--out", str(tmp_path / "b"),
                 "--steps", "1", "--quiet"]) == 2  # fmt: skip
    assert f"{binary}: not a CSV of labels" in _one_error_line(capsys.readouterr().err, "train oracle")


def test_a_refused_run_leaves_no_empty_output_folder_behind(tmp_path, capsys):
    """train ddpm with a batch larger than the images was refused after making --out: the empty folder it made is
    removed; a folder that was there before is left as it was."""
    from diffice.data.phantoms import write_dataset

    write_dataset(tmp_path / "set", 3, seed=0)
    images = str(tmp_path / "set" / "images")
    out = tmp_path / "new"
    assert main(["train", "ddpm", "--images", images, "--out", str(out), "--steps", "1", "--quiet"]) == 2
    assert "batch_size (--batch-size) must be at most the number of training images" in capsys.readouterr().err
    assert not out.exists()
    before = tmp_path / "mine"
    before.mkdir()
    assert main(["train", "ddpm", "--images", images, "--out", str(before), "--steps", "1", "--quiet"]) == 2
    assert before.is_dir()


_SPAM = """
import argparse, sys
import diffice.cli as cli

def spam(args):
    for i in range(100000):
        print(f"line {i} " + "x" * 80)
    return 0

real_parse = argparse.ArgumentParser.parse_args

def parse(self, argv=None, namespace=None):
    args = real_parse(self, argv, namespace)
    args.func = spam
    return args

argparse.ArgumentParser.parse_args = parse
sys.exit(cli.main(["info"]))
"""


def test_a_closed_output_pipe_stops_quietly(tmp_path):
    """`diffice metrics ... | head` printed "error: [Errno 32] Broken pipe" and exited 2: a reader that went away
    now stops the command quietly with 141 (128 + SIGPIPE), as the shell's own tools do; everything up to there
    was written."""
    assert read_first_line_and_close(_SPAM) == (141, b"")


def test_a_broken_pipe_elsewhere_is_still_an_error(capsys, monkeypatch):
    """A BrokenPipeError that is not stdout's (a connection of the command's own) stays a one-line error."""
    import diffice.cli as cli

    def fail(args):
        raise BrokenPipeError(32, "Broken pipe (a worker's connection)")

    real = cli.build_parser

    def parser():
        p = real()
        for action in p._subparsers._group_actions:
            action.choices["info"].set_defaults(func=fail)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main(["info"]) == 2
    assert "diffice info: error: [Errno 32] Broken pipe (a worker's connection)" in capsys.readouterr().err


def test_every_command_with_a_progress_bar_takes_dash_q():
    from diffice.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    train = next(a for a in sub.choices["train"]._actions if a.dest == "model")
    parsers = {name: p for name, p in sub.choices.items() if name != "train"}
    parsers.update({f"train {name}": p for name, p in train.choices.items()})
    with_bar = {name for name, p in parsers.items() if any(a.dest == "quiet" for a in p._actions)}
    assert with_bar >= {"explain", "demo", "sweep", "phantoms", "train ddpm", "train classifier"}
    for name in with_bar:
        quiet = next(a for a in parsers[name]._actions if a.dest == "quiet")
        assert quiet.option_strings == ["-q", "--quiet"], name


@pytest.mark.parametrize("kind", ["ddpm", "segmenter", "classifier", "oracle"])
def test_train_augmentation_can_be_turned_off_and_on_again(kind):
    from diffice.cli import build_parser

    required = {
        "segmenter": ["--masks", "m"],
        "classifier": ["--labels", "l", "--segmenter", "s"],
        "oracle": ["--labels", "l"],
    }
    base = ["train", kind, "--images", "i", "--out", "o", *required.get(kind, [])]
    parse = build_parser().parse_args
    assert parse(base).augment is None  # neither: a new run's default, or the resumed run's own setting
    assert parse([*base, "--no-augment"]).augment is False
    assert parse([*base, "--augment"]).augment is True  # a run resumed with --no-augment can take it back


def test_explain_warns_when_the_released_sononet_runs_at_another_size(tmp_path, capsys):
    """The authors' SonoNet weights (trained on 224x288 frames) at --image-size 64 80 gave probabilities that are not
    SonoNet's (the real SonoNet-16 called 3 of 4 HC18 heads Brain (Tv.) there) without a word; now a one-line warning
    naming the file and the size. A SonoNet saved by diffice (its own size) and 224x288 are not warned about."""
    import warnings

    from diffice import SonoNet
    from diffice.data.images import save_png
    from diffice.explain.demo import MODELS_DIR
    from diffice.explain.run import SonoNetSizeWarning, warn_sononet_size

    net = SonoNet.random(k=4, num_classes=14)
    authors = write_sononet_authors_npz(net, tmp_path / "SonoNet4.npz")
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((64, 80), np.float32))
    args = ["explain", "--unet", str(MODELS_DIR / "ddpm.safetensors"), "--perceptual-kind", "pixel-l2"]
    args += ["--classifier", str(authors), "--classifier-kind", "sononet", "--image-size", "64", "80"]
    args += ["--respacing", "10", "--tau", "1", "--iterations", "1", "--lambda-c", "1", "--lambda-p", "0"]
    assert main(args + ["--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"diffice explain: warning: {authors}: SonoNet weights without a diffice description" in err
    assert "run at --image-size 64 80" in err
    saved = tmp_path / "sononet4.safetensors"
    net.save(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SonoNetSizeWarning)
        warn_sononet_size({"classifier_kind": "sononet", "classifier": str(authors)}, (224, 288))
        warn_sononet_size({"classifier_kind": "sononet", "classifier": str(saved)}, (64, 80))
    with pytest.warns(SonoNetSizeWarning, match="SonoNet4.npz"):
        warn_sononet_size({"classifier_kind": "sononet", "classifier": str(authors)}, (112, 144))


_SPAM_STDERR = """
import argparse, sys
import diffice.cli as cli

def spam(args):  # a progress bar's lines: stderr
    for i in range(100000):
        print(f"line {i} " + "x" * 80, file=sys.stderr)
    return 0

real_parse = argparse.ArgumentParser.parse_args

def parse(self, argv=None, namespace=None):
    args = real_parse(self, argv, namespace)
    args.func = spam
    return args

argparse.ArgumentParser.parse_args = parse
sys.exit(cli.main(["info"]))
"""


def test_a_closed_pipe_on_stderr_stops_quietly_too():
    """`diffice explain ... 2>&1 >/dev/null | head -1` (the progress bar's reader went away) exited 1 after a
    traceback nobody could read; now it stops with 141 as with stdout."""
    proc = subprocess.Popen([sys.executable, "-c", _SPAM_STDERR], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None and proc.stderr.readline().startswith(b"line 0 ")
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141


@pytest.mark.parametrize(
    "command, said",
    [
        (["check"], "interrupted: nothing was written"),
        (["metrics", "results"], "interrupted: nothing was written"),
        (
            ["explain", "--models", "demo", "--images", "in", "--out", "res"],
            "interrupted: the finished images are kept in res; run the same command again to resume",
        ),
        (
            ["sweep", "--config", "s.toml"],
            "interrupted: the finished units are kept in the sweep's results.sqlite; run the same command again "
            "to resume",
        ),
    ],
)
def test_ctrl_c_says_what_was_kept(command, said, capsys, monkeypatch, tmp_path):
    """Ctrl-C said "finished work is saved; run the same command again to resume" after every command, also
    after `diffice check` and `diffice metrics`, which keep nothing and have nothing to resume, and after an
    explain stopped while its models loaded, which leaves no folder."""
    import diffice.cli as cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "res").mkdir()

    def interrupted(args):
        raise KeyboardInterrupt

    real = cli.build_parser

    def parser():
        p = real()
        for action in p._subparsers._group_actions:
            action.choices[command[0]].set_defaults(func=interrupted)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main(command) == 130
    assert capsys.readouterr().err.strip().splitlines() == [said]
    if "--out" in command:  # stopped before its first result: the run removed the folder it made
        (tmp_path / "res").rmdir()
        assert cli.main(command) == 130
        assert capsys.readouterr().err.strip().splitlines() == ["interrupted: nothing was written"]


def test_ctrl_c_while_the_arguments_are_read_is_one_line(capsys, monkeypatch):
    """Ctrl-C in the first seconds of a command (building the parser imports the training modules) printed a
    traceback."""
    import diffice.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["info"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted: nothing was written"]


def _help_entries(command: list[str], capsys) -> dict[str, str]:
    """--help of a command as {option: its text, whitespace folded}."""
    import re

    with pytest.raises(SystemExit):
        main(command + ["--help"])
    text = re.split(r"\n(?:options|optional arguments):\n", capsys.readouterr().out, maxsplit=1)[1]  # 3.9: optional
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=  -)", text):
        words = " ".join(block.split())
        if words:
            entries[words.split()[0].rstrip(",")] = words
    return entries


@pytest.mark.parametrize(
    "command",
    [["train", "ddpm"], ["train", "segmenter"], ["train", "classifier"], ["train", "oracle"], ["phantoms"], ["demo"]],
)
def test_every_option_with_a_default_shows_it_in_help(command, capsys):
    """--model-channels, --num-res-blocks, --num-heads, --num-head-channels and --loss-type (ddpm),
    --checkpoint-every (the supervised commands), phantoms' --size, --seed, --standard-fraction and demo's --seed
    showed no default (an option without help text gets none from argparse)."""
    from diffice.cli import build_parser

    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    entries = _help_entries(command, capsys)
    for action in parser._actions:
        shown = getattr(action, "shown_default", action.default)
        if action.nargs == 0 or shown is None or action.default == argparse.SUPPRESS:
            continue  # switches, and options whose absence means "not given"
        text = entries[action.option_strings[0]]
        assert "default" in text, text


def test_demo_models_help_names_the_run_s_own_models(capsys):
    """`diffice metrics --demo-models` said "(default: the bundled models)"; the default is the demo models that
    made the run, as run_settings.json records them."""
    text = _help_entries(["metrics"], capsys)["--demo-models"]
    assert "those that made the run" in text and "run_settings.json" in text


def test_the_closing_progress_line_keeps_the_last_note():
    """In a log (not a terminal) the closing line of a training run read "train [###...] 32/200 16.0% elapsed 00:05
    eta 00:29 " without the loss the lines before it showed."""
    import io

    from diffice.progress import ProgressBar

    log = io.StringIO()
    bar = ProgressBar(10, label="train", stream=log)
    bar.update(1, note="loss 0.9000")
    bar.update(2, note="loss 0.8000")  # within the 5 s between lines: not printed
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[1].startswith("train [") and " 2/10 " in lines[1] and lines[1].endswith("loss 0.8000")


def test_the_progress_bar_on_a_terminal_fits_its_width(monkeypatch):
    """The bar is redrawn with a carriage return, which only goes back to the start of the terminal's last row:
    explain's line (110 characters, padded to at least 100) wrapped in an 80-column terminal and every redraw left
    a row behind."""
    import io
    import os

    import diffice.progress as progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return 2

    monkeypatch.setattr(progress.os, "get_terminal_size", lambda fd: os.terminal_size((80, 24)))
    term = Terminal()
    bar = progress.ProgressBar(80, label="explain", stream=term, min_interval=0.0)
    for done in range(1, 81, 8):
        bar.update(done, note=f"images 0/8 it 1 lambda#1 step {done}/5 active 8")
    bar.close()
    rows = term.getvalue().rstrip("\n").split("\r")[1:]
    assert len(rows) >= 10 and all(len(row) < 80 for row in rows), max(map(len, rows))


@pytest.mark.parametrize(
    "argv, said",
    [
        (["explain", "--images", "in", "--out", "o", "--tau", "abc"], "diffice explain: error: argument --tau"),
        (["train", "ddpm", "--images", "in"], "diffice train ddpm: error: the following arguments are required"),
        (["phantoms", "--out", "o", "--n", "x"], "diffice phantoms: error: argument --n"),
        ([], "diffice: error: the following arguments are required: command"),
    ],
)
def test_a_usage_error_is_one_line(argv, said, capsys):
    """argparse printed the whole usage before its error line: 25 lines for explain, in every job's log."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(said) and err[0].endswith("--help lists the options)"), err


def test_the_first_progress_line_has_no_eta_from_the_setup(monkeypatch):
    """The rate counted from the bar's creation, so setup before the first unit made the first line of a log say
    `phantoms [---] 1/3000 0.0% elapsed 00:03 eta 3:05:12` for a one-minute job; it now counts from the first
    update (no estimate until there is a second)."""
    import io

    import diffice.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = progress.ProgressBar(3000, label="phantoms", stream=log)
    clock[0] += 3.0  # generating the first chunk
    bar.update(1)
    clock[0] += 6.0  # then 500 images in 6 s
    bar.update(501)
    first, second = log.getvalue().splitlines()
    assert "elapsed 00:03 eta --:--" in first
    assert "elapsed 00:09 eta 00:29" in second  # 2499 images at 500 per 6 s: 29.99 s


@pytest.mark.parametrize("command", ["demo", "phantoms", "sweep"])
def test_an_output_folder_under_a_file_is_named_as_explain_names_it(command, tmp_path, capsys):
    """demo, phantoms and sweep said "[Errno 20] Not a directory: '...'" where explain says which --out it cannot
    write."""
    (tmp_path / "afile").write_text("")
    out = str(tmp_path / "afile" / "x")
    config = tmp_path / "sweep.toml"
    config.write_text('[sweep]\nmodels = "demo"\nphantoms = 1\nout = "o"\nmethod = ["diff-ice"]\n')
    args = {
        "demo": ["demo", "--out", out],
        "phantoms": ["phantoms", "--out", out, "--n", "1"],
        "sweep": ["sweep", "--config", str(config), "--out", out],
    }[command]
    assert main([*args, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"diffice {command}: error: cannot write the output folder {out}: Not a directory")
    assert "Errno" not in err and err.count("\n") == 1

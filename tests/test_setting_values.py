"""Every setting value is checked where it enters: the run config (a TOML file, the command line's overrides), a
sweep's [sweep] section, Explainer / ExplainerConfig keyword arguments, the sampler's seed and keys. A bad value is a
ValueError naming the file (when it comes from one), the section and the key, with what it takes and what it got;
never an internal TypeError, never a silent coercion ("false" used to mean true, 2.5 images a batch 2, 0 one) or a
wrap-around (seed 2**64 used to be seed 0, -1 seed 2**64 - 1)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import tiny_unet
from test_explain import LinearClassifier, PixelL2, images

from diffice import GaussianDiffusion, ops
from diffice.cli import main
from diffice.data.images import MAX_IMAGE_PIXELS
from diffice.explain.config import load_config
from diffice.explain.explainer import Explainer, ExplainerConfig
from diffice.explain.sweep import load_sweep
from diffice.explain.sweep.config import MAX_PHANTOMS

DEMO = '[models]\npreset = "demo"\n[method]\niterations = 1\ntau = 2\n'


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def with_line(section, line):
    """The demo config with `line` in [section] (replacing the key's line there if it has one)."""
    key = line.split("=")[0].strip()
    body = "\n".join(ln for ln in DEMO.splitlines() if ln.split("=")[0].strip() != key) + "\n"
    if f"[{section}]" in body:
        return body.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    return body + f"[{section}]\n{line}\n"


def file_error(path, section, key, got):
    return re.escape(f"{path}: [{section}] {key} must be ") + ".*" + re.escape(f", got {got}")


# ---- the run config file: each value of its default's kind, named with the file when it is not ----

BAD_FILE_VALUES = [
    # true/false settings: only true or false ("false" used to run with clipping, 2 and "no" as true)
    ("method", 'clip = "false"', "clip", "'false'"),
    ("method", "clip = 0", "clip", "0"),
    ("method", 'scale_grads = "no"', "scale_grads", "'no'"),
    ("method", "scale_grads = 2", "scale_grads", "2"),
    ("models", 'use_new_attention_order = "true"', "use_new_attention_order", "'true'"),
    # integers: no floats, strings or bools (these were raw TypeErrors naming neither the file nor the key)
    ("method", "tau = 2.0", "tau", "2.0"),
    ("method", 'tau = "2"', "tau", "'2'"),
    ("method", "tau = true", "tau", "True"),
    ("method", "iterations = 1.5", "iterations", "1.5"),
    ("method", "lambda_c = 40", "lambda_c", "40"),  # a list is meant: lambda_c = [40]
    ("method", "lambda_c = []", "lambda_c", "[]"),
    ("method", 'lambda_c = [40, "60"]', "lambda_c", "[40, '60']"),
    ("method", "lambda_c = [true]", "lambda_c", "[True]"),
    ("method", 'lambda_p = "30"', "lambda_p", "'30'"),
    ("method", "lambda_p = nan", "lambda_p", "nan"),
    ("method", 'method = ["diff-ice"]', "method", "['diff-ice']"),  # was TypeError: unhashable type: 'list'
    ("method", 'grad_at = "next"', "grad_at", "'next'"),
    ("method", "mask_warmup = -1", "mask_warmup", "-1"),
    ("diffusion", "steps = 1000.0", "steps", "1000.0"),
    ("models", "device = 0", "device", "0"),
    ("models", 'perceptual_taps = "layer4"', "perceptual_taps", "'layer4'"),
    # [run]
    ("run", "image_size = 64", "image_size", "64"),
    ("run", "image_size = [64.5, 80]", "image_size", "[64.5, 80]"),
    ("run", "image_size = [0, 0]", "image_size", "[0, 0]"),
    ("run", "image_size = [-64, -80]", "image_size", "[-64, -80]"),
    ("run", "image_size = [64, 80, 1]", "image_size", "[64, 80, 1]"),
    ("run", "image_size = [64000, 80000]", "image_size", "[64000, 80000]"),  # allocated until OOM-killed
    ("run", "batch_size = 0", "batch_size", "0"),  # 0 and -1 used to be batches of 1, 2.5 of 2
    ("run", "batch_size = -1", "batch_size", "-1"),
    ("run", "batch_size = 2.5", "batch_size", "2.5"),
    ("run", "seed = 1.5", "seed", "1.5"),  # recorded as 1.5 in run_settings.json, run as seed 1
    ("run", "seed = -1", "seed", "-1"),  # was seed 2**64 - 1
    ("run", 'seed = "a"', "seed", "'a'"),
    ("run", 'target = "1"', "target", "'1'"),  # an index of f's outputs, never a name
    ("run", "target = 1.0", "target", "1.0"),
    ("run", "target = -1", "target", "-1"),
    ("run", "target = false", "target", "False"),
]


@pytest.mark.parametrize("section, line, key, got", BAD_FILE_VALUES)
def test_bad_file_values_name_the_file_and_key(tmp_path, section, line, key, got):
    path = write(tmp_path, with_line(section, line))
    with pytest.raises(ValueError, match=file_error(path, section, key, got)):
        load_config(path, {})


def test_the_largest_toml_seed_is_taken(tmp_path):
    # TOML's integers stop at 2**63 - 1 (the command line and the Python API reach 2**64 - 1, below)
    path = write(tmp_path, with_line("run", "seed = 9223372036854775807"))
    assert load_config(path, {})["run"]["seed"] == 2**63 - 1


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("clip", "false", r"method\.clip \(--clip\) must be true or false, got 'false'"),
        ("clip", 1, r"method\.clip \(--clip\) must be true or false, got 1"),
        ("scale_grads", "no", r"method\.scale_grads \(--scale-grads\) must be true or false, got 'no'"),
        ("seed", 2**64, r"run\.seed \(--seed\) must be an integer in \[0, 2\*\*64\), got 18446744073709551616"),
        ("seed", 2**70, r"run\.seed \(--seed\) must be an integer in \[0, 2\*\*64\)"),
        ("seed", -1, r"run\.seed \(--seed\) must be an integer in \[0, 2\*\*64\), got -1"),
        ("seed", True, r"run\.seed \(--seed\) must be .*, got True"),
        ("seed", 1.5, r"run\.seed \(--seed\) must be .*, got 1\.5"),
        ("batch_size", 0, r"run\.batch_size \(--batch-size\) must be an integer >= 1, got 0"),
        ("batch_size", 2.5, r"run\.batch_size \(--batch-size\) must be an integer >= 1, got 2\.5"),
        ("image_size", [0, 0], r"run\.image_size \(--image-size\) must be two integers \[height, width\], each >= 1"),
        ("image_size", (64, 80, 1), r"run\.image_size \(--image-size\) must be two integers"),
        ("image_size", [2, MAX_IMAGE_PIXELS // 2 + 1], r"at most 33554432 \(2\*\*25\) pixels in all"),
        ("tau", 2.0, r"method\.tau \(--tau\) must be an integer >= 1, got 2\.0"),
        ("lambda_c", 40, r"method\.lambda_c \(--lambda-c\) must be a non-empty list of finite numbers >= 0.*got 40"),
        ("method", ["diff-ice"], r"method\.method \(--method\) must be one of .*, got \['diff-ice'\]"),
        (
            "variance",
            "tiny",
            r"diffusion\.variance \(--variance\) must be one of \['learned', 'small', 'large'\], "
            "got 'tiny'",
        ),
    ],
)
def test_bad_overrides_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, {key: value})


def test_good_values_are_taken_as_written(tmp_path):
    path = write(tmp_path, with_line("run", "seed = 7\nbatch_size = 3\nimage_size = [64, 80]\ntarget = 0"))
    cfg = load_config(path, {"clip": False, "scale_grads": np.bool_(True), "lambda_c": (1, 2.5)})
    assert cfg["run"] == dict(image_size=[64, 80], batch_size=3, seed=7, target=0)
    assert cfg["method"]["clip"] is False and cfg["method"]["lambda_c"] == (1, 2.5)
    # the edges: the largest seed, an image of exactly the pixel limit, numpy integers
    cfg = load_config(None, {"seed": 2**64 - 1, "image_size": [1, MAX_IMAGE_PIXELS], "batch_size": np.int64(2)})
    assert cfg["run"]["seed"] == 2**64 - 1 and cfg["run"]["image_size"] == [1, MAX_IMAGE_PIXELS]
    # respacing is read with str(): "400" or 400 both mean 400 steps
    assert load_config(None, {"respacing": 40})["diffusion"]["respacing"] == 40


# ---- the command line: a one-line error and exit status 2, before anything runs or is written ----


@pytest.mark.parametrize(
    "args, match",
    [
        (
            ["--seed", str(2**64)],
            r"run\.seed \(--seed\) must be an integer in \[0, 2\*\*64\), "
            "got 18446744073709551616",
        ),
        (["--seed", "-1"], r"run\.seed \(--seed\) must be an integer in \[0, 2\*\*64\), got -1"),
        (["--batch-size", "0"], r"run\.batch_size \(--batch-size\) must be an integer >= 1, got 0"),
        (["--batch-size", "-1"], r"run\.batch_size \(--batch-size\) must be an integer >= 1, got -1"),
        (["--image-size", "0", "0"], r"run\.image_size \(--image-size\) must be two integers"),
        (
            ["--image-size", "64000", "80000"],
            r"run\.image_size \(--image-size\) must be two integers"
            r".*got \[64000, 80000\]",
        ),
    ],
)
def test_cli_refuses_bad_flags_at_start_up(tmp_path, capsys, args, match):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    flags = ["--models", "demo", "--images", str(tmp_path / "in"), "--out", str(out), "--iterations", "1"]
    assert main(["explain", *flags, "--tau", "2", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffice explain: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(match, err) and not out.exists()


@pytest.mark.parametrize("line", ['clip = "false"', "tau = 2.0", "lambda_c = 40", 'method = ["diff-ice"]'])
def test_cli_refuses_bad_config_values_naming_the_file(tmp_path, capsys, line):
    path = write(tmp_path, with_line("method", line))
    (tmp_path / "in").mkdir()
    assert main(["explain", "--config", path, "--images", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    key = line.split()[0]
    assert err.startswith(f"diffice explain: error: {path}: [method] {key} must be ") and "Traceback" not in err


# ---- a sweep's [sweep] section and its [run] ----

SWEEP = '[sweep]\nmodels = "demo"\nmethod = ["diff-ice-1"]\n'


@pytest.mark.parametrize(
    "extra, match",
    [
        ('phantoms = "x"', r"\[sweep\] phantoms must be an integer in \[1, 10000\], got 'x'"),
        ("phantoms = 2.5", r"\[sweep\] phantoms must be an integer in \[1, 10000\], got 2\.5"),  # ran 2 images
        ("phantoms = 0", r"\[sweep\] phantoms must be an integer in \[1, 10000\], got 0"),
        ("phantoms = 100000000000", r"\[sweep\] phantoms must be .*, got 100000000000"),  # minutes, no output
        ("phantoms = 2\nphantom_seed = -1", r"\[sweep\] phantom_seed must be an integer in \[0, 2\*\*64\)"),
        ("phantoms = 2\nphantom_seed = 1.5", r"\[sweep\] phantom_seed must be .*, got 1\.5"),
        ("phantoms = 2\nout = 5", r"\[sweep\] out must be a folder"),
        ("phantoms = 2\ndemo_models = 5", r"\[sweep\] demo_models must be a folder"),
        ('phantoms = 2\nclip = ["false"]', r"clip must be true or false \(a bool\), got 'false'"),
        ("phantoms = 2\ntau = [2.0]", r"tau must be an int, got 2\.0"),
        ('phantoms = 2\n[run]\nseed = "a"', r"\[run\] seed must be an integer in \[0, 2\*\*64\), got 'a'"),
        ("phantoms = 2\n[run]\nseed = 1.5", r"\[run\] seed must be .*, got 1\.5"),
        ("phantoms = 2\n[run]\nbatch_size = 2.5", r"\[run\] batch_size must be an integer >= 1, got 2\.5"),
        ('phantoms = 2\n[run]\ntarget = "1"', r"\[run\] target must be an integer >= 0, got '1'"),
        ("phantoms = 2\n[run]\nimage_size = [64.5, 80]", r"\[run\] image_size must be two integers"),
    ],
)
def test_sweep_values_are_checked(tmp_path, extra, match):
    path = write(tmp_path, SWEEP + extra + "\n", "s.toml")
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + match):
        load_sweep(path)


def test_sweep_limits_and_overrides(tmp_path):
    path = write(tmp_path, SWEEP + f"phantoms = {MAX_PHANTOMS}\nphantom_seed = {2**63 - 1}\n", "s.toml")
    spec = load_sweep(path)  # nothing is generated while loading
    assert spec.sweep["phantoms"] == MAX_PHANTOMS and spec.sweep["phantom_seed"] == 2**63 - 1
    with pytest.raises(ValueError, match=r"run\.batch_size \(--batch-size\) must be an integer >= 1, got 0"):
        load_sweep(path, dict(batch_size=0))
    with pytest.raises(ValueError, match=r"sweep\.out must be a folder"):
        load_sweep(path, dict(out=3))
    files = write(tmp_path, SWEEP.replace('"demo"', '"files"') + "phantoms = 2\n", "f.toml")
    with pytest.raises(ValueError, match=re.escape(files) + r': \[sweep\] models must be "demo" .*got \'files\''):
        load_sweep(files)


# ---- the Python API: Explainer / ExplainerConfig keywords, explain's seed and keys, the noise op ----


@pytest.fixture(scope="module")
def tiny():
    return tiny_unet(), GaussianDiffusion(1000, "linear", "40", learn_sigma=True)


KW = dict(method="diff-ice", iterations=1, tau=2, lambda_c=(5.0,), lambda_p=1.0)


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(clip="false"), r"clip must be true or false \(a bool\), got 'false'"),
        (dict(clip=0), r"clip must be true or false \(a bool\), got 0"),
        (dict(scale_grads="no"), r"scale_grads must be true or false \(a bool\), got 'no'"),
        (dict(scale_grads=2), r"scale_grads must be true or false \(a bool\), got 2"),
        (dict(method=["diff-ice"]), r"method must be one of .*, got \['diff-ice'\]"),
        (dict(class_loss=["ce"]), r"class_loss must be one of"),
        (dict(precision=["fp32"]), r"precision must be a string"),
        (dict(lambda_c=40), r"lambda_c must list at least one value .*, got 40"),
        (dict(lambda_c=(True,)), r"lambda_c\[0\] must be a finite number >= 0, got True"),
        (dict(lambda_p=True), r"lambda_p must be a finite number >= 0, got True"),
        (dict(lambda_p=10**400), r"lambda_p must be a finite number >= 0"),
    ],
)
def test_explainer_keywords_are_checked(tiny, over, match):
    unet, d = tiny
    with pytest.raises(ValueError, match=match):
        Explainer(unet, d, LinearClassifier(), PixelL2(), **dict(KW, **over))
    with pytest.raises(ValueError, match=match):
        ExplainerConfig(**dict(KW, **over)).validate()


def test_explainer_takes_numpy_bools(tiny):
    unet, d = tiny
    ex = Explainer(unet, d, LinearClassifier(), PixelL2(), **dict(KW, clip=np.bool_(False), scale_grads=True))
    assert ex.config.c_config(0, False)["clip"] == 0


def test_explain_seed_and_keys_do_not_wrap(tiny, rng):
    unet, d = tiny
    ex = Explainer(unet, d, LinearClassifier(), PixelL2(), **KW)
    x = images(rng, 1)
    for seed in (2**64, 2**70, -1):
        with pytest.raises(ValueError, match=rf"seed must be in \[0, 2\*\*64\), got {seed}"):
            ex.explain(x, seed=seed, warn=False)
    for seed in (1.5, True, np.bool_(True), "0"):
        with pytest.raises(TypeError, match=r"seed must be an int in \[0, 2\*\*64\)"):
            ex.explain(x, seed=seed, warn=False)
    with pytest.raises(ValueError, match=r"keys must be integers in \[0, 2\*\*64\), got -1"):
        ex.explain(x, keys=np.array([-1]), warn=False)
    with pytest.raises(ValueError, match="target 1180591620717411303424 is not a class"):
        ex.explain(x, target=2**70, warn=False)
    # the valid seeds are the sampler's seeds as they are: the largest is not 0's, nor -1's old alias
    assert ex.config.c_config(2**64 - 1, False)["seed"] == 2**64 - 1
    top = ex.explain(x, seed=2**64 - 1, warn=False).counterfactuals
    assert not np.array_equal(top, ex.explain(x, seed=0, warn=False).counterfactuals)
    assert np.array_equal(top, ex.explain(x, seed=np.uint64(2**64 - 1), warn=False).counterfactuals)


def test_gaussian_noise_seed_and_keys_do_not_wrap():
    keys = np.array([7], np.uint64)
    for seed in (2**64, -1, -(2**63)):
        with pytest.raises(ValueError, match=rf"gaussian_noise: seed must be in \[0, 2\*\*64\), got {seed}"):
            ops.gaussian_noise((2, 2), seed, keys, 1)
    for seed in (1.5, True, np.float64(3.0)):
        with pytest.raises(TypeError, match=r"gaussian_noise: seed must be an int"):
            ops.gaussian_noise((2, 2), seed, keys, 1)
    for bad in ([2**64], [-1], np.array([3, -2], np.int64)):
        with pytest.raises(ValueError, match=r"gaussian_noise: keys must be integers in \[0, 2\*\*64\)"):
            ops.gaussian_noise((2, 2), 0, bad, 1)
    # valid seeds and keys keep their streams: a Python int key past 2**63 is the same uint64 key
    top = ops.gaussian_noise((2, 2), 2**64 - 1, [2**63 + 7], 1)
    assert np.array_equal(top, ops.gaussian_noise((2, 2), np.uint64(2**64 - 1), np.array([2**63 + 7], np.uint64), 1))
    assert not np.array_equal(top, ops.gaussian_noise((2, 2), 0, [2**63 + 7], 1))


def test_every_setting_has_a_check():
    """A new key of SECTIONS without a rule in CHECKS would enter unchecked."""
    from diffice.explain.config import CHECKS, SECTIONS

    assert [key for values in SECTIONS.values() for key in values if key not in CHECKS] == []

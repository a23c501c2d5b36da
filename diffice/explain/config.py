"""The run config of `diffice explain` (and the base of a sweep's): its sections, defaults, allowed values and
help, read from TOML with command-line overrides.

Every finished image gets its PNGs and a JSON record, each written atomically (temporary file + rename); the
results table (results.csv) is rebuilt from the records after every batch. A run stopped at any moment (Ctrl-C, a
crash, a killed job) restarts where it stopped: images with a record are skipped, nothing finished is redone or
lost, nothing half-written is left behind. Images that cannot be read are listed in errors.csv and skipped.

Config (TOML; every key is also a command-line flag, which wins):

    [models]
    # preset = "demo"                    # the bundled demo models instead of the files below (preset_defaults)
    unet = "ddpm.safetensors"           # guided-diffusion UNet (.safetensors / .pt / .npz)
    num_heads = 4                        # attention layout (not inferable from the weights)
    num_head_channels = -1
    use_new_attention_order = false
    classifier = "classifier.safetensors"
    classifier_kind = "plane"            # "plane" (segmenter + SonoNet), "sononet" (+ target_class)
    target_class = 5                     # sononet: the class used as the standard plane (5 = Brain (Tv.))
    perceptual = "resnet50.pt"           # optional
    perceptual_kind = "resnet50-radimagenet"   # resnet50 | resnet18 | resnet50-radimagenet | resnet18-radimagenet
                                         # | pixel-l1 | pixel-l2 (no file); lambda_p > 0 needs one of them
    perceptual_variant = "mse"           # "mse" (DiME's form) or "normalized" (MONAI's)
    perceptual_taps = ["layer4"]

    [diffusion]
    steps = 1000
    schedule = "linear"
    respacing = "400"
    variance = "learned"                 # learned | small | large

    [method]                             # diffice.explain.explainer.ExplainerConfig
    method = "diff-ice"
    iterations = 5
    tau = 120
    lambda_c = [40, 60, 80]
    lambda_p = 30

    [run]
    image_size = [224, 288]
    batch_size = 10
    seed = 0
    target = 1                           # the class the counterfactuals move towards

Every key's description and allowed values: CONFIG_HELP and CONFIG_CHOICES below (``diffice explain --help``).
Every value must be of its default's kind (CHECKS below): true/false settings take only true or false, integers
only integers (2.0 and "2" are refused), lists only lists (lambda_c = [40], not 40); seeds are integers in
[0, 2**64) (never taken modulo 2**64), image_size two integers >= 1 of at most 2**25 pixels in all, batch_size
>= 1. A bad value is a ValueError "<file>: [section] key must be ..., got ..." when the config is loaded.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import MAX_IMAGE_PIXELS
from ..models.diffusion import VARIANCES
from ..models.network import is_finite_nonnegative
from ..ops._backend import PRECISIONS
from ..ops._diffusion import SEED_LIMIT
from .demo import DEMO_DIFFUSION, DEMO_METHOD, DEMO_SIZE
from .explainer import METHODS, ExplainerConfig

RUN_DEFAULTS: dict[str, Any] = dict(image_size=[224, 288], batch_size=10, seed=0, target=1)
MODEL_DEFAULTS: dict[str, Any] = dict(
    preset=None,
    unet=None,
    num_heads=4,
    num_head_channels=-1,
    use_new_attention_order=False,
    classifier=None,
    classifier_kind="plane",
    target_class=5,
    perceptual=None,
    perceptual_kind="resnet50-radimagenet",
    perceptual_variant="mse",
    perceptual_taps=["layer4"],
    device="cpu",
)
MODEL_FILE_KEYS = ("unet", "classifier", "perceptual")  # the [models] keys that name files
DIFFUSION_DEFAULTS: dict[str, Any] = dict(steps=1000, schedule="linear", respacing="400", variance="learned")
SECTIONS = {
    "models": MODEL_DEFAULTS,
    "diffusion": DIFFUSION_DEFAULTS,
    "run": RUN_DEFAULTS,
    "method": {f.name: f.default for f in dataclasses.fields(ExplainerConfig)},
}

PIXEL_KINDS = ("pixel-l1", "pixel-l2")  # Lp without a network file (diffice.models.perceptual.PixelLoss)

# The allowed values of the enumerated keys (argparse choices of `diffice explain`; checked by their readers).
CONFIG_CHOICES: dict[str, list[Any]] = dict(
    preset=["demo"],
    classifier_kind=["plane", "sononet"],
    perceptual_kind=["resnet50", "resnet18", "resnet50-radimagenet", "resnet18-radimagenet", *PIXEL_KINDS],
    perceptual_variant=["mse", "normalized"],
    perceptual_taps=["stem", "layer1", "layer2", "layer3", "layer4"],
    schedule=["linear", "cosine"],
    variance=list(VARIANCES),
    method=list(METHODS),
    class_loss=["ce", "logit"],
    grad_at=["current", "previous"],
    precision=list(PRECISIONS),
)

# What every config key means: the help of its `diffice explain` flag (the default is appended there).
CONFIG_HELP: dict[str, str] = dict(
    # [models]
    preset="'demo': the models bundled with diffice (the phantom DDPM, plane classifier f and the demo's pixel "
    "Lp, mean squared distance) instead of unet/classifier/perceptual files; the demo's settings (L=5, "
    "tau 30 of 100 respaced steps with beta~ as the step variance, lambda_c 40 60 80, lambda_p 3000, 64x80 "
    "images) become the defaults, and other flags still override [method] and [run]. $DIFFICE_DEMO_MODELS points "
    "it at another folder "
    "of demo models",
    unet="the guided-diffusion UNet, the denoiser (.safetensors / .pt / .npz); required unless --models demo",
    num_heads="attention heads of the UNet (not inferable from its weights)",
    num_head_channels="channels per attention head of the UNet (-1: use num_heads)",
    use_new_attention_order="the UNet's attention splits qkv before the heads (guided-diffusion's option)",
    classifier="the guiding classifier f (a diffice model file, or SonoNet weights with --classifier-kind "
    "sononet); required unless --models demo",
    classifier_kind="plane: diffice's standard-plane classifier f = l(s(x), x), 2 outputs (0 = non-standard, "
    "1 = standard plane); sononet: a 14-class SonoNet made binary with --target-class (crop raw scanner frames "
    "first, as diffice.sononet_preprocess does: README)",
    target_class="only with --classifier-kind sononet: which of SonoNet's 14 classes counts as the standard "
    "plane (5 = 'Brain (Tv.)'); f then has 2 outputs, 0 = any other class, 1 = this one. Not the "
    "direction of the counterfactuals: that is --target",
    perceptual="the perceptual network of Lp (ResNet weights); not needed for the pixel-l1/pixel-l2 kinds. With "
    "no Lp, lambda_p must be 0",
    perceptual_kind="the Lp: a ResNet's features (torchvision or Keras-converted RadImageNet layout; needs "
    "--perceptual) or the mean pixel distance to the input (pixel-l1, pixel-l2; no file)",
    perceptual_variant="feature distance of a ResNet Lp: mse (DiME's) or normalized (MONAI's, unit-norm "
    "feature vectors)",
    perceptual_taps="the ResNet stages whose features Lp compares",
    device="where the models and the sampler run: cpu, cuda, cuda:N (a GPU; see the README's CUDA section)",
    # [diffusion]
    steps="training diffusion steps T of the UNet",
    schedule="the noise schedule the UNet was trained with",
    respacing="sampling steps: 'K' (K evenly spaced, e.g. 400), 'a,b,...' (section counts), 'ddimK', or '' "
    "(none); tau counts these steps",
    variance="the reverse step's variance: learned (the UNet's learned range, as the paper; a UNet without "
    "learn_sigma: fixed large), small (beta~) or large (beta), which ignore a learn_sigma UNet's v. The demo "
    "uses small: at its 100 steps the learned range is wide at the last steps and the counterfactuals get "
    "saturated blotches (docs/artefacts.md)",
    # [method]
    method="diff-ice (L iterations), diff-ice-1 (one), diff-ice-1-xt (gradient through the UNet), dime, "
    "fastdime (with its mask)",
    iterations="Diff-ICE's L: iterations, each starting from the previous output (1 for the other methods)",
    tau="noise level each iteration starts from, in respaced steps (must be below the respacing)",
    lambda_c="classifier-loss weights, tried in order until an image is classified as --target",
    lambda_p="weight of Lp, the fidelity to the input; > 0 needs an Lp (--perceptual FILE, or --perceptual-kind "
    "pixel-l2); 0: no fidelity term",
    lambda_l1="DiME's l1 term on the noisy image (0: off)",
    lambda_l2="DiME's l2 term on the noisy image (0: off)",
    class_loss="ce: cross-entropy towards --target; logit: DiME's -logit of --target",
    grad_at="the x0 estimate the guiding gradient is taken at: current (the paper) or previous (FastDiME's code)",
    scale_grads="divide the guiding gradient by sqrt(alpha_bar) (always on for dime)",
    clip="clamp the x0 estimate to [-1, 1]",
    mask_dilation="fastdime: max-pool size (odd) that dilates its mask of the change from the input",
    mask_threshold="fastdime: pixels whose dilated change (0..1 of the largest) is below this keep the input",
    mask_warmup="fastdime: reverse steps before the mask is applied",
    precision="what the sampler's convolutions and matrix products may use: fp32 (parity with the CPU), or on a GPU "
    "(device cuda) tf32 (TF32 tensor cores) or bf16 (bf16 operands, fp32 sums); everything else stays fp32 (the "
    "README's CUDA section gives their deviation)",
    # [run]
    image_size="every image is converted to grayscale and resized to this (the models' size)",
    batch_size="images explained together (does not change the results)",
    seed="sampler seed (each image's noise also follows its pixels)",
    target="the class the counterfactuals move towards: an index of f's outputs. Both classifier kinds have 2 "
    "(0 = not a standard plane, 1 = standard plane), so 1 asks what would make each image a standard plane. "
    "Not a SonoNet class: that is --target-class",
)


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file as a dict; FileNotFoundError / ValueError naming the file."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"{path}: not a valid TOML config ({exc})") from None


# sections a run config may hold that other modules read (diffice.explain.cluster: [cluster]; diffice.explain.sweep:
# the rest)
OTHER_SECTIONS = ("cluster",)


def preset_defaults(name: str) -> dict[str, dict[str, Any]]:
    """The defaults a [models] preset puts over SECTIONS (the config file and flags still win).

    "demo": the bundled demo models (diffice.explain.demo: the phantom DDPM, the plane classifier f and the pixel Lp,
    64x80 images) with the demo's [method], [diffusion] and image size.
    """
    if name != "demo":
        raise ValueError(f"models.preset must be one of {CONFIG_CHOICES['preset']}, got {name!r}")

    return dict(
        models=dict(perceptual_kind="pixel-l2"),
        diffusion=dict(DEMO_DIFFUSION),
        method=dict(DEMO_METHOD),
        run=dict(image_size=list(DEMO_SIZE)),
    )


# ---- every value's kind (checked as it enters: from the config file, naming the file, or as an override) ----


def is_int(value: Any) -> bool:
    """An integer setting's value: an int or numpy integer, not a bool (2.0 and "2" are not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _int_at_least(low: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if is_int(value) and value >= low else f"an integer >= {low}"

    return check


def _number(value: Any) -> str | None:
    return None if is_finite_nonnegative(value) else "a finite number >= 0"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, (bool, np.bool_)) else "true or false"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _path(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "a file path (a string)"


def _choice(key: str, optional: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if (optional and value is None) or (isinstance(value, str) and value in CONFIG_CHOICES[key]):
            return None
        return f"one of {CONFIG_CHOICES[key]}"

    return check


def _choices(key: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (list, tuple)) and len(value) > 0
        if ok and all(isinstance(v, str) and v in CONFIG_CHOICES[key] for v in value):
            return None
        return f"a non-empty list of {CONFIG_CHOICES[key]}"

    return check


def _respacing(value: Any) -> str | None:
    # diffice.models.diffusion reads it with str(): "400", "ddim50", "10,20" or the integer 400
    return None if isinstance(value, str) or is_int(value) else 'a string such as "400" or "ddim50" (or an integer)'


def _head_channels(value: Any) -> str | None:
    return None if is_int(value) and (value == -1 or value >= 1) else "an integer: -1 (use num_heads) or >= 1"


def _lambda_c(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    if ok and all(_number(v) is None for v in value):
        return None
    return "a non-empty list of finite numbers >= 0, e.g. [40, 60, 80] (one weight: [40])"


def _image_size(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v >= 1 for v in value)
    if ok and int(value[0]) * int(value[1]) <= MAX_IMAGE_PIXELS:
        return None
    return f"two integers [height, width], each >= 1, at most {MAX_IMAGE_PIXELS} (2**25) pixels in all"


def check_seed_value(value: Any) -> str | None:
    """The seed rule (diffice.ops._diffusion.check_seed's) as a CHECKS entry: None, or what a seed must be."""
    return None if is_int(value) and 0 <= value < SEED_LIMIT else "an integer in [0, 2**64)"


CHECKS: dict[str, Callable[[Any], str | None]] = dict(
    # [models]
    preset=_choice("preset", optional=True),
    unet=_path,
    num_heads=_int_at_least(1),
    num_head_channels=_head_channels,
    use_new_attention_order=_bool,
    classifier=_path,
    classifier_kind=_choice("classifier_kind"),
    target_class=_int_at_least(0),
    perceptual=_path,
    perceptual_kind=_choice("perceptual_kind"),
    perceptual_variant=_choice("perceptual_variant"),
    perceptual_taps=_choices("perceptual_taps"),
    device=_string,
    # [diffusion]
    steps=_int_at_least(1),
    schedule=_choice("schedule"),
    respacing=_respacing,
    variance=_choice("variance"),
    # [method]
    method=_choice("method"),
    iterations=_int_at_least(1),
    tau=_int_at_least(1),
    lambda_c=_lambda_c,
    lambda_p=_number,
    lambda_l1=_number,
    lambda_l2=_number,
    class_loss=_choice("class_loss"),
    grad_at=_choice("grad_at"),
    scale_grads=_bool,
    clip=_bool,
    mask_dilation=_int_at_least(0),
    mask_threshold=_number,
    mask_warmup=_int_at_least(0),
    precision=_choice("precision"),
    # [run]
    image_size=_image_size,
    batch_size=_int_at_least(1),
    seed=check_seed_value,
    target=_int_at_least(0),  # an index of f's outputs (its upper end: the classifier's, checked by the Explainer)
)


# the command-line flags of the config keys whose flag is not "--" + key with "-" for "_"
_FLAG_NAMES = {"preset": ["--models", "--preset"]}


def config_flags(key: str) -> list[str]:
    """The `diffice explain` flags that set config key `key` (e.g. --target-class for target_class)."""
    return _FLAG_NAMES.get(key, ["--" + key.replace("_", "-")])


def check_value(section: str, key: str, value: Any, source: str | None = None) -> None:
    """ValueError unless `value` is of the kind [section] key takes (CHECKS: the kind of its default, with its range):
    "<source>: [section] key must be ..., got ..." for a value from a config file, "section.key (--flag) must be ...,
    got ..." for one given otherwise (a command-line flag, an override). Nothing is converted: 2.0 is not an integer,
    "false" and 0 are not false, 2**64 is not a seed."""
    what = CHECKS[key](value)
    if what is not None:
        where = f"{source}: [{section}] {key}" if source else f"{section}.{key} ({config_flags(key)[0]})"
        raise ValueError(f"{where} must be {what}, got {value!r}")


def check_sections(cfg: dict[str, dict[str, Any]], source: str | None = None) -> None:
    """:func:`check_value` over every key of a run config's sections (e.g. one built or changed in code)."""
    for section, values in cfg.items():
        for key, value in values.items():
            if key in CHECKS:
                check_value(section, key, value, source)


def _merge(
    path: str | None,
    data: dict[str, Any] | None,
    overrides: dict[str, Any],
    preset: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    source = path or "config"
    cfg = {name: dict(defaults, **(preset or {}).get(name, {})) for name, defaults in SECTIONS.items()}
    for section, values in (data or {}).items():
        if section in OTHER_SECTIONS:
            continue
        if section not in cfg or not isinstance(values, dict):
            raise ValueError(f"{source}: unknown section [{section}]; known: {sorted(cfg)}")
        unknown = set(values) - set(cfg[section])
        if unknown:
            raise ValueError(f"{source}: unknown keys in [{section}]: {sorted(unknown)}")
        for key, value in values.items():
            check_value(section, key, value, source)
        cfg[section].update(values)
    if path:
        base = Path(path).resolve().parent
        for key in MODEL_FILE_KEYS:  # model paths are relative to the config file
            value = cfg["models"][key]
            if value and not os.path.isabs(value):
                cfg["models"][key] = str(base / value)
    for key, value in overrides.items():
        if value is None:
            continue
        for section, entries in cfg.items():
            if key in entries:
                check_value(section, key, value)
                if key in MODEL_FILE_KEYS and value and not os.path.isabs(value):
                    value = os.path.abspath(value)  # recorded as found now: metrics and resumes run from elsewhere
                entries[key] = value
                break
        else:
            raise ValueError(f"unknown option {key}")
    return cfg


def load_config(
    path: str | None, overrides: dict[str, Any], data: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The config file's sections over the defaults, then command-line overrides (flat keys) over both.

    data: the file's parsed TOML when the caller has read it already (diffice.explain.sweep), else it is read from path.
    Sections in OTHER_SECTIONS are left to their readers. With [models] preset (--models demo) the preset's
    defaults (:func:`preset_defaults`) replace SECTIONS' and the other model keys must stay unset.

    Every value of the file and every override is checked as it is read (:func:`check_value`: the kind of the key's
    default and its range, nothing converted), so a bad one is a ValueError naming the file (or the override), the
    section and the key at start-up, never an internal error or a silently changed setting later.
    """
    if path and data is None:
        data = read_toml(path)
    cfg = _merge(path, data, overrides)
    name = cfg["models"]["preset"]
    if name is None:
        return cfg
    preset = preset_defaults(name)
    cfg = _merge(path, data, overrides, preset)
    models = dict(MODEL_DEFAULTS, **preset["models"])
    chosen = sorted(k for k, v in cfg["models"].items() if k not in ("preset", "device") and v != models[k])
    if chosen:
        raise ValueError(
            f"models.preset = {name!r} chooses every model; remove models.{', models.'.join(chosen)} (or the preset)"
        )
    changed = sorted(k for k, v in cfg["diffusion"].items() if str(v) != str(preset["diffusion"][k]))
    if changed:
        raise ValueError(
            f"models.preset = {name!r}: the bundled DDPM samples with the [diffusion] "
            f"{preset['diffusion']}; remove diffusion.{', diffusion.'.join(changed)}"
        )
    return cfg


def check_lambda_p(models: dict[str, Any], lambda_p: float, source: str = "") -> None:
    """ValueError when lambda_p > 0 but the [models] section configures no Lp (which would ignore lambda_p)."""
    if not lambda_p > 0 or models.get("preset") or models["perceptual"] or models["perceptual_kind"] in PIXEL_KINDS:
        return
    where = f"{source}: " if source else ""
    raise ValueError(
        f"{where}method.lambda_p = {lambda_p:g} but no perceptual loss Lp is configured "
        f"(models.perceptual is empty and models.perceptual_kind = {models['perceptual_kind']!r} "
        f"needs that file): give models.perceptual (--perceptual FILE), or set models.perceptual_kind "
        f'= "pixel-l2" (--perceptual-kind pixel-l2: the mean squared pixel distance, no file), or '
        f"method.lambda_p = 0 (--lambda-p 0: no fidelity term)"
    )

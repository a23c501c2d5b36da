"""Loading the models a run needs from the paths and kinds in its config (see diffice.explain.run).

The loader rule (every path that loads a model file goes through :func:`load_model` / :func:`load_classifier` /
:func:`load_unet`: the Python API, ``diffice explain | sweep | metrics | demo``, the cluster workers, and the
classes' ``from_file``):

- a file written by diffice (``diffice train segmenter|classifier|oracle``, :func:`save_model`, ``.save()``) carries
  its structure in the safetensors metadata ``diffice_model`` and is rebuilt from it, every setting included
  (SonoNet's ``standardize``, the segmenter's GroupNorm groups, ...); nothing is taken from defaults;
- a UNet from ``diffice train ddpm`` carries its attention layout in ``diffice_config``, which wins over the
  layout arguments (``[models] num_heads`` ...);
- only a third-party file without that metadata (the SonoNet authors' weights, a guided-diffusion / DiME
  checkpoint) is built by the class's ``from_file`` from the caller's settings; a plane classifier without it is
  refused (its SonoNet's standardize and its segmenter's groups show in no tensor shape and are not guessed:
  ``PlaneClassifier.from_file(path, classifier_factory=..., groups=...)`` then ``.save()`` makes a described file);
- a file whose description contradicts what the caller asked for (``classifier_kind = "sononet"`` and a plane
  classifier file) is a ValueError naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Union

from ..io import _load, peek_safetensors_metadata, save_safetensors
from ..ops._backend import check_backend_name
from .classifier import PlaneClassifier, build_network
from .description import (
    CLASSIFIER_KINDS,
    described_type,
    model_from_description,
    model_metadata,
    model_spec,
    training_settings,
    unet_layout,
    weights_of,
)
from .diffusion import GaussianDiffusion, check_diffusion_section, diffusion_from_section
from .network import config_bool, config_int
from .oracle import ConceptOracle
from .perceptual import PerceptualLoss, PixelLoss
from .resnet import ResNetFeatures
from .sononet import SonoNet, TargetClassView, looks_like_authors_npz
from .unet import UNet

# model_spec, model_metadata, unet_layout: defined in diffice.models.description, still importable from here
__all__ = [
    "load_classifier",
    "load_perceptual",
    "load_run_models",
    "build_model",
    "save_model",
    "read_model_file",
    "training_record",
    "check_unet_diffusion",
    "load_unet",
    "load_model",
    "model_spec",
    "model_metadata",
    "unet_layout",
    "CLASSIFIER_KINDS",
]


def load_classifier(kind: str, path: str, target_class: int = 5, backend: str = "cpu") -> Any:
    """'plane': the standard-plane classifier f = l(s(x), x) (2 classes, 1 = SP);
    'sononet': SonoNet-k with `target_class` viewed as the positive class of a binary classifier.

    A diffice file is built from its own description (the module docstring's rule); its type must be the kind's
    (PlaneClassifier / SonoNet), else ValueError naming the file (for SonoNet weights, the authors' .npz or a
    PyTorch port's state_dict, given as 'plane', saying to pass kind 'sononet'; for a plane classifier's state_dict
    given as 'sononet', kind 'plane'). A target_class that is not one of SonoNet's classes is a ValueError naming
    models.target_class (--target-class) and the classes."""
    if not path:
        raise ValueError("models.classifier: a classifier file is required")
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"models.classifier_kind must be 'plane' or 'sononet', got {kind!r}")
    try:
        model = load_model(path, backend, expect=CLASSIFIER_KINDS[kind], what=f"models.classifier_kind = {kind!r}")
    except ValueError as exc:
        # the authors' SonoNet .npz, recognised as SonoNet.from_file does, or a PyTorch port's state_dict (its first
        # and last tensors' names), given as a plane classifier
        try:
            names, meta = read_model_file(path)
        except (OSError, ValueError):
            raise exc from None
        # (a diffice file says what it holds: a concept oracle's SonoNet tensors do not make it SonoNet weights)
        described = "diffice_model" in meta
        sononet = described_type(meta) == "SonoNet" or (
            not described
            and (looks_like_authors_npz(names) or {"features.0.0.0.weight", "adaption.3.weight"} <= set(names))
        )
        if kind == "plane" and sononet:
            raise ValueError(
                f"{exc}; this looks like SonoNet weights: pass --classifier-kind sononet "
                f'(models.classifier_kind = "sononet")'
            ) from None
        # a plane classifier's state_dict without a description (s and l under their prefixes) given as SonoNet
        plane = not described and {n.split(".")[0] for n in names} >= {"segmenter", "classifier"}
        if kind == "sononet" and plane:
            raise ValueError(
                f"{os.fspath(path)}: not SonoNet weights but, by its segmenter.* and classifier.* tensors, a plane "
                f'classifier f = l(s(x), x): pass --classifier-kind plane (models.classifier_kind = "plane")'
            ) from None
        raise
    if kind == "sononet":
        target = config_int("models.target_class", target_class)
        return TargetClassView(model, target=target, where="models.target_class (--target-class)")
    return model


def load_perceptual(kind: str, path: str, variant: str, taps: Sequence[str], backend: str = "cpu") -> Any:
    """Lp from a ResNet feature network: kind 'resnet50' / 'resnet18' (torchvision layout) or
    'resnet50-radimagenet' / 'resnet18-radimagenet' (Keras-converted RadImageNet layout); 'pixel-l1' /
    'pixel-l2': the mean pixel distance (no file; see diffice.models.perceptual.PixelLoss)."""
    if kind in ("pixel-l1", "pixel-l2"):
        return PixelLoss(kind.split("-")[1], backend=backend)
    if not path:
        return None
    name, _, layout = kind.partition("-")
    depths = {"resnet50": 50, "resnet18": 18}
    if name not in depths or layout not in ("", "radimagenet"):
        raise ValueError(
            f"models.perceptual_kind must be resnet50, resnet18, resnet50-radimagenet, "
            f"resnet18-radimagenet, pixel-l1 or pixel-l2, got {kind!r}"
        )
    features = ResNetFeatures.from_file(path, layout=layout or "torchvision", taps=tuple(taps), backend=backend)
    if features.depth != depths[name]:
        raise ValueError(f"{path}: a ResNet-{features.depth}, but models.perceptual_kind says {kind!r}")
    return PerceptualLoss(features, variant=variant)


def training_record(path: PathLike) -> dict[str, Any]:
    """description.training_settings of a model file, from its header alone (advice for start-up checks: the
    loaders read and check the whole file)."""
    return training_settings(peek_safetensors_metadata(path))


def check_unet_diffusion(path: PathLike, diffusion: dict[str, Any]) -> None:
    """ValueError naming the file and the option when [diffusion] steps or schedule are not those the UNet file was
    trained with (diffice train ddpm records them): its timesteps would not be the ones it learned, and every
    counterfactual silently wrong. Third-party files record nothing and are not checked."""
    record = training_record(path)
    pairs = (("steps", "diffusion_steps", "--steps", "--diffusion-steps"), ("schedule", "noise_schedule", "--schedule"))
    for key, trained_key, flag, *train_flag in pairs:
        trained = record.get(trained_key)
        if trained is not None and str(trained) != str(diffusion.get(key)):
            how = f" (diffice train ddpm {train_flag[0]} {trained})" if train_flag else ""
            raise ValueError(
                f"{os.fspath(path)}: the UNet was trained with {trained_key.replace('_', ' ')} {trained}{how}, but "
                f"diffusion.{key} ({flag}) is {diffusion.get(key)}: give {flag} {trained} ([diffusion] {key} = "
                f"{json.dumps(trained)})"
            )


def load_run_models(cfg: dict[str, dict[str, Any]]) -> tuple[UNet, GaussianDiffusion, Any, Any]:
    m, d = cfg["models"], cfg["diffusion"]
    backend = m.get("device", "cpu")
    check_backend_name(backend)
    if not m["unet"]:
        raise ValueError("models.unet: a diffusion model file is required (--unet PATH or [models] unet = ...)")
    check_diffusion_section(d)  # every setting is checked before a file is read
    check_unet_diffusion(m["unet"], d)
    unet = load_unet(
        m["unet"],
        num_heads=config_int("models.num_heads", m["num_heads"]),
        num_head_channels=config_int("models.num_head_channels", m["num_head_channels"]),
        use_new_attention_order=config_bool("models.use_new_attention_order", m["use_new_attention_order"]),
        backend=backend,
    )
    diffusion = diffusion_from_section(d, unet.config["learn_sigma"])
    classifier = load_classifier(m["classifier_kind"], m["classifier"], m["target_class"], backend)
    perceptual = load_perceptual(
        m["perceptual_kind"], m["perceptual"], m["perceptual_variant"], m["perceptual_taps"], backend
    )
    return unet, diffusion, classifier, perceptual


# ---- any network diffice trains, saved with what rebuilds it (safetensors metadata "diffice_model") ----


def build_model(spec: dict[str, Any], backend: str = "cpu") -> Any:
    """A model with the structure of spec (weights uninitialised): any network build_network knows, or a
    ConceptOracle."""
    if spec.get("type") == "ConceptOracle":
        return ConceptOracle.from_description(spec, backend)
    return build_network(spec, backend)


def save_model(path: str, model: Any, metadata: dict[str, str] | None = None) -> None:
    """Writes the model's weights as safetensors (PyTorch key names) with its description, atomically."""
    save_safetensors(path, weights_of(model).state_dict(), metadata=dict(metadata or {}, **model_metadata(model)))


PathLike = Union[str, "os.PathLike[str]"]


def read_model_file(path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of any weights file (metadata {} for .pt/.npz); FileNotFoundError naming the file, or
    IsADirectoryError for a folder (diffice.io's, as every model loader)."""
    p = Path(path)
    if not p.is_file() and not p.is_dir():
        raise FileNotFoundError(f"model file not found: {p}")
    return _load(p, "auto")


def load_unet(
    path: PathLike,
    num_heads: int = 4,
    num_head_channels: int = -1,
    use_new_attention_order: bool = False,
    num_heads_upsample: int = -1,
    backend: str = "cpu",
) -> UNet:
    """A guided-diffusion UNet. The structure comes from the tensor shapes; the attention layout, which no shape
    shows, from the file's own 'diffice_config' (diffice train ddpm, UNet.save) when it has one, else from the
    arguments (third-party checkpoints). The same as UNet.from_file."""
    return UNet.from_file(path, num_heads, num_head_channels, use_new_attention_order, num_heads_upsample, backend)


def load_model(path: PathLike, backend: str = "cpu", expect: None | str | Sequence[str] = None, what: str = "") -> Any:
    """Any model file, by the module docstring's rule: a diffice model from its 'diffice_model' description (saved by
    :func:`save_model`, ``.save()`` or ``diffice train segmenter|classifier|oracle``); a guided-diffusion UNet
    checkpoint as a :class:`diffice.UNet` (its own attention layout when it records one); with `expect` (type
    names, e.g. "PlaneClassifier"), a third-party file without a description through that class's from_file
    (a SonoNet from the authors' weights) and a described file of another type a ValueError naming the file."""
    p = Path(path)
    state_dict, meta = read_model_file(p)
    if "diffice_model" in meta:
        return model_from_description(p, state_dict, meta, build_model, backend, expect, what)
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or ())
    if len(wanted) == 1 and wanted[0] in _FALLBACKS:  # a third-party file: the class builds it
        return _FALLBACKS[wanted[0]](p, backend=backend)
    is_unet = meta.get("format") in ("guided-diffusion UNetModel", "diffice UNet")
    if is_unet and (not wanted or "UNet" in wanted):
        return load_unet(p, backend=backend)
    if wanted:
        holds = (
            f"holds a UNet (a diffusion model; its metadata 'format' is {meta['format']!r})"
            if is_unet
            else "has no 'diffice_model' description in its metadata (not written by diffice's training commands)"
        )
        raise ValueError(
            f"{p}: the file {holds}, but {what or 'the caller'} needs a {' or '.join(wanted)}"
            + (
                " (a model file from diffice train classifier|segmenter|oracle, save_model or .save())"
                if not is_unet
                else "; give the right file"
            )
        )
    raise ValueError(
        f"{p}: no 'diffice_model' description in its metadata (not written by diffice's "
        f"training commands); load it with the model's class, e.g. Segmenter.from_file"
    )


_FALLBACKS: dict[str, Callable[..., Any]] = {"PlaneClassifier": PlaneClassifier.from_file, "SonoNet": SonoNet.from_file}

"""Loading the models a run needs from the paths and kinds in its config (see diffice.run).

The loader rule (every path that loads a model file goes through :func:`load_model` / :func:`load_classifier` /
:func:`load_unet`: the Python API, ``diffice explain | sweep | metrics | demo``, the cluster workers, and the
classes' ``from_file``):

- a file written by diffice (``diffice train segmenter|classifier|oracle``, :func:`save_model`, ``.save()``) carries
  its structure in the safetensors metadata ``diffice_model`` and is rebuilt from it, every setting included
  (SonoNet's ``standardize``, the segmenter's GroupNorm groups, ...); nothing is taken from defaults;
- a UNet from ``diffice train ddpm`` carries its attention layout in ``diffice_config``, which wins over the
  layout arguments (``[models] num_heads`` ...);
- only a third-party file without that metadata (the SonoNet authors' weights, a guided-diffusion / DiME
  checkpoint, a PyTorch state_dict) is built by the class's ``from_file`` from the caller's settings;
- a file whose description contradicts what the caller asked for (``classifier_kind = "sononet"`` and a plane
  classifier file) is a ValueError naming the file.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from .diffusion import GaussianDiffusion
from .network import config_bool, config_int
from .unet import UNet


CLASSIFIER_KINDS = {"plane": "PlaneClassifier", "sononet": "SonoNet"}


def load_classifier(kind: str, path: str, target_class: int = 5, backend: str = "cpu") -> Any:
    """'plane': the standard-plane classifier f = l(s(x), x) (2 classes, 1 = SP);
    'sononet': SonoNet-k with `target_class` viewed as the positive class of a binary classifier.

    A diffice file is built from its own description (the module docstring's rule); its type must be the kind's
    (PlaneClassifier / SonoNet), else ValueError naming the file."""
    if not path:
        raise ValueError("models.classifier: a classifier file is required")
    if kind not in CLASSIFIER_KINDS:
        raise ValueError(f"models.classifier_kind must be 'plane' or 'sononet', got {kind!r}")
    model = load_model(path, backend, expect=CLASSIFIER_KINDS[kind], what=f"models.classifier_kind = {kind!r}")
    if kind == "sononet":
        from .sononet import TargetClassView

        return TargetClassView(model, target=config_int("models.target_class", target_class))
    return model


def load_perceptual(kind: str, path: str, variant: str, taps) -> Any:
    """Lp from a ResNet feature network: kind 'resnet50' / 'resnet18' (torchvision layout) or
    'resnet50-radimagenet' / 'resnet18-radimagenet' (Keras-converted RadImageNet layout); 'pixel-l1' /
    'pixel-l2': the mean pixel distance (no file; see diffice.perceptual.PixelLoss)."""
    from .perceptual import PerceptualLoss, PixelLoss

    if kind in ("pixel-l1", "pixel-l2"):
        return PixelLoss(kind.split("-")[1])
    if not path:
        return None
    from .resnet import ResNetFeatures

    name, _, layout = kind.partition("-")
    depths = {"resnet50": 50, "resnet18": 18}
    if name not in depths or layout not in ("", "radimagenet"):
        raise ValueError(f"models.perceptual_kind must be resnet50, resnet18, resnet50-radimagenet, "
                         f"resnet18-radimagenet, pixel-l1 or pixel-l2, got {kind!r}")
    features = ResNetFeatures.from_file(path, layout=layout or "torchvision", taps=tuple(taps))
    if features.depth != depths[name]:
        raise ValueError(f"{path}: a ResNet-{features.depth}, but models.perceptual_kind says {kind!r}")
    return PerceptualLoss(features, variant=variant)


def load_run_models(cfg: Dict[str, Dict[str, Any]]) -> Tuple[UNet, GaussianDiffusion, Any, Any]:
    m, d = cfg["models"], cfg["diffusion"]
    if not m["unet"]:
        raise ValueError("models.unet: a diffusion model file is required (--unet PATH or [models] unet = ...)")
    steps = config_int("diffusion.steps", d["steps"])  # every setting is checked before a file is read
    unet = load_unet(m["unet"], num_heads=config_int("models.num_heads", m["num_heads"]),
                     num_head_channels=config_int("models.num_head_channels", m["num_head_channels"]),
                     use_new_attention_order=config_bool("models.use_new_attention_order",
                                                         m["use_new_attention_order"]))
    diffusion = GaussianDiffusion(steps, d["schedule"], str(d["respacing"]),
                                  learn_sigma=unet.config["learn_sigma"])
    classifier = load_classifier(m["classifier_kind"], m["classifier"], m["target_class"])
    perceptual = load_perceptual(m["perceptual_kind"], m["perceptual"], m["perceptual_variant"],
                                 m["perceptual_taps"])
    return unet, diffusion, classifier, perceptual


# ---- any network diffice trains, saved with what rebuilds it (safetensors metadata "diffice_model") ----

def model_spec(model: Any) -> Dict[str, Any]:
    """A JSON-able description from which :func:`build_model` rebuilds the model's structure."""
    from .classifier import PlaneClassifier, Segmenter, SmallClassifier
    from .oracle import ConceptOracle
    from .sononet import SonoNet

    if isinstance(model, Segmenter):
        return dict(type="Segmenter", config=dict(model.config), class_names=getattr(model, "class_names", None))
    if isinstance(model, SonoNet):
        return dict(type="SonoNet", k=model.k, in_channels=model.in_channels, num_classes=model.num_classes,
                    standardize=model.standardize)
    if isinstance(model, SmallClassifier):
        return dict(type="SmallClassifier", config=dict(model.config))
    if isinstance(model, PlaneClassifier):
        return dict(type="PlaneClassifier", segmenter=model_spec(model.segmenter),
                    classifier=model_spec(model.classifier), grad_through_segmenter=model.grad_through_segmenter,
                    segmentation_input=model.segmentation_input)
    if isinstance(model, ConceptOracle):
        return dict(type="ConceptOracle", network=model_spec(model.network), concepts=model.concepts,
                    negative=model.negative)
    raise TypeError(f"model_spec: cannot describe a {type(model).__name__}")


def build_model(spec: Dict[str, Any], backend: str = "cpu") -> Any:
    """A model with the structure of spec (weights uninitialised)."""
    from .classifier import PlaneClassifier, Segmenter, SmallClassifier
    from .oracle import ConceptOracle
    from .sononet import SonoNet

    kind = spec.get("type")
    if kind == "Segmenter":
        seg = Segmenter(**spec["config"], backend=backend)
        seg.class_names = spec.get("class_names")
        return seg
    if kind == "SonoNet":
        return SonoNet(*(config_int(f"SonoNet description '{key}'", spec[key])
                         for key in ("k", "in_channels", "num_classes")),
                       config_bool("SonoNet description 'standardize'", spec["standardize"]), backend)
    if kind == "SmallClassifier":
        return SmallClassifier(**spec["config"], backend=backend)
    if kind == "PlaneClassifier":
        return PlaneClassifier(build_model(spec["segmenter"], backend), build_model(spec["classifier"], backend),
                               bool(spec["grad_through_segmenter"]), spec["segmentation_input"], backend)
    if kind == "ConceptOracle":
        return ConceptOracle(build_model(spec["network"], backend), spec["concepts"], spec["negative"])
    raise ValueError(f"unknown model type {kind!r} in a diffice_model description")


def _weights_of(model: Any) -> Any:
    return model.network if type(model).__name__ == "ConceptOracle" else model


def model_metadata(model: Any) -> Dict[str, str]:
    return {"format": "diffice model", "diffice_model": json.dumps(model_spec(model))}


def save_model(path: str, model: Any, metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the model's weights as safetensors (PyTorch key names) with its description, atomically."""
    from .io import save_safetensors

    save_safetensors(path, _weights_of(model).state_dict(), metadata=dict(metadata or {}, **model_metadata(model)))


PathLike = Union[str, "os.PathLike[str]"]


def read_model_file(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """(tensors, metadata) of any weights file (metadata {} for .pt/.npz); FileNotFoundError naming the file."""
    from .io import _load

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return _load(p, "auto")


def _type_name(spec: Any) -> str:
    return spec.get("type", "?") if isinstance(spec, dict) else "?"


def model_from_description(path: PathLike, state_dict: Mapping[str, Any], meta: Mapping[str, str],
                           backend: str = "cpu", expect: Union[None, str, Sequence[str]] = None,
                           what: str = "") -> Any:
    """The model a file's 'diffice_model' metadata describes, with its weights. expect: the type name(s) the caller
    needs ("PlaneClassifier", "SonoNet", ...); another type is a ValueError naming the file (and `what` asked)."""
    p = os.fspath(path)
    try:
        spec = json.loads(meta["diffice_model"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{p}: unreadable 'diffice_model' description in its metadata ({exc})") from None
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or ())
    if wanted and _type_name(spec) not in wanted:
        hint = {v: k for k, v in CLASSIFIER_KINDS.items()}.get(_type_name(spec))
        raise ValueError(f"{p}: the file holds a {_type_name(spec)} (its diffice_model metadata), but "
                         f"{what or 'the caller'} needs a {' or '.join(wanted)}"
                         + (f"; use classifier_kind = {hint!r} for this file" if hint else
                            "; give the right file"))
    try:
        model = build_model(spec, backend)
        _weights_of(model).load_state_dict(state_dict)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    return model


def unet_layout(meta: Mapping[str, str], path: PathLike) -> Optional[Dict[str, Any]]:
    """The attention layout a UNet file records in 'diffice_config' (JSON from diffice train ddpm, a Python dict
    from UNet.save), or None."""
    text = meta.get("diffice_config")
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        try:
            config = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{os.fspath(path)}: unreadable 'diffice_config' in its metadata") from None
    keys = ("num_heads", "num_head_channels", "use_new_attention_order", "num_heads_upsample")
    return {k: config[k] for k in keys if isinstance(config, dict) and k in config}


def load_unet(path: PathLike, num_heads: int = 4, num_head_channels: int = -1, use_new_attention_order: bool = False,
              num_heads_upsample: int = -1, backend: str = "cpu") -> UNet:
    """A guided-diffusion UNet. The structure comes from the tensor shapes; the attention layout, which no shape
    shows, from the file's own 'diffice_config' (diffice train ddpm, UNet.save) when it has one, else from the
    arguments (third-party checkpoints). The same as UNet.from_file."""
    return UNet.from_file(path, num_heads, num_head_channels, use_new_attention_order, num_heads_upsample, backend)


def load_model(path: PathLike, backend: str = "cpu", expect: Union[None, str, Sequence[str]] = None,
               what: str = "") -> Any:
    """Any model file, by the module docstring's rule: a diffice model from its 'diffice_model' description (saved by
    :func:`save_model`, ``.save()`` or ``diffice train segmenter|classifier|oracle``); a guided-diffusion UNet
    checkpoint as a :class:`diffice.UNet` (its own attention layout when it records one); with `expect` (type
    names, e.g. "PlaneClassifier"), a third-party file without a description through that class's from_file
    (a SonoNet from the authors' weights) and a described file of another type a ValueError naming the file."""
    p = Path(path)
    state_dict, meta = read_model_file(p)
    if "diffice_model" in meta:
        return model_from_description(p, state_dict, meta, backend, expect, what)
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or ())
    if len(wanted) == 1 and wanted[0] in _FALLBACKS:  # a third-party file: the class builds it
        return _FALLBACKS[wanted[0]](p, backend)
    if meta.get("format") in ("guided-diffusion UNetModel", "diffice UNet") and (not wanted or "UNet" in wanted):
        return load_unet(p, backend=backend)
    raise ValueError(f"{p}: no 'diffice_model' description in its metadata (not written by diffice's "
                     f"training commands); load it with the model's class, e.g. Segmenter.from_file")


def _plane_from_file(path: Path, backend: str) -> Any:
    from .classifier import PlaneClassifier

    return PlaneClassifier.from_file(path, backend=backend)


def _sononet_from_file(path: Path, backend: str) -> Any:
    from .sononet import SonoNet

    return SonoNet.from_file(path, backend=backend)


_FALLBACKS = {"PlaneClassifier": _plane_from_file, "SonoNet": _sononet_from_file}

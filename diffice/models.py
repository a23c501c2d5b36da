"""Loading the models a run needs from the paths and kinds in its config (see diffice.run)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .diffusion import GaussianDiffusion
from .unet import UNet


def load_classifier(kind: str, path: str, target_class: int = 5) -> Any:
    """'plane': the standard-plane classifier f = l(s(x), x) (2 classes, 1 = SP);
    'sononet': SonoNet-k with `target_class` viewed as the positive class of a binary classifier."""
    if not path:
        raise ValueError("models.classifier: a classifier file is required")
    if kind == "plane":
        from .classifier import PlaneClassifier

        return PlaneClassifier.from_file(path)
    if kind == "sononet":
        from .sononet import SonoNet, TargetClassView

        return TargetClassView(SonoNet.from_file(path), target=int(target_class))
    raise ValueError(f"models.classifier_kind must be 'plane' or 'sononet', got {kind!r}")


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
    unet = UNet.from_file(m["unet"], num_heads=int(m["num_heads"]), num_head_channels=int(m["num_head_channels"]),
                          use_new_attention_order=bool(m["use_new_attention_order"]))
    diffusion = GaussianDiffusion(int(d["steps"]), d["schedule"], str(d["respacing"]),
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
        return SonoNet(int(spec["k"]), int(spec["in_channels"]), int(spec["num_classes"]),
                       bool(spec["standardize"]), backend)
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


def load_model(path: str, backend: str = "cpu") -> Any:
    """Any model saved by :func:`save_model` or ``diffice train segmenter|classifier|oracle`` (its structure from
    the file's metadata); a guided-diffusion UNet checkpoint as a :class:`diffice.UNet`."""
    from .io import load_safetensors, load_safetensors_metadata

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    meta = load_safetensors_metadata(p)
    if "diffice_model" not in meta:
        if meta.get("format") == "guided-diffusion UNetModel" or "diffice_config" in meta:
            return UNet.from_file(p)
        raise ValueError(f"{p}: no 'diffice_model' description in its metadata (not written by diffice's "
                         f"training commands); load it with the model's class, e.g. Segmenter.from_file")
    try:
        model = build_model(json.loads(meta["diffice_model"]), backend)
        _weights_of(model).load_state_dict(load_safetensors(p))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    return model

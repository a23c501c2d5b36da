"""Loading the models a run needs from the paths and kinds in its config (see diffice.run)."""
from __future__ import annotations

from typing import Any, Dict, Tuple

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
    'resnet50-radimagenet' / 'resnet18-radimagenet' (Keras-converted RadImageNet layout)."""
    if not path:
        return None
    from .perceptual import PerceptualLoss
    from .resnet import ResNetFeatures

    name, _, layout = kind.partition("-")
    depths = {"resnet50": 50, "resnet18": 18}
    if name not in depths or layout not in ("", "radimagenet"):
        raise ValueError(f"models.perceptual_kind must be resnet50, resnet18, resnet50-radimagenet or "
                         f"resnet18-radimagenet, got {kind!r}")
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

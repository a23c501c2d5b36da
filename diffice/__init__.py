"""diffice: diffusion-based iterative counterfactual explanations (Diff-ICE) with a C core.

The numerical work runs in the C extension ``diffice._C``; this package is the thin Python layer on top:
``diffice.ops`` (tensor ops, forward and backward), ``diffice.io`` (safetensors / npz / PyTorch checkpoint
files), ``GaussianDiffusion`` (guided-diffusion's schedule and posterior), ``UNet`` (guided-diffusion's
denoiser), ``SonoNet`` / ``Segmenter`` / ``PlaneClassifier`` (the guiding classifier f = l(s(x), x)),
``Explainer`` (Diff-ICE and its baselines), ``phantoms`` (synthetic fetal-head images), ``train_ddpm``.
"""
from __future__ import annotations

from ._native import _C
from . import io, ops, phantoms
from .diffusion import GaussianDiffusion
from .unet import UNet
from .classifier import PlaneClassifier, Segmenter, classification_loss
from .sononet import SonoNet, TargetClassView, sononet_preprocess
from .explain import Explainer, SuspiciousRunWarning
from .train import train_ddpm
from .resnet import ResNetFeatures
from .perceptual import PerceptualLoss, PixelLoss, pixel_loss
from .demo import load_demo_models

__version__ = "0.1.0"

__all__ = ["ops", "io", "phantoms", "GaussianDiffusion", "UNet", "build_info", "__version__",
           "Segmenter", "PlaneClassifier", "classification_loss", "SonoNet", "TargetClassView",
           "sononet_preprocess", "Explainer", "SuspiciousRunWarning", "train_ddpm", "ResNetFeatures", "PerceptualLoss", "PixelLoss", "pixel_loss",
           "load_demo_models"]


def build_info() -> dict:
    """How the C core was built: oneDNN version, CUDA availability."""
    return dict(_C.build_info())

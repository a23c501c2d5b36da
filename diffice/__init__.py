"""diffice: diffusion-based iterative counterfactual explanations (Diff-ICE) with a C core.

The numerical work runs in the C extension ``diffice._C``; this package is the thin Python layer on top:
``diffice.ops`` (tensor ops, forward and backward), ``diffice.io`` (safetensors / npz / PyTorch checkpoint
files), ``diffice.GaussianDiffusion`` (guided-diffusion's schedule and posterior) and ``diffice.UNet``
(guided-diffusion's denoiser).
"""
from __future__ import annotations

from ._native import _C
from . import io, ops
from .diffusion import GaussianDiffusion
from .unet import UNet
from .resnet import ResNetFeatures
from .perceptual import PerceptualLoss, pixel_loss

__version__ = "0.1.0"

__all__ = ["ops", "io", "GaussianDiffusion", "UNet", "ResNetFeatures", "PerceptualLoss", "pixel_loss", "build_info",
           "__version__"]


def build_info() -> dict:
    """How the C core was built: oneDNN version, CUDA availability."""
    return dict(_C.build_info())

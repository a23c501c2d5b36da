"""diffice: diffusion-based iterative counterfactual explanations (Diff-ICE) with a C core.

The numerical work runs in the C extension ``diffice._C``; this package is the thin Python layer on top:
``diffice.ops`` (tensor ops, forward and backward), ``diffice.io`` (safetensors / npz / PyTorch checkpoint
files), ``GaussianDiffusion`` (guided-diffusion's schedule and posterior), ``UNet`` (guided-diffusion's
denoiser), ``SonoNet`` / ``Segmenter`` / ``PlaneClassifier`` (the guiding classifier f = l(s(x), x)),
``Explainer`` (Diff-ICE and its baselines), ``phantoms`` (synthetic fetal-head images), ``train_ddpm``.
"""

from pathlib import Path as _Path
from typing import Any as _Any

from . import io, ops
from ._native import _C
from .data import phantoms
from .explain.demo import load_demo_models
from .explain.explainer import Explainer, ModelSizeWarning, SuspiciousRunWarning
from .models.classifier import PlaneClassifier, Segmenter, classification_loss
from .models.diffusion import GaussianDiffusion
from .models.perceptual import PerceptualLoss, PixelLoss, pixel_loss
from .models.resnet import ResNetFeatures
from .models.sononet import SonoNet, TargetClassView, sononet_preprocess
from .models.unet import UNet
from .ops._backend import cuda_available, cuda_device_count
from .train.ddpm import train_ddpm

__version__ = "0.1.0"

__all__ = [
    "ops",
    "io",
    "phantoms",
    "GaussianDiffusion",
    "UNet",
    "build_info",
    "cuda_available",
    "cuda_device_count",
    "__version__",
    "Segmenter",
    "PlaneClassifier",
    "classification_loss",
    "SonoNet",
    "TargetClassView",
    "sononet_preprocess",
    "Explainer",
    "SuspiciousRunWarning",
    "ModelSizeWarning",
    "train_ddpm",
    "ResNetFeatures",
    "PerceptualLoss",
    "PixelLoss",
    "pixel_loss",
    "load_demo_models",
]


def __dir__() -> list[str]:
    """What dir(diffice) and a notebook's tab completion list: the public names and the subpackages, not the helpers
    this module imports for itself (_Any, _Path, _C, _native)."""
    return sorted(name for name in globals() if not name.startswith("_") or name.startswith("__"))


def build_info() -> dict[str, _Any]:
    """How the C core was built: oneDNN version; "cuda": "built" where the CUDA plugin (libdiffice_cuda.so) was
    compiled (nvcc found at install), else "not built". Whether a GPU is usable here: cuda_available()."""
    info = dict(_C.build_info())
    plugin = _Path(_C.__file__).parent / "libdiffice_cuda.so"
    info["cuda"] = "built" if plugin.exists() else "not built"
    return info

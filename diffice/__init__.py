"""diffice: diffusion-based iterative counterfactual explanations (Diff-ICE) with a C core.

The numerical work runs in the C extension ``diffice._C``; this package is the thin Python layer on top.
"""
from __future__ import annotations

from ._native import _C
from . import ops
from .diffusion import GaussianDiffusion

__version__ = "0.1.0"

__all__ = ["ops", "GaussianDiffusion", "build_info", "__version__"]


def build_info() -> dict:
    """How the C core was built: oneDNN version, CUDA availability."""
    return dict(_C.build_info())

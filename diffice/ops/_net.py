"""Network-side ops: the logit loss, binary cross-entropy with logits, per-plane standardisation, the normalised
feature distance and fill. Per-sample losses (N,) in float32; the backward functions take the gradient dloss (N,) of
those per-sample losses. (The flip decision is diffice.ops.target_probability; the pixel distances are
distance_penalty and mse, composed by diffice.pixel_loss.)"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._native import _C
from ._backend import get_backend
from ._loss import _targets

__all__ = [
    "logit_loss",
    "logit_loss_backward",
    "bce_with_logits",
    "bce_with_logits_backward",
    "standardize",
    "standardize_backward",
    "normalized_distance",
    "normalized_distance_backward",
    "fill",
]


def logit_loss(logits: np.ndarray, targets: ArrayLike, *, backend: str = "cpu") -> np.ndarray:
    """Per-sample -l_y, the signed logit of the target (DiME's use_logits loss), of logits float32 (N, C) at integer
    targets (N,): C == 1: l_y = z if y == 1 else -z; C == 2: z_y - z_(1-y); C > 2: z_y. Returns (N,) float32."""
    return _C.logit_loss_forward(get_backend(backend), logits, _targets("logit_loss", targets))


def logit_loss_backward(
    dloss: np.ndarray, logits: np.ndarray, targets: ArrayLike, *, backend: str = "cpu"
) -> np.ndarray:
    """dlogits (N, C) = dloss[n] d(-l_y)/dlogits for dloss float32 (N,)."""
    return _C.logit_loss_backward(get_backend(backend), dloss, logits, _targets("logit_loss_backward", targets))


def bce_with_logits(logits: np.ndarray, targets: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """Per-sample mean over the non-batch dims of the binary cross-entropy with logits (as
    torch.nn.functional.binary_cross_entropy_with_logits): logits and targets (in [0, 1]) float32 (N, ...) of one
    shape. Returns (N,) float32."""
    return _C.bce_with_logits_forward(get_backend(backend), logits, targets)


def bce_with_logits_backward(
    dloss: np.ndarray, logits: np.ndarray, targets: np.ndarray, *, backend: str = "cpu"
) -> np.ndarray:
    """dlogits (logits' shape) = dloss[n] (sigmoid(logits) - targets) / M, M the elements per sample."""
    return _C.bce_with_logits_backward(get_backend(backend), dloss, logits, targets)


def standardize(x: np.ndarray, scale: float = 1.0, *, backend: str = "cpu") -> np.ndarray:
    """scale (x - mean) / std over every (n, c) plane of x float32 (N, C, H, W), std with ddof 0; a constant plane
    (std 0) is divided by 1, so it becomes zeros (scikit-learn's StandardScaler convention). SonoNet uses scale
    255."""
    return _C.standardize_forward(get_backend(backend), x, float(scale))


def standardize_backward(dy: np.ndarray, x: np.ndarray, scale: float = 1.0, *, backend: str = "cpu") -> np.ndarray:
    """Gradient of standardize at x: dx = (scale / std) (dy - mean(dy) - xh mean(dy xh)), xh = (x - mean) / std."""
    return _C.standardize_backward(get_backend(backend), dy, x, float(scale))


def normalized_distance(a: np.ndarray, b: np.ndarray, *, backend: str = "cpu") -> np.ndarray:
    """MONAI's perceptual feature distance per sample: a, b float32 (N, C, ...) unit-normalised over channels at every
    position (f / (|f| + 1e-10)), then the mean over positions of sum_c (a^ - b^)^2. Returns (N,) float32."""
    return _C.normalized_distance_forward(get_backend(backend), a, b)


def normalized_distance_backward(
    dloss: np.ndarray, a: np.ndarray, b: np.ndarray, *, backend: str = "cpu"
) -> np.ndarray:
    """da (a's shape) = dloss[n] d normalized_distance[n] / da; b is a constant reference."""
    return _C.normalized_distance_backward(get_backend(backend), dloss, a, b)


def fill(like: np.ndarray, value: float, *, backend: str = "cpu") -> np.ndarray:
    """A new float32 array of like's shape (1-4 dims) with every entry value (the op nets/ zero gradients with)."""
    y = np.empty(np.shape(like), np.float32)
    _C.fill(get_backend(backend), y, float(value))
    return y

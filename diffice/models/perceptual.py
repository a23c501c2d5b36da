"""Perceptual and pixel losses for counterfactual guidance (docs/method.md sections 3 and 8), computed in C.

Every loss is per sample, and gradients are those of the SUM of the per-sample losses, so a sample's gradient
neither depends on the other samples of the batch nor shrinks with the batch size.
"""

from __future__ import annotations

import numpy as np

from .._native import _C
from ..ops._backend import check_backend_name, get_backend
from ..ops._diffusion import distance_penalty, distance_penalty_backward
from ..ops._loss import mse, mse_backward
from .network import is_finite_nonnegative
from .resnet import ResNetFeatures

__all__ = ["PerceptualLoss", "pixel_loss", "PERCEPTUAL_VARIANTS", "PIXEL_LOSSES"]

PERCEPTUAL_VARIANTS = ("mse", "normalized")
PIXEL_LOSSES = ("l1", "l2", "l2_channel_norm")


class PerceptualLoss:
    """Perceptual distance of images a to a fixed reference b through a feature network phi (its taps).

    Variants, with weight c, summed over the tapped layers:

    - ``"mse"`` (DiME): L_n = c * mean over (C, h, w) of (phi(a)_n - phi(b)_n)^2.
    - ``"normalized"`` (MONAI RadImageNetPerceptualSimilarity): every feature vector is divided by its norm over
      channels (+1e-10), L_n = c * mean over (h, w) of sum_c (phi^(a)_n - phi^(b)_n)^2. MONAI then averages over
      the batch; here the per-sample losses are returned and their sum is differentiated.

    The reference's features are computed once by :meth:`set_reference` and cached (Diff-ICE always compares with
    the original image).
    """

    def __init__(
        self, features: ResNetFeatures, variant: str = "mse", weight: float = 1.0, backend: str | None = None
    ) -> None:
        if not isinstance(getattr(features, "_c", None), _C.Network):
            raise TypeError(
                f"PerceptualLoss: features must be a diffice feature network (ResNetFeatures.from_file(path), "
                f"ResNetFeatures.random(...)), got {type(features).__name__}"
            )
        if variant not in PERCEPTUAL_VARIANTS:
            raise ValueError(f"PerceptualLoss: variant must be one of {PERCEPTUAL_VARIANTS}, got {variant!r}")
        if not is_finite_nonnegative(weight):  # a negative weight would push counterfactuals away from x
            raise ValueError(f"PerceptualLoss: weight must be a finite number >= 0, got {weight!r}")
        self.features = features
        self.variant = variant
        self.weight = float(weight)
        self.backend = backend or features.backend
        self._c = _C.PerceptualLoss(features._c, PERCEPTUAL_VARIANTS.index(variant), self.weight)

    def set_reference(self, b: np.ndarray) -> None:
        """b (N, in_channels, H, W) float32 in [-1, 1]: the images every later call is compared with."""
        self._c.set_reference(get_backend(self.backend), b)

    @property
    def has_reference(self) -> bool:
        return bool(self._c.has_reference)

    def loss(self, a: np.ndarray) -> np.ndarray:
        """Per-sample losses (N,) of a (the reference's shape) against the reference."""
        return self._c.loss(get_backend(self.backend), a, False)[0]

    __call__ = loss

    def loss_and_grad(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-sample losses (N,), d sum(losses) / da with a's shape)."""
        return self._c.loss(get_backend(self.backend), a, True)

    @property
    def last_peak_bytes(self) -> int:
        """Activation memory (arena peak) of the last call."""
        return int(self._c.last_peak_bytes)

    def release_memory(self) -> None:
        """Frees the activation memory kept between calls (it is taken again by the next call)."""
        self._c.release_memory()

    def __repr__(self) -> str:
        return f"PerceptualLoss({self.features!r}, variant={self.variant!r}, weight={self.weight})"


def pixel_loss(
    a: np.ndarray, b: np.ndarray, kind: str = "l1", *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample pixel distance of a to b (same shape (N, C, ...), float32) and d sum(loss) / da.

    kind:
        ``"l1"``: sum |a - b| (gradient sign(a - b), 0 where equal);
        ``"l2"``: sum (a - b)^2 (gradient 2 (a - b));
        ``"l2_channel_norm"``: DiME's l2 term, the sum over positions of the norm over channels of a - b
        (``torch.norm(a - b, p=2, dim=1).sum()``; gradient (a - b) / norm, 0 where the norm is 0).

    Returns (loss (N,), grad with a's shape).
    """
    if kind not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss: kind must be one of {PIXEL_LOSSES}, got {kind!r}")
    if np.shape(a) != np.shape(b) or not 2 <= np.ndim(a) <= 4:
        raise ValueError(
            f"pixel_loss: a and b must have one shape (N, C, ...) of 2 to 4 dims, got {np.shape(a)} and {np.shape(b)}"
        )
    if kind == "l2":  # the sum of squares: mse's per-sample mean times the m values per sample
        n, m = np.shape(a)[0], int(np.prod(np.shape(a)[1:]))
        da, _ = mse_backward(a, b, reduction="none", dloss=np.full(n, m, np.float32), backend=backend)
        loss = mse(a, b, reduction="none", backend=backend)
        return loss * np.float32(m), da
    # l1 and l2_channel_norm: DiME's distance_penalty with weights (1, 0) and (0, 1), on a viewed as (N, C, H, W)
    images = np.shape(a) + (1,) * (4 - np.ndim(a))
    a4, b4 = np.reshape(a, images), np.reshape(b, images)
    l1 = 1.0 if kind == "l1" else 0.0
    da = distance_penalty_backward(a4, b4, l1, 1.0 - l1, backend=backend)
    return distance_penalty(a4, b4, l1, 1.0 - l1, backend=backend), da.reshape(np.shape(a))


class PixelLoss:
    """Lp as a pixel distance to the reference: the mean over pixels of |a - b| ("l1") or (a - b)^2 ("l2"),
    times weight; the stand-in for the perceptual loss where no pretrained feature network is at hand (the demo
    models: no ImageNet/RadImageNet weights can ship). Same interface as :class:`PerceptualLoss`."""

    def __init__(self, kind: str = "l2", weight: float = 1.0, backend: str = "cpu") -> None:
        if kind not in ("l1", "l2"):
            raise ValueError(f"PixelLoss: kind must be 'l1' or 'l2', got {kind!r}")
        if not is_finite_nonnegative(weight):  # NaN would make every counterfactual non-finite
            raise ValueError(f"PixelLoss: weight must be a finite number >= 0, got {weight!r}")
        check_backend_name(backend)
        self.kind, self.weight, self.backend = kind, float(weight), backend
        self._reference: np.ndarray | None = None

    def set_reference(self, b: np.ndarray) -> None:
        self._reference = np.ascontiguousarray(b, dtype=np.float32)

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    def loss_and_grad(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """a (N, C, H, W) like the reference -> (loss (N,), d sum(loss) / da)."""
        if self._reference is None:
            raise ValueError("PixelLoss: set_reference(x) first")
        if np.shape(a) != self._reference.shape:
            raise ValueError(f"PixelLoss: a has shape {np.shape(a)}, the reference {self._reference.shape}")
        loss, grad = pixel_loss(np.ascontiguousarray(a, np.float32), self._reference, self.kind, backend=self.backend)
        scale = self.weight / float(np.prod(self._reference.shape[1:]))
        return (loss * scale).astype(np.float32), (grad * scale).astype(np.float32)

    def loss(self, a: np.ndarray) -> np.ndarray:
        return self.loss_and_grad(a)[0]

    def __repr__(self) -> str:
        return f"PixelLoss(kind={self.kind!r}, weight={self.weight})"

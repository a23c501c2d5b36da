"""ResNet feature networks on the C core: the backbone of the perceptual loss (docs/method.md sections 3 and 8).

Two weight layouts, with the PyTorch state_dict key names of each, so checkpoints load without a mapping:

- ``"torchvision"``: torchvision's resnet18/34/50/101/152 (convs without bias, BatchNorm eps 1e-5, stride on the
  bottleneck's 3x3 conv). Inputs are normalised with the ImageNet mean and std.
- ``"radimagenet"``: the Keras ResNet-50 of RadImageNet converted to PyTorch (``RadImageNet-ResNet50_notop.pth``):
  biases on every conv, BatchNorm eps 1.001e-5, stride on the first 1x1 conv, a ``downsample`` in the first block
  of every stage. Inputs are normalised as MONAI's RadImageNetPerceptualSimilarity: RGB -> BGR and the caffe mean
  subtracted, no std.

Images go in as float32 (N, in_channels, H, W) in [-1, 1] (the diffusion model's range); the [0, 1] rescaling,
the grayscale -> RGB replication and the normalisation happen inside the network (and in its gradient). The
outputs are the features after any of the stages ``stem`` (after the max pool, 64 channels at H/4), ``layer1``
(H/4), ``layer2`` (H/8), ``layer3`` (H/16), ``layer4`` (H/32; 2048 channels for ResNet-50). BatchNorm uses its
running statistics; there is no avgpool or fc.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from .._native import _C
from ..ops._backend import get_backend
from .network import NetworkBase

__all__ = ["ResNetFeatures", "STAGES", "LAYOUTS"]

PathLike = Union[str, "os.PathLike[str]"]

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
LAYOUTS = ("torchvision", "radimagenet")
_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _normalize_taps(taps: str | Sequence[str]) -> tuple[str, ...]:
    names = (taps,) if isinstance(taps, str) else tuple(taps)
    unknown = [t for t in names if t not in STAGES]
    if unknown or not names:
        raise ValueError(f"ResNet taps must be a non-empty subset of {STAGES}, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"ResNet taps must not repeat, got {names!r}")
    if len(names) > 4:
        raise ValueError(f"ResNet taps: at most 4 outputs, got {len(names)}")
    return tuple(sorted(names, key=STAGES.index))


def _clean_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops what the feature network has no use for: the classifier (fc.*) and BatchNorm's num_batches_tracked;
    strips a DataParallel 'module.' prefix."""
    keys = list(state_dict)
    prefix = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    out = {}
    for k, v in state_dict.items():
        k = k[len(prefix) :]
        if k.endswith("num_batches_tracked") or k.startswith("fc."):
            continue
        out[k] = v
    return out


def infer_architecture(state_dict: Mapping[str, np.ndarray]) -> tuple[int, str]:
    """(depth, layout) of a ResNet state_dict: bottleneck blocks have a conv3, the Keras conversion conv biases."""
    if "conv1.weight" not in state_dict:
        raise ValueError("not a ResNet state_dict: missing 'conv1.weight'")
    counts = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in state_dict
    for depth, blocks in _BLOCKS.items():
        if blocks == tuple(counts) and (depth >= 50) == bottleneck:
            layout = "radimagenet" if "conv1.bias" in state_dict else "torchvision"
            return depth, layout
    raise ValueError(
        f"cannot infer the ResNet depth: blocks per stage {counts}, {'bottleneck' if bottleneck else 'basic'} blocks"
    )


class ResNetFeatures(NetworkBase):
    """A ResNet feature extractor computed by the C core.

    Attributes:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        layout: "torchvision" or "radimagenet".
        in_channels: 1 (grayscale, replicated to RGB inside) or 3 (RGB).
        taps: the stages whose features are returned, in stage order.
    """

    def __init__(
        self,
        depth: int = 50,
        layout: str = "torchvision",
        in_channels: int = 1,
        taps: str | Sequence[str] = ("layer4",),
        backend: str = "cpu",
    ) -> None:
        if isinstance(depth, (bool, np.bool_)) or depth not in _BLOCKS:
            raise ValueError(f"ResNet depth must be one of {tuple(_BLOCKS)}, got {depth!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"ResNet layout must be one of {LAYOUTS}, got {layout!r}")
        if isinstance(in_channels, (bool, np.bool_)) or in_channels not in (1, 3):
            raise ValueError(f"ResNet in_channels must be 1 or 3, got {in_channels!r}")
        self.depth, self.layout, self.in_channels = int(depth), layout, int(in_channels)
        self.taps = _normalize_taps(taps)
        self._what = f"ResNet-{self.depth} ({layout})"
        super().__init__(
            _C.resnet_create(
                dict(
                    depth=self.depth,
                    layout=LAYOUTS.index(layout),
                    in_channels=self.in_channels,
                    taps=[STAGES.index(t) for t in self.taps],
                )
            ),
            backend,
        )

    # ---- construction ----
    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, np.ndarray],
        layout: str | None = None,
        taps: str | Sequence[str] = ("layer4",),
        in_channels: int = 1,
        backend: str = "cpu",
    ) -> ResNetFeatures:
        """Builds the network a state_dict describes (depth and, unless given, layout are inferred) and loads it.

        torchvision's ``fc.*`` and BatchNorm's ``num_batches_tracked`` are ignored.
        """
        sd = _clean_state_dict(state_dict)
        depth, inferred = infer_architecture(sd)
        net = cls(depth, layout or inferred, in_channels, taps, backend)
        net.load_state_dict(sd)
        return net

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        layout: str | None = None,
        taps: str | Sequence[str] = ("layer4",),
        in_channels: int = 1,
        backend: str = "cpu",
    ) -> ResNetFeatures:
        """Loads a .pt/.pth (zip or legacy, no torch needed), .safetensors or .npz state_dict."""
        from ..io import load_weights

        state_dict = load_weights(path)
        try:
            return cls.from_state_dict(state_dict, layout, taps, in_channels, backend)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def random(
        cls,
        depth: int = 50,
        layout: str = "torchvision",
        in_channels: int = 1,
        taps: str | Sequence[str] = ("layer4",),
        seed: int = 0,
        backend: str = "cpu",
    ) -> ResNetFeatures:
        """Random weights for tests and benchmarks: He-uniform convs, BatchNorm with non-trivial statistics.

        Each residual branch's last BatchNorm is scaled down (0.2) so activations stay O(1) through deep networks.
        """
        net = cls(depth, layout, in_channels, taps, backend)
        rng = np.random.default_rng(seed)
        last_bn = ".bn3.weight" if net.depth >= 50 else ".bn2.weight"
        for name, p in net._params.items():
            if name.endswith("running_mean"):
                p[...] = 0.2 * rng.standard_normal(p.shape)
            elif name.endswith("running_var"):
                p[...] = rng.uniform(0.5, 1.5, p.shape)
            elif p.ndim == 4:
                fan_in = int(np.prod(p.shape[1:]))
                p[...] = rng.uniform(-1, 1, p.shape) * np.sqrt(6.0 / fan_in)
            elif name.endswith("weight"):  # BatchNorm gamma
                p[...] = (0.2 if name.endswith(last_bn) else 1.0) * (1.0 + 0.1 * rng.standard_normal(p.shape))
            else:  # BatchNorm beta, conv biases
                p[...] = 0.1 * rng.standard_normal(p.shape)
        return net

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copies weights in (``fc.*`` and ``num_batches_tracked`` entries are ignored); any missing, unexpected or
        mis-shaped key is an error listing all of them."""
        super().load_state_dict(_clean_state_dict(state_dict))

    def _config_repr(self) -> dict:
        return dict(depth=self.depth, layout=self.layout, in_channels=self.in_channels, taps=list(self.taps))

    # ---- computation ----
    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """x (N, in_channels, H, W) float32 in [-1, 1] -> {tap: features (N, C, h, w)}."""
        outputs = self._c.forward(get_backend(self.backend), x)
        return dict(zip(self.taps, outputs))

    __call__ = forward

    def _douts(self, dfeatures: Mapping[str, np.ndarray]) -> tuple:
        unknown = [k for k in dfeatures if k not in self.taps]
        if unknown:
            raise ValueError(f"ResNet: gradients given for {unknown}, which are not among the taps {self.taps}")
        return tuple(dfeatures.get(t) for t in self.taps)

    def vjp(self, x: np.ndarray, dfeatures: Mapping[str, np.ndarray]) -> np.ndarray:
        """d sum_t sum(dfeatures[t] * forward(x)[t]) / dx, shape of x. Taps without a gradient contribute nothing."""
        return self._c.vjp(get_backend(self.backend), x, self._douts(dfeatures))

    def gradients(self, x: np.ndarray, dfeatures: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(dx, {name: gradient}) of the same sum; BatchNorm statistics get zero gradients."""
        dx, flat = self._c.gradients(get_backend(self.backend), x, self._douts(dfeatures))
        return dx, self._grads_dict(flat)

    def __repr__(self) -> str:
        return (
            f"ResNetFeatures(depth={self.depth}, layout={self.layout!r}, in_channels={self.in_channels}, "
            f"taps={self.taps}, parameters={self.num_parameters():,})"
        )

"""The FID Inception-v3 on the C core: pytorch-fid's feature network for FID (docs/method.md section 7).

torchvision's Inception3 with the blocks of the TensorFlow FID graph (pytorch-fid's FIDInceptionA, C, E_1, E_2:
average pools that do not count their padding, a max pool in Mixed_7c's pool branch), forward only. Weights load
by path from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or any .pt/.pth/.safetensors/.npz with its
keys: ``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.{weight,bias,running_mean,running_var}``, ...,
``Mixed_7c.branch_pool.bn.running_var``; BatchNorm eps 0.001, convs without bias). ``fc.*`` (the 1008-way
classifier), ``AuxLogits.*`` and ``num_batches_tracked`` entries are ignored.

Input: float32 (N, in_channels, H, W) in [0, 1] -- pytorch-fid's ToTensor of a PIL image converted to RGB
(in_channels 1: a grayscale image, replicated to R, G, B inside as PIL's convert('RGB') does). Inside: bilinear
resize to resize x resize (299 for FID; align_corners=False, no antialiasing), 2x - 1, the network. Output: the
2048-d pool3 features (N, 2048).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Union

import numpy as np

from .._native import _C
from ..ops._backend import get_backend
from .network import NetworkBase, config_int

__all__ = ["InceptionV3", "FID_WEIGHTS_NAME", "FID_RESIZE", "FEATURES"]

PathLike = Union[str, "os.PathLike[str]"]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID_WEIGHTS_URL file name
FID_RESIZE = 299  # pytorch-fid InceptionV3(resize_input=True): F.interpolate to (299, 299)
FEATURES = 2048  # pool3, pytorch-fid's default dims
_IGNORED_PREFIXES = ("fc.", "AuxLogits.")


def _clean_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = list(state_dict)
    prefix = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    out = {}
    for k, v in state_dict.items():
        k = k[len(prefix) :]
        if k.endswith("num_batches_tracked") or k.startswith(_IGNORED_PREFIXES):
            continue
        out[k] = v
    return out


class InceptionV3(NetworkBase):
    """pytorch-fid's FID Inception-v3 computed by the C core (forward only).

    Args:
        in_channels: 3 (RGB) or 1 (grayscale, replicated to RGB inside).
        resize: side of the square bilinear resize applied first (299 for FID); 0 keeps the input size, which must
            then be at least 75 x 75.
        backend: 'cpu' (oneDNN) or 'ref' (plain C reference kernels).
    """

    _what = "Inception-v3 (FID)"

    def __init__(self, in_channels: int = 3, resize: int = FID_RESIZE, backend: str = "cpu") -> None:
        if isinstance(in_channels, (bool, np.bool_)) or in_channels not in (1, 3):
            raise ValueError(f"InceptionV3: in_channels must be 1 or 3, got {in_channels!r}")
        self.in_channels, self.resize = int(in_channels), config_int("Inception config 'resize'", resize)
        super().__init__(_C.inception_create(dict(in_channels=self.in_channels, resize=self.resize)), backend)

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, np.ndarray], in_channels: int = 3, resize: int = FID_RESIZE, backend: str = "cpu"
    ) -> InceptionV3:
        net = cls(in_channels, resize, backend)
        net.load_state_dict(state_dict)
        return net

    @classmethod
    def from_file(
        cls, path: PathLike, in_channels: int = 3, resize: int = FID_RESIZE, backend: str = "cpu"
    ) -> InceptionV3:
        """Loads pytorch-fid's pt_inception-2015-12-05-6726825d.pth (no torch needed) or the same keys in a
        .safetensors / .npz file."""
        from ..io import load_weights

        state_dict = load_weights(path)
        try:
            return cls.from_state_dict(state_dict, in_channels, resize, backend)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def random(cls, in_channels: int = 3, resize: int = FID_RESIZE, seed: int = 0, backend: str = "cpu") -> InceptionV3:
        """Random weights for tests: He-uniform convs, BatchNorm with non-trivial statistics, activations O(1)."""
        net = cls(in_channels, resize, backend)
        rng = np.random.default_rng(seed)
        for name, p in net._params.items():
            if p.ndim == 4:
                fan_in = int(np.prod(p.shape[1:]))
                p[...] = rng.uniform(-1, 1, p.shape) * np.sqrt(6.0 / fan_in)
            elif name.endswith("running_mean"):
                p[...] = 0.2 * rng.standard_normal(p.shape)
            elif name.endswith("running_var"):
                p[...] = rng.uniform(0.5, 1.5, p.shape)
            elif name.endswith("weight"):
                p[...] = 1.0 + 0.1 * rng.standard_normal(p.shape)
            else:
                p[...] = 0.1 * rng.standard_normal(p.shape)
        return net

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copies weights in (fc.*, AuxLogits.* and num_batches_tracked are ignored); any missing, unexpected or
        mis-shaped key is an error listing all of them."""
        super().load_state_dict(_clean_state_dict(state_dict))

    def _config_repr(self) -> dict:
        return dict(in_channels=self.in_channels, resize=self.resize)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x float32 (N, in_channels, H, W) in [0, 1] -> pool3 features float32 (N, 2048)."""
        return self._c.forward(get_backend(self.backend), np.ascontiguousarray(x, dtype=np.float32))[0]

    __call__ = forward

    def features(self, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
        """pool3 features as float64 (N, 2048), computed batch_size images at a time (pytorch-fid: 50)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(f"InceptionV3.features: images must be (N, C, H, W) with N >= 1, got {images.shape}")
        out = [
            self.forward(images[i : i + batch_size]).astype(np.float64)
            for i in range(0, len(images), max(1, int(batch_size)))
        ]
        return np.concatenate(out)

    def __repr__(self) -> str:
        return (
            f"InceptionV3(in_channels={self.in_channels}, resize={self.resize}, parameters={self.num_parameters():,})"
        )

"""SonoNet-k, the fetal standard-plane classifier of Baumgartner et al. (IEEE TMI 2017), on the C core.

Architecture (any width k; the released weights are SonoNet-16): per-image standardisation
x' = 255 (x - mean(x)) / std(x) (population std, ddof 0; on by default, with its backward), 13 conv3x3 (no bias) +
batch norm + ReLU in blocks of 2, 2, 3, 3, 3 convs of widths k, 2k, 4k, 8k, 8k with a 2x2/2 max pool after each
of the first four blocks, then the adaptation layer (conv1x1 8k -> 4k + BN + ReLU, conv1x1 4k -> classes + BN)
and a global average pool. Batch norm uses running statistics with eps 1e-4. With in_channels > 1 every input
channel is standardised separately.

Outputs of :meth:`SonoNet.forward` (a :class:`ClassifierOutput`):
  logits (N, classes), probabilities and predicted (diffice.models.probabilities: softmax and argmax, or for a single
  logit l the two classes' (1 - sigmoid(l), sigmoid(l)) and l > 0), cam (N, classes, H/16, W/16): the map before
  the average pool (class-activation map), features (N, 8k, H/16, W/16): the last conv block's output.

Parameter names (the layout of the common PyTorch port; state_dict order), block B in 0..4, layer I in the block:
  ``features.B.I.0.weight`` conv (Co, Ci, 3, 3);
  ``features.B.I.1.weight``, ``.bias``, ``.running_mean``, ``.running_var`` batch norm (Co);
  ``adaption.0.weight`` (4k, 8k, 1, 1), ``adaption.1.*`` batch norm (4k);
  ``adaption.3.weight`` (classes, 4k, 1, 1), ``adaption.4.*`` batch norm (classes).
A state_dict's ``num_batches_tracked`` entries are ignored.

Weight files: the authors' ``SonoNet16.npz`` (arr_0 ... arr_74: per conv layer its weight, BN beta, gamma,
running mean and inv_std = 1 / sqrt(var + 1e-4)) or a state_dict with the names above (.pt/.pth/.safetensors/.npz).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Union

import numpy as np

from .._native import _C
from ..io import _load, save_safetensors
from ..ops._backend import check_backend_name, get_backend
from .description import Description, model_from_description, model_metadata
from .network import _mismatch_error, config_bool, config_int, prefixed_key_hint
from .probabilities import predicted_class, probabilities

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["SonoNet", "ClassifierOutput", "TargetClassView", "sononet_preprocess", "CLASSES"]

#: The 14 SonoNet classes, in output index order.
CLASSES: tuple[str, ...] = (
    "3VV",
    "4CH",
    "Abdominal",
    "Background",
    "Brain (Cb.)",
    "Brain (Tv.)",
    "Femur",
    "Kidneys",
    "Lips",
    "LVOT",
    "Profile",
    "RVOT",
    "Spine (cor.)",
    "Spine (sag.)",
)

BN_EPS = 1e-4
_BLOCK_LAYERS = (2, 2, 3, 3, 3)
_BLOCK_WIDTH = (1, 2, 4, 8, 8)

# the authors' preprocessing of a 975x735 scanner frame (SonoNet-weights example.py)
FRAME_SIZE = (735, 975)  # (H, W)
FRAME_CROP = (slice(115, 734), slice(81, 874))
INPUT_SIZE = (224, 288)  # (H, W)


class ClassifierOutput(NamedTuple):
    """What a classifier's forward returns. cam and features are None where a classifier has none."""

    logits: np.ndarray  # (N, classes)
    probabilities: np.ndarray  # (N, max(classes, 2)), diffice.models.probabilities.probabilities of the logits
    predicted: np.ndarray  # (N,) int64, diffice.models.probabilities.predicted_class (argmax; l > 0 for one logit)
    cam: np.ndarray | None = None  # (N, classes, h, w)
    features: np.ndarray | None = None  # (N, C, h, w)


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return probabilities(logits, axis=1).astype(np.float32)


def _output(logits: np.ndarray, cam: np.ndarray | None, features: np.ndarray | None) -> ClassifierOutput:
    return ClassifierOutput(logits, _probabilities(logits), predicted_class(logits, axis=1), cam, features)


def _conv_names() -> tuple[tuple[str, str], ...]:
    """(conv prefix, batch-norm prefix) of the 15 conv layers, in order."""
    names = [(f"features.{b}.{i}.0", f"features.{b}.{i}.1") for b, n in enumerate(_BLOCK_LAYERS) for i in range(n)]
    return tuple(names + [("adaption.0", "adaption.1"), ("adaption.3", "adaption.4")])


class SonoNet:
    """SonoNet-k computed by the C core (numpy float32 in and out).

    Args:
        k: width of the first block (16, 32, 64; any positive k).
        in_channels: input channels (1: grayscale; more for a plane classifier fed with segmentations).
        num_classes: output classes (14 for the standard planes).
        standardize: standardise each input image (and channel) inside the network, x' = 255 (x - mean) / std.
        backend: 'cpu' (oneDNN) or 'ref' (plain C reference kernels).
    """

    CLASSES = CLASSES

    def __init__(
        self, k: int = 16, in_channels: int = 1, num_classes: int = 14, standardize: bool = True, backend: str = "cpu"
    ) -> None:
        for name, value in (("k", k), ("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SonoNet: {name} must be a positive int, got {value!r}")
        self.k, self.in_channels, self.num_classes = int(k), int(in_channels), int(num_classes)
        self.standardize = bool(standardize)
        check_backend_name(backend)
        self.backend = backend
        self._c = _C.sononet_create(
            dict(
                k=self.k, in_channels=self.in_channels, num_classes=self.num_classes, standardize=int(self.standardize)
            )
        )
        self._params = self._c.parameters()
        if self.num_classes != len(CLASSES):
            self.CLASSES = tuple(f"class {i}" for i in range(self.num_classes))

    # ---- construction ----
    @classmethod
    def random(
        cls,
        k: int = 16,
        in_channels: int = 1,
        num_classes: int = 14,
        standardize: bool = True,
        seed: int = 0,
        backend: str = "cpu",
    ) -> SonoNet:
        """Random weights with non-trivial batch-norm statistics (for tests and benchmarks).

        Conv weights are He-uniform; BN gamma near 1, beta and running means small, running variances in
        [0.5, 1.5], so activations keep their scale through the 15 layers.
        """
        net = cls(k, in_channels, num_classes, standardize, backend)
        rng = np.random.default_rng(seed)
        for name, p in net._params.items():
            if p.ndim == 4:
                fan_in = int(np.prod(p.shape[1:]))
                p[...] = rng.uniform(-1, 1, p.shape) * np.sqrt(6.0 / fan_in)
            elif name.endswith(".weight"):
                p[...] = 1.0 + 0.2 * rng.standard_normal(p.shape)
            elif name.endswith(".bias"):
                p[...] = 0.1 * rng.standard_normal(p.shape)
            elif name.endswith(".running_mean"):
                p[...] = 0.1 * rng.standard_normal(p.shape)
            else:
                p[...] = rng.uniform(0.5, 1.5, p.shape)
        return net

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, np.ndarray], standardize: bool = True, backend: str = "cpu"
    ) -> SonoNet:
        """From a state_dict with the PyTorch-port names; k, in_channels and classes come from the shapes."""
        first, last = "features.0.0.0.weight", "adaption.3.weight"
        for key in (first, last):
            if key not in state_dict:
                raise ValueError(f"not a SonoNet state_dict: missing '{key}'" + prefixed_key_hint(state_dict, key))
        k, in_channels = (int(d) for d in np.shape(state_dict[first])[:2])
        num_classes = int(np.shape(state_dict[last])[0])
        net = cls(k, in_channels, num_classes, standardize, backend)
        net.load_state_dict(state_dict)
        return net

    def describe(self) -> Description:
        """What rebuilds this network (diffice.models.description)."""
        return dict(
            type="SonoNet",
            k=self.k,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            standardize=self.standardize,
        )

    @classmethod
    def from_description(cls, spec: Description, backend: str = "cpu") -> SonoNet:
        k, in_channels, num_classes = (
            config_int(f"SonoNet description '{key}'", spec[key]) for key in ("k", "in_channels", "num_classes")
        )
        return cls(
            k, in_channels, num_classes, config_bool("SonoNet description 'standardize'", spec["standardize"]), backend
        )

    @classmethod
    def from_file(cls, path: PathLike, standardize: bool = True, backend: str = "cpu") -> SonoNet:
        """Loads the authors' .npz (arr_0 ... arr_74) or a state_dict file (.pt/.pth/.safetensors/.npz).

        Any mismatch (not a weights file, missing or extra arrays, wrong shapes) is a ValueError naming the file.
        A file written by diffice (a 'diffice_model' description in its metadata: diffice train, save, save_model)
        is rebuilt from that description, its own standardize included (`standardize` is for files without one,
        such as the authors' weights); a description of another model type is a ValueError.
        """
        try:
            arrays, meta = _load(path, "auto")
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if os.fspath(path) in msg else f"{os.fspath(path)}: {msg}") from None
        if "diffice_model" in meta:
            return model_from_description(
                path,
                arrays,
                meta,
                cls.from_description,
                backend,
                expect="SonoNet",
                what="SonoNet.from_file",
                advice="give SonoNet weights (the authors' .npz, a SonoNet-k state_dict or a SonoNet saved by diffice)",
            )
        try:
            if looks_like_authors_npz(arrays):
                return cls.from_state_dict(authors_npz_to_state_dict(arrays), standardize, backend)
            return cls.from_state_dict(arrays, standardize, backend)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    # ---- parameters ----
    def num_parameters(self) -> int:
        return int(self._c.parameter_count())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, keyed by the PyTorch-port names."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, np.ndarray]) -> None:
        """Copies weights in (``num_batches_tracked`` entries are ignored); any mismatch is listed in a ValueError."""
        given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        error = _mismatch_error(f"SonoNet-{self.k}", self._params, given)
        if error:
            raise ValueError(error)
        for k, v in self._params.items():
            value = np.asarray(given[k], dtype=np.float32)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"SonoNet state_dict: '{k}' contains non-finite values")
            if k.endswith("running_var") and np.any(value < 0):
                raise ValueError(f"SonoNet state_dict: '{k}' has negative variances")
            v[...] = value

    def save(self, path: PathLike) -> None:
        """Writes safetensors with the PyTorch-port names (loads with SonoNet.from_file or into the port)."""
        save_safetensors(
            path,
            self.state_dict(),
            metadata={
                "format": "SonoNet",
                "k": str(self.k),
                "in_channels": str(self.in_channels),
                "num_classes": str(self.num_classes),
                "diffice_model": model_metadata(self)["diffice_model"],
            },
        )

    # ---- computation ----
    def forward(self, x: np.ndarray) -> ClassifierOutput:
        """x (N, in_channels, H, W) float32 (H, W >= 16; 224x288 for the released weights) -> ClassifierOutput."""
        logits, cam, features = self._c.forward(get_backend(self.backend), x)
        return _output(logits, cam, features)

    __call__ = forward

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) logits."""
        return self._c.forward(get_backend(self.backend), x)[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, max(classes, 2)) class probabilities (see ClassifierOutput)."""
        return _probabilities(self.logits(x))

    def _douts(
        self, dlogits: np.ndarray | None, dcam: np.ndarray | None, dfeatures: np.ndarray | None
    ) -> tuple[Any, ...]:
        if dlogits is None and dcam is None and dfeatures is None:
            raise ValueError("SonoNet.vjp: give at least one of dlogits, dcam, dfeatures")
        return tuple(
            None if d is None else np.ascontiguousarray(d, dtype=np.float32) for d in (dlogits, dcam, dfeatures)
        )

    def vjp(
        self,
        x: np.ndarray,
        dlogits: np.ndarray | None = None,
        dcam: np.ndarray | None = None,
        dfeatures: np.ndarray | None = None,
    ) -> np.ndarray:
        """d/dx of sum(dlogits * logits) + sum(dcam * cam) + sum(dfeatures * features); shape of x."""
        return self._c.vjp(get_backend(self.backend), x, self._douts(dlogits, dcam, dfeatures))

    def gradients(
        self,
        x: np.ndarray,
        dlogits: np.ndarray | None = None,
        dcam: np.ndarray | None = None,
        dfeatures: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(dx, {name: gradient}) of the same scalar as vjp; running statistics get zero gradients."""
        dx, flat = self._c.gradients(get_backend(self.backend), x, self._douts(dlogits, dcam, dfeatures))
        grads, offset = {}, 0
        for name, p in self._params.items():
            grads[name] = flat[offset : offset + p.size].reshape(p.shape)
            offset += p.size
        return dx, grads

    def release_memory(self) -> None:
        """Frees the activation memory kept between calls."""
        self._c.release_memory()

    @property
    def last_peak_bytes(self) -> int:
        """Activation memory (arena peak) of the last call."""
        return int(self._c.last_peak_bytes)

    def __repr__(self) -> str:
        return (
            f"SonoNet(k={self.k}, in_channels={self.in_channels}, num_classes={self.num_classes}, "
            f"standardize={self.standardize}, parameters={self.num_parameters():,})"
        )


def looks_like_authors_npz(names: Iterable[str]) -> bool:
    """Whether weights with these names are (meant as) the SonoNet authors' .npz (arr_0 ... arr_74): any np.savez
    positional name arr_<i>. SonoNet.from_file reads such a file with authors_npz_to_state_dict."""
    return any(re.fullmatch(r"arr_\d+", name) for name in names)


def authors_npz_to_state_dict(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The authors' 75 arrays (per conv: weight, BN beta, gamma, running mean, inv_std) as a PyTorch-port state_dict.

    running_var = 1 / inv_std^2 - 1e-4 (inv_std = 1 / sqrt(var + 1e-4)).
    """
    names = _conv_names()
    want = 5 * len(names)
    keys = [f"arr_{i}" for i in range(want)]
    missing = [k for k in keys if k not in arrays]
    extra = sorted(set(arrays) - set(keys))
    if missing or extra:
        raise ValueError(
            f"not the authors' SonoNet .npz: it has {len(arrays)} arrays, expected arr_0 ... "
            f"arr_{want - 1}"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {extra[:5]}" if extra else "")
        )
    state: dict[str, np.ndarray] = {}
    for i, (conv, bn) in enumerate(names):
        w, beta, gamma, mean, inv_std = (np.asarray(arrays[keys[5 * i + j]], dtype=np.float64) for j in range(5))
        if w.ndim != 4 or any(a.shape != (w.shape[0],) for a in (beta, gamma, mean, inv_std)):
            raise ValueError(
                f"not the authors' SonoNet .npz: layer {i} has shapes "
                f"{[np.shape(arrays[keys[5 * i + j]]) for j in range(5)]}"
            )
        if np.any(inv_std <= 0):
            raise ValueError(f"not the authors' SonoNet .npz: layer {i} has non-positive inv_std")
        state[f"{conv}.weight"] = w.astype(np.float32)
        state[f"{bn}.weight"] = gamma.astype(np.float32)
        state[f"{bn}.bias"] = beta.astype(np.float32)
        state[f"{bn}.running_mean"] = mean.astype(np.float32)
        state[f"{bn}.running_var"] = np.maximum(1.0 / inv_std**2 - BN_EPS, 0.0).astype(np.float32)
    return state


def sononet_preprocess(frame: np.ndarray, crop: bool = True) -> np.ndarray:
    """The SonoNet authors' preprocessing of one scanner frame -> (1, 224, 288) float32 (standardised).

    frame: (735, 975) or (735, 975, C) with C in {1, 3, 4} (RGB(A); alpha is dropped), uint8 or float.
    Steps: crop rows 115:734 and columns 81:874 (the scanner interface; crop=False for an already cropped image of
    any size), bilinear resize to 224x288 as Pillow does it (antialiased; uint8 frames are resized in 8 bits per
    channel like Pillow's RGB mode), average the colour channels, standardise 255 (x - mean) / std (ddof 0).
    """
    from PIL import Image

    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"sononet_preprocess: frame must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"sononet_preprocess: frame must be uint8 or float, got {a.dtype}")
    if crop:
        if a.shape[:2] != FRAME_SIZE:
            raise ValueError(
                f"sononet_preprocess: expected a {FRAME_SIZE[1]}x{FRAME_SIZE[0]} (W x H) scanner frame, "
                f"got {a.shape[1]}x{a.shape[0]}; pass crop=False for an already cropped image"
            )
        a = a[FRAME_CROP]
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError("sononet_preprocess: frame contains NaN or Inf")
    size = (INPUT_SIZE[1], INPUT_SIZE[0])  # Pillow takes (W, H)
    if a.dtype == np.uint8:
        resized = np.asarray(
            Image.fromarray(np.ascontiguousarray(a)).resize(size, Image.Resampling.BILINEAR), np.float64
        )
    else:
        channels = [a] if a.ndim == 2 else [a[:, :, c] for c in range(3)]
        resized = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR),
                    np.float64,
                )
                for c in channels
            ],
            axis=-1,
        )
    gray = resized.mean(axis=2) if resized.ndim == 3 else resized
    std = gray.std()
    if not std > 0:
        raise ValueError("sononet_preprocess: the frame is constant after cropping (standard deviation 0)")
    return (255.0 * (gray - gray.mean()) / std).astype(np.float32)[None]


class TargetClassView:
    """A multi-class classifier seen as a binary one for one target class.

    Binary logits [log sum_{j != target} exp(l_j), l_target], so the binary softmax's second entry is the full
    softmax's target probability. forward / probabilities / vjp are composed from the wrapped classifier's
    forward (logits (N, K), or a result with .logits) and vjp(x, dlogits) (its second argument given by position),
    so any classifier the Explainer takes (SonoNet, a plane classifier, another view, a user's model) can be
    wrapped.
    """

    num_classes = 2

    def __init__(self, classifier: Any, target: int = 5, where: str = "TargetClassView") -> None:
        """where: what the errors name as the target's source, e.g. "models.target_class (--target-class)"."""
        n = getattr(classifier, "num_classes", None)
        if not isinstance(target, (int, np.integer)) or isinstance(target, bool):
            raise TypeError(f"{where}: target must be an int, got {type(target).__name__}")
        if n is not None and not 0 <= target < n:
            raise ValueError(
                f"{where}: target {target} is not a class of a {n}-class classifier (its classes are 0..{n - 1})"
            )
        self.classifier = classifier
        self.target = int(target)
        self.in_channels = getattr(classifier, "in_channels", None)
        if not callable(getattr(classifier, "forward", None)):
            raise TypeError(f"{where}: classifier must have a forward(x) method, got {type(classifier).__name__}")
        names = getattr(classifier, "CLASSES", None)
        name = names[self.target] if names is not None and len(names) > self.target else f"class {self.target}"
        self.CLASSES = (f"not {name}", name)

    def _binary(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(binary logits (N, 2), softmax over the other classes (N, K) with 0 at the target)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.target >= z.shape[1]:
            raise ValueError(
                f"TargetClassView: target {self.target} is not a class of a {z.shape[1]}-class classifier (its "
                f"classes are 0..{z.shape[1] - 1})"
            )
        others = np.delete(z, self.target, axis=1)
        if others.shape[1] == 0:
            raise ValueError("TargetClassView: the classifier has a single class")
        m = others.max(axis=1, keepdims=True)
        e = np.exp(z - m)
        e[:, self.target] = 0.0
        s = e.sum(axis=1, keepdims=True)
        binary = np.concatenate([m + np.log(s), z[:, self.target : self.target + 1]], axis=1)
        return binary.astype(np.float32), e / s

    def _wrapped_logits(self, out: Any) -> np.ndarray:
        """The wrapped classifier's logits (N, K) from what its forward returned: a result with .logits (diffice's
        networks) or the logits array itself (a user's model, as the Explainer takes it)."""
        logits = np.asarray(out.logits if hasattr(out, "logits") else out)
        if logits.ndim != 2:
            raise ValueError(
                f"TargetClassView: the wrapped classifier's forward returned logits of shape {logits.shape}; "
                f"expected (N, K), one row per image and one column per class"
            )
        return logits

    def forward(self, x: np.ndarray) -> ClassifierOutput:
        """x as the wrapped classifier takes it -> ClassifierOutput with (N, 2) logits (cam/features passed on)."""
        out = self.classifier.forward(x)
        logits, _ = self._binary(self._wrapped_logits(out))
        cam = getattr(out, "cam", None)
        features = getattr(out, "features", None)
        return _output(logits, cam, features)

    __call__ = forward

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self._binary(self._wrapped_logits(self.classifier.forward(x)))[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, 2): [1 - p_target, p_target] of the wrapped classifier."""
        return _probabilities(self.logits(x))

    def vjp(self, x: np.ndarray, dlogits: np.ndarray) -> np.ndarray:
        """d sum(dlogits * binary_logits) / dx (dlogits (N, 2)), through the wrapped classifier's vjp."""
        logits = self._wrapped_logits(self.classifier.forward(x))
        dlogits = np.asarray(dlogits, dtype=np.float64)
        if dlogits.shape != (logits.shape[0], 2):
            raise ValueError(
                f"TargetClassView.vjp: dlogits must have shape ({logits.shape[0]}, 2), got {dlogits.shape}"
            )
        _, others = self._binary(logits)
        d = dlogits[:, :1] * others
        d[:, self.target] = dlogits[:, 1]
        return self.classifier.vjp(x, d.astype(np.float32))  # positional: any name for the wrapped vjp's argument

    def __repr__(self) -> str:
        return f"TargetClassView({self.classifier!r}, target={self.target} {self.CLASSES[1]!r})"

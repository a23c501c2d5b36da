"""The standard-plane classifier f(x) = l(s(x), x) of Diff-ICE and its loss, on the C core.

- ``Segmenter``: the UNet-style segmentation network s (the role DTU-Net plays in the paper): images
  (N, 1, H, W) in [-1, 1] -> per-pixel class logits (N, K, H, W).
- ``PlaneClassifier``: f(x) = l([x, maps(s(x))]) with maps the per-pixel softmax over the K classes (or the raw
  logits); l is any classifier network whose first output is logits (N, n_classes) and whose first conv takes
  1 + K channels (SonoNet-16 with an SP/NSP head in the paper; ``SmallClassifier`` here as a stand-in).
- ``classification_loss``: the guidance loss Lc(logits, y) per sample, cross-entropy or DiME's logit form.

All images are float32 (N, C, H, W) numpy arrays; the networks run in C (diffice._C.Network).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from .._native import _C
from ..io import _load
from ..ops._backend import get_backend
from .description import Description, model_from_description
from .network import NetworkBase, config_int, some_keys
from .probabilities import probabilities
from .sononet import SonoNet

__all__ = ["Segmenter", "PlaneClassifier", "PlaneClassifierOutput", "SmallClassifier", "classification_loss"]

PathLike = Union[str, "os.PathLike[str]"]


def classification_loss(
    logits: np.ndarray, targets: int | np.ndarray, kind: str = "ce", *, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample classification loss towards targets, and the gradient of its sum over the batch.

    logits: float32 (N, C); targets: integer class indices (N,) in [0, C) ({0, 1} for a single binary logit).
    kind: "ce" -- cross-entropy -log softmax(logits)_y (for C == 1, BCE -log sigmoid(l_y));
          "logit" -- DiME's use_logits form -l_y, with l_y = logits[y] for C > 2, the binary logit difference
          logits[y] - logits[1 - y] for C == 2, and +-logit (sign by target) for C == 1.
    Returns (loss (N,) float32, dlogits (N, C) float32 = d sum(loss) / d logits), computed by the op table's
    cross_entropy / logit_loss on ``backend``.
    """
    if kind not in ("ce", "logit"):
        raise ValueError(f"classification_loss: kind must be 'ce' or 'logit', got {kind!r}")
    be = get_backend(backend)
    forward, backward = (
        (_C.cross_entropy_forward, _C.cross_entropy_backward)
        if kind == "ce"
        else (_C.logit_loss_forward, _C.logit_loss_backward)
    )
    loss = forward(be, logits, targets)
    return loss, backward(be, np.ones(loss.shape, np.float32), logits, targets)  # d sum(loss) / dloss = 1


class Segmenter(NetworkBase):
    """The UNet-style segmenter s (csrc/nets/segmenter.h): x (N, in_channels, H, W) in [-1, 1] -> logits
    (N, classes, H, W). H and W must be multiples of 2^(levels-1).

    Level l has width * 2^l channels; every conv is followed by GroupNorm(groups) and ReLU, so ``groups`` must
    divide ``width``. Parameter names are the module paths of tests/classifier_reference.py's Segmenter.
    """

    _what = "Segmenter"

    def __init__(
        self,
        classes: int = 4,
        width: int = 32,
        levels: int = 4,
        groups: int = 8,
        in_channels: int = 1,
        backend: str = "cpu",
    ) -> None:
        given = dict(classes=classes, width=width, levels=levels, groups=groups, in_channels=in_channels)
        self.config = {key: config_int(f"Segmenter config '{key}'", value) for key, value in given.items()}
        self.class_names: list[str] | None = None  # the segmentation classes, when a training run named them
        super().__init__(_C.segmenter_create(self.config), backend)

    def _config_repr(self) -> dict:
        return self.config

    @staticmethod
    def infer_config(state_dict: Mapping[str, np.ndarray], groups: int = 8) -> dict[str, int]:
        """classes, width, levels and in_channels from the tensor shapes; groups (not stored) is given."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in state_dict:
                raise ValueError(f"not a segmenter checkpoint: missing '{key}'")
            return tuple(np.shape(state_dict[key]))

        stem = shape("encoder.0.0.weight")
        levels = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.(\d+)\.", k)))
        return dict(classes=shape("head.weight")[0], width=stem[0], levels=levels, groups=groups, in_channels=stem[1])

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, np.ndarray], groups: int = 8, backend: str = "cpu") -> Segmenter:
        seg = cls(**cls.infer_config(state_dict, groups), backend=backend)
        seg.load_state_dict(state_dict)
        return seg

    def describe(self) -> Description:
        """What rebuilds this network (diffice.models.description)."""
        return dict(type="Segmenter", config=dict(self.config), class_names=getattr(self, "class_names", None))

    @classmethod
    def from_description(cls, spec: Description, backend: str = "cpu") -> Segmenter:
        seg = cls(**spec["config"], backend=backend)
        seg.class_names = spec.get("class_names")
        return seg

    @classmethod
    def from_file(cls, path: PathLike, groups: int = 8, backend: str = "cpu") -> Segmenter:
        """Loads a .safetensors, .pt/.pth (no torch needed) or .npz checkpoint of the segmenter. A file written by
        diffice (a 'diffice_model' description in its metadata) is rebuilt from it, its groups included."""
        state_dict, meta = _load(path, "auto")
        if "diffice_model" in meta:
            return model_from_description(
                path, state_dict, meta, cls.from_description, backend, expect="Segmenter", what="Segmenter.from_file"
            )
        try:
            return cls.from_state_dict(state_dict, groups, backend)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @classmethod
    def random(
        cls,
        classes: int = 4,
        width: int = 32,
        levels: int = 4,
        groups: int = 8,
        in_channels: int = 1,
        seed: int = 0,
        backend: str = "cpu",
    ) -> Segmenter:
        """Random weights, for tests and benchmarks."""
        seg = cls(classes, width, levels, groups, in_channels, backend)
        seg._randomize(seed)
        return seg

    @property
    def classes(self) -> int:
        return self.config["classes"]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x float32 (N, in_channels, H, W) -> per-pixel class logits (N, classes, H, W)."""
        return self._c.forward(get_backend(self.backend), x)[0]

    __call__ = forward

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Per-pixel labels (N, H, W) int64: the argmax of the logits over the classes."""
        return np.argmax(self.forward(x), axis=1)

    def vjp(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        """d sum(v * forward(x)) / dx, shape of x; v (N, classes, H, W)."""
        return self._c.vjp(get_backend(self.backend), x, (v,))

    def gradients(self, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(dx, {name: d sum(v * forward(x)) / d param})."""
        dx, flat = self._c.gradients(get_backend(self.backend), x, (v,))
        return dx, self._grads_dict(flat)

    def __repr__(self) -> str:
        return f"Segmenter({self.config}, parameters={self.num_parameters():,})"


class SmallClassifier(NetworkBase):
    """A small conv classifier (conv3x3 + ReLU + 2x2 max pool, conv3x3 + ReLU, global average pool, linear), the
    stand-in for l in tests: x (N, in_channels, H, W), H and W even -> logits (N, num_classes)."""

    _what = "SmallClassifier"

    def __init__(self, in_channels: int, width: int = 8, num_classes: int = 2, backend: str = "cpu") -> None:
        self.config = {
            key: config_int(f"SmallClassifier config '{key}'", value)
            for key, value in dict(in_channels=in_channels, width=width, num_classes=num_classes).items()
        }
        super().__init__(_C.small_classifier_create(self.config), backend)

    def _config_repr(self) -> dict:
        return self.config

    def describe(self) -> Description:
        """What rebuilds this network (diffice.models.description)."""
        return dict(type="SmallClassifier", config=dict(self.config))

    @classmethod
    def from_description(cls, spec: Description, backend: str = "cpu") -> SmallClassifier:
        return cls(**spec["config"], backend=backend)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, np.ndarray], backend: str = "cpu") -> SmallClassifier:
        if "features.0.weight" not in state_dict or "fc.weight" not in state_dict:
            raise ValueError("not a SmallClassifier checkpoint: missing 'features.0.weight' or 'fc.weight'")
        w0, fc = np.shape(state_dict["features.0.weight"]), np.shape(state_dict["fc.weight"])
        net = cls(in_channels=w0[1], width=w0[0], num_classes=fc[0], backend=backend)
        net.load_state_dict(state_dict)
        return net

    @classmethod
    def random(
        cls, in_channels: int, width: int = 8, num_classes: int = 2, seed: int = 0, backend: str = "cpu"
    ) -> SmallClassifier:
        net = cls(in_channels, width, num_classes, backend)
        net._randomize(seed)
        return net

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._c.forward(get_backend(self.backend), x)[0]

    __call__ = forward


@dataclass
class PlaneClassifierOutput:
    """What f(x) computes for a batch of N images of H x W.

    logits: (N, n_classes) -- l's logits (SP/NSP for n_classes = 2);
    probabilities: (N, max(n_classes, 2)) -- diffice.models.probabilities.probabilities of the logits: softmax, or for
        a single logit l the two classes' (1 - sigmoid(l), sigmoid(l));
    segmentation: (N, K, H, W) -- s's per-pixel class logits;
    segmentation_labels: (N, H, W) int64 -- their argmax over the K classes.
    """

    logits: np.ndarray
    probabilities: np.ndarray
    segmentation: np.ndarray
    segmentation_labels: np.ndarray


def _network_of(obj: Any, what: str) -> _C.Network:
    c = getattr(obj, "_c", obj)
    if not isinstance(c, _C.Network):
        raise TypeError(
            f"PlaneClassifier: the {what} must be a diffice network (an object with a "
            f"diffice._C.Network, such as Segmenter or SonoNet), got {type(obj).__name__}"
        )
    return c


def _default_classifier_factory(state_dict: Mapping[str, np.ndarray]) -> SonoNet:
    return SonoNet.from_state_dict(state_dict)


class PlaneClassifier(NetworkBase):
    """The standard-plane classifier f(x) = l(s(x), x) (csrc/nets/plane_classifier.h).

    segmenter: a Segmenter with K classes (1 input channel for ultrasound images in [-1, 1]);
    classifier: any diffice network whose first output is logits (N, n_classes) and whose first conv takes
        1 + K channels: [image, K segmentation maps] (diffice.SonoNet with in_channels = 1 + K, or
        SmallClassifier).
    grad_through_segmenter: True: the gradient w.r.t. x also flows through the maps into s (the paper's Fig. 2);
        False: s is a constant (SASN runs it under no_grad), x's gradient comes through l's image channel only.
    segmentation_input: "probabilities" (per-pixel softmax over the K classes) or "logits" (s's raw output).

    The two networks are shared, not copied: the composite keeps them alive, and weights loaded into either show
    up in the composite. Parameter names are the children's with the prefixes "segmenter." and "classifier.".
    """

    _what = "PlaneClassifier"

    def __init__(
        self,
        segmenter: Segmenter,
        classifier: Any,
        grad_through_segmenter: bool = True,
        segmentation_input: str = "probabilities",
        backend: str = "cpu",
    ) -> None:
        if segmentation_input not in ("probabilities", "logits"):
            raise ValueError(
                f"PlaneClassifier: segmentation_input must be 'probabilities' or 'logits', got {segmentation_input!r}"
            )
        self.segmenter = segmenter
        self.classifier = classifier
        self.grad_through_segmenter = bool(grad_through_segmenter)
        self.segmentation_input = segmentation_input
        config = dict(
            grad_through_segmenter=int(self.grad_through_segmenter),
            seg_input=0 if segmentation_input == "probabilities" else 1,
        )
        c = _C.plane_classifier_create(
            _network_of(segmenter, "segmenter"), _network_of(classifier, "classifier"), config
        )
        super().__init__(c, backend)

    def _config_repr(self) -> dict:
        return dict(
            segmenter=getattr(self.segmenter, "config", None),
            classifier=getattr(self.classifier, "config", None),
            grad_through_segmenter=self.grad_through_segmenter,
            segmentation_input=self.segmentation_input,
        )

    def describe(self) -> Description:
        """What rebuilds this network and both of its parts (diffice.models.description)."""
        return dict(
            type="PlaneClassifier",
            segmenter=self.segmenter.describe(),
            classifier=self.classifier.describe(),
            grad_through_segmenter=self.grad_through_segmenter,
            segmentation_input=self.segmentation_input,
        )

    @classmethod
    def from_description(cls, spec: Description, backend: str = "cpu") -> PlaneClassifier:
        return cls(
            build_network(spec["segmenter"], backend),
            build_network(spec["classifier"], backend),
            bool(spec["grad_through_segmenter"]),
            spec["segmentation_input"],
            backend,
        )

    # ---- construction ----
    @staticmethod
    def split_state_dict(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(segmenter's, classifier's) entries with their prefixes removed; any other key is an error."""
        seg, cls, other = {}, {}, []
        for k, v in state_dict.items():
            if k.startswith("segmenter."):
                seg[k[len("segmenter.") :]] = v
            elif k.startswith("classifier."):
                cls[k[len("classifier.") :]] = v
            else:
                other.append(k)
        if other:
            raise ValueError(
                f"PlaneClassifier state_dict: unexpected keys without a 'segmenter.' or 'classifier.' prefix: "
                f"{some_keys(other)}"
            )
        return seg, cls

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, np.ndarray],
        classifier_factory: Callable[[Mapping[str, np.ndarray]], Any] | None = None,
        groups: int = 8,
        grad_through_segmenter: bool = True,
        segmentation_input: str = "probabilities",
        backend: str = "cpu",
    ) -> PlaneClassifier:
        """Builds both networks from one state_dict (keys "segmenter.*" and "classifier.*").

        classifier_factory(classifier_state_dict) builds l (default: diffice.SonoNet.from_state_dict);
        groups: the segmenter's GroupNorm groups (not recorded in the weights).
        """
        seg_sd, cls_sd = cls.split_state_dict(state_dict)
        segmenter = Segmenter.from_state_dict(seg_sd, groups, backend)
        classifier = (classifier_factory or _default_classifier_factory)(cls_sd)
        return cls(segmenter, classifier, grad_through_segmenter, segmentation_input, backend)

    @classmethod
    def from_file(
        cls,
        path: PathLike,
        classifier_factory: Callable[[Mapping[str, np.ndarray]], Any] | None = None,
        groups: int | None = None,
        grad_through_segmenter: bool = True,
        segmentation_input: str = "probabilities",
        backend: str = "cpu",
    ) -> PlaneClassifier:
        """Loads a single .safetensors / .pt / .npz holding both networks under the prefixes.

        A file written by diffice (with a 'diffice_model' description in its metadata: diffice train classifier,
        save_model, .save()) is rebuilt from that description, its own settings included (the arguments are for
        files without one; diffice.models.files' loader rule); a description of another model type is a ValueError.

        A file without a description (a PyTorch state_dict, weights re-saved without metadata) does not show every
        setting in its tensor shapes: l's network and its input standardisation (`classifier_factory`, e.g.
        ``lambda sd: SonoNet.from_state_dict(sd, standardize=False)``) and the segmenter's GroupNorm `groups` must
        then be given; without them such a file is a ValueError naming the file and what is missing (never a model
        built with guessed settings). ``.save()`` the result to get a file that carries them."""
        state_dict, meta = _load(path, "auto")
        if "diffice_model" in meta:
            return model_from_description(
                path,
                state_dict,
                meta,
                cls.from_description,
                backend,
                expect="PlaneClassifier",
                what="PlaneClassifier.from_file",
            )
        try:
            if classifier_factory is None or groups is None:
                cls.split_state_dict(state_dict)  # not a plane classifier at all: say that first
                missing = [
                    text
                    for given, text in (
                        (
                            classifier_factory,
                            "classifier_factory (l's network and its input standardisation, e.g. "
                            "classifier_factory=lambda sd: SonoNet.from_state_dict(sd, standardize=False))",
                        ),
                        (groups, "groups (the segmenter's GroupNorm groups, e.g. groups=8)"),
                    )
                    if given is None
                ]
                raise ValueError(
                    "a plane classifier file without diffice's 'diffice_model' description in its metadata: the "
                    "settings its tensor shapes do not show cannot be inferred, and none is guessed; missing: "
                    + "; ".join(missing)
                    + ". Load it once with PlaneClassifier.from_file(path, classifier_factory=..., groups=...) and "
                    "save it with .save(new_path) (or diffice.models.files.save_model), which records every "
                    "setting, or use the model.safetensors that diffice train classifier wrote"
                )
            return cls.from_state_dict(
                state_dict, classifier_factory, groups, grad_through_segmenter, segmentation_input, backend
            )
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    # ---- computation ----
    def forward(self, x: np.ndarray) -> PlaneClassifierOutput:
        """x float32 (N, 1, H, W) in [-1, 1] -> logits, probabilities, segmentation logits and labels."""
        logits, seg = self._c.forward(get_backend(self.backend), x)
        return PlaneClassifierOutput(
            logits, probabilities(logits, axis=1).astype(np.float32), seg, np.argmax(seg, axis=1)
        )

    __call__ = forward

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) logits only."""
        return self._c.forward(get_backend(self.backend), x)[0]

    def vjp(self, x: np.ndarray, dlogits: np.ndarray, dsegmentation: np.ndarray | None = None) -> np.ndarray:
        """d [sum(dlogits * logits) + sum(dsegmentation * segmentation)] / dx, shape of x.

        dsegmentation (N, K, H, W) needs grad_through_segmenter; either gradient may be None (not both).
        """
        return self._c.vjp(get_backend(self.backend), x, (dlogits, dsegmentation))

    def gradients(
        self, x: np.ndarray, dlogits: np.ndarray, dsegmentation: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(dx, {name: gradient}) of the same scalar as vjp; without grad_through_segmenter the segmenter's
        parameter gradients are zero."""
        dx, flat = self._c.gradients(get_backend(self.backend), x, (dlogits, dsegmentation))
        return dx, self._grads_dict(flat)

    def __repr__(self) -> str:
        return (
            f"PlaneClassifier(segmenter={self.segmenter!r}, classifier={self.classifier!r}, "
            f"grad_through_segmenter={self.grad_through_segmenter}, "
            f"segmentation_input={self.segmentation_input!r})"
        )


def build_network(spec: Description, backend: str = "cpu") -> Any:
    """The network a 'diffice_model' description describes (weights uninitialised): a Segmenter, SmallClassifier,
    SonoNet or PlaneClassifier."""
    kind = spec.get("type")
    builders: dict[str, Any] = {
        "Segmenter": Segmenter,
        "SmallClassifier": SmallClassifier,
        "SonoNet": SonoNet,
        "PlaneClassifier": PlaneClassifier,
    }
    if kind not in builders:
        raise ValueError(f"unknown model type {kind!r} in a diffice_model description")
    return builders[kind].from_description(spec, backend)

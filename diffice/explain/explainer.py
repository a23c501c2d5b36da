"""Diff-ICE counterfactual explanations and their baselines (the sampler runs in C).

    explainer = Explainer(unet, diffusion, classifier, perceptual, method="diff-ice")
    result = explainer.explain(x, target=1, seed=0)       # x: (N, 1, H, W) float32 in [-1, 1]
    result.counterfactuals[-1]                              # (N, 1, H, W): the last iteration's counterfactuals

Methods (docs/method.md sections 3-5; the paper's baselines use the same loss and hyperparameters):

=================  =============================================================================================
``diff-ice``       L iterations (default 5) of the guided reverse process, each starting from the previous output;
                   the gradient of lambda_c Lc(f(x0_hat), y) + lambda_p Lp(x0_hat, x) at the one-step estimate
                   x0_hat, with x always the original input.
``diff-ice-1``     one iteration (FastDiME without its mask).
``diff-ice-1-xt``  one iteration; the gradient of the same loss w.r.t. the noisy z, through the UNet.
``dime``           DiME: the clean estimate from an unguided reverse chain at every step, 1/sqrt(abar) scaling.
``fastdime``       FastDiME with its self-optimised mask (for localised changes).
=================  =============================================================================================

The classifier is any object with ``forward(x)`` returning logits (N, K) or a result with ``.logits`` (and
optionally ``.segmentation``), and ``vjp(x, dlogits) -> dx``; K = 1 is one binary logit (classes 0 and 1, p(1) =
sigmoid; diffice.models.probabilities holds the convention); the perceptual loss any object with
``set_reference(x)`` and ``loss_and_grad(a) -> (per-sample loss (N,), grad)``. diffice's own networks qualify, and
so does a user's model wrapped in these two methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import numbers
import sys
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from .._native import _C
from ..data.images import images_hint
from ..models.classifier import classification_loss
from ..models.diffusion import GaussianDiffusion
from ..models.network import is_finite_nonnegative
from ..models.probabilities import num_classes, predicted_class, probabilities
from ..models.unet import UNet
from ..ops._backend import check_backend_name, check_precision, get_backend
from ..ops._diffusion import check_seed
from ..progress import ProgressBar, redraws_in_place

METHODS = {"diff-ice": 0, "diff-ice-1": 0, "diff-ice-1-xt": 1, "dime": 2, "fastdime": 3}
MAX_LAMBDAS = 8  # the most lambda_c values the sampler searches (DFC_MAX_LAMBDAS, csrc/diffusion/sampler.h)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_iterative(method: str) -> bool:
    """Whether a method iterates: only Diff-ICE runs L > 1 iterations, each from the previous output (docs/method.md
    section 4.2); every other method is a single pass, whatever its ``iterations`` setting."""
    return method == "diff-ice"


def iterations_run(method: str, iterations: int) -> int:
    """L, the iterations `method` runs: `iterations` for Diff-ICE, 1 for a single-pass method (:func:`is_iterative`)."""
    return int(iterations) if is_iterative(method) else 1


class ModelSizeWarning(UserWarning):
    """A model trained by diffice (its file records the size it was trained at) runs at another image size: the
    networks are convolutional and run, but a DDPM or classifier at a size (a scale) it never saw gives other
    counterfactuals and probabilities, without any error. Emitted by :meth:`Explainer.explain` (a UNet loaded from
    such a file: ``UNet.trained_size``) and by ``diffice explain`` / ``sweep`` at start-up."""


class SuspiciousRunWarning(UserWarning):
    """A run whose numbers are probably meaningless (:func:`suspicious_run_message` says when).

    Emitted by :meth:`Explainer.explain` for its batch and by ``diffice explain`` / ``diffice sweep`` /
    :func:`diffice.explain.run.run_explain` / :func:`diffice.explain.sweep.run_sweep` once for the whole run (the CLI
    also prints it
    to stderr and records it: ``warnings.json`` in the output folder, the ``warnings`` entry of the sweep store's
    meta table and tables.md). It names the likely causes: wrong preprocessing, wrong target, wrong classifier file.
    """


SUSPICIOUS_CAUSES = (
    "likely causes: wrong preprocessing (the classifier built with other settings than it was "
    "trained with, e.g. a file loaded without its own metadata, or images scaled differently from "
    "its training images), the wrong target class ([run] target, [models] target_class), or the "
    "wrong classifier file ([models] classifier, classifier_kind); the flip ratio, MAD and BKL of "
    "such a run mean nothing"
)


def suspicious_run_message(
    input_is_target: np.ndarray,
    first_step_target: np.ndarray | None = None,
    target: Any = None,
    lambda_c: float | None = None,
) -> str | None:
    """Why a run looks wrong, or None. Two checks, over every image of the run:

    1. every input is already classified as the target before any guidance (iteration 0: f's argmax on the
       input is the target); there is nothing to explain;
    2. every image is classified as the target at the first guided step of iteration 1's first lambda_c pass:
       the one-step clean estimate x0_hat of the input noised to tau (the point the first guided gradient is taken
       at, before guidance has changed anything) is f's target for all images (the sampler's
       ``first_step_target``). A working classifier calls a barely denoised non-target input non-target.

    input_is_target, first_step_target: bool arrays (N,) over the run's images (first_step_target None: check 1
    only); target, lambda_c: named in the message.
    """
    inputs = np.asarray(input_is_target, dtype=bool).ravel()
    n = inputs.size
    if n == 0:
        return None
    cls = "" if target is None else f" {target}"
    if inputs.all():
        return (
            f"every input ({n} of {n}) is already classified as the target class{cls} before any guidance "
            f"(iteration 0): every 'counterfactual' will count as flipped; {SUSPICIOUS_CAUSES}"
        )
    first = None if first_step_target is None else np.asarray(first_step_target, dtype=bool).ravel()
    if first is not None and first.size == n and first.all():
        lam = "" if lambda_c is None else f", lambda_c = {lambda_c:g}"
        return (
            f"every image ({n} of {n}) is already classified as the target class{cls} at the first guided "
            f"step of iteration 1 (the one-step estimate x0_hat of the noised input, before guidance had "
            f"changed anything{lam}), although only {int(inputs.sum())} of the {n} inputs are: the images "
            f"'flip' without being changed; {SUSPICIOUS_CAUSES}"
        )
    return None


@dataclasses.dataclass
class ExplainerConfig:
    """Every parameter of the method (defaults: the paper's, docs/method.md section 9 where it is open)."""

    method: str = "diff-ice"
    iterations: int = 5  # L; forced to 1 for the single-pass baselines
    tau: int = 120  # respaced noise level (of 400)
    lambda_c: Sequence[float] = (40.0, 60.0, 80.0)  # searched in order per iteration
    lambda_p: float = 30.0
    lambda_l1: float = 0.0  # DiME's l1 term on the noisy image (0: off, as the paper)
    lambda_l2: float = 0.0
    class_loss: str = "ce"  # "ce" (cross-entropy towards y) or "logit" (DiME's -logit_y)
    grad_at: str = "current"  # "current" x0_hat (paper eq. 3) or "previous" (FastDiME's CelebA code)
    scale_grads: bool = False  # divide by sqrt(abar) (always on for DiME)
    clip: bool = True  # clamp x0_hat to [-1, 1]
    mask_dilation: int = 5  # FastDiME mask
    mask_threshold: float = 0.15
    mask_warmup: int = 30
    precision: str = "fp32"  # the sampler backend's convolutions and products: "fp32", or "tf32"/"bf16" on a GPU

    def validate(self) -> None:
        """ValueError (TypeError for an integer setting of another type) naming the field of a bad value; nothing
        is converted: "false", 0 and 2 are not true or false, 40 is not a list of lambda_c weights."""
        for name, allowed in (
            ("method", sorted(METHODS)),
            ("class_loss", ["ce", "logit"]),
            ("grad_at", ["current", "previous"]),
        ):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(self.precision, str):
            raise ValueError(f"precision must be a string, got {self.precision!r}")
        check_precision(self.precision)
        for name in ("scale_grads", "clip"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false (a bool), got {value!r}")
        try:
            lambda_c = tuple(self.lambda_c)
        except TypeError:
            lambda_c = ()
        if isinstance(self.lambda_c, (str, bytes)) or len(lambda_c) == 0:
            raise ValueError(f"lambda_c must list at least one value (e.g. [40.0]), got {self.lambda_c!r}")
        if len(lambda_c) > MAX_LAMBDAS:
            raise ValueError(f"lambda_c lists at most {MAX_LAMBDAS} values (searched in order), got {len(lambda_c)}")
        if not isinstance(self.lambda_c, (list, tuple, np.ndarray)):
            self.lambda_c = lambda_c  # a generator or other one-pass iterable: kept as read, not read again empty
        for name in ("iterations", "tau", "mask_dilation", "mask_warmup"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1 (a respaced step count), got {self.tau}")
        weights = [(f"lambda_c[{i}]", v) for i, v in enumerate(lambda_c)]
        weights += [(name, getattr(self, name)) for name in ("lambda_p", "lambda_l1", "lambda_l2", "mask_threshold")]
        for name, v in weights:
            if not is_finite_nonnegative(v):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            if float(v) > FLOAT32_MAX:  # the sampler takes the weights as float32, where it would be inf
                raise ValueError(f"{name} = {v!r} is past float32's range (at most {FLOAT32_MAX:.4g})")
        if self.mask_threshold > 1:
            raise ValueError(
                f"mask_threshold must be in [0, 1] (FastDiME's change-map threshold), got {self.mask_threshold!r}"
            )

    def c_config(self, seed: int, record_steps: bool) -> dict:
        return dict(
            method=METHODS[self.method],
            iterations=iterations_run(self.method, self.iterations),
            tau=int(self.tau),
            lambda_c=[float(v) for v in self.lambda_c],
            lambda_p=float(self.lambda_p),
            lambda_l1=float(self.lambda_l1),
            lambda_l2=float(self.lambda_l2),
            grad_at_previous=int(self.grad_at == "previous"),
            scale_grads=int(bool(self.scale_grads)),
            clip=int(bool(self.clip)),
            mask_dilation=int(self.mask_dilation),
            mask_threshold=float(self.mask_threshold),
            mask_warmup=int(self.mask_warmup),
            seed=check_seed(seed),
            record_steps=int(bool(record_steps)),
        )


@dataclasses.dataclass
class ExplanationResult:
    """Counterfactuals of one batch. L iterations, N images of shape (C, H, W).

    counterfactuals: (L, N, C, H, W) in [-1, 1]-ish (the sampler does not clamp its output)
    prob_target: (L + 1, N): the classifier's target probability for the input and each iteration
    lambda_used: (L, N); flipped: (L, N) bool (classified as the target)
    input_is_target: (N,) bool: the input is already classified as the target
    first_step_prob, first_step_target: (N,): the target probability / classification of x0_hat at the first
        guided step of iteration 1's first lambda_c pass (see :func:`suspicious_run_message`)
    segmentation: (L + 1, N, H, W) predicted labels when the classifier segments, else None
    nonfinite_step: (L, N): -1, or the reverse step where the image became non-finite (the sampler then set it to 0
        and went on, so its counterfactual is finite but meaningless: leave it out, as diffice metrics does)
    iteration_seconds: (L,); peak_bytes: the sampler's arena peak; steps_xt / steps_x0 when recorded
    """

    counterfactuals: np.ndarray
    prob_target: np.ndarray
    lambda_used: np.ndarray
    flipped: np.ndarray
    nonfinite_step: np.ndarray
    iteration_seconds: np.ndarray
    peak_bytes: int
    unet_evaluations: int
    input_is_target: np.ndarray | None = None
    first_step_prob: np.ndarray | None = None
    first_step_target: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    steps_xt: np.ndarray | None = None
    steps_x0: np.ndarray | None = None

    def __repr__(self) -> str:
        """A summary and the arrays' shapes (a notebook cell showing the result once printed every pixel)."""
        iterations, n = self.flipped.shape
        size = " x ".join(str(v) for v in self.counterfactuals.shape[2:])
        flipped = int(np.asarray(self.flipped[-1]).sum()) if iterations else 0
        arrays = ", ".join(
            f"{f.name} {tuple(getattr(self, f.name).shape)}"
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        )
        return (
            f"ExplanationResult({n} image(s) of {size}, L={iterations}: {flipped} of {n} flipped at the last "
            f"iteration, {float(np.sum(self.iteration_seconds)):.1f} s; {arrays})"
        )


def image_keys(x: np.ndarray) -> np.ndarray:
    """A 64-bit key per image from its pixels: the sampler's noise follows the image, not its batch position."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=8).digest(), "little")
            for img in x
        ],
        dtype=np.uint64,
    )


def _float_array(value: Any, what: str, expected: str) -> np.ndarray:
    """value as a float32 array, or a TypeError naming what returned it and what was expected."""
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must return {expected}, got {type(value).__name__}: {exc}") from None


def _logits(classifier: Any, x: np.ndarray) -> np.ndarray:
    """classifier.forward(x)'s logits as float32 (N, K), N = len(x), K >= 1 (an array, or a result with .logits);
    anything else is a TypeError / ValueError naming classifier.forward, the shape it returned and the one expected
    (not an IndexError from deep inside the sampler)."""
    out = classifier.forward(x)
    n = len(x)
    logits = _float_array(
        out.logits if hasattr(out, "logits") else out,
        "classifier.forward",
        f"logits ({n}, K) (an array, or a result with .logits)",
    )
    if logits.ndim != 2 or logits.shape[0] != n or logits.shape[1] < 1:
        hint = " (a single binary logit per image is shape (N, 1), not (N,))" if logits.shape == (n,) else ""
        raise ValueError(
            f"classifier.forward returned logits of shape {logits.shape} for {n} image{'s' * (n != 1)}; expected "
            f"({n}, K), one row per image and K >= 1 classes{hint}"
        )
    return logits


def _gradient(value: Any, what: str, shape: tuple[int, ...]) -> np.ndarray:
    """A gradient with respect to the images as float32 of exactly `shape` (the images' own): one of another shape
    with as many values (transposed, flattened) or one that numpy would broadcast (one image's, a scalar) is a
    ValueError naming what returned it, never silently read in the wrong order or copied to every image."""
    grad = _float_array(value, what, f"a gradient of the images' shape {shape}")
    if grad.shape != shape:
        raise ValueError(f"{what} returned a gradient of shape {grad.shape}; expected the images' shape {shape}")
    return grad


def _per_sample(value: Any, what: str, n: int) -> np.ndarray:
    """Per-sample losses as float32 (n,): any array of n values ((n,), (n, 1)); a total (one value for n > 1 images)
    is a ValueError naming what returned it."""
    loss = _float_array(value, what, f"per-sample losses ({n},)")
    if loss.size != n:
        raise ValueError(f"{what} returned losses of shape {loss.shape}; expected one per image, ({n},)")
    return loss.reshape(n)


# A perceptual object keeps the reference images of its last set_reference() call: two explainers sharing one from
# two threads must not compute a loss against the other's reference. Its set_reference + loss_and_grad pair runs
# under this lock, and the reference is set again whenever another guidance set it last.
_REFERENCE_LOCK = threading.Lock()
_reference_owner: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_guidance_ids = itertools.count()


class PythonGuidance:
    """The guiding loss computed by calling the classifier and perceptual objects from the sampler (for any
    classifier with forward/vjp, e.g. a user's model); diffice's own networks use the native guidance."""

    def __init__(self, classifier: Any, perceptual: Any, x: np.ndarray, targets: np.ndarray, class_loss: str):
        self.classifier, self.perceptual = classifier, perceptual
        self.x, self.targets, self.kind = x, targets, class_loss
        self._id = next(_guidance_ids)

    def _perceptual_loss(self, x0: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(loss, grad) of the perceptual object against x[rows], setting the reference when it is not ours."""
        with _REFERENCE_LOCK:
            token = (self._id, rows.tobytes())
            try:
                current = _reference_owner.get(self.perceptual)
            except TypeError:  # not weak-referenceable: always set the reference
                current = None
            if current != token:  # a pass keeps its rows: features of x are cached per pass
                self.perceptual.set_reference(np.ascontiguousarray(self.x[rows]))
                try:
                    _reference_owner[self.perceptual] = token
                except TypeError:
                    pass
            out = self.perceptual.loss_and_grad(x0)
        what = "perceptual.loss_and_grad"
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
            raise TypeError(f"{what} must return (per-sample losses (N,), gradient), got {got}")
        return _per_sample(out[0], what, len(x0)), _gradient(out[1], what, x0.shape)

    def loss_and_grad(
        self, x0: np.ndarray, rows: np.ndarray, lambda_c: np.ndarray, lambda_p: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits = _logits(self.classifier, x0)
        loss_c, dlogits = classification_loss(logits, self.targets[rows], kind=self.kind)
        grad = _gradient(
            self.classifier.vjp(x0, (dlogits * lambda_c[:, None]).astype(np.float32)), "classifier.vjp", x0.shape
        )
        loss_p = np.zeros(len(rows), np.float32)
        if self.perceptual is not None and lambda_p != 0.0:
            loss_p, grad_p = self._perceptual_loss(x0, rows)
            grad = grad + np.float32(lambda_p) * grad_p
        return grad, loss_c, loss_p

    def classify(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits = _logits(self.classifier, x)
        targets = self.targets[rows]
        p = probabilities(logits, axis=1)[np.arange(len(rows)), targets]
        return p.astype(np.float32), (predicted_class(logits, axis=1) == targets).astype(np.int32)


ProgressFn = Callable[[int, int, int, int, int], Optional[bool]]

_VARIANTS = ("mse", "normalized")


def _native_parts(classifier: Any, perceptual: Any) -> tuple[Any, Any, int, float] | None:
    """(classifier network, feature network or None, variant, weight) when both run in C, else None."""
    net = getattr(classifier, "_c", None)
    if not isinstance(net, _C.Network):
        return None
    if perceptual is None:
        return net, None, 0, 1.0
    features = getattr(getattr(perceptual, "features", None), "_c", None)
    variant = getattr(perceptual, "variant", None)
    if not isinstance(features, _C.Network) or variant not in _VARIANTS:
        return None
    return net, features, _VARIANTS.index(variant), float(getattr(perceptual, "weight", 1.0))


def _network_in(model: Any) -> Any:
    """The C network (diffice._C.Network) a model runs its input through, or None for a user's own Python model:
    the model's own (UNet, PlaneClassifier, SonoNet), a PerceptualLoss's feature network, or the classifier a
    TargetClassView wraps."""
    for obj in (model, getattr(model, "features", None), getattr(model, "classifier", None)):
        net = getattr(obj, "_c", None)
        if isinstance(net, _C.Network):
            return net
    return None


def check_image_size(unet: Any, classifier: Any, perceptual: Any, height: int, width: int) -> None:
    """Raises ValueError when a model cannot take height x width images, naming the model and its rule (the UNet
    and the segmenter need multiples of 2**(levels - 1), SonoNet at least 16 x 16, ...), before any work is spent.
    Models that are not diffice networks (a user's own classifier) are not checked here."""
    for what, model in (("UNet", unet), ("classifier f", classifier), ("perceptual loss", perceptual)):
        net = _network_in(model)
        if net is None:
            continue
        try:
            net.check_input((1, net.in_channels, int(height), int(width)))
        except ValueError as exc:
            raise ValueError(f"the {what} cannot take {height} x {width} images: {exc}") from None


def _check_models(unet: Any, diffusion: Any, classifier: Any, perceptual: Any, python_guidance: bool) -> None:
    """A TypeError naming the Explainer argument that is not what it must be, when the Explainer is made (not an
    AttributeError from inside the sampler at the first step). python_guidance: the guiding loss will call the
    classifier's and the perceptual loss's Python methods every step (so the classifier needs vjp)."""
    if not isinstance(unet, UNet):
        raise TypeError(
            f"unet must be a diffice.UNet (UNet.from_file(path), UNet.random(config)), got {type(unet).__name__}"
        )
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"diffusion must be a diffice.GaussianDiffusion, got {type(diffusion).__name__}")
    needed = ("forward", "vjp") if python_guidance else ("forward",)
    missing = [name for name in needed if not callable(getattr(classifier, name, None))]
    if missing:
        why = ""
        if missing == ["vjp"] and isinstance(getattr(classifier, "_c", None), _C.Network):
            why = (
                f" (the guidance runs in Python, calling vjp, because the perceptual loss "
                f"{type(perceptual).__name__} is not a diffice PerceptualLoss)"
            )
        raise TypeError(
            f"classifier must have methods forward(x) -> logits and vjp(x, dlogits) -> dx; "
            f"{type(classifier).__name__} has no {' and no '.join(missing)}{why}"
        )
    if perceptual is not None:
        missing = [name for name in ("set_reference", "loss_and_grad") if not callable(getattr(perceptual, name, None))]
        if missing:
            raise TypeError(
                f"perceptual must be None or have methods set_reference(x) and loss_and_grad(a) -> (losses, grad) "
                f"(PerceptualLoss, PixelLoss, ...); {type(perceptual).__name__} has no {' and no '.join(missing)}"
            )


class Explainer:
    """Generates counterfactual explanations with Diff-ICE or a baseline.

    Args:
        unet: the denoiser (guided-diffusion UNet, learn_sigma or not).
        diffusion: the Gaussian diffusion (its respacing defines tau's scale: tau=120 of "400").
        classifier: f, see the module docstring; outputs logits over classes (or one binary logit), the target is
            a class index.
        perceptual: Lp, or None (then lambda_p must be 0: a weight on a missing loss is an error).
        backend: where the sampler runs ("cpu", "cuda", "cuda:N", ...); None: the UNet's backend. Build the networks
            on the same one (``UNet.random(..., backend="cuda")``, ``load_demo_models(backend="cuda")``).
        guidance: "auto" runs the guiding loss in C when the classifier and perceptual loss are diffice networks
            (else it calls their Python methods every step); "native" requires C; "python" forces the bridge.
        Remaining keyword arguments: :class:`ExplainerConfig` fields (defaults: the paper's) -- method
            ("diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime", "fastdime"), iterations (L, 5), tau (120, in
            respaced steps), lambda_c (searched in order, (40, 60, 80)), lambda_p (30), lambda_l1, lambda_l2 (0),
            class_loss ("ce" | "logit"), grad_at ("current" | "previous"), scale_grads (False), clip (True),
            mask_dilation, mask_threshold, mask_warmup (FastDiME's mask), precision ("fp32"; "tf32" / "bf16" on a
            GPU).

    ``explain(x)`` takes x (N, C, H, W) float32 in [-1, 1] and returns an :class:`ExplanationResult`.
    """

    def __init__(
        self,
        unet: UNet,
        diffusion: GaussianDiffusion,
        classifier: Any,
        perceptual: Any = None,
        backend: str | None = None,
        guidance: str = "auto",
        **config: Any,
    ) -> None:
        if guidance not in ("auto", "native", "python"):
            raise ValueError(f"guidance must be 'auto', 'native' or 'python', got {guidance!r}")
        self._native = _native_parts(classifier, perceptual) if guidance != "python" else None
        if guidance == "native" and self._native is None:
            raise ValueError(
                "guidance='native' needs diffice networks: a classifier running in C (PlaneClassifier, "
                "SonoNet, ...) and a PerceptualLoss (or None)"
            )
        _check_models(unet, diffusion, classifier, perceptual, python_guidance=self._native is None)
        self.unet, self.diffusion = unet, diffusion
        self.classifier, self.perceptual = classifier, perceptual
        backend = getattr(unet, "backend", "cpu") if backend is None else backend
        check_backend_name(backend)
        self.backend = backend
        self.config = ExplainerConfig(**config)
        self.config.validate()
        if self.config.tau >= diffusion.num_timesteps:
            raise ValueError(f"tau={self.config.tau} must be below the {diffusion.num_timesteps} respaced steps")
        if unet.config["learn_sigma"] != diffusion.learn_sigma:
            raise ValueError(
                f"the UNet has learn_sigma={unet.config['learn_sigma']} but the diffusion {diffusion.learn_sigma}"
            )
        if self.config.precision != "fp32":  # the backend says now, not at the first call, if it cannot
            get_backend(self.backend, precision=self.config.precision)  # type: ignore[arg-type]
        if perceptual is None and self.config.lambda_p != 0.0:
            raise ValueError(
                f"lambda_p={self.config.lambda_p:g} but no perceptual loss was given: pass perceptual= "
                f"(diffice.models.perceptual.PixelLoss('l2'), a PerceptualLoss, ...) or lambda_p=0 to "
                f"guide by the classifier alone"
            )

    def explain(
        self,
        x: np.ndarray,
        target: int | Sequence[int] | np.ndarray = 1,
        seed: int = 0,
        keys: np.ndarray | None = None,
        record_steps: bool = False,
        progress: ProgressFn | bool | str | None = "auto",
        warn: bool = True,
    ) -> ExplanationResult:
        """Counterfactuals of x (N, C, H, W) float32 in [-1, 1] towards class `target` (int or one per image).

        Same seed and inputs give bitwise identical outputs on the same machine; each image's noise depends on
        its pixels (or `keys`), not on the batch it is in. progress: True shows a progress bar on stderr (one line
        redrawn in place), "auto" (the default) does so where stderr is a terminal or a notebook (not in logs or
        under pytest), False / None shows none; a callable progress(iteration, lambda_index, step, steps, active)
        is called after every reverse step instead, and returning a true value stops the run by raising
        KeyboardInterrupt ("sampler: interrupted at iteration l, step s"; no result is returned), as Ctrl-C does
        within one step.
        warn: emit a :class:`SuspiciousRunWarning` when every image of x is already the target at iteration 0, or
        at the first guided step (:func:`suspicious_run_message`), or when no pixel of x is below 0 (images in
        [0, 1], not [-1, 1]), and a :class:`ModelSizeWarning` when x's size is not the one the UNet was trained at
        (``UNet.trained_size``); the result carries what the checks use
        (input_is_target, first_step_target) either way.
        """
        if not isinstance(x, np.ndarray):  # a list would become float64 and be refused as such: say what x must be
            raise TypeError(
                f"x must be a numpy array (N, C, H, W) of float32 in [-1, 1], got {type(x).__name__}{images_hint(x)}"
            )
        if x.dtype != np.float32:  # the hint says how: 8-bit pixels scaled, float64 converted, ...
            raise TypeError(f"x must be float32 in [-1, 1], got {x.dtype}{images_hint(x)}")
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {x.shape}{images_hint(x)}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x contains non-finite values")
        if len(x) == 0:
            raise ValueError(f"x holds no images (shape {x.shape})")
        if x.shape[1] != self.unet.config["in_channels"]:
            raise ValueError(
                f"x has {x.shape[1]} channels, the UNet takes {self.unet.config['in_channels']}{images_hint(x)}"
            )
        self.check_image_size(x.shape[2], x.shape[3])
        trained = getattr(self.unet, "trained_size", None)
        if warn and trained is not None and tuple(x.shape[2:]) != tuple(trained):
            warnings.warn(
                f"the UNet was trained at {trained[0]} x {trained[1]} pixels (its file's diffice_training metadata), "
                f"but x is {x.shape[2]} x {x.shape[3]}: at a size it never saw its counterfactuals are not the ones "
                f"it learned; resize x to {trained[0]} x {trained[1]}",
                ModelSizeWarning,
                stacklevel=2,
            )
        low, high = float(x.min()), float(x.max())
        if low < -1.0 or high > 1.0:
            bad = int(np.argmax(np.any((x < -1.0) | (x > 1.0), axis=(1, 2, 3))))
            raise ValueError(
                f"x must be in [-1, 1]; image {bad} spans [{x[bad].min():g}, {x[bad].max():g}]"
                + (
                    images_hint(x)
                    or " (counterfactuals of a previous run are not clamped, ExplanationResult.counterfactuals: "
                    "explain them again as np.clip(cf, -1, 1))"
                )
            )
        if warn and low >= 0.0:  # in [-1, 1] but no pixel below mid-gray: almost surely scaled to [0, 1]
            warnings.warn(
                "every image of x is in [0, 1] (no pixel below 0), but diffice's images are in [-1, 1] with black "
                "at -1: images scaled to [0, 1] are explained as washed-out gray ones; 2 * x - 1 gives [-1, 1] "
                "(warn=False if they are meant so)",
                SuspiciousRunWarning,
                stacklevel=2,
            )
        x = np.ascontiguousarray(x)
        n = len(x)
        targets = self._check_targets(target, x)
        if keys is None:
            keys = image_keys(x)
        else:
            keys = np.asarray(keys)
            if keys.shape != (n,) or not np.issubdtype(keys.dtype, np.integer):
                raise ValueError(f"keys must be {n} integers (one per image), got {keys.dtype} {keys.shape}")
            if keys.dtype.kind == "i" and (keys < 0).any():  # astype(uint64) would wrap -1 to 2**64 - 1
                raise ValueError(f"keys must be integers in [0, 2**64), got {int(keys[keys < 0][0])}")
            keys = keys.astype(np.uint64)
        check_seed(seed)
        if not (progress is None or isinstance(progress, bool) or progress == "auto" or callable(progress)):
            raise TypeError(f"progress must be True, False, 'auto', None or a callable, got {progress!r}")
        bar, progress = self._progress_bar(progress)
        # the native guidance holds its images in this backend's memory (precision: checked by validate())
        backend = get_backend(self.backend, precision=self.config.precision)  # type: ignore[arg-type]
        if self._native is not None:  # the whole loss in C: no Python in the step loop
            net, features, variant, weight = self._native
            guidance = _C.model_guidance(net, self.config.class_loss, features, variant, weight, x, targets, backend)
        else:
            guidance = PythonGuidance(self.classifier, self.perceptual, x, targets, self.config.class_loss)
        cfg = self.config.c_config(seed, record_steps)
        cfg["classify_first_step"] = 1
        try:
            out = _C.sample(cfg, self.unet._c, self.diffusion._c, guidance, backend, x, keys, progress)
        finally:
            if bar is not None:
                bar.close()
        input_is_target = out["input_is_target"].astype(bool)
        first_step_target = out["first_step_target"].astype(bool)
        result = ExplanationResult(
            counterfactuals=out["counterfactuals"],
            prob_target=out["prob_target"],
            lambda_used=out["lambda_used"],
            flipped=out["flipped"].astype(bool),
            nonfinite_step=out["nonfinite_step"],
            iteration_seconds=out["iteration_seconds"],
            peak_bytes=int(out["peak_bytes"]),
            unet_evaluations=int(out["unet_evaluations"]),
            input_is_target=input_is_target,
            first_step_prob=out["first_step_prob"],
            first_step_target=first_step_target,
            steps_xt=out.get("steps_xt"),
            steps_x0=out.get("steps_x0"),
        )
        result.segmentation = self._segmentations(x, result.counterfactuals)
        if warn:
            message = suspicious_run_message(
                input_is_target,
                first_step_target,
                target=int(targets[0]) if np.all(targets == targets[0]) else None,
                lambda_c=float(tuple(self.config.lambda_c)[0]),
            )
            if message:
                warnings.warn(message, SuspiciousRunWarning, stacklevel=2)
        return result

    def __repr__(self) -> str:
        """The method's settings (those off their defaults too) and the models' kinds (a notebook cell showing the
        Explainer printed its address)."""
        c, default = self.config, ExplainerConfig()
        shown = ("method", "iterations", "tau", "lambda_c", "lambda_p")
        others = [
            f"{f.name}={getattr(c, f.name)!r}"
            for f in dataclasses.fields(c)
            if f.name not in shown and getattr(c, f.name) != getattr(default, f.name)
        ]
        kinds = [("classifier", self.classifier), ("perceptual", self.perceptual)]
        models = ", ".join(f"{k}={type(v).__name__ if v is not None else None}" for k, v in kinds)
        return (
            f"Explainer(method={c.method!r}, L={iterations_run(c.method, c.iterations)}, tau={c.tau} of "
            f"{self.diffusion.num_timesteps} steps, lambda_c={[float(v) for v in c.lambda_c]}, "
            f"lambda_p={float(c.lambda_p):g}, " + "".join(f"{o}, " for o in others) + f"{models}, "
            f"guidance={'native' if self._native is not None else 'python'!r}, backend={self.backend!r})"
        )

    def _progress_bar(self, progress: Any) -> tuple[ProgressBar | None, ProgressFn | None]:
        """(the bar to close, the sampler's callback) for explain's progress argument."""
        if progress == "auto":
            progress = redraws_in_place(sys.stderr)
        if progress is not True:
            return None, progress or None
        c = self.config
        L, tau, lambdas = iterations_run(c.method, c.iterations), c.tau, tuple(c.lambda_c)  # diff-ice-1, dime: 1
        bar = ProgressBar(L * tau, label="explain")

        def report(iteration: int, lambda_index: int, step: int, steps: int, active: int) -> bool:
            retry = f", lambda_c {lambdas[lambda_index]:g}" if len(lambdas) > 1 else ""
            bar.update(iteration * steps + step, note=f"iteration {iteration + 1}/{L}{retry}, {active} image(s)")
            return False

        return bar, report

    def check_image_size(self, height: int, width: int) -> None:
        """:func:`check_image_size` for this Explainer's models."""
        check_image_size(self.unet, self.classifier, self.perceptual, height, width)

    @property
    def held_bytes(self) -> int:
        """Memory the sampler keeps between calls (bytes): it works in the UNet's workspace, which stays with the
        UNet (so Explainers sharing a UNet, e.g. one per unit of a sweep, share it) and grows only when a call
        needs more than every earlier one."""
        return self.unet.held_bytes

    def release_memory(self) -> None:
        """Frees the working memory kept between calls: the sampler's (the UNet's workspace) and that of the
        classifier and perceptual loss where they keep some. The next call obtains it again."""
        for model in (self.unet, self.classifier, self.perceptual):
            release = getattr(model, "release_memory", None)
            if callable(release):
                release()

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        """Leaving a ``with Explainer(...) as ex:`` block gives the memory back (:meth:`release_memory`)."""
        self.release_memory()

    def _check_targets(self, target: Any, x: np.ndarray) -> np.ndarray:
        """target as (N,) int64 after checking it is one class index, or one per image, of the classifier."""
        t = np.asarray(target)
        if t.dtype in (object, np.uint64):  # ints past int64 (2**70, or 2**63 as uint64): no class, not wrapped
            big = [v for v in t.flat if isinstance(v, numbers.Integral) and not -(2**63) <= int(v) < 2**63]
            if big:
                raise ValueError(f"target {int(big[0])} is not a class of the classifier (a class index, 0, 1, ...)")
        if t.dtype == bool or not (np.issubdtype(t.dtype, np.integer) or t.size == 0):
            raise TypeError(f"target must be an int class index or one per image, got {target!r}")
        if t.ndim > 1 or (t.ndim == 1 and len(t) != len(x)):
            raise ValueError(f"target must be an int or {len(x)} ints (one per image), got shape {t.shape}")
        targets = np.broadcast_to(t.astype(np.int64), (len(x),)).copy()
        outputs = self._num_outputs(x)
        classes = num_classes(outputs)
        bad = targets[(targets < 0) | (targets >= classes)]
        if len(bad):
            what = f"{classes} classes, 0..{classes - 1}" + (" (a single logit)" if outputs == 1 else "")
            raise ValueError(f"target {int(bad[0])} is not a class of the classifier ({what})")
        return targets

    def _num_outputs(self, x: np.ndarray) -> int:
        """The classifier's number of logits (one means two classes), from one forward of x[:1] (checked by
        _logits: a forward that does not return (1, K) logits is an error naming it)."""
        return int(_logits(self.classifier, np.ascontiguousarray(x[:1])).shape[1])

    def _segmentations(self, x: np.ndarray, cfs: np.ndarray) -> np.ndarray | None:
        first = self.classifier.forward(x)
        if not hasattr(first, "segmentation_labels") and not hasattr(first, "segmentation"):
            return None

        def labels(out: Any) -> np.ndarray:
            if hasattr(out, "segmentation_labels"):
                return np.asarray(out.segmentation_labels)
            return np.asarray(out.segmentation).argmax(axis=1)

        return np.stack([labels(first)] + [labels(self.classifier.forward(np.ascontiguousarray(cf))) for cf in cfs])

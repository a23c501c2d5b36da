"""Training guided-diffusion's DDPM (the Diff-ICE denoiser) on the C core.

The recipe is guided-diffusion's ``TrainLoop`` for the unconditional model: t uniform in [0, T) over the full
(un-respaced) diffusion, x_t = q_sample(x_0, t, noise), the loss of ``GaussianDiffusion.training_losses``
(mse of the predicted noise, plus the variational bound term with a frozen mean when the variance is learned),
AdamW, an EMA of the weights. Unlike guided-diffusion the gradient is clipped by its global norm (grad_clip,
0 turns it off). Images are float32 (N, 1, H, W) in [-1, 1].

The optimiser state (AdamW moments, EMA) lives in numpy arrays that the C ops update in place, so a checkpoint
saves it as it is and ``resume=True`` continues bit for bit (same machine, same thread count).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO, Union

import numpy as np

from .. import ops
from .._native import _C
from ..data.images import list_images, read_unit, warn_aspect_change
from ..io import load_safetensors
from ..models.diffusion import GaussianDiffusion
from ..models.unet import UNet
from ..ops._backend import get_backend
from ..progress import ProgressBar
from .checkpoints import (
    StopFlag,
    TrainingRun,
    check_finite,
    check_grad_clip,
    check_optimizer,
    check_positive,
    check_resumable,
    check_seed,
    plot_loss,  # noqa: F401  (diffice.train.ddpm.plot_loss, where it was)
    resume_settings,
)

PathLike = Union[str, "os.PathLike[str]"]
Params = Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]  # a state_dict, or the arrays in order

__all__ = [
    "AdamW",
    "EMA",
    "clip_grad_norm",
    "DiffusionLoss",
    "LossTerms",
    "loss_and_gradients",
    "init_guided_diffusion",
    "load_images",
    "train_ddpm",
    "TrainResult",
]

_LOSS_TYPES = ("mse", "rescaled_mse")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # what load_images reads (Pillow; no DICOM)


# ---- optimiser state ----


def _param_list(params: Params) -> list[np.ndarray]:
    if isinstance(params, Mapping):
        return list(params.values())
    return list(params)


def _flat(array: object, who: str, name: str, writable: bool) -> np.ndarray:
    """array as a 1-D view (no copy): a float32 numpy array, C-contiguous, aligned, writable where updated in place.
    TypeError / ValueError naming who and name otherwise."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        got = array.dtype.type.__name__ if isinstance(array, np.ndarray) else type(array).__name__
        raise TypeError(f"{who}: {name} must be a numpy.ndarray of float32, got {got}")
    if not (array.flags.c_contiguous and array.flags.aligned and (array.flags.writeable or not writable)):
        raise ValueError(f"{who}: {name} must be a C-contiguous, aligned{', writable' if writable else ''} array")
    return array.reshape(-1)


def _segments(params: list[np.ndarray], who: str, writable: bool) -> list[np.ndarray]:
    """params as 1-D views, those adjacent in memory merged into one view: a network's parameters are views of one
    buffer, so an update is one op call over the buffer instead of one per tensor."""
    runs: list[list[np.ndarray]] = []
    end = -1  # the address just past the last run
    for k, param in enumerate(params):
        flat = _flat(param, who, f"params[{k}]", writable)
        if flat.size == 0:
            continue
        start = flat.__array_interface__["data"][0]
        if start == end:
            runs[-1].append(flat)
        else:
            runs.append([flat])
        end = start + flat.nbytes
    return [
        np.lib.stride_tricks.as_strided(run[0], (sum(f.size for f in run),), (4,), writeable=writable)
        if len(run) > 1
        else run[0]
        for run in runs
    ]


class AdamW:
    """torch.optim.AdamW over a list of parameter arrays (updated in place) and one flat gradient.

    params: the network's parameter views (``unet._params``, a dict in registration order) or a list of writable
    float32 arrays, fixed at construction (checked then); grads: float32, ``sum(p.size)`` values in the same order
    (``UNet.gradients``' flat buffer). State: ``exp_avg``, ``exp_avg_sq`` (flat float32) and ``num_steps``, saved
    by ``state_dict``. Each step runs the adamw_step op in place on ``get_backend(backend, num_threads)``, once per
    run of parameters adjacent in memory (once for a network's parameter buffer).
    """

    def __init__(
        self,
        params: Params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        num_threads: int = 0,
        backend: str = "cpu",
    ) -> None:
        self.params = _param_list(params)
        self._segments = _segments(self.params, "AdamW", writable=True)
        size = sum(s.size for s in self._segments)
        if size < 1:
            raise ValueError("AdamW: params hold no values")
        self._backend = (backend, int(num_threads))
        get_backend(*self._backend)  # an unknown name fails here, not at the first step
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self._set(lr, weight_decay)
        self.exp_avg = np.zeros(size, np.float32)
        self.exp_avg_sq = np.zeros(size, np.float32)
        self._num_steps = 0

    def _set(self, lr: float, weight_decay: float) -> None:
        """Sets the hyperparameters after the op's own check of them (torch's ranges), on one scratch value."""
        lr, weight_decay = float(lr), float(weight_decay)
        param, grad, exp_avg, exp_avg_sq = np.zeros((4, 1), np.float32)
        _C.adamw_step(get_backend("ref"), param, grad, exp_avg, exp_avg_sq, 1, lr, *self.betas, self.eps, weight_decay)
        self._lr, self._weight_decay = lr, weight_decay

    lr = property(lambda self: self._lr, lambda self, v: self._set(v, self._weight_decay))
    weight_decay = property(lambda self: self._weight_decay, lambda self, v: self._set(self._lr, v))

    @property
    def num_steps(self) -> int:
        """Steps taken (the bias correction's count)."""
        return self._num_steps

    @num_steps.setter
    def num_steps(self, value: int) -> None:
        if not 0 <= int(value) <= 2**63 - 1:
            raise ValueError(f"AdamW: num_steps: expected an integer in [0, {2**63 - 1}], got {value}")
        self._num_steps = int(value)

    def step(self, grads: np.ndarray) -> None:
        size = self.exp_avg.size
        flat_grads = _flat(grads, "AdamW.step", "grads", writable=False)
        if flat_grads.size != size:
            raise ValueError(f"AdamW.step: grads has {flat_grads.size} values, expected {size} (one per parameter)")
        backend, step = get_backend(*self._backend), self._num_steps + 1
        offset = 0
        for param in self._segments:
            part = slice(offset, offset + param.size)
            _C.adamw_step(
                backend,
                param,
                flat_grads[part],
                self.exp_avg[part],
                self.exp_avg_sq[part],
                step,
                self._lr,
                *self.betas,
                self.eps,
                self._weight_decay,
            )
            offset += param.size
        self._num_steps = step

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "exp_avg": self.exp_avg.copy(),
            "exp_avg_sq": self.exp_avg_sq.copy(),
            "num_steps": np.int64(self._num_steps),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for name in ("exp_avg", "exp_avg_sq"):
            value = np.asarray(state[name])
            if value.shape != self.exp_avg.shape:
                raise ValueError(f"AdamW state '{name}' has shape {value.shape}, expected {self.exp_avg.shape}")
            getattr(self, name)[...] = value
        self.num_steps = int(state["num_steps"])


class EMA:
    """Exponential moving average of parameters (guided-diffusion's ``update_ema``), starting from a copy.

    ``values`` is the flat float32 average; ``state_dict(names_shapes)`` slices it back into named tensors.
    params are fixed at construction. Each update runs the ema_update op in place on
    ``get_backend(backend, num_threads)``, once per run of parameters adjacent in memory.
    """

    def __init__(self, params: Params, rate: float = 0.9999, num_threads: int = 0, backend: str = "cpu") -> None:
        self.params = _param_list(params)
        self.rate = rate
        self._backend = (backend, int(num_threads))
        get_backend(*self._backend)
        self._segments = _segments(self.params, "EMA", writable=False)
        if not self._segments:
            raise ValueError("EMA: params are empty")
        self._values = np.concatenate(self._segments)

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"EMA: rate must be in [0, 1], got {float(value):g}")
        self._rate = float(value)

    @property
    def values(self) -> np.ndarray:
        """The averaged parameters (flat float32, writable: restore in place)."""
        return self._values

    def update(self) -> None:
        backend, offset = get_backend(*self._backend), 0
        for param in self._segments:
            _C.ema_update(backend, self._rate, self._values[offset : offset + param.size], param)
            offset += param.size


def clip_grad_norm(grads: np.ndarray, max_norm: float = 0.0, num_threads: int = 0, backend: str = "cpu") -> float:
    """The global L2 norm of grads (before clipping); with max_norm > 0 scales grads in place by
    min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_ (the sum_squares and scale ops on
    ``get_backend(backend, num_threads)``). A non-finite norm is returned, grads left as they are. A negative or
    non-finite max_norm (which would clip nothing) is a ValueError."""
    max_norm = check_grad_clip("clip_grad_norm", max_norm, "max_norm")
    clip = max_norm > 0.0
    flat_grads = _flat(grads, "clip_grad_norm", "grads", writable=clip)
    be = get_backend(backend, int(num_threads))
    norm = math.sqrt(_C.sum_squares(be, flat_grads))
    factor = max_norm / (norm + 1e-6) if clip else 1.0
    if factor < 1.0 and math.isfinite(norm):
        _C.scale(be, flat_grads, factor)
    return norm


# ---- the loss ----


class LossTerms(NamedTuple):
    """Per-sample terms (N,) float32, and d(sum_b w_b loss_b)/d model_output (None when not asked for)."""

    loss: np.ndarray
    mse: np.ndarray
    vb: np.ndarray
    grad: np.ndarray | None


class DiffusionLoss:
    """guided-diffusion's ``training_losses`` (eps prediction, LossType.MSE or RESCALED_MSE) over the op table's
    mse and diffusion_vb ops (reference kernels), forward and backward.

    Args:
        steps, schedule, respacing: the diffusion, as :class:`GaussianDiffusion` (training uses no respacing).
        learn_sigma: model output (N, 2C, H, W) = (eps, v) and loss = mse + vb (vb: variational bound in bits per
            dim with the mean frozen: KL for t > 0, discretized Gaussian decoder NLL at t = 0); otherwise
            (N, C, H, W) and loss = mse.
        loss_type: "mse" (vb as is; guided-diffusion's default) or "rescaled_mse" (vb * num_timesteps / 1000).
    """

    def __init__(
        self,
        steps: int = 1000,
        schedule: str = "linear",
        respacing: str = "",
        learn_sigma: bool = True,
        loss_type: str = "mse",
        fixed_variance: str | None = None,
    ) -> None:
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {sorted(_LOSS_TYPES)}, got {loss_type!r}")
        if learn_sigma and fixed_variance is not None:
            raise ValueError(
                "DiffusionLoss: with learn_sigma the variational bound trains v; fixed_variance must be None"
            )
        self.diffusion = GaussianDiffusion(steps, schedule, respacing, learn_sigma, fixed_variance)
        self.loss_type = loss_type
        # RESCALED_MSE scales vb by num_timesteps / 1000; plain MSE leaves it as is
        self._vb_scale = self.num_timesteps / 1000.0 if loss_type == "rescaled_mse" else 1.0

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    def __call__(
        self,
        x_start: np.ndarray,
        x_t: np.ndarray,
        noise: np.ndarray,
        t: np.ndarray,
        model_output: np.ndarray,
        weights: np.ndarray | None = None,
        grad: bool = True,
    ) -> LossTerms:
        """x_start, x_t, noise (N, C, H, W) float32 in [-1, 1] (x_t = q_sample(x_start, t, noise)); t (N,) respaced
        indices; model_output at x_t, (N, 2C, H, W) = (eps, v) with learn_sigma, else (N, C, H, W); weights (N,) or
        None (all 1) weigh each sample's loss in the gradient."""
        op = "training_losses"
        n = len(x_start)
        idx = self.diffusion._indices(t, n, op)
        learned = self.diffusion.learn_sigma
        _check_loss_inputs(op, x_start, x_t, noise, model_output, learned)
        w = np.ones(n, np.float32) if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        if w.shape != (n,):
            raise ValueError(f"{op}: weights must have {n} entries, got shape {w.shape}")
        # target: the noise (ModelMeanType.EPSILON)
        eps_hat = np.ascontiguousarray(model_output[:, : x_start.shape[1]]) if learned else model_output
        mse = np.asarray(ops.mse(eps_hat, noise, reduction="none", backend="ref"))  # (N,)
        d_out = ops.mse_backward(eps_hat, noise, reduction="none", dloss=w, backend="ref")[0] if grad else None
        vb = np.zeros(n, np.float32)
        if learned:
            coefs = ops.vb_coefs(self.diffusion._arrays, idx, self._vb_scale)
            vb = ops.diffusion_vb(model_output, x_start, x_t, coefs, backend="ref")
            if d_out is not None:  # vb's gradient reaches the v channels only (the frozen mean)
                d_v = ops.diffusion_vb_backward(model_output, x_start, x_t, coefs, dvb=w, backend="ref")
                d_out = np.concatenate([d_out, d_v], axis=1)
        return LossTerms(mse + vb, mse, vb, d_out)


def _check_loss_inputs(
    op: str, x_start: np.ndarray, x_t: np.ndarray, noise: np.ndarray, model_output: np.ndarray, learned: bool
) -> None:
    """TypeError / ValueError naming op and the argument unless all are float32 arrays, x_t and noise shaped like
    x_start (N, C, ...), and model_output (N, 2C, ...) when learned, else (N, C, ...)."""
    arrays = {"x_start": x_start, "x_t": x_t, "noise": noise, "model_output": model_output}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise TypeError(f"{op}: {name} must be a float32 numpy array, got {getattr(a, 'dtype', type(a))}")
    if x_start.ndim < 2:
        raise ValueError(f"{op}: x_start must be (N, C, ...), got shape {x_start.shape}")
    for name in ("x_t", "noise"):
        if arrays[name].shape != x_start.shape:
            raise ValueError(f"{op}: {name} must have x_start's shape {x_start.shape}, got {arrays[name].shape}")
    c = x_start.shape[1]
    want = (len(x_start), 2 * c if learned else c, *x_start.shape[2:])
    if model_output.shape != want:
        what = "learned sigma: 2C channels (eps, v)" if learned else "C channels (eps)"
        raise ValueError(f"{op}: model_output must have shape {want} ({what}), got {model_output.shape}")


def loss_and_gradients(
    unet: UNet, loss_fn: DiffusionLoss, x_start: np.ndarray, t: np.ndarray, noise: np.ndarray
) -> tuple[LossTerms, np.ndarray]:
    """One training step's loss (batch mean) and the flat parameter gradient, in the UNet's parameter order.

    x_start, noise (N, C, H, W) float32; t (N,) timesteps of the (un-respaced) training diffusion.
    """
    n = len(x_start)
    x_t = loss_fn.diffusion.q_sample(x_start, t, noise)
    t_model = loss_fn.diffusion.model_timesteps(t).astype(np.float32)

    # called between the UNet's forward (kept on its tape) and its backward
    def loss_gradient(outputs: list[np.ndarray]) -> tuple[tuple[np.ndarray | None], LossTerms]:
        terms = loss_fn(x_start, x_t, noise, t, outputs[0], np.full(n, 1.0 / n, np.float32))
        return (terms.grad,), terms

    terms, flat = unet._c.train_step(get_backend(unet.backend), x_t, loss_gradient, t_model)
    return terms, flat


# ---- initialisation ----

_ZERO_MODULES = re.compile(r"(out_layers\.3|proj_out|^out\.2)\.(weight|bias)$")


def init_guided_diffusion(unet: UNet, seed: int = 0) -> None:
    """guided-diffusion's initial weights: PyTorch's defaults (conv/linear U(+-1/sqrt(fan_in)), GroupNorm 1 and 0)
    with the zero_module layers (each ResBlock's last conv, attention proj_out, the output conv) zeroed."""
    rng = np.random.default_rng(seed)
    params = unet._params
    for name, p in params.items():
        base = name.rsplit(".", 1)[0]
        weight = params.get(base + ".weight")
        if _ZERO_MODULES.search(name):
            p[...] = 0.0
        elif weight is not None and weight.ndim == 1:  # GroupNorm
            p[...] = 1.0 if name.endswith(".weight") else 0.0
        else:
            fan_in = int(np.prod(weight.shape[1:])) if weight is not None else int(np.prod(p.shape[1:]))
            bound = 1.0 / math.sqrt(fan_in)
            p[...] = rng.uniform(-bound, bound, p.shape)


# ---- data ----


def load_images(folder: PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Every PNG/JPEG/BMP/TIFF image in folder (sorted by name) as grayscale float32 (N, 1, H, W) in [-1, 1].

    Grayscale and pixel values as diffice.data.images.load_image (RGB averaged; integers scaled by their bit depth,
    floats
    by their range: the rule in diffice.data.images's docstring), so the DDPM trains on what ``diffice explain`` feeds
    it.
    size: (H, W) to resize to (bicubic; AspectRatioWarning when that stretches an image); None keeps the size,
    which must then be the same for every image.
    A .npy file (N, H, W) or (N, 1, H, W) with values in [-1, 1] is loaded as it is. Needs Pillow for images.
    """
    path = Path(folder)
    if path.is_file() and path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False).astype(np.float32)
        return _check_images(data[:, None] if data.ndim == 3 else data, str(path))
    files = list_images(path, IMAGE_SUFFIXES, expected="a folder of images or a .npy array (N, H, W)")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading images needs Pillow (pip install pillow); or pass a .npy array") from None
    images: list[np.ndarray] = []
    for f in files:
        a = read_unit(f).astype(np.float32)
        if size is not None and a.shape != (size[0], size[1]):
            warn_aspect_change(f, a.shape, size)
            img = Image.fromarray(a).resize((int(size[1]), int(size[0])), Image.Resampling.BICUBIC)
            a = np.asarray(img, dtype=np.float32)
        if images and a.shape != images[0].shape:
            raise ValueError(different_sizes(folder, f.name, a.shape, files[0].name, images[0].shape))
        images.append(a)
    return np.clip(np.stack(images)[:, None] * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def different_sizes(
    folder: PathLike, name: str, shape: tuple[int, ...], first: str, first_shape: tuple[int, ...]
) -> str:
    """The error for images of different sizes in a folder read without a size to resize them to."""
    return (
        f"{os.fspath(folder)}: {name} is {shape[0]} x {shape[1]} pixels (height x width) but {first} is "
        f"{first_shape[0]} x {first_shape[1]}; give a size (--size H W) to resize them all"
    )


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{what}: images must be (N, C, H, W), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{what}: images must be floats in [-1, 1], got dtype {images.dtype}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if not np.all(np.isfinite(images)) or images.min() < -1.0001 or images.max() > 1.0001:
        raise ValueError(f"{what}: images must be finite and in [-1, 1], got [{images.min()}, {images.max()}]")
    return images


def _augment(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Random horizontal flips and shifts of up to max_shift pixels (edges reflected), per sample."""
    n, _, h, w = x.shape
    flips = np.asarray(rng.random(n) < 0.5)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2)) if max_shift > 0 else np.zeros((n, 2), int)
    out = np.empty_like(x)
    for b in range(n):
        img = x[b, :, :, ::-1] if flips[b] else x[b]
        dy, dx = int(shifts[b, 0]), int(shifts[b, 1])
        if dy or dx:
            padded = np.pad(img, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)), mode="reflect")
            img = padded[:, max_shift - dy : max_shift - dy + h, max_shift - dx : max_shift - dx + w]
        out[b] = img
    return out


class _Batches:
    """Batches drawn epoch by epoch from random permutations (guided-diffusion's shuffled loader, no drop)."""

    def __init__(self, n: int, rng: np.random.Generator, perm: np.ndarray | None = None, pos: int = 0) -> None:
        self.n, self.rng = n, rng
        self.perm = rng.permutation(n) if perm is None else np.asarray(perm, dtype=np.int64)
        self.pos = int(pos)

    def next(self, batch_size: int) -> np.ndarray:
        out: list[int] = []
        while len(out) < batch_size:
            if self.pos == self.n:
                self.perm, self.pos = self.rng.permutation(self.n), 0
            take = min(batch_size - len(out), self.n - self.pos)
            out.extend(self.perm[self.pos : self.pos + take])
            self.pos += take
        return np.asarray(out, dtype=np.int64)


# ---- progress, log ----


class _Progress(ProgressBar):
    """The training progress line: steps, the mean loss of the last log_every steps (labelled so: "loss 0.8997
    (mean of last 10 steps)"), rate and ETA. ``mean_loss``: that mean (NaN before the first step)."""

    def __init__(
        self, total: int, start: int, enabled: bool, log_every: int, stream: TextIO | None = None, label: str = "train"
    ) -> None:
        super().__init__(total, label=label, stream=stream, enabled=enabled, start=start)
        self.log_every = max(1, log_every)
        self.recent: list[float] = []

    @property
    def mean_loss(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    def note(self) -> str:
        """What the bar shows of the loss, saying which loss it is."""
        if not self.recent:
            return ""
        if len(self.recent) == 1:
            return f"loss {self.mean_loss:.4f} (last step)"
        return f"loss {self.mean_loss:.4f} (mean of last {len(self.recent)} steps)"

    def step_done(self, step: int, loss: float) -> None:
        self.recent = (self.recent + [loss])[-self.log_every :]
        self.update(step, note=self.note())


LOG_FIELDS = ["step", "loss", "mse", "vb", "grad_norm", "lr", "seconds"]


# ---- the training loop ----


@dataclass
class TrainResult:
    """What a training run left behind."""

    step: int  # steps done in total (including those before a resume)
    interrupted: bool  # stopped by Ctrl-C (a checkpoint was saved)
    last_loss: float  # the loss of the last step (NaN when no step was run now)
    model_path: Path  # raw weights (guided-diffusion key names)
    ema_path: Path  # EMA weights
    state_path: Path  # optimiser state, RNG, data order (for resume)
    log_path: Path  # CSV, one row per step
    plot_path: Path | None
    mean_loss: float = float("nan")  # the mean loss of the last ``mean_steps`` steps: what the progress bar ends on
    mean_steps: int = 0  # how many steps mean_loss averages (log_every, fewer in a short run; 0: none run now)


def _state_dict_from_flat(unet: UNet, flat: np.ndarray) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, p in unet._params.items():
        out[name] = flat[offset : offset + p.size].reshape(p.shape)
        offset += p.size
    return out


def _config_json(config: Mapping) -> str:
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, sort_keys=True)


# train_ddpm's settings when not given (a new run; a resumed run keeps its own)
DDPM_DEFAULTS: dict = dict(
    batch_size=16,
    lr=1e-4,
    weight_decay=0.0,
    ema_rate=0.9999,
    grad_clip=1.0,
    augment=True,
    diffusion_steps=1000,
    noise_schedule="linear",
    loss_type="mse",
    size=None,  # the images' own size (recorded as the size trained at)
)
# the options of `diffice train ddpm` whose names are not their config key's
_CONFIG_FLAGS = {"attention_resolutions": "--attention-ds", "learn_sigma": "learn_sigma (--no-learn-sigma)"}


def train_ddpm(
    images: np.ndarray | PathLike,
    out_dir: PathLike,
    config: Mapping | None = None,
    steps: int = 300_000,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    ema_rate: float | None = None,
    grad_clip: float | None = None,
    seed: int = 0,
    augment: bool | None = None,
    checkpoint_every: int = 1000,
    log_every: int = 10,
    resume: bool = False,
    progress: bool = True,
    size: tuple[int, int] | None = None,
    diffusion_steps: int | None = None,
    noise_schedule: str | None = None,
    loss_type: str | None = None,
    max_shift: int | None = None,
    backend: str = "cpu",
) -> TrainResult:
    """Trains guided-diffusion's UNet as an unconditional DDPM (Diff-ICE: 1000 steps, lr 1e-4, batch 16).

    Args:
        images: float32 (N, 1, H, W) in [-1, 1], or a folder of images / a .npy file (see :func:`load_images`,
            resized to ``size``).
        out_dir: where ``model.safetensors`` (raw weights), ``ema.safetensors``, ``train_state.npz`` (optimiser
            moments, step, RNG and data order), ``loss.csv`` (one row per step) and ``loss.png`` go. Files are
            written at every ``checkpoint_every`` steps, at the end and on Ctrl-C, each atomically.
        config: UNet config (:data:`diffice.models.unet.DEFAULT_CONFIG` keys; in_channels follows the images,
            learn_sigma defaults to True). On resume the saved config, diffusion_steps, noise_schedule and
            loss_type are used (given ones must match); lr, weight_decay, ema_rate, grad_clip, batch_size and
            augment are the run's unless given.
        steps: total steps (a resumed run continues up to it). resume: continue the run in out_dir.
        weight_decay: AdamW's decoupled weight decay (the paper: 0.05). ema_rate: 0.9999 as guided-diffusion.
        grad_clip: clip the global gradient norm to this (a finite number >= 0; 0: off). augment: random
            horizontal flips and shifts of up to ``max_shift`` pixels (default min(H, W) // 32, at least 1).
        batch_size: images per step, at most the number of images (each epoch's shuffle is drawn without
            replacement). seed: an integer >= 0.
        config's attention_resolutions are downsample factors (guided-diffusion's image_size // resolution): each
            must be one the UNet's levels reach, 1, 2, 4, ... 2**(len(channel_mult) - 1).
        log_every: progress/log flush cadence. loss_type: "mse" or "rescaled_mse" (see :class:`DiffusionLoss`).

    A setting left None takes its default (:data:`DDPM_DEFAULTS`) in a new run and the run's own value on resume.
    On resume, config keys and diffusion_steps, noise_schedule, loss_type, size given with other values than the
    run's are a ValueError (size not given: the run's, the size it trains at; an array is never resized, so a size
    other than its own is a ValueError); the optimizer's settings (lr, weight_decay, ema_rate, grad_clip,
    batch_size, augment) are taken, with a note on stderr; steps below the steps the run has done, or a folder
    holding another kind of run, is a ValueError.
    """
    saved_hparams: dict = {}
    if resume:  # before anything is read or written: a DDPM run, not past `steps`, the same UNet
        check_resumable(out_dir, "ddpm", "train_ddpm", steps)
        with np.load(Path(out_dir) / "train_state.npz", allow_pickle=False) as state:
            saved_hparams = json.loads(str(state["hparams"]))
            saved_config = json.loads(str(state["config"]))
        resume_settings("train_ddpm", saved_config, dict(config or {}), {}, tuple(config or ()), _CONFIG_FLAGS)
    given: dict[str, Any] = dict(
        lr=lr, weight_decay=weight_decay, ema_rate=ema_rate, grad_clip=grad_clip, batch_size=batch_size
    )
    given.update(augment=augment, diffusion_steps=diffusion_steps, noise_schedule=noise_schedule, loss_type=loss_type)
    given.update(size=None if size is None else [int(v) for v in size])
    settings = resume_settings(
        "train_ddpm", saved_hparams, given, DDPM_DEFAULTS, ("diffusion_steps", "noise_schedule", "loss_type", "size")
    )
    size = None if settings["size"] is None else (int(settings["size"][0]), int(settings["size"][1]))
    lr, weight_decay, ema_rate, batch_size = (settings[n] for n in ("lr", "weight_decay", "ema_rate", "batch_size"))
    grad_clip, augment = settings["grad_clip"], settings["augment"]
    diffusion_steps, noise_schedule, loss_type = (
        settings[n] for n in ("diffusion_steps", "noise_schedule", "loss_type")
    )
    grad_clip = check_grad_clip("train_ddpm", grad_clip)
    seed = check_seed("train_ddpm", seed)
    check_optimizer("train_ddpm", lr, weight_decay, ema_rate)
    check_positive(
        "train_ddpm",
        steps=steps,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        diffusion_steps=diffusion_steps,
    )
    run = TrainingRun(
        out_dir,
        "train_ddpm",
        LOG_FIELDS,
        ("model.safetensors", "ema.safetensors"),
        resume_hint="resume=True, --resume",
        continue_hint="continue with resume=True (--resume)",
    )
    model_path, ema_path = run.model_paths
    if isinstance(images, np.ndarray):
        data = _check_images(images, "train_ddpm")
    else:
        data = _check_images(load_images(images, size), os.fspath(images))
    n, channels, h, w = data.shape
    if size is not None and (h, w) != size:  # an array (or .npy) is taken as it is, never resized
        whose = "size (--size)" if given["size"] is not None else "resumed run's size"
        raise ValueError(
            f"train_ddpm: the images are {h} x {w} pixels (height x width), not the {whose} {size[0]} x {size[1]}: "
            "an array or a .npy file is taken as it is, never resized; resize it first"
        )

    saved = run.load(resume)
    if saved is not None:  # the model and the diffusion are the run's (resume_settings); optimiser settings may change
        config = json.loads(str(saved["config"]))
    cfg = dict(config or {})
    cfg.setdefault("in_channels", channels)
    cfg.setdefault("learn_sigma", cfg.get("out_channels", 2 * channels) == 2 * cfg["in_channels"])
    try:
        unet = UNet(cfg, backend=backend)
    except ValueError as exc:  # the C core names the config key; the user typed a flag
        raise ValueError(
            f"train_ddpm: {exc} (the UNet's layout comes from --model-channels, --channel-mult, --num-res-blocks, "
            "--attention-ds, --num-heads and --num-head-channels)"
        ) from None
    if unet.config["in_channels"] != channels:
        raise ValueError(
            f"train_ddpm: the UNet takes {unet.config['in_channels']} channel(s), the images have {channels}"
        )
    multiple = 2 ** (len(unet.config["channel_mult"]) - 1)
    if h % multiple or w % multiple:
        raise ValueError(
            f"train_ddpm: image size {h}x{w} must be a multiple of {multiple} for "
            f"{len(unet.config['channel_mult'])} UNet levels"
        )
    if saved is None:  # a resumed run keeps the layout it was started with
        _check_attention("train_ddpm", unet.config)
    if batch_size > n:
        raise ValueError(
            f"train_ddpm: batch_size (--batch-size) must be at most the number of training images, {n}, got "
            f"{batch_size}: each epoch's shuffle is drawn without replacement, so a batch cannot hold more images"
        )
    loss_fn = DiffusionLoss(diffusion_steps, noise_schedule, "", unet.config["learn_sigma"], loss_type)
    threads = get_backend(backend).num_threads
    params = list(unet._params.values())
    shift = max(1, min(h, w) // 32) if max_shift is None else int(max_shift)

    if saved is None:
        init_guided_diffusion(unet, seed)
        rng = np.random.default_rng(seed)
        batches = _Batches(n, rng)
        start = 0
    else:
        start = run.resumed_step(saved)
        unet.load_state_dict(load_safetensors(model_path))
        if int(saved["num_images"]) != n:
            raise ValueError(f"train_ddpm: the run was started with {int(saved['num_images'])} images, got {n}")
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(saved["rng_state"]))
        batches = _Batches(n, rng, saved["perm"], int(saved["pos"]))
    opt = AdamW(params, lr=lr, weight_decay=weight_decay, backend=backend)
    ema = EMA(params, ema_rate, backend=backend)
    if saved is not None:
        opt.load_state_dict(saved)
        ema_state = load_safetensors(ema_path)
        ema.values[...] = np.concatenate([ema_state[k].ravel() for k in unet._params])
    run.restart_log(saved is not None)

    def save(step: int) -> None:
        hparams = dict(
            lr=opt.lr,
            weight_decay=opt.weight_decay,
            ema_rate=ema.rate,
            grad_clip=grad_clip,
            batch_size=batch_size,
            augment=augment,
            diffusion_steps=diffusion_steps,
            loss_type=loss_type,
            noise_schedule=noise_schedule,
            size=[h, w],
        )
        # the model files record how they were trained (diffusion steps, schedule, size): diffice explain and sweep
        # check their [diffusion] steps / schedule and image size against it (diffice.models.files.training_record)
        meta = {
            "format": "guided-diffusion UNetModel",
            "diffice_config": _config_json(unet.config),
            "diffice_training": json.dumps(hparams, sort_keys=True),
            "step": str(step),
        }
        run.save(
            step,
            {
                model_path: lambda: (unet.state_dict(), meta),
                ema_path: lambda: (_state_dict_from_flat(unet, ema.values), dict(meta, ema_rate=repr(ema.rate))),
            },
            lambda: dict(
                config=np.str_(_config_json(unet.config)),
                rng_state=np.str_(json.dumps(rng.bit_generator.state)),
                perm=batches.perm,
                pos=np.int64(batches.pos),
                num_images=np.int64(n),
                hparams=np.str_(json.dumps(hparams)),
                **opt.state_dict(),
            ),
        )

    bar = _Progress(steps, start, progress, log_every)
    step, last_loss, interrupted = start, float("nan"), False
    try:
        with run.logging(), StopFlag() as stop:
            t0 = time.perf_counter() - run.elapsed  # the seconds column continues a resumed run's
            while step < steps:
                try:
                    x0 = data[batches.next(batch_size)]
                    if augment:
                        x0 = _augment(x0, rng, shift)
                    t = rng.integers(0, loss_fn.num_timesteps, size=batch_size)
                    noise = rng.standard_normal(x0.shape, dtype=np.float32)
                    terms, grads = loss_and_gradients(unet, loss_fn, x0, t, noise)
                except MemoryError as exc:
                    raise MemoryError(_out_of_memory("train_ddpm", step, batch_size, (h, w), exc)) from None
                norm = clip_grad_norm(grads, grad_clip, num_threads=threads)
                last_loss = float(np.mean(terms.loss))
                check_finite("train_ddpm", last_loss, norm, step, run.kept())
                opt.step(grads)
                ema.update()
                step += 1
                run.log(
                    dict(
                        step=step,
                        loss=f"{last_loss:.6g}",
                        mse=f"{float(np.mean(terms.mse)):.6g}",
                        vb=f"{float(np.mean(terms.vb)):.6g}",
                        grad_norm=f"{norm:.6g}",
                        lr=f"{opt.lr:.6g}",
                        seconds=f"{time.perf_counter() - t0:.3f}",
                    )
                )
                if step % log_every == 0:
                    run.flush_log()
                bar.step_done(step, last_loss)
                if stop.stop:
                    interrupted = True
                    break
                run.checkpoint_if_due(step, steps, checkpoint_every, save)
    finally:
        bar.close()
    run.save_final(step, save)
    if interrupted:  # quiet or not: where the checkpoint is and how to go on
        run.say_interrupted(step)
    plotted = run.plot()
    return TrainResult(
        step=step,
        interrupted=interrupted,
        last_loss=last_loss,
        model_path=model_path,
        ema_path=ema_path,
        state_path=run.state_path,
        log_path=run.log_path,
        plot_path=run.plot_path if plotted else None,
        mean_loss=bar.mean_loss,
        mean_steps=len(bar.recent),
    )


def _check_attention(who: str, config: Mapping) -> None:
    """ValueError unless every attention_resolutions entry is a downsample factor the UNet's levels reach: 1, 2, 4,
    ... 2**(levels - 1). Others (3; 8 with two levels) would silently give no attention block (only the middle
    block's), as guided-diffusion's ``ds in attention_resolutions`` does."""
    levels = len(config["channel_mult"])
    valid = [2**level for level in range(levels)]
    bad = [r for r in config["attention_resolutions"] if r not in valid]
    if bad:
        raise ValueError(
            f"{who}: attention_resolutions (--attention-ds) {', '.join(map(str, bad))} never occur(s) with "
            f"{levels} UNet levels (channel_mult {tuple(config['channel_mult'])}): the downsample factors are "
            f"{', '.join(map(str, valid))}; give some of those, or none for attention in the middle block only "
            "(they are downsample factors, guided-diffusion's image_size // attention_resolutions)"
        )


def _out_of_memory(who: str, step: int, batch_size: int, size: tuple[int, int], exc: MemoryError) -> str:
    """The message for a training step that ran out of memory: the batch size and what was asked for."""
    return (
        f"{who}: step {step + 1} with batch_size (--batch-size) {batch_size} of {size[0]}x{size[1]} images ran out "
        f"of memory ({exc}); use a smaller batch size"
    )

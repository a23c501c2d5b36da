"""Supervised training of the image networks in C (forward, loss gradient, backward, AdamW): the segmenter
(per-pixel cross-entropy), the standard-plane classifier f (cross-entropy on SP/NSP, segmenter frozen as in the
paper) and a concept oracle (per-concept binary cross-entropy). Batches come from a callable, so the same loops
train on phantoms (fresh images every step) or on a fixed data set."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from .. import ops
from .._native import _C
from ..io import load_safetensors, read_csv
from ..models.network import NetworkBase
from ..models.probabilities import predicted_class, sigmoid
from ..ops._backend import get_backend
from .checkpoints import (
    StopFlag,
    TrainingRun,
    check_finite,
    check_fraction,
    check_grad_clip,
    check_optimizer,
    check_out_dir,
    check_positive,
    check_resumable,
    check_seed,
    resume_settings,
)
from .ddpm import AdamW, _out_of_memory, _Progress, clip_grad_norm, different_sizes

PathLike = Union[str, "os.PathLike[str]"]

BatchFn = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of logits (M, K) at integer targets (M,) and its gradient (M, K); for a single logit
    (K = 1, targets 0/1) the binary cross-entropy of diffice.models.probabilities' convention. The C cross_entropy op
    (float32 per-sample losses, their mean in float64)."""
    z = np.ascontiguousarray(logits, dtype=np.float32)
    t = np.asarray(targets, dtype=np.int64)
    return float(ops.cross_entropy(z, t, reduction="mean")), ops.cross_entropy_backward(z, t, reduction="mean")


def pixel_cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean per-pixel cross-entropy of logits (N, K, H, W) at labels (N, H, W), gradient (N, K, H, W)."""
    n, k, h, w = logits.shape
    flat = logits.transpose(0, 2, 3, 1).reshape(-1, k)
    loss, grad = cross_entropy_grad(flat, labels.reshape(-1))
    return loss, np.ascontiguousarray(grad.reshape(n, h, w, k).transpose(0, 3, 1, 2))


def binary_cross_entropy_grad(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean BCE-with-logits over every entry of logits (N, C) against 0/1 targets (N, C), and its gradient, by the
    C bce_with_logits op (per-sample means of equal size, so their mean is the mean over every entry)."""
    z = np.ascontiguousarray(logits, dtype=np.float32)
    t = np.ascontiguousarray(targets, dtype=np.float32)
    n = z.shape[0]
    loss = float(ops.bce_with_logits(z, t).astype(np.float64).mean())
    return loss, ops.bce_with_logits_backward(np.full(n, 1.0 / n, np.float32), z, t)


SUPERVISED_LOG_FIELDS = ["step", "loss", "grad_norm", "lr", "seconds"]


def train_network(
    net: NetworkBase,
    batches: BatchFn,
    loss_grad: Callable,
    steps: int,
    lr: float = 1e-3,
    grad_clip: float = 1.0,
    seed: int = 0,
    frozen_prefix: str | None = None,
    progress: bool = True,
    label: str = "train",
    weight_decay: float = 0.0,
    out_dir: PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    metadata: Mapping[str, str] | None = None,
    log_every: int = 10,
) -> dict[str, Any]:
    """Trains net in place for `steps` AdamW steps (cosine decay of lr to 10%).

    batches(rng) -> (x, targets) draws a batch; loss_grad(outputs, targets) -> (loss, douts tuple); parameters
    whose names start with frozen_prefix get no update (and no weight decay).

    With out_dir, the run is saved there as ``model.safetensors`` (the network's state_dict, ``metadata`` added),
    ``train_state.npz`` (step, AdamW moments, the RNG), ``loss.csv`` and ``loss.png``, every checkpoint_every
    steps, at the end and on Ctrl-C, atomically; resume=True continues such a run bit for bit.
    grad_clip: clip the global gradient norm to this (a finite number >= 0; 0: off); seed: an integer >= 0.
    Returns {"loss": the losses of the steps run now, "step": steps done in total, "interrupted": bool}.
    """
    check_positive("train_network", steps=steps, checkpoint_every=checkpoint_every, log_every=log_every)
    grad_clip = check_grad_clip("train_network", grad_clip)
    seed = check_seed("train_network", seed)
    names = list(net._params)
    frozen = None
    if frozen_prefix:
        sizes = [net._params[n].size for n in names]
        offsets = np.cumsum([0] + sizes)
        frozen = [(offsets[i], offsets[i + 1]) for i, n in enumerate(names) if n.startswith(frozen_prefix)]
        if not frozen:
            raise ValueError(f"train_network: no parameter name starts with the frozen prefix {frozen_prefix!r}")
    be = get_backend(net.backend)
    opt = AdamW(net._params, lr=lr, weight_decay=weight_decay, backend=net.backend)
    rng = np.random.default_rng(seed)
    run = TrainingRun(out_dir, "train_network", SUPERVISED_LOG_FIELDS) if out_dir is not None else None
    start = 0
    if run is not None:
        saved = run.load(resume)
        if saved is not None:
            start = run.resumed_step(saved)
            net.load_state_dict(load_safetensors(run.model_paths[0]))
            opt.load_state_dict(saved)
            rng.bit_generator.state = json.loads(str(saved["rng_state"]))
        run.restart_log(saved is not None)

    # frozen weights get zero gradients, so Adam never moves them; only AdamW's decay would: their values are
    # put back after each step from this one copy (taken after a resume's load)
    frozen_values = {
        n: v.copy() for n, v in net._params.items() if frozen and weight_decay and n.startswith(frozen_prefix)
    }

    def save(step: int) -> None:
        assert run is not None
        run.save(
            step,
            {run.model_paths[0]: lambda: (net.state_dict(), dict(metadata or {}, step=str(step)))},
            lambda: dict(rng_state=np.str_(json.dumps(rng.bit_generator.state)), **opt.state_dict()),
        )

    bar = _Progress(steps, start, progress, log_every, label=label)
    history: list[float] = []
    step, interrupted = start, False
    try:
        with run.logging() if run is not None else nullcontext(), StopFlag() as stop:
            t0 = time.perf_counter() - (run.elapsed if run is not None else 0.0)  # seconds continue on resume
            while step < steps:
                x = None
                try:
                    x, targets = batches(rng)
                    opt.lr = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
                    loss, flat = net._c.train_step(
                        be,
                        np.ascontiguousarray(x, np.float32),
                        lambda outputs, targets=targets: _swap(loss_grad(outputs, targets)),
                    )
                except MemoryError as exc:
                    if x is None:  # drawing the batch itself ran out
                        raise MemoryError(
                            f"train_network: drawing the batch of step {step + 1} ran out of memory ({exc}); use a "
                            "smaller batch size (--batch-size)"
                        ) from None
                    raise MemoryError(
                        _out_of_memory("train_network", step, len(x), tuple(np.shape(x)[2:4]), exc)
                    ) from None
                if frozen:
                    for a, b in frozen:
                        flat[a:b] = 0.0
                norm = clip_grad_norm(flat, grad_clip, num_threads=be.num_threads)
                check_finite(
                    "train_network",
                    loss,
                    norm,
                    step,
                    run.kept() if run is not None else f"the network keeps the weights of step {step}",
                )
                opt.step(flat)
                for n, v in frozen_values.items():
                    net._params[n][...] = v
                step += 1
                history.append(float(loss))
                if run is not None:
                    run.log(
                        dict(
                            step=step,
                            loss=f"{loss:.6g}",
                            grad_norm=f"{norm:.6g}",
                            lr=f"{opt.lr:.6g}",
                            seconds=f"{time.perf_counter() - t0:.3f}",
                        )
                    )
                bar.step_done(step, float(loss))
                if stop.stop:
                    interrupted = True
                    break
                if run is not None:
                    run.checkpoint_if_due(step, steps, checkpoint_every, save)
    finally:
        bar.close()
    if run is not None:
        run.save_final(step, save)
        run.plot()
        if interrupted:  # quiet or not: where the checkpoint is and how to go on
            run.say_interrupted(step)
    return {"loss": history, "step": step, "interrupted": interrupted}


def _swap(loss_and_douts):
    loss, douts = loss_and_douts
    return douts, loss


def accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    """Fraction of x (in batches) whose predicted labels equal y."""
    hits = 0
    for i in range(0, len(x), batch):
        hits += int(np.sum(predict(np.ascontiguousarray(x[i : i + batch])) == y[i : i + batch]))
    return hits / len(x)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def segmentation_labels(masks: np.ndarray, structure_names: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(N, S, H, W) structure masks -> (N, H, W) labels over `classes` (class 0 = background); later classes are
    painted over earlier ones."""
    index = {name: i for i, name in enumerate(structure_names)}
    labels = np.zeros((masks.shape[0],) + masks.shape[2:], np.int64)
    for c, name in enumerate(classes):
        if c == 0:
            continue
        labels[masks[:, index[name]].astype(bool)] = c
    return labels


# ---- training sets on disk (the format `diffice phantoms` writes; a researcher's own data the same way) ----


@dataclass
class TrainingSet:
    """Images with what the networks learn from them.

    images: float32 (N, 1, H, W) in [-1, 1]; files: the image file names (N,);
    masks: int64 (N, H, W) label maps over ``classes`` (None without --masks);
    labels: int64 (N,) image labels, e.g. 1 = standard plane (None without a labels CSV);
    concepts: float32 (N, C) 0/1 concept targets over ``concept_names`` (None unless asked for).
    """

    images: np.ndarray
    files: list[str]
    masks: np.ndarray | None = None
    classes: list[str] | None = None
    labels: np.ndarray | None = None
    concepts: np.ndarray | None = None
    concept_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TrainingSet, TrainingSet]:
        """(train, validation): a seeded random split, at least one image in each."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n = len(self)
        if n < 2:
            raise ValueError(f"a training set needs at least 2 images to split off a validation set, got {n}")
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(n - 1, max(1, int(round(val_fraction * n))))
        return self.subset(np.sort(perm[n_val:])), self.subset(np.sort(perm[:n_val]))

    def subset(self, index: np.ndarray) -> TrainingSet:
        def take(a):
            return None if a is None else a[index]

        return TrainingSet(
            self.images[index],
            [self.files[i] for i in index],
            take(self.masks),
            self.classes,
            take(self.labels),
            take(self.concepts),
            self.concept_names,
        )


def _read_label_csv(path: Path) -> tuple[list[str], dict[str, tuple[int, dict[str, str]]]]:
    """The CSV's columns and its rows by file name, each with its line number. Two rows for one file (which would
    silently leave the last one's labels) are a ValueError naming both lines."""
    fields, rows = read_csv(path, ("file",), "a CSV of labels (a 'file' column with the image file names)")
    by_file: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in rows:
        name = row["file"]
        if name in by_file:
            raise ValueError(
                f"{path}: lines {by_file[name][0]} and {line} are both rows for {name!r}; give each image one row"
            )
        by_file[name] = (line, row)
    return fields, by_file


def load_training_set(
    images: PathLike,
    size: tuple[int, int] | None = None,
    masks: PathLike | None = None,
    labels: PathLike | None = None,
    label_column: str = "label",
    concept_columns: Sequence[str] = (),
    classes: Sequence[str] | None = None,
    progress: bool = False,
    binary_label: bool = False,
) -> TrainingSet:
    """Reads a training set.

    images: a folder of images (PNG/JPEG/TIFF/BMP; 8-bit scaled by 255, others by their range) -> [-1, 1];
    size: (H, W) to resize to (default: the first image's size; all must then match);
    masks: a folder of label-map images with the same file names (values = class indices, resized with nearest
        neighbour); classes: their names (default: ``classes.txt`` beside the mask folder, else class0..);
    labels: a CSV with a ``file`` column; label_column (integers >= 0; 0/1 with binary_label, the oracle's
        standard-plane flag) and concept_columns (0/1) are read from it.
    Every problem (a missing mask, a file without a CSV row, a bad value) is a ValueError naming the file.
    """
    from ..data.images import _read_pixels, list_images, read_unit, unit_to_input
    from ..progress import ProgressBar

    files = list_images(images)
    resized = size is not None
    if size is None:
        first = _read_pixels(files[0])
        size = (int(first.shape[0]), int(first.shape[1]))
    size = (int(size[0]), int(size[1]))

    bar = ProgressBar(len(files), label="loading", enabled=progress)
    x = np.empty((len(files), 1) + size, np.float32)
    shapes = []  # each image's own (H, W), which its mask's must match
    for i, f in enumerate(files):
        unit = read_unit(f)
        if not resized and unit.shape != size:  # without a size, every image at the first one's, as it is
            raise ValueError(different_sizes(images, f.name, unit.shape, files[0].name, size))
        shapes.append(unit.shape)
        x[i] = unit_to_input(f, unit, size)
        bar.update(i + 1)
    bar.close()
    ts = TrainingSet(images=x, files=[f.name for f in files])
    if masks is not None:
        ts.masks, ts.classes = _load_masks(Path(masks), files, shapes, size, classes)
    if labels is not None:
        path = Path(labels)
        if not path.is_file():
            raise FileNotFoundError(f"labels CSV not found: {path}")
        fields, rows = _read_label_csv(path)
        wanted = ([label_column] if label_column else []) + list(concept_columns)
        missing = [c for c in wanted if c not in fields]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; it has {fields}")
        absent = [f.name for f in files if f.name not in rows]
        if absent:
            raise ValueError(f"{path}: no row for {len(absent)} image(s), e.g. {absent[:3]}")

        def column(name: str, binary: bool) -> np.ndarray:
            values = []
            for f in files:
                line, row = rows[f.name]
                text = row[name]
                if text is None:  # a row with fewer fields than the header
                    raise ValueError(
                        f"{path}: line {line} ({f.name}) has no value in column {name!r}: it has fewer fields than "
                        "the header"
                    )
                try:
                    v = int(text)
                except ValueError:
                    raise ValueError(f"{path}: {f.name}: column {name!r} must be an integer, got {text!r}") from None
                if binary and v not in (0, 1):
                    raise ValueError(f"{path}: {f.name}: column {name!r} must be 0 or 1, got {v}")
                if v < 0:
                    raise ValueError(f"{path}: {f.name}: column {name!r} must be >= 0, got {v}")
                values.append(v)
            return np.array(values, np.int64)

        if label_column:
            ts.labels = column(label_column, binary_label)
        if concept_columns:
            ts.concepts = np.stack([column(c, True) for c in concept_columns], axis=1).astype(np.float32)
            ts.concept_names = list(concept_columns)
    return ts


def _load_masks(
    folder: Path,
    files: Sequence[Path],
    shapes: Sequence[tuple[int, int]],
    size: tuple[int, int],
    classes: Sequence[str] | None,
) -> tuple[np.ndarray, list[str]]:
    """The label maps of `files` (images of own sizes `shapes`) at `size`, resized with nearest neighbour, and the
    class names. A mask whose aspect ratio is neither its image's nor `size`'s (drawn for another image, or
    transposed) is a ValueError naming both; one at another resolution, or already at `size`, is resized."""
    from PIL import Image

    from ..data.images import MAX_ASPECT_CHANGE, aspect_change

    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder not found: {folder}")
    named_by = "the classes given"
    if classes is None:
        names_file = folder.parent / "classes.txt"
        named_by = str(names_file)
        if names_file.is_file():
            classes = [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
    out = np.empty((len(files),) + size, np.int64)
    for i, f in enumerate(files):
        path = folder / f.name
        if not path.is_file():
            raise ValueError(f"no mask for image {f.name}: {path} does not exist")
        try:
            with Image.open(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ValueError(f"mode {img.mode}")
                own = (img.height, img.width)
                if own != size:
                    img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
                out[i] = np.asarray(img, dtype=np.int64)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a single-channel label map ({exc})") from None
        if min(aspect_change(own, shapes[i]), aspect_change(own, size)) > MAX_ASPECT_CHANGE:
            raise ValueError(
                f"{path}: the mask is {own[0]} x {own[1]} pixels (height x width), the shape of neither its image "
                f"{f.name} ({shapes[i][0]} x {shapes[i][1]}) nor the training size ({size[0]} x {size[1]}): the "
                "mask of another image, or transposed?"
            )
    if classes is not None and len(classes) == 2 and out.max() == 255 and np.all((out == 0) | (out == 255)):
        out[out == 255] = 1  # binary masks stored as 0/255 (HC18's, most annotation tools'), with two class names
    top = int(out.max())
    if classes is None:
        example = next(f.name for f, m in zip(files, out) if m.max() == top)
        hint = (
            f"e.g. {example} has {top}; a binary mask stored as 0/{top}? store it as 0/1, or give "
            f"{folder.parent / 'classes.txt'} with two class names (0/255 masks are then read as 0/1)"
        )
        classes = [f"class{c}" for c in range(class_count(out, f"{folder}: masks", hint))]
    if top >= len(classes):
        bad = next(f.name for f, m in zip(files, out) if m.max() >= len(classes))
        raise ValueError(f"{folder / bad}: label {top} but only {len(classes)} classes ({list(classes)})")
    unused = [f"{c} ({name})" for c, name in enumerate(classes) if not np.any(out == c)]
    if unused:  # classes.txt from another data set? The segmenter gets outputs it never learns
        warnings.warn(
            f"{folder}: no mask uses class(es) {', '.join(unused)} of the {len(classes)} that {named_by} names; "
            "the segmenter still gets an output for each",
            TrainingDataWarning,
            stacklevel=3,
        )
    return out, list(classes)


class TrainingDataWarning(UserWarning):
    """Training data that trains, but likely not as meant (a class that classes.txt names and no mask uses)."""


def class_count(values: np.ndarray, what: str, hint: str) -> int:
    """The number of classes K of class indices used without a list of class names: max + 1, when every index
    0..max occurs at least once; a gap (0/255 masks, a stray label 7 among 0/1) is a ValueError starting with
    ``what`` (the file) that names the values used and ends with ``hint``."""
    used = np.unique(values)
    top = int(used[-1]) if used.size else -1
    if used.size != top + 1:
        shown = ", ".join(str(int(v)) for v in used[:12]) + (", ..." if used.size > 12 else "")
        unused = sorted(set(range(top + 1)) - {int(v) for v in used})
        gap = (
            f"{unused[0]}"
            if len(unused) == 1
            else f"{unused[0]}..{unused[-1]}"
            if len(unused) == unused[-1] - unused[0] + 1
            else f"{len(unused)} of 0..{top}"
        )
        raise ValueError(
            f"{what} use the values [{shown}], leaving class(es) {gap} unused: expected class indices 0..K-1, "
            f"each used at least once ({hint})"
        )
    return top + 1


# ---- the networks `diffice train segmenter|classifier|oracle` builds, and their saved form ----


def init_for_training(net: NetworkBase, seed: int = 0) -> None:
    """He-uniform conv/linear weights (ReLU/SiLU networks), zero biases, norm scales 1 and shifts 0; batch-norm
    statistics at the identity (mean 0, variance 1), so BN-inference networks train as plain conv nets."""
    rng = np.random.default_rng(seed)
    for name, p in net._params.items():
        if name.endswith("running_var"):
            p[...] = 1.0
        elif name.endswith("running_mean") or name.endswith(".bias"):
            p[...] = 0.0
        elif p.ndim == 1:  # GroupNorm / BatchNorm scale
            p[...] = 1.0
        else:
            fan_in = int(np.prod(p.shape[1:]))
            bound = math.sqrt(6.0 / fan_in)
            p[...] = rng.uniform(-bound, bound, p.shape)


def batch_sampler(
    data: TrainingSet,
    batch_size: int,
    target: str,
    augment: bool = True,
    max_shift: int | None = None,
    who: str = "batch_sampler",
) -> BatchFn:
    """batches(rng) -> (x, targets): batch_size images drawn with replacement, randomly flipped and shifted
    (masks moved with their images). target: "masks", "labels" or "concepts".

    A batch_size whose batches alone (the images, targets and the copies drawing and augmenting make, about
    ``_BATCH_COPIES`` times the batch's arrays) would not fit the C core's memory limit for a backend
    (``_C.default_memory_limit()``: 90% of the machine's RAM or of its cgroup's limit) is a ValueError here, before
    anything is allocated; errors start with ``who``."""
    from .ddpm import _augment

    check_positive(who, batch_size=batch_size)
    y_all = getattr(data, target)
    if y_all is None:
        raise ValueError(f"the training set has no {target}")
    h, w = data.images.shape[2:]
    per_image = (data.images[0].nbytes + np.asarray(y_all[0]).nbytes) if len(data) else 0
    need, limit = _BATCH_COPIES * per_image * int(batch_size), _C.default_memory_limit()
    if limit and need > limit:
        raise ValueError(
            f"{who}: batch_size (--batch-size) {batch_size} is too large: drawing a batch of {h}x{w} images "
            f"takes about {need / 2**30:.1f} GiB before the network's own memory, more than the memory limit of "
            f"{limit / 2**30:.1f} GiB (90% of this machine's memory); even without the network's, at most "
            f"{limit // (_BATCH_COPIES * per_image)} would fit"
        )
    shift = max(1, min(h, w) // 32) if max_shift is None else int(max_shift)

    def batches(rng: np.random.Generator):
        idx = rng.integers(0, len(data), size=batch_size)
        x, y = data.images[idx], y_all[idx]
        if augment and target == "masks":
            both = _augment(np.concatenate([x, y[:, None].astype(np.float32)], axis=1), rng, shift)
            return np.ascontiguousarray(both[:, :1]), both[:, 1].astype(np.int64)
        if augment:
            x = _augment(x, rng, shift)
        return x, y

    return batches


_BATCH_COPIES = 4  # a drawn batch's arrays, counted with the copies batch_sampler's drawing and augmenting make


# ---- `diffice train segmenter|classifier|oracle` ----

SUPERVISED_KINDS = ("segmenter", "classifier", "oracle")

# train_supervised's settings when not given (a new run; a resumed run keeps its own)
SUPERVISED_DEFAULTS: dict[str, Any] = dict(
    width=16,
    levels=3,
    groups=8,
    k=8,
    concepts=["TH", "CSP", "FP", "sharp"],
    negative=["FP"],
    batch_size=16,
    lr=1e-3,
    weight_decay=0.0,
    grad_clip=1.0,
    seed=0,
    augment=True,
    val_fraction=0.1,
    size=None,  # the images' own size (recorded as the size trained at)
)
# the settings a resumed run cannot change: the network's structure, the validation split and the image size
FIXED_SETTINGS = ("width", "levels", "groups", "k", "concepts", "negative", "seed", "val_fraction", "size")


def _predict_in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([fn(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)])


def evaluate(kind: str, model: Any, data: TrainingSet) -> dict[str, Any]:
    """Validation numbers: segmenter -- pixel accuracy and per-class Dice; classifier -- accuracy and balanced
    accuracy; oracle -- per-concept accuracy and the accuracy of the standard-plane rule applied to its heads."""
    if kind == "segmenter":
        pred = _predict_in_batches(lambda x: np.argmax(model.forward(x), axis=1), data.images)
        # a class neither in the masks nor predicted has no Dice: None (null in metrics.json, which must stay
        # JSON: NaN is not), left out of the mean
        dice: dict[str, float | None] = {}
        for c, name in enumerate(data.classes or []):
            inter = np.sum((pred == c) & (data.masks == c))
            total = np.sum(pred == c) + np.sum(data.masks == c)
            dice[name] = float(2 * inter / total) if total else None
        foreground = [v for v in list(dice.values())[1:] if v is not None]
        return dict(
            pixel_accuracy=float(np.mean(pred == data.masks)),
            dice=dice,
            mean_foreground_dice=float(np.mean(foreground)) if foreground else None,
        )
    if kind == "classifier":
        assert data.labels is not None  # a classifier's training set has labels (load_training_set)
        pred = _predict_in_batches(lambda x: predicted_class(model.logits(x), axis=1), data.images)
        return dict(
            accuracy=float(np.mean(pred == data.labels)), balanced_accuracy=balanced_accuracy(pred, data.labels)
        )
    if kind == "oracle":
        p = _predict_in_batches(lambda x: sigmoid(model.logits(x)), data.images)
        assert data.concepts is not None and data.concept_names is not None  # an oracle's set has concepts
        hits = (p > 0.5) == (data.concepts > 0.5)
        out: dict[str, Any] = dict(
            concept_accuracy={c: float(hits[:, i].mean()) for i, c in enumerate(data.concept_names)}
        )
        if data.labels is not None:
            qs = np.ones(len(p))
            for i, concept in enumerate(data.concept_names):
                qs *= (1.0 - p[:, i]) if concept in model.negative else p[:, i]
            out["rule_accuracy"] = float(np.mean((qs > 0.5) == (data.labels == 1)))
        return out
    raise ValueError(f"kind must be one of {SUPERVISED_KINDS}, got {kind!r}")


def _check_resumed_segmenter(who: str, out: Path, kind: str, segmenter: PathLike) -> None:
    """On resume, a --segmenter given must be the one frozen in the run (the run goes on with its own, which a
    different file would silently not replace): ValueError naming the file otherwise."""
    from ..models.classifier import PlaneClassifier, Segmenter
    from ..models.files import load_model

    given = load_model(segmenter)
    if not isinstance(given, Segmenter):
        raise ValueError(f"{segmenter}: not a segmenter (it holds a {type(given).__name__})")
    run = load_model(out / "model.safetensors")
    plane = run if kind == "classifier" else run.network
    if not isinstance(plane, PlaneClassifier):
        raise ValueError(
            f"{who}: --segmenter {segmenter}: the run in {out} sees the images alone, without a segmenter; leave "
            "--segmenter out, or start a new run in another --out"
        )
    held, new = plane.segmenter.state_dict(), given.state_dict()
    if held.keys() != new.keys() or not all(np.array_equal(held[k], new[k]) for k in held):
        raise ValueError(
            f"{who}: --segmenter {segmenter} is not the segmenter frozen in the run in {out} (its weights differ); "
            "a resumed run keeps its own: give that file, or start a new run in another --out"
        )


def train_supervised(
    kind: str,
    images: PathLike,
    out_dir: PathLike,
    masks: PathLike | None = None,
    labels: PathLike | None = None,
    size: tuple[int, int] | None = None,
    segmenter: PathLike | None = None,
    concepts: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    width: int | None = None,
    levels: int | None = None,
    groups: int | None = None,
    k: int | None = None,
    steps: int = 2000,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    grad_clip: float | None = None,
    seed: int | None = None,
    augment: bool | None = None,
    val_fraction: float | None = None,
    checkpoint_every: int = 500,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains one of the image networks on a folder and writes ``model.safetensors`` (loads with
    :func:`diffice.models.files.load_model`), ``metrics.json`` (validation numbers), ``loss.csv``/``loss.png`` and
    ``train_state.npz`` (for resume) to out_dir.

    kind "segmenter": a :class:`Segmenter` (width, levels, groups) on ``masks`` (per-pixel cross-entropy);
    kind "classifier": the plane classifier f = l(s(x), x), s the trained ``segmenter`` file (frozen), l a
        SonoNet-k on [x, s's K probability maps] with a 2-logit head, cross-entropy on the ``labels`` CSV column
        ``label`` (1 = standard plane);
    kind "oracle": one logit per concept (binary cross-entropy on the CSV's concept columns), the independent
        judge of :class:`diffice.models.oracle.ConceptOracle`: a SonoNet-k on x alone, or, with ``segmenter`` (one
        trained separately from f's), a SonoNet-k on [x, that segmenter's maps] with the segmenter frozen.
    A seeded val_fraction of the images is held out for the validation numbers. Batches are drawn with
    replacement (batch_size may exceed the number of images, up to what memory allows); grad_clip: a finite
    number >= 0 (0: off); seed: an integer >= 0.

    A setting left None takes its default (:data:`SUPERVISED_DEFAULTS`) in a new run and the run's own value on
    resume (``diffice_training`` in model.safetensors' metadata records them, size as the size trained at). On
    resume, an architecture, data split or size setting (:data:`FIXED_SETTINGS`) given with another value than the
    run's is a ValueError; an optimizer setting (lr, weight_decay, grad_clip, batch_size, augment) is taken, with a
    note on stderr; steps below the steps the run has done is a ValueError; a folder holding another kind of run is
    a ValueError.
    """
    from ..models.classifier import PlaneClassifier, Segmenter
    from ..models.files import build_model, load_model, model_metadata
    from ..models.oracle import ConceptOracle
    from ..models.sononet import SonoNet

    if kind not in SUPERVISED_KINDS:
        raise ValueError(f"kind must be one of {SUPERVISED_KINDS}, got {kind!r}")
    who = f"train {kind}"
    out = Path(out_dir)
    check_out_dir(who, out)  # before the images are read
    saved_meta: dict[str, str] = {}  # the resumed run's model.safetensors metadata
    if resume:  # before anything is read or written: a run of this kind, not past `steps`
        check_resumable(out, kind, who, steps)
        from ..io import load_safetensors_metadata

        saved_meta = load_safetensors_metadata(out / "model.safetensors")
        if segmenter is not None and kind != "segmenter":
            _check_resumed_segmenter(who, out, kind, segmenter)
    saved_settings = json.loads(saved_meta.get("diffice_training", "{}"))
    given: dict[str, Any] = dict(
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed
    )
    given.update(augment=augment, val_fraction=val_fraction, size=None if size is None else [int(v) for v in size])
    if kind == "segmenter":
        given.update(width=width, levels=levels, groups=groups)
    else:
        given.update(k=k)
    if kind == "oracle":
        given.update(
            concepts=None if concepts is None else list(concepts), negative=None if negative is None else list(negative)
        )
    settings = resume_settings(who, saved_settings, given, SUPERVISED_DEFAULTS, FIXED_SETTINGS)
    batch_size, lr, weight_decay = settings["batch_size"], settings["lr"], settings["weight_decay"]
    grad_clip, seed, augment, val_fraction = (
        settings["grad_clip"],
        settings["seed"],
        settings["augment"],
        settings["val_fraction"],
    )
    width, levels, groups, k = (settings.get(n, SUPERVISED_DEFAULTS[n]) for n in ("width", "levels", "groups", "k"))
    concepts = list(settings.get("concepts", SUPERVISED_DEFAULTS["concepts"]))
    negative = list(settings.get("negative", SUPERVISED_DEFAULTS["negative"]))
    check_positive(who, steps=steps, batch_size=batch_size, checkpoint_every=checkpoint_every)
    check_optimizer(who, lr, weight_decay)
    val_fraction = check_fraction(who, "val_fraction", val_fraction)
    grad_clip = check_grad_clip(who, grad_clip)
    seed = check_seed(who, seed)
    if kind == "segmenter" and masks is None:
        raise ValueError("train segmenter: --masks (a folder of label maps) is required")
    if kind in ("classifier", "oracle") and labels is None:
        raise ValueError(f"train {kind}: --labels (a CSV with file and label/concept columns) is required")
    if kind == "classifier" and segmenter is None:
        raise ValueError("train classifier: --segmenter (a segmenter trained by 'diffice train segmenter') is required")
    size = settings["size"]  # given, else the resumed run's (None: a new run at the images' own size)
    data = load_training_set(
        images,
        None if size is None else (int(size[0]), int(size[1])),
        masks=masks if kind == "segmenter" else None,
        labels=labels if kind != "segmenter" else None,
        label_column="label" if kind == "classifier" or kind == "oracle" else "",
        concept_columns=concepts if kind == "oracle" else (),
        progress=progress,
        binary_label=kind == "oracle",  # standard plane or not: what its rule_accuracy is measured against
    )
    # the image set, by its file names: another one on resume would move images across the validation split
    # (the names' bytes: a name that is not UTF-8, read with surrogate escapes, digests as the file system has it)
    names = hashlib.sha256("\n".join(data.files).encode(errors="surrogateescape")).hexdigest()[:16]
    if resume and "image_files" in saved_settings and saved_settings["image_files"] != names:
        before = saved_settings.get("num_images")
        other = f"{len(data)} images, not the {before}" if before != len(data) else "images of other file names than"
        raise ValueError(
            f"{who}: {images} holds {other} the run in {out} was started with: the held-out validation split "
            "would change, taking in images it trained on; resume it on its own images, or start a new run in "
            "another --out"
        )
    settings.update(num_images=len(data), image_files=names)
    train_set, val_set = data.split(val_fraction, seed=seed + 1)
    h, w = data.images.shape[2:]
    settings["size"] = [int(h), int(w)]  # what a resume without --size trains at

    if kind == "classifier":
        assert data.labels is not None  # a classifier's training set has labels (load_training_set)
        n_classes = class_count(data.labels, f"{labels}: labels", "a typo?")
    if resume:  # the model's structure is the run's (check_resumable: of this kind)
        model = build_model(json.loads(saved_meta["diffice_model"]))
    elif kind == "segmenter":
        assert data.classes is not None  # a segmenter's training set has its class names (load_training_set)
        model = Segmenter(classes=len(data.classes), width=width, levels=levels, groups=groups)
        model.class_names = list(data.classes)
    else:
        seg = None
        if segmenter is not None:
            seg = load_model(segmenter)
            if not isinstance(seg, Segmenter):
                raise ValueError(f"{segmenter}: not a segmenter (it holds a {type(seg).__name__})")
        if kind == "classifier":
            assert seg is not None  # required above
            if n_classes < 2:
                raise ValueError(f"{labels}: the label column has a single class")
            model = PlaneClassifier(seg, SonoNet(k, 1 + seg.config["classes"], n_classes, standardize=False))
        elif seg is not None:
            model = ConceptOracle(
                PlaneClassifier(seg, SonoNet(k, 1 + seg.config["classes"], len(concepts), standardize=False)),
                concepts,
                negative,
            )
        else:
            model = ConceptOracle(SonoNet(k, 1, len(concepts), standardize=False), concepts, negative)
    if not resume:
        head = model.network if kind == "oracle" else model
        init_for_training(head.classifier if isinstance(head, PlaneClassifier) else head, seed)

    if kind == "segmenter":
        net, target, frozen = model, "masks", None

        def loss_grad(outputs, y):
            loss, g = pixel_cross_entropy_grad(outputs[0], y)
            return loss, (g,)
    else:
        plane = model if kind == "classifier" else model.network
        if isinstance(plane, PlaneClassifier):  # s is frozen: no gradient through it while training
            net, frozen = PlaneClassifier(plane.segmenter, plane.classifier, grad_through_segmenter=False), "segmenter."
        else:
            net, frozen = plane, None
        target = "labels" if kind == "classifier" else "concepts"
        loss_fn = cross_entropy_grad if kind == "classifier" else binary_cross_entropy_grad

        def loss_grad(outputs, y):
            loss, g = loss_fn(outputs[0], y)
            return loss, (g,) + (None,) * (len(outputs) - 1)

    if train_set.images.shape[0] < 1:
        raise ValueError("no training images left after the validation split")
    try:  # a size the network cannot take: an error naming the size, before the run's folder is written
        net.forward(np.ascontiguousarray(train_set.images[:1]))
    except ValueError as exc:
        source = "the images' own size" if size is None else "--size, or the resumed run's size"
        raise ValueError(
            f"{who}: the images are {h} x {w} pixels (height x width; {source}), a size the network cannot take "
            f"({exc}); give a --size it takes"
        ) from None
    result = train_network(
        net,
        batch_sampler(train_set, batch_size, target, augment, who=who),
        loss_grad,
        steps,
        lr=lr,
        grad_clip=grad_clip,
        seed=seed,
        frozen_prefix=frozen,
        progress=progress,
        label=f"train {kind}",
        weight_decay=weight_decay,
        out_dir=out,
        checkpoint_every=checkpoint_every,
        resume=resume,
        metadata=dict(model_metadata(model), diffice_training=json.dumps(settings, sort_keys=True)),
    )
    metrics = dict(
        kind=kind,
        step=result["step"],
        interrupted=result["interrupted"],
        image_size=[h, w],
        train_images=len(train_set),
        validation_images=len(val_set),
        validation=evaluate(kind, model, val_set),
    )
    from ..data.images import atomic_write_bytes

    atomic_write_bytes(out / "metrics.json", (json.dumps(metrics, indent=2, allow_nan=False) + "\n").encode())
    return metrics

"""Supervised training of the image networks in C (forward, loss gradient, backward, AdamW): the segmenter
(per-pixel cross-entropy), the standard-plane classifier f (cross-entropy on SP/NSP, segmenter frozen as in the
paper) and a concept oracle (per-concept binary cross-entropy). Batches come from a callable, so the same loops
train on phantoms (fresh images every step) or on a fixed data set."""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .network import NetworkBase
from .ops._backend import get_backend
from .progress import ProgressBar
from .train import AdamW, clip_grad_norm

BatchFn = Callable[[np.random.Generator], Tuple[np.ndarray, np.ndarray]]


def _softmax_last(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_grad(logits: np.ndarray, targets: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean cross-entropy of logits (M, K) at integer targets (M,) and its gradient."""
    p = _softmax_last(logits.astype(np.float64))
    m = len(targets)
    loss = float(-np.log(np.maximum(p[np.arange(m), targets], 1e-12)).mean())
    p[np.arange(m), targets] -= 1.0
    return loss, (p / m).astype(np.float32)


def pixel_cross_entropy_grad(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean per-pixel cross-entropy of logits (N, K, H, W) at labels (N, H, W), gradient (N, K, H, W)."""
    n, k, h, w = logits.shape
    flat = logits.transpose(0, 2, 3, 1).reshape(-1, k)
    loss, grad = cross_entropy_grad(flat, labels.reshape(-1))
    return loss, np.ascontiguousarray(grad.reshape(n, h, w, k).transpose(0, 3, 1, 2))


def binary_cross_entropy_grad(logits: np.ndarray, targets: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean BCE-with-logits over every entry of logits (N, C) against 0/1 targets (N, C), and its gradient."""
    z = logits.astype(np.float64)
    t = targets.astype(np.float64)
    loss = float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))
    grad = (1.0 / (1.0 + np.exp(-z)) - t) / z.size
    return loss, grad.astype(np.float32)


def train_network(net: NetworkBase, batches: BatchFn, loss_grad: Callable, steps: int, lr: float = 1e-3,
                  grad_clip: float = 1.0, seed: int = 0, frozen_prefix: Optional[str] = None,
                  progress: bool = True, label: str = "train") -> Dict[str, list]:
    """Trains net in place for `steps` AdamW steps. loss_grad(outputs, targets) -> (loss, douts tuple); parameters
    whose names start with frozen_prefix get no update. Returns the loss history."""
    rng = np.random.default_rng(seed)
    names = list(net._params)
    opt = AdamW(net._params, lr=lr)
    frozen = None
    if frozen_prefix:
        sizes = [net._params[n].size for n in names]
        offsets = np.cumsum([0] + sizes)
        frozen = [(offsets[i], offsets[i + 1]) for i, n in enumerate(names) if n.startswith(frozen_prefix)]
    bar = ProgressBar(steps, label=label, enabled=progress)
    history = []
    be = get_backend(net.backend)
    for step in range(steps):
        x, targets = batches(rng)
        # cosine decay to 10% of the initial rate
        opt.lr = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
        loss, flat = net._c.train_step(be, np.ascontiguousarray(x, np.float32),
                                       lambda outputs: _swap(loss_grad(outputs, targets)))
        if frozen:
            for a, b in frozen:
                flat[a:b] = 0.0
        if grad_clip > 0:
            clip_grad_norm(flat, grad_clip)
        opt.step(flat)
        history.append(float(loss))
        bar.update(step + 1, note=f"loss {np.mean(history[-20:]):.4f}")
    bar.close()
    return {"loss": history}


def _swap(loss_and_douts):
    loss, douts = loss_and_douts
    return douts, loss


def accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    """Fraction of x (in batches) whose predicted labels equal y."""
    hits = 0
    for i in range(0, len(x), batch):
        hits += int(np.sum(predict(np.ascontiguousarray(x[i:i + batch])) == y[i:i + batch]))
    return hits / len(x)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


def segmentation_labels(masks: np.ndarray, structure_names: Sequence[str],
                        classes: Sequence[str]) -> np.ndarray:
    """(N, S, H, W) structure masks -> (N, H, W) labels over `classes` (class 0 = background); later classes are
    painted over earlier ones."""
    index = {name: i for i, name in enumerate(structure_names)}
    labels = np.zeros((masks.shape[0],) + masks.shape[2:], np.int64)
    for c, name in enumerate(classes):
        if c == 0:
            continue
        labels[masks[:, index[name]].astype(bool)] = c
    return labels

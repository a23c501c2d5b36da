"""Logits to probabilities, the one convention every part of diffice uses (the C core's guidance included).

A classifier's logits (N, C) over its classes:

- C >= 2: the classes are 0 .. C - 1, p = softmax(logits), the predicted class is the argmax of the logits;
- C == 1: a single binary logit l for two classes: p(class 1) = sigmoid(l), p(class 0) = 1 - sigmoid(l), the
  predicted class is 1 where l > 0, else 0; valid targets are 0 and 1, and the guidance loss is binary
  cross-entropy (the C cross_entropy op; csrc/nets/class_loss.c).

:func:`probabilities` therefore returns max(C, 2) columns. Multi-label heads (the concept oracle: one logit per
concept, each present or absent on its own) use :func:`sigmoid` per entry instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sigmoid", "probabilities", "predicted_class", "num_classes"]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) per entry, float64, without overflow for either sign."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def num_classes(outputs: int) -> int:
    """The number of classes of a classifier with this many logits (>= 1; a single logit: 2)."""
    return max(int(outputs), 2)


def probabilities(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Class probabilities, float64, with max(C, 2) entries along axis (C = logits.shape[axis]): softmax for
    C >= 2; for a single logit l, (1 - sigmoid(l), sigmoid(l))."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 0 or z.shape[axis] < 1:
        raise ValueError(f"probabilities: logits need at least one class along axis {axis}, got shape {z.shape}")
    if z.shape[axis] == 1:
        p1 = sigmoid(z)
        return np.concatenate([1.0 - p1, p1], axis=axis)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def predicted_class(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """The predicted class (int64, logits without axis): the argmax for C >= 2, (l > 0) for a single logit."""
    z = np.asarray(logits)
    if z.ndim == 0 or z.shape[axis] < 1:
        raise ValueError(f"predicted_class: logits need at least one class along axis {axis}, got shape {z.shape}")
    if z.shape[axis] == 1:
        return (np.take(z, 0, axis=axis) > 0).astype(np.int64)
    return np.argmax(z, axis=axis).astype(np.int64)

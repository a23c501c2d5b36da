"""The concept oracle: an independently trained network with one binary head per concept (TH, CSP, FP, sharp for
the phantoms), used to judge counterfactuals by something other than the classifier that guided them.

Its quality score QS(x) = P(TH) P(CSP) (1 - P(FP)) P(sharp) is the probability, under independent heads, that x
meets the standard-plane rule (diffice.data.phantoms.standard_plane_rule); ``negative`` concepts enter as 1 - P.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.images import judged_images
from .classifier import build_network
from .description import Description
from .probabilities import sigmoid

DEFAULT_NEGATIVE = ("FP",)


class ConceptOracle:
    """network: a SonoNet, a PlaneClassifier (its own segmenter + SonoNet) or any diffice network whose forward
    returns logits (N, C) (first, or as ``.logits``) with C = len(concepts) outputs, each a concept's logit;
    negative: the concepts that must be absent in a standard plane."""

    def __init__(self, network: Any, concepts: Sequence[str], negative: Sequence[str] = DEFAULT_NEGATIVE) -> None:
        n = getattr(network, "num_classes", None)
        if n is not None and n != len(concepts):
            raise ValueError(
                f"ConceptOracle: the network has {n} outputs but {len(concepts)} concepts {list(concepts)}"
            )
        unknown = [c for c in negative if c not in concepts]
        if unknown:
            raise ValueError(f"ConceptOracle: negative concepts {unknown} are not among {list(concepts)}")
        self.network = network
        self.concepts = list(concepts)
        self.negative = list(negative)

    def describe(self) -> Description:
        """What rebuilds this oracle and its network (diffice.models.description)."""
        return dict(
            type="ConceptOracle", network=self.network.describe(), concepts=self.concepts, negative=self.negative
        )

    @classmethod
    def from_description(cls, spec: Description, backend: str = "cpu") -> ConceptOracle:
        return cls(build_network(spec["network"], backend), spec["concepts"], spec["negative"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x float32 (N, 1, H, W) in [-1, 1] -> concept logits (N, C). Integer pixels or values past [-2, 2] are an
        error saying how to scale them (:func:`diffice.data.images.judged_images`)."""
        out = self.network.forward(np.ascontiguousarray(judged_images(x, "ConceptOracle")))
        return np.asarray(out.logits if hasattr(out, "logits") else out[0])

    def concept_probabilities(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{concept: P(concept present) (N,)}: each head is its own binary classifier, sigmoid of its logit (the
        single-logit convention of diffice.models.probabilities, per concept)."""
        p = sigmoid(self.logits(x))
        return {c: p[:, i] for i, c in enumerate(self.concepts)}

    def quality_score(self, x: np.ndarray) -> np.ndarray:
        """QS (N,) in [0, 1]: the product over concepts of P (1 - P for the negative ones)."""
        probs = self.concept_probabilities(x)
        qs = np.ones(len(x))
        for c, p in probs.items():
            qs *= (1.0 - p) if c in self.negative else p
        return qs

    def __repr__(self) -> str:
        return f"ConceptOracle(concepts={self.concepts}, negative={self.negative}, network={self.network!r})"

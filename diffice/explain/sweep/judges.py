"""What the tables' image columns judge the counterfactuals with (the [tables] options, diffice.explain.sweep.config.
tables_options): the concept oracle (QS, MQD), a feature network and a reference set of standard-plane images
(realism: an FSD-style Fréchet distance to the reference, a SonoSim-style similarity to the input). Every image goes
through the networks once: the inputs' and the reference's results are kept for every configuration, and the oracle's
quality score and the realism features of a batch come from one forward when the features are the oracle's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...evaluation.metrics import BATCH, sononet_features
from ...models.oracle import ConceptOracle
from ...models.probabilities import probabilities
from .store import SweepStore, decode_image, encode_image


class FeatureNetwork:
    """A network whose forward(x) gives .features (N, C, h, w) for sononet_features, remembering its last output
    (the oracle's QS and the features of one batch: one forward). A PlaneClassifier's features are its SonoNet l's,
    run on [x, the softmax of its segmenter's maps] as the composite runs it (csrc/nets/plane_classifier.c); its
    forward then gives l's logits, which are the composite's."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self._last: tuple[np.ndarray, Any] | None = None

    def forward(self, x: np.ndarray) -> Any:
        x = np.ascontiguousarray(x, np.float32)
        if self._last is not None and self._last[0].shape == x.shape and np.array_equal(self._last[0], x):
            return self._last[1]
        net = self.network
        if _is_plane_classifier(net):
            seg = np.asarray(net.segmenter.forward(x))
            maps = probabilities(seg, axis=1) if net.segmentation_input == "probabilities" else seg
            out = net.classifier.forward(np.ascontiguousarray(np.concatenate([x, maps.astype(np.float32)], axis=1)))
        else:
            out = net.forward(x)
        if getattr(out, "features", None) is None:
            raise ValueError(
                f"the realism network ({type(net).__name__}) gives no features: [tables] features takes a SonoNet "
                f"or a PlaneClassifier (or a ConceptOracle of one)"
            )
        self._last = (x.copy(), out)
        return out

    def describe(self) -> str:
        """Which network and layer the features are, for the tables' notes."""
        net = self.network
        sononet = net.classifier if _is_plane_classifier(net) else net
        k = getattr(sononet, "k", None)
        name = f"SonoNet-{k}" if k is not None else type(sononet).__name__
        where = (
            f"the {name} of a PlaneClassifier, on [x, the softmax of its segmenter's maps]"
            if _is_plane_classifier(net)
            else name
        )
        width = f"{8 * k}" if k is not None else "C"
        return (
            f"{where}: its last conv block's output ({width}, H/16, W/16), global average pooled to {width} values "
            f"(diffice.evaluation.metrics.sononet_features)"
        )


def _is_plane_classifier(net: Any) -> bool:
    return all(hasattr(net, a) for a in ("segmenter", "classifier", "segmentation_input"))


def _load(path: str, expect: str | Sequence[str], what: str) -> Any:
    from ...models.files import load_model

    return load_model(path, expect=expect, what=what)


class Judges:
    """The oracle, the realism network and reference of a store's tables, with every image's results memoised.

    options: diffice.explain.sweep.config.tables_options' dict (oracle, features, reference). ``about`` says, per
    column group ("oracle", "realism"), what judged it or why it is not available (for the notes)."""

    def __init__(self, store: SweepStore, options: dict[str, Any]) -> None:
        self.store = store
        self.oracle: ConceptOracle | None = None
        self.features: FeatureNetwork | None = None
        self.qs_oracle: ConceptOracle | None = None
        self.reference: np.ndarray | None = None
        self.about: dict[str, str] = {}
        oracle_source = options.get("oracle")
        try:
            if oracle_source == "demo":
                from ..demo import load_demo_models

                models = store.meta("models") or {}
                folder = models.get("folder") if models.get("source") == "demo" else None
                self.oracle = load_demo_models(folder).oracle
                self.about["oracle"] = "the demo's concept oracle (oracle.safetensors of the demo models" + (
                    f" in {folder})" if folder else ")"
                )
            elif oracle_source:
                self.oracle = _load(oracle_source, "ConceptOracle", "the tables' oracle")
                self.about["oracle"] = f"the concept oracle {oracle_source}"
        except FileNotFoundError as exc:
            self.oracle = None
            self.about["oracle-missing"] = f"the oracle could not be loaded: {exc}"
        if self.oracle is None and "oracle-missing" not in self.about:
            self.about["oracle-missing"] = (
                'no concept oracle ([tables] oracle = "none", the default for models other than the demo\'s; '
                'give oracle = "FILE")'
            )
        features = options.get("features", "oracle")
        if features == "oracle":
            if self.oracle is not None:
                self.features = FeatureNetwork(self.oracle.network)
                # the oracle's QS from the same forward as the features (its SonoNet's logits are the composite's)
                self.qs_oracle = ConceptOracle(self.features, self.oracle.concepts, self.oracle.negative)
                self.about["features"] = "the oracle's network: " + self.features.describe()
        elif features:
            network = _load(features, ("SonoNet", "PlaneClassifier", "ConceptOracle"), "the tables' realism network")
            self.features = FeatureNetwork(getattr(network, "network", network))
            self.about["features"] = f"{features}: " + self.features.describe()
        reference = options.get("reference")
        if self.features is not None and reference is not None:
            self.reference, self.about["reference"] = self._reference_images(reference)
        if self.features is None or self.reference is None:
            self.about["realism-missing"] = (
                'no realism network (features = "oracle" without an oracle)'
                if self.features is None
                else "no realism reference ([tables] realism_reference)"
            )
        if self.qs_oracle is None and self.oracle is not None:
            self.qs_oracle = self.oracle
        self._inputs: dict[int, tuple[np.ndarray, float | None, np.ndarray | None]] = {}
        self._reference_features: np.ndarray | None = None
        self._cells: dict[tuple[str, int], dict[str, Any]] = {}

    @property
    def realism(self) -> bool:
        """Whether the realism columns can be computed (a feature network and a reference)."""
        return self.features is not None and self.reference is not None

    def _reference_images(self, reference: dict[str, Any]) -> tuple[np.ndarray, str]:
        """The reference (R, 1, H, W) at the store's image shape, through the store's encoding (8-bit PNG or float16,
        as the inputs and counterfactuals it is compared with), and its description."""
        shape = tuple(self.store.meta("image_shape"))
        fmt = self.store.meta("store_format")
        size = (int(shape[-2]), int(shape[-1]))
        if "phantoms" in reference:
            from ...data.phantoms import generate
            from ..demo import DEMO_SIZE
            from .runner import resize_phantoms

            n, seed = int(reference["phantoms"]), int(reference["seed"])
            images = resize_phantoms(generate(n, DEMO_SIZE, seed, standard_fraction=1.0).images, size)
            about = (
                f"{n} standard-plane phantoms (diffice.data.phantoms.generate, seed {seed}, standard_fraction 1, "
                f"{DEMO_SIZE[0]}x{DEMO_SIZE[1]}" + (f" resized to {size[0]}x{size[1]})" if size != DEMO_SIZE else ")")
            )
        else:
            from ...data.images import list_images, load_image

            folder = Path(reference["images"])
            files = list_images(folder)
            if len(files) < 2:
                raise ValueError(f"[tables] realism_reference.images: {folder} holds fewer than 2 images")
            images = np.stack([load_image(f, size) for f in files])
            about = f"the {len(images)} images of {folder}"
        coded = np.stack([decode_image(encode_image(im, fmt), fmt, shape) for im in images.astype(np.float32)])
        return coded, about

    # ---- per image ----

    def judge(self, images: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(QS (N,) or None, realism features (N, d) or None) of images (N, 1, H, W) in [-1, 1]: one forward per
        batch when the features are the oracle's."""
        qs, feats = [], []
        for i in range(0, len(images), BATCH):
            chunk = np.ascontiguousarray(images[i : i + BATCH], np.float32)
            if self.qs_oracle is not None:
                qs.append(self.qs_oracle.quality_score(chunk))
            if self.features is not None:
                feats.append(sononet_features(chunk, self.features))
        return (
            np.concatenate(qs) if self.qs_oracle is not None and qs else None,
            np.concatenate(feats) if self.features is not None and feats else None,
        )

    def reference_features(self) -> np.ndarray | None:
        if self.reference is None or self.features is None:
            return None
        if self._reference_features is None:
            self._reference_features = sononet_features(self.reference, self.features)
        return self._reference_features

    def inputs(self, image_ids: np.ndarray) -> dict[str, Any]:
        """x (N, 1, H, W), qs (N,) or None, features (N, d) or None of the given images (each judged once)."""
        todo = [int(i) for i in image_ids if int(i) not in self._inputs]
        if todo:
            x = self.store.inputs(todo)
            qs, feats = self.judge(x)
            for k, i in enumerate(todo):
                self._inputs[i] = (x[k], None if qs is None else qs[k], None if feats is None else feats[k])
        rows = [self._inputs[int(i)] for i in image_ids]
        return dict(
            x=np.stack([r[0] for r in rows]) if rows else np.zeros((0,) + tuple(self.store.meta("image_shape"))),
            qs=None if self.qs_oracle is None else np.array([r[1] for r in rows], np.float64),
            features=None if self.features is None else np.array([r[2] for r in rows], np.float64),
        )

    def cell(self, results: Any, iteration: int) -> dict[str, Any]:
        """One configuration's iteration, over its finite counterfactuals (ConfigResults.finite): x, cf, qs_x,
        qs_cf, features_x, features_cf (None without the network), n."""
        key = (results.config["config_id"], int(iteration))
        if key not in self._cells:
            keep = results.finite(iteration)
            ids = results.image_ids[keep]
            inputs = self.inputs(ids)
            cf = self.store.counterfactuals(results.config["config_id"], iteration, ids)
            qs, feats = self.judge(cf)
            self._cells[key] = dict(
                x=inputs["x"],
                cf=cf,
                qs_x=inputs["qs"],
                qs_cf=qs,
                features_x=inputs["features"],
                features_cf=feats,
                n=len(ids),
            )
        return self._cells[key]

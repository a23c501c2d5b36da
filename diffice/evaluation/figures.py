"""Figures of counterfactual paths (the paper's Figure 3): the input and every iteration, with the predicted
segmentation overlaid and the classifier's target probability above each tile; and the strips of a sweep's store
(Figures 3 and S1): images chosen by a stated rule, through every iteration and every method. Pillow only."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..data.images import save_png, to_uint8
from ..data.phantoms import FAILURE_MODES
from ..explain.explainer import is_iterative
from ..explain.sweep.config import at_base, config_order, distinguishing_settings

PathLike = Union[str, "os.PathLike[str]"]

# one colour per segmentation class (class 0 is the background and stays uncoloured)
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
    ],
    dtype=np.float64,
)
LINE = 12  # pixels per line of text (Pillow's default font)


def overlay(image: np.ndarray, labels: np.ndarray | None = None, alpha: float = 0.35, scale: int = 2) -> np.ndarray:
    """A [-1, 1] image (1, H, W) or (H, W) as RGB uint8, the label map (H, W) blended in, upscaled by `scale`."""
    gray = to_uint8(image).astype(np.float64)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if labels is not None:
        labels = np.asarray(labels)
        colours = PALETTE[labels % len(PALETTE)]
        mask = (labels > 0)[..., None]
        rgb = np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def difference_map(image: np.ndarray, reference: np.ndarray, limit: float = 1.0, scale: int = 2) -> np.ndarray:
    """image - reference ([-1, 1] images (1, H, W) or (H, W)) as RGB uint8, upscaled by `scale`: white where they
    agree, red where the image is brighter, blue where it is darker, full colour at |difference| >= limit."""
    a, b = (np.asarray(v, dtype=np.float64) for v in (image, reference))
    d = np.clip((a[0] if a.ndim == 3 else a) - (b[0] if b.ndim == 3 else b), -limit, limit) / limit
    fade = 255.0 * (1.0 - np.abs(d))
    rgb = np.stack([np.where(d > 0, 255.0, fade), fade, np.where(d < 0, 255.0, fade)], axis=-1)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1)


def tile_grid(
    tiles: Sequence[Sequence[np.ndarray | None]],
    column_titles: Sequence[str],
    tile_titles: Sequence[Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """RGB uint8 grid of equally sized RGB uint8 tiles (h, w, 3), tiles[r][c] (None: left white), with the column
    titles above, a title above each tile (broken at its spaces where wider than the tile), the row titles on the
    left (titles may hold several lines, split at "\\n") and a legend of the segmentation classes below. Returns
    the canvas (H, W, 3) and each tile's top-left corner (x, y) by [row][column]."""
    from PIL import Image, ImageDraw

    n_rows, n_cols = len(tiles), len(column_titles)
    h, w = next(t.shape[:2] for row in tiles for t in row if t is not None)
    pad, left = 4, 0
    top = 2 + LINE * max(1, max(len(t.split("\n")) for t in column_titles))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # a tile title wider than its tile breaks at its spaces
    wrapped = [[t if probe.textlength(t) <= w else t.replace(" ", "\n") for t in row] for row in tile_titles or []]
    tile_top = 2 + LINE * max([1] + [len(t.split("\n")) for row in wrapped for t in row])
    if row_titles:
        left = int(max(probe.textlength(line) for t in row_titles for line in t.split("\n"))) + 10
    legend = 14 if class_names else 0
    width = left + n_cols * (w + pad) + pad
    height = top + n_rows * (h + tile_top + pad) + legend + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(column_titles):
        draw.multiline_text((left + pad + c * (w + pad), 1), title, fill=(0, 0, 0), spacing=0)
    corners: list[list[tuple[int, int]]] = []
    for r, row in enumerate(tiles):
        if len(row) != n_cols:
            raise ValueError(f"tile_grid: row {r} has {len(row)} tiles for {n_cols} column titles")
        y = top + r * (h + tile_top + pad)
        if row_titles:
            lines = row_titles[r].split("\n")
            draw.multiline_text((2, y + tile_top + h // 2 - 6 * len(lines)), row_titles[r], fill=(0, 0, 0), spacing=0)
        corners.append([])
        for c, tile in enumerate(row):
            x = left + pad + c * (w + pad)
            if wrapped and wrapped[r][c]:
                draw.multiline_text((x, y + 1), wrapped[r][c], fill=(0, 0, 0), spacing=0)
            if tile is not None:
                if tile.shape[:2] != (h, w):
                    raise ValueError(f"tile_grid: tile ({r}, {c}) is {tile.shape[:2]}, the others {(h, w)}")
                canvas.paste(Image.fromarray(tile), (x, y + tile_top))
            corners[-1].append((x, y + tile_top))
    if class_names:
        x, y = pad, height - legend
        for k, name in enumerate(class_names[1:], start=1):
            colour = tuple(int(v) for v in PALETTE[k % len(PALETTE)])
            draw.rectangle([x, y + 2, x + 9, y + 11], fill=colour)
            draw.text((x + 12, y + 1), name, fill=(0, 0, 0))
            x += 12 + 7 * len(name) + 10
    return np.asarray(canvas), corners


def path_figure(
    inputs: np.ndarray,
    counterfactuals: np.ndarray,
    prob_target: np.ndarray,
    segmentation: np.ndarray | None = None,
    row_titles: Sequence[str] | None = None,
    scale: int = 2,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """RGB uint8 grid: one row per image, columns = input, iteration 1..L.

    inputs (N, 1, H, W); counterfactuals (L, N, 1, H, W); prob_target (L + 1, N); segmentation (L + 1, N, H, W)
    label maps or None.
    """
    L = counterfactuals.shape[0]
    images = [[inputs[r]] + [counterfactuals[l, r] for l in range(L)] for r in range(len(inputs))]
    tiles = [
        [overlay(img, None if segmentation is None else segmentation[c, r], scale=scale) for c, img in enumerate(row)]
        for r, row in enumerate(images)
    ]
    titles = [[f"p(target)={prob_target[c, r]:.2f}" for c in range(L + 1)] for r in range(len(inputs))]
    columns = ["input"] + [f"iteration {c}" for c in range(1, L + 1)]
    return tile_grid(tiles, columns, titles, row_titles, class_names)[0]


# ---- strips of a sweep's store (Figures 3 and S1) ----

METHOD_NAMES = {
    "diff-ice": "Diff-ICE",
    "diff-ice-1": "Diff-ICE_1",
    "diff-ice-1-xt": "Diff-ICE_1-x_t",
    "dime": "DiME",
    "fastdime": "FastDiME",
}
STRIP_RULE = (
    "reference: Diff-ICE at the base setting (the most iterations); subset: the paper's validity subset (inputs f "
    "does not classify as the target) whose last counterfactual is finite; gain = QS(last counterfactual) - "
    "QS(input), QS the oracle's quality score on the stored images; per failure mode (from the phantom names "
    "phantom_NNN_<mode>, else one group of all images), the image of median gain (the lower median of the sorted "
    "gains, ties by image id); then the largest and the smallest gain of the subset, if not already chosen"
)
_PHANTOM_NAME = re.compile(r"^phantom_\d+_(.+)$")


@dataclasses.dataclass
class StripFigure:
    """What :func:`strip_figure` wrote. picks: the chosen images (image_id, name, group, gain, reason), one per
    row in order; columns / ablation_columns: the column titles of each figure; corners / ablation_corners: each
    tile's top-left pixel (x, y) by [row][column] in the PNG; tile: the tiles' (height, width); reference: the
    configuration the rows were chosen on (SweepStore.configs() entry); rule: the selection rule in words."""

    path: Path
    picks: list[dict[str, Any]]
    columns: list[str]
    corners: list[list[tuple[int, int]]]
    ablation_path: Path | None
    ablation_columns: list[str]
    ablation_corners: list[list[tuple[int, int]]]
    tile: tuple[int, int]
    reference: dict[str, Any]
    rule: str = STRIP_RULE

    def __repr__(self) -> str:
        ablation = (
            f"; ablation {self.ablation_path}, {len(self.ablation_columns)} columns" if self.ablation_path else ""
        )
        return f"StripFigure({self.path}: {len(self.picks)} images x {len(self.columns)} columns{ablation})"

    def _repr_png_(self) -> bytes:
        """A notebook cell showing the result shows the strip (the PNG written to path)."""
        return Path(self.path).read_bytes()


def _reference_config(store: Any, config: str | None) -> dict[str, Any]:
    """The configuration the rows are chosen on: `config` (an id or a label), else Diff-ICE at the base setting."""
    configs = store.configs()
    if not configs:
        raise ValueError(f"{store.path}: the store holds no configuration (run the sweep first)")
    if config is not None:
        found = [c for c in configs if config in (c["config_id"], c["label"])]
        if not found:
            raise ValueError(
                f"{store.path}: no configuration {config!r}; configurations: "
                + ", ".join(f"{c['config_id']} ({c['label']})" for c in configs)
            )
        return found[0]
    base = store.meta("base") or {}
    found = [c for c in configs if c["method"] == "diff-ice" and at_base(c, base)]
    if not found:
        raise ValueError(
            f"{store.path}: no Diff-ICE configuration at the base setting {base}; name the reference with config= "
            f"(configurations: {', '.join(c['label'] for c in configs)})"
        )
    return max(found, key=lambda c: int(c["iterations"]))


def strip_group(name: str) -> str:
    """The group (row set) of an image in the strip figure: the failure mode of a phantom named
    phantom_NNN_<mode>, else "all images"."""
    m = _PHANTOM_NAME.match(name)
    return m.group(1) if m else "all images"


def choose_strip_images(
    store: Any, oracle: Any, config: str | None = None, extremes: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rows of the strip figure, by STRIP_RULE: (the reference configuration, the picks), each pick a dict
    image_id, name, group (the failure mode), gain (QS(cf_L) - QS(x)) and reason.

    store: a diffice.explain.sweep.SweepStore; oracle: has quality_score(x (N, 1, H, W) in [-1, 1]) -> (N,) in
    [0, 1] (diffice.models.oracle.ConceptOracle); config: the reference configuration's id or label."""
    ref = _reference_config(store, config)
    r = store.results(ref)
    L = int(ref["iterations"])
    if len(r.image_ids) == 0:
        raise ValueError(f"{store.path}: {ref['label']} has no finished image (run the sweep first)")
    subset = r.validity & r.finite(L)
    if not subset.any():
        raise ValueError(
            f"{store.path}: {ref['label']}: no image in the validity subset with a finite last counterfactual "
            f"({len(r.image_ids)} done, {int(r.input_is_target.sum())} already the target)"
        )
    ids = r.image_ids[subset]
    gain = oracle.quality_score(store.counterfactuals(ref["config_id"], L, ids)) - oracle.quality_score(
        store.inputs(ids)
    )
    names = store.image_names()
    groups = [strip_group(names[i]) for i in ids]
    known = [m for m in FAILURE_MODES if m in groups]
    picks: list[dict[str, Any]] = []

    def pick(k: int, reason: str) -> None:
        if all(p["image_id"] != int(ids[k]) for p in picks):
            picks.append(
                dict(image_id=int(ids[k]), name=names[ids[k]], group=groups[k], gain=float(gain[k]), reason=reason)
            )

    for g in known + sorted(set(groups) - set(known)):
        members = sorted((float(gain[k]), int(ids[k]), k) for k in range(len(ids)) if groups[k] == g)
        pick(members[(len(members) - 1) // 2][2], f"median gain of {len(members)} {g}")
    if extremes:
        order = sorted(range(len(ids)), key=lambda k: (float(gain[k]), int(ids[k])))
        pick(max(order, key=lambda k: (float(gain[k]), -int(ids[k]))), f"largest gain of {len(ids)}")
        pick(order[0], f"smallest gain of {len(ids)}")
    return ref, picks


def _setting(config: dict[str, Any], base: dict[str, Any]) -> str:
    """What a configuration changes from the base setting, e.g. 'tau=10, Lp off'."""
    parts = []
    for k in ("tau", "lambda_c", "lambda_p"):
        if k in base and config[k] != base[k]:
            if k == "lambda_p":
                parts.append("Lp off" if not config[k] else f"lp={config[k]:g}")
            elif k == "lambda_c":
                parts.append("lc=" + "/".join(f"{v:g}" for v in config[k]))
            else:
                parts.append(f"tau={config[k]}")
    return ", ".join(parts) or "base"


def _strip(
    store: Any,
    oracle: Any,
    picks: list[dict[str, Any]],
    columns: list[tuple[str, dict[str, Any], int]],
    differences: bool,
    scale: int,
) -> tuple[np.ndarray, list[list[tuple[int, int]]], list[str]]:
    """One strip figure: rows = picks (and their difference rows), columns = the input, then (title, config,
    iteration) counterfactuals; each tile titled with f's p(target) and the oracle's QS."""
    ids = [p["image_id"] for p in picks]
    x = store.inputs(ids)
    blank = np.full(overlay(x[0], scale=scale).shape, 200, np.uint8)
    ref_prob: dict[int, float] = {}
    images: list[list[np.ndarray | None]] = [[im] for im in x]
    titles: list[list[str]] = [[] for _ in ids]
    cache: dict[str, Any] = {}
    for _title, c, l in columns:
        r = cache.setdefault(c["config_id"], store.results(c))
        row_of = {int(i): k for k, i in enumerate(r.image_ids)}
        present = [i for i in ids if i in row_of and r.finite(l)[row_of[i]]]
        cfs = dict(zip(present, store.counterfactuals(c["config_id"], l, present)))
        for k, i in enumerate(ids):
            if i in row_of:
                ref_prob.setdefault(i, r.prob_target[row_of[i], 0])
            images[k].append(cfs.get(i))
            titles[k].append(
                f"p={r.prob_target[row_of[i], l]:.2f}" if i in cfs else ("non-finite" if i in row_of else "not run")
            )
    flat = [im for row in images for im in row if im is not None]
    qs = iter(oracle.quality_score(np.stack(flat)))
    for k, i in enumerate(ids):
        p_input = ref_prob.get(i)  # f's p(target) of the input, as every configuration recorded it
        titles[k].insert(0, "" if p_input is None else f"p={p_input:.2f}")
        titles[k] = [t + (f" QS={next(qs):.2f}" if im is not None else "") for t, im in zip(titles[k], images[k])]
    tiles: list[list[np.ndarray | None]] = []
    tile_titles: list[list[str]] = []
    row_titles: list[str] = []
    for k, p in enumerate(picks):
        tiles.append([overlay(im, scale=scale) if im is not None else blank for im in images[k]])
        tile_titles.append(titles[k])
        row_titles.append(f"{p['name']}\n{p['reason']}\ngain {p['gain']:+.2f}")
        if differences:
            differences_row: list[np.ndarray | None] = [None]
            differences_row += [None if im is None else difference_map(im, x[k], scale=scale) for im in images[k][1:]]
            tiles.append(differences_row)
            tile_titles.append(["cf-input"] + [""] * len(columns))
            row_titles.append("")
    column_titles = ["input"] + [t for t, _, _ in columns]
    canvas, corners = tile_grid(tiles, column_titles, tile_titles, row_titles)
    return canvas, corners, column_titles


def strip_figure(
    store: Any,
    oracle: Any,
    out: PathLike,
    config: str | None = None,
    extremes: bool = True,
    differences: bool = False,
    ablation: bool = True,
    ablation_out: PathLike | None = None,
    scale: int = 2,
) -> StripFigure:
    """The paper's Figure 3 / S1 strips from a sweep's store, written as PNG to `out`.

    Rows: the images chosen by STRIP_RULE (:func:`choose_strip_images`; with differences=True each followed by a
    row of difference maps cf - input, :func:`difference_map`). Columns: the input, the reference configuration's
    iterations 1..L, then every other configuration at the base setting (Diff-ICE_1, Diff-ICE_1-x_t, DiME, ...),
    its last iteration. Each tile is titled with f's p(target) and the oracle's quality score QS. With
    ablation=True and configurations off the base setting in the store, a second figure (ablation_out, default:
    out's name + "_ablation") shows the same rows through those (each method's base configuration first).

    store: a diffice.explain.sweep.SweepStore; oracle: quality_score(x) -> (N,) (e.g.
    diffice.load_demo_models().oracle); config: the reference configuration's id or label (default: Diff-ICE at
    the base setting). ValueError for an empty store, an unknown configuration or an empty validity subset."""
    ref, picks = choose_strip_images(store, oracle, config, extremes)
    base = store.meta("base") or {}
    configs = store.configs()
    L = int(ref["iterations"])
    name = METHOD_NAMES.get(ref["method"], ref["method"])
    columns = [(f"{name}\nit {l}" if L > 1 else name, ref, l) for l in range(1, L + 1)]
    others = sorted((c for c in configs if at_base(c, base) and c["config_id"] != ref["config_id"]), key=config_order)
    extras = distinguishing_settings(configs)
    columns += [(_title(c, base, extras[c["config_id"]]), c, int(c["iterations"])) for c in others]
    canvas, corners, titles = _strip(store, oracle, picks, columns, differences, scale)
    out = Path(out)
    save_png(out, canvas)
    # in Table S3's order (diffice.explain.sweep.config.config_order)
    ablated = sorted((c for c in configs if not at_base(c, base)), key=config_order)
    ab_path: Path | None = None
    ab_titles: list[str] = []
    ab_corners: list[list[tuple[int, int]]] = []
    if ablation and ablated:
        ab_configs = []
        for m in dict.fromkeys(c["method"] for c in ablated):
            base_configs = [c for c in configs if c["method"] == m and at_base(c, base)]
            ab_configs += [max(base_configs, key=lambda c: int(c["iterations"]))] if base_configs else []
            ab_configs += [c for c in ablated if c["method"] == m]
        ab_columns = [(_title(c, base, extras[c["config_id"]]), c, int(c["iterations"])) for c in ab_configs]
        ab_canvas, ab_corners, ab_titles = _strip(store, oracle, picks, ab_columns, differences, scale)
        ab_path = Path(ablation_out) if ablation_out is not None else out.with_name(out.stem + "_ablation" + out.suffix)
        save_png(ab_path, ab_canvas)
    h, w = store.meta("image_shape")[-2:]
    return StripFigure(
        out, picks, titles, corners, ab_path, ab_titles, ab_corners, (int(h) * scale, int(w) * scale), ref
    )


def _title(config: dict[str, Any], base: dict[str, Any], extra: str = "") -> str:
    """A column's title: the method (and L), then what it changes from the base setting and the settings that set
    it apart from the other configurations (diffice.explain.sweep.config.distinguishing_settings)."""
    name = METHOD_NAMES.get(config["method"], config["method"])
    if is_iterative(config["method"]):
        name += f" L={config['iterations']}"
    setting = _setting(config, base)
    if extra:
        setting = extra if setting == "base" else f"{setting}, {extra}"
    return f"{name}\n{setting}"

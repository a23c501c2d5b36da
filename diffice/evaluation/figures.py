"""Figures of counterfactual paths (the paper's Figure 3): the input and every iteration, with the predicted
segmentation overlaid and the classifier's target probability above each tile. Pillow only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.images import to_uint8

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
    from PIL import Image, ImageDraw

    n, (L, h, w) = len(inputs), (counterfactuals.shape[0], inputs.shape[-2] * scale, inputs.shape[-1] * scale)
    pad, top, left = 4, 14, 0
    if row_titles:
        left = 8 * max(len(t) for t in row_titles) + 8
    legend = 14 if class_names else 0
    width = left + (L + 1) * (w + pad) + pad
    height = top + n * (h + top + pad) + legend + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c in range(L + 1):
        draw.text((left + pad + c * (w + pad), 1), "input" if c == 0 else f"iteration {c}", fill=(0, 0, 0))
    for r in range(n):
        y = top + r * (h + top + pad)
        if row_titles:
            draw.text((2, y + top + h // 2 - 5), row_titles[r], fill=(0, 0, 0))
        for c in range(L + 1):
            img = inputs[r] if c == 0 else counterfactuals[c - 1, r]
            seg = None if segmentation is None else segmentation[c, r]
            x = left + pad + c * (w + pad)
            draw.text((x, y + 1), f"p(target)={prob_target[c, r]:.2f}", fill=(0, 0, 0))
            canvas.paste(Image.fromarray(overlay(img, seg, scale=scale)), (x, y + top))
    if class_names:
        x, y = pad, height - legend
        for k, name in enumerate(class_names[1:], start=1):
            colour = tuple(int(v) for v in PALETTE[k % len(PALETTE)])
            draw.rectangle([x, y + 2, x + 9, y + 11], fill=colour)
            draw.text((x + 12, y + 1), name, fill=(0, 0, 0))
            x += 12 + 7 * len(name) + 10
    return np.asarray(canvas)

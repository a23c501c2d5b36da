"""Write docs/phantoms.png: 8 standard-plane and 8 non-standard-plane phantoms with their labels.

    python scripts/make_phantom_figure.py [--seed 3] [--out docs/phantoms.png]

Needs Pillow (only this script does; diffice.data.phantoms itself needs numpy alone). Images are drawn from one
seeded batch in order: the first 8 standard planes, and non-standard planes filling a quota per failure mode
(3 tilted, 2 no_csp, 1 no_th, 2 blurred) so that every mode is shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
if list((ROOT / "diffice").glob("_C*.so")):  # built in place: this checkout's diffice; else the installed one
    sys.path.insert(0, str(ROOT))
from diffice import phantoms  # noqa: E402

SIZE = (128, 160)
COLUMNS = 8
QUOTA = {"tilted": 3, "no_csp": 2, "no_th": 1, "blurred": 2}
CAPTION = 30  # caption height under each image, pixels
GAP = 4


def pick(batch) -> list:
    """Indices: 8 standard planes, then the non-standard quota, in batch order."""
    sp = [i for i in range(len(batch)) if batch.labels[i] == 1][:COLUMNS]
    left = dict(QUOTA)
    nsp = []
    for i, p in enumerate(batch.params):
        mode = p["failure_mode"]
        if mode in left and left[mode] > 0:
            left[mode] -= 1
            nsp.append(i)
    order = list(QUOTA)
    nsp.sort(key=lambda i: order.index(batch.params[i]["failure_mode"]))
    if len(sp) < COLUMNS or any(left.values()):
        raise SystemExit("batch too small for the figure; raise n")
    return sp + nsp


def caption(batch, i) -> tuple:
    c = {k: bool(v[i]) for k, v in batch.concepts.items()}
    if batch.labels[i] == 1:
        return "SP (standard)", "TH CSP sharp"
    mode = batch.params[i]["failure_mode"]
    why = [
        name
        for name, bad in (
            ("FP seen", c["FP"]),
            ("no CSP", not c["CSP"]),
            ("no TH", not c["TH"]),
            ("blurred", not c["sharp"]),
        )
        if bad
    ]
    return f"NSP: {mode}", ", ".join(why)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "phantoms.png"))
    args = ap.parse_args()

    batch = phantoms.generate(80, size=SIZE, seed=args.seed)
    idx = pick(batch)
    H, W = SIZE
    rows = len(idx) // COLUMNS
    fig = Image.new("L", (COLUMNS * (W + GAP) - GAP, rows * (H + CAPTION + GAP) - GAP), 255)
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default(size=11)
    for k, i in enumerate(idx):
        x, y = (k % COLUMNS) * (W + GAP), (k // COLUMNS) * (H + CAPTION + GAP)
        # 64 grey levels: invisible at this contrast, and keeps the PNG small
        img = np.round((batch.images[i, 0] + 1.0) * 31.5).astype(np.uint8) * 4
        fig.paste(Image.fromarray(img), (x, y))
        top, bottom = caption(batch, i)
        draw.text((x + 2, y + H + 2), top, fill=0, font=font)
        draw.text((x + 2, y + H + 15), bottom, fill=90, font=font)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB): seed {args.seed}, images {idx}")


if __name__ == "__main__":
    main()

"""The expert reading kit (`diffice pairs`): a blinded, randomised sheet of (input, counterfactual) pairs as one
self-contained HTML page; a clinician clicks the better image of each pair and downloads the answers as CSV;
``diffice pairs --score`` tallies them against the key (the paper: experts preferred the counterfactual in 41 of
50 pairs).

The HTML holds no hint of which side is the counterfactual: the key (per pair: which side is the counterfactual,
which image and iteration) goes to a separate ``<sheet>.key.json`` that stays with the researcher. Both carry a
random sheet id, and answers from another sheet are refused.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..data.images import atomic_write_bytes
from ..io import read_csv, read_json
from .metrics import check_results_folder

PathLike = Union[str, "os.PathLike[str]"]

QUESTION = "Which image is the better standard plane (higher image quality)?"

__all__ = ["make_sheet", "score_answers", "binomial_two_sided_p"]


def _png_data_uri(path: Path) -> str:
    """The PNG as a data URI, after decoding it in full: a truncated or corrupt file (or one that is no PNG) is a
    ValueError naming it, as diffice metrics refuses it, not a broken image on the reader's sheet."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: OSError (truncated), SyntaxError (bad chunk)
        raise ValueError(f"{path}: cannot read the image ({exc}); it is not put on the reading sheet") from None
    if fmt != "PNG":
        raise ValueError(f"{path}: expected a PNG image, got {fmt or 'an unknown format'}")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _candidate_pairs(results_dir: Path, iteration: int | None, flipped_only: bool) -> list[dict[str, Any]]:
    check_results_folder(results_dir)
    records = sorted((results_dir / "records").glob("*.json"))
    if not records:
        raise ValueError(f"{results_dir}: no records/*.json (not a folder written by diffice explain / demo)")
    pairs = []
    for rec_path in records:
        rec = read_json(rec_path)
        stem = rec_path.stem
        try:
            iters = [r for r in rec["iterations"] if int(r["iteration"]) > 0]
            image = str(rec["image"])
            chosen = [r for r in iters if iteration is None or int(r["iteration"]) == iteration]
            it = (chosen[-1] if iteration is None else chosen[0]) if chosen else None
            skip = it is not None and flipped_only and not it["flipped"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{rec_path}: not a diffice record ({type(exc).__name__}: {exc})") from None
        if it is None:
            if iters:
                raise ValueError(f"{rec_path}: no iteration {iteration} (it has 1..{len(iters)})")
            continue
        if skip:
            continue
        cf = results_dir / stem / f"iteration_{int(it['iteration'])}.png"
        x = results_dir / stem / "input.png"
        for p in (x, cf):
            if not p.is_file():
                raise ValueError(f"{results_dir}: record {stem} has no {p.name} ({p})")
        pairs.append(dict(image=image, stem=stem, iteration=int(it["iteration"]), input=x, counterfactual=cf))
    return pairs


def make_sheet(
    results_dir: PathLike,
    out_html: PathLike,
    n: int = 50,
    seed: int | None = None,
    iteration: int | None = None,
    flipped_only: bool = False,
    title: str = "Image quality reading",
    scale: int = 4,
) -> dict[str, Any]:
    """Writes out_html (the sheet) and out_html with suffix ``.key.json`` (the key). Pairs: up to n images of the
    results folder (all if fewer), drawn at random; each pair's sides randomised. iteration: which counterfactual
    (default: each image's last). Returns the key."""
    results = Path(results_dir)
    out = Path(out_html)
    taken = [str(q) for q in (out, key_path(out)) if os.path.lexists(q)]
    if taken:  # answers to the old sheet would lose their key
        raise FileExistsError(
            f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''} (an earlier sheet and its key: "
            f"answers to it need them); use another --out or delete them"
        )
    pairs = _candidate_pairs(results, iteration, flipped_only)
    if not pairs:
        raise ValueError(f"{results}: no pairs to show" + (" (no flipped counterfactuals)" if flipped_only else ""))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:n]]
    sheet_id = secrets.token_hex(8)
    key_pairs, items = [], []
    for k, p in enumerate(chosen, start=1):
        cf_side = "left" if rng.random() < 0.5 else "right"
        left, right = (p["counterfactual"], p["input"]) if cf_side == "left" else (p["input"], p["counterfactual"])
        items.append((k, _png_data_uri(left), _png_data_uri(right)))
        key_pairs.append(dict(pair=k, image=p["image"], iteration=p["iteration"], counterfactual_side=cf_side))
    key = dict(sheet_id=sheet_id, results_dir=str(results.resolve()), question=QUESTION, pairs=key_pairs)
    atomic_write_bytes(out, _sheet_html(sheet_id, title, items, scale).encode("utf-8"))
    atomic_write_bytes(key_path(out), (json.dumps(key, indent=1) + "\n").encode())
    return key


def key_path(out_html: PathLike) -> Path:
    out = Path(out_html)
    return out.with_name(out.stem + ".key.json")


def _sheet_html(sheet_id: str, title: str, items, scale: int) -> str:
    rows = []
    for k, left, right in items:
        rows.append(
            f'<div class="pair" id="pair{k}"><div class="num">{k}</div>'
            f'<img class="choice" id="p{k}-left" data-pair="{k}" data-side="left" src="{left}" alt="pair {k} left">'
            f'<img class="choice" id="p{k}-right" data-pair="{k}" data-side="right" src="{right}" '
            f'alt="pair {k} right"></div>'
        )
    n = len(items)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.pair {{ display: flex; align-items: center; gap: 1em; margin: 0.8em 0; }}
.num {{ width: 2.5em; text-align: right; font-weight: bold; }}
img.choice {{ image-rendering: pixelated; border: 4px solid #ddd; cursor: pointer; zoom: {int(scale)}; }}
img.chosen {{ border-color: #08519c; }}
#bar {{ position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #ccc; }}
</style></head>
<body>
<div id="bar"><b>{html.escape(title)}</b> &mdash; {html.escape(QUESTION)} Click one image of each pair.
<br>Reader: <input id="reader" size="20"> &nbsp; answered <span id="count">0</span> of {n}
&nbsp; <button id="download">Download answers (CSV)</button></div>
{"".join(rows)}
<script>
const sheetId = "{sheet_id}";
const total = {n};
const answers = {{}};
function refresh() {{
  document.getElementById("count").textContent = Object.keys(answers).length;
}}
for (const img of document.querySelectorAll("img.choice")) {{
  img.addEventListener("click", () => {{
    const k = img.dataset.pair;
    answers[k] = img.dataset.side;
    for (const side of ["left", "right"]) {{
      document.getElementById("p" + k + "-" + side).classList.toggle("chosen", side === img.dataset.side);
    }}
    refresh();
  }});
}}
function readerName() {{
  return document.getElementById("reader").value.replace(/[",\\n\\r]/g, " ").trim();
}}
function answersCsv() {{
  const reader = readerName();
  let text = "sheet_id,reader,pair,choice\\n";
  for (let k = 1; k <= total; k++) {{
    text += sheetId + "," + reader + "," + k + "," + (answers[k] || "") + "\\n";
  }}
  return text;
}}
document.getElementById("download").addEventListener("click", () => {{
  if (!readerName()) {{  // several readers' answers without names could not be told apart when scored
    alert("Please enter your name (Reader) before downloading the answers.");
    document.getElementById("reader").focus();
    return;
  }}
  const blob = new Blob([answersCsv()], {{type: "text/csv"}});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "answers-" + sheetId + ".csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
}});
</script>
</body></html>
"""


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n against p = 1/2 (the sum of the probabilities of every
    outcome no more likely than k)."""
    if n == 0:
        return 1.0
    probs = [math.comb(n, i) / 2.0**n for i in range(n + 1)]
    return float(min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-9))))


def _read_key(key_json: PathLike) -> dict[str, Any]:
    """The key make_sheet wrote: anything else (not JSON, another JSON file) is a ValueError naming the file."""
    hint = "not a key file (diffice pairs writes SHEET.key.json beside the sheet)"
    try:
        key = read_json(key_json)
    except ValueError as exc:
        raise ValueError(f"{exc}; {hint}") from None
    try:
        by_pair = {int(p["pair"]): p for p in key["pairs"]}
        if not isinstance(key["sheet_id"], str) or not all(
            p["counterfactual_side"] in ("left", "right") for p in by_pair.values()
        ):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{key_json}: {hint}") from None
    return dict(key, by_pair=by_pair)


def _read_answers(answers_csv: PathLike) -> list[tuple[int, dict[str, str]]]:
    """The rows of a reader's CSV with their line numbers; a ValueError naming the file for anything unreadable.
    Header lines repeated inside the file (downloads put together with ``cat``) are left out; a file without a
    single answer row is an error."""
    fields, rows = read_csv(answers_csv, ("sheet_id", "pair", "choice"), "a CSV of answers")
    rows = [(line, r) for line, r in rows if [r.get(f) for f in fields] != fields]
    if not rows:
        raise ValueError(f"{answers_csv}: no answers in it (only the header line sheet_id,reader,pair,choice)")
    return rows


def score_answers(answers_csv: PathLike, key_json: PathLike) -> dict[str, Any]:
    """Tallies the readers' CSV against the key: how often the counterfactual was preferred, with the exact
    binomial p-value against chance. Each reader's answer to each pair counts once: where a reader answered a pair
    more than once (rows of several downloads put together), the last answer counts. Answered and unanswered count
    (reader, pair) answers: with R readers, answered + unanswered = R x pairs. Rows without a reader name may give
    each pair once (two such rows for one pair: a ValueError, since several unnamed readers would merge into one)."""
    key = _read_key(key_json)
    by_pair = key["by_pair"]
    rows = _read_answers(answers_csv)
    last: dict[tuple[str, int], str] = {}  # (reader, pair) -> the reader's last answer to it
    unnamed: dict[int, int] = {}  # pair -> the line of its row without a reader name
    readers = set()
    for line, r in rows:
        if r["sheet_id"] != key["sheet_id"]:
            raise ValueError(
                f"{answers_csv}: answers to sheet {r['sheet_id']!r}, but the key is for sheet {key['sheet_id']!r}"
            )
        try:
            pair = int(r["pair"])
        except (TypeError, ValueError):
            raise ValueError(
                f"{answers_csv}: row {line}, column pair: expected a pair number, got {r['pair']!r}"
            ) from None
        if pair not in by_pair:
            raise ValueError(f"{answers_csv}: pair {pair} is not in the key (1..{len(by_pair)})")
        reader = (r.get("reader") or "").strip()  # as the sheet writes it
        if not reader:
            if pair in unnamed:  # one unnamed download has each pair once: two readers' rows cannot be told apart
                raise ValueError(
                    f"{answers_csv}: rows {unnamed[pair]} and {line} both answer pair {pair} without a reader name: "
                    f"the answers of several unnamed readers (or downloads) cannot be told apart; put each reader's "
                    f"name in the reader column of their rows"
                )
            unnamed[pair] = line
        readers.add(reader)
        if r["choice"] not in ("left", "right", ""):
            raise ValueError(f"{answers_csv}: pair {pair}: choice must be left, right or empty, got {r['choice']!r}")
        if r["choice"]:
            last[(reader, pair)] = r["choice"]
    answered = len(last)
    preferred = sum(choice == by_pair[pair]["counterfactual_side"] for (_, pair), choice in last.items())
    return dict(
        pairs=len(by_pair),
        answered=answered,
        unanswered=max(len(readers), 1) * len(by_pair) - answered,
        counterfactual_preferred=preferred,
        fraction=preferred / answered if answered else float("nan"),
        p_value=binomial_two_sided_p(preferred, answered),
        readers=sorted(readers),
    )

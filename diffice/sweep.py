"""`diffice sweep`: a grid of methods and settings over an image set, in one resumable SQLite results store, with
the paper's tables (Table 1: methods, Table 2: Diff-ICE per iteration, Table S3: ablation).

Config (TOML): the sections of ``diffice explain`` ([models], [diffusion], [method], [run]; see diffice.run) plus

    [sweep]
    models = "demo"              # the bundled demo models (64x80) instead of [models]; demo_models = "DIR" for others
    images = "images/"           # an image folder (relative to this file), or:
    phantoms = 12                # N non-standard-plane phantoms (diffice.demo.demo_phantoms), resized to image_size
    out = "sweep-results"        # results.sqlite and tables.md go here (relative to this file; --out wins)
    store_format = "png"         # counterfactuals as 8-bit PNG, or "float16" (raw little-endian (C, H, W))
    # the main grid: any ExplainerConfig field as a list (a single value is a one-value axis; missing: [method])
    method = ["diff-ice", "diff-ice-1", "diff-ice-1-xt", "dime", "fastdime"]
    iterations = [5]             # Diff-ICE's L (the single-pass methods always run one)
    tau = [120]
    lambda_c = [[40, 60, 80]]    # each entry is one searched list; a flat list of numbers is one entry
    lambda_p = [30, 0]           # Lp on / off

    [[grid]]                     # more configurations (e.g. an ablation): its axes over the [method] values
    method = "diff-ice-1"
    tau = [80, 160, 200]
    lambda_p = [30, 0]

    [cluster]                    # options of --cluster slurm|pbs (diffice.cluster.CLUSTER_DEFAULTS)

Work is split into units (one image batch x one configuration); the batches are consecutive [run] batch_size
chunks of the image set sorted by name, fixed before anything runs. Each finished unit is written to
``results.sqlite`` in one transaction (the unit row, and per image and iteration: prob_target, flipped, lambda_used,
nonfinite_step and the counterfactual), so a run stopped anywhere resumes with the finished units skipped and no
unit half-written. Since a unit's batch never depends on the schedule and the sampler's noise follows each image's
pixels, the results do not depend on which units ran when, or where (``--cluster``, see diffice.cluster).

Store schema (read it with :class:`SweepStore`, or any SQLite client):

- ``meta(key, value)``: the format, the run settings, the models, the image set, Table 1's base setting (JSON);
- ``images(image_id, name, pixel_key, input)``: the inputs as explained (encoded like the counterfactuals);
- ``configs(config_id, label, method, iterations, tau, lambda_c, lambda_p, params)``: params = every
  ExplainerConfig field (JSON); config_id = a hash of it;
- ``units(unit_id, config_id, batch, image_ids, batch_seconds, iteration_seconds, peak_bytes,
  unet_evaluations, worker, finished_at)``: a row exists only for a finished unit;
- ``results(config_id, image_id, iteration, prob_target, flipped, lambda_used, nonfinite_step, counterfactual)``:
  iteration 0 is the input (flipped = f classifies the input as the target), 1..L the iterations.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import numpy as np

from .explain import METHODS, ExplainerConfig, image_keys
from .progress import format_seconds

__all__ = ["SweepSpec", "load_sweep", "run_sweep", "SweepStore", "ConfigResults", "Column", "TABLE_COLUMNS",
           "register_column", "compute_tables", "format_tables", "print_tables", "STORE_NAME"]

STORE_NAME = "results.sqlite"
STORE_FORMAT = "diffice sweep store 1"
SWEEP_DEFAULTS: Dict[str, Any] = dict(models=None, demo_models=None, images=None, phantoms=None, phantom_seed=None,
                                      out="sweep-results", store_format="png")
METHOD_FIELDS = [f.name for f in dataclasses.fields(ExplainerConfig)]
TABLE1_AXES = ("tau", "lambda_c", "lambda_p")


# ---- the config ----

@dataclasses.dataclass
class SweepSpec:
    """A loaded sweep config. cfg: the run config sections (diffice.run.load_config); configs: every method
    configuration (ExplainerConfig fields, deduplicated, in grid order); base: Table 1's (tau, lambda_c,
    lambda_p); models: a diffice.cluster.models_spec; cluster: the [cluster] options."""

    cfg: Dict[str, Dict[str, Any]]
    sweep: Dict[str, Any]
    configs: List[Dict[str, Any]]
    base: Dict[str, Any]
    models: Dict[str, Any]
    out: Path
    cluster: Dict[str, Any]
    source: str = "config"

    @property
    def store_path(self) -> Path:
        return self.out / STORE_NAME


def _canonical(params: Dict[str, Any]) -> Dict[str, Any]:
    p = {k: params[k] for k in METHOD_FIELDS}
    p["lambda_c"] = [float(v) for v in p["lambda_c"]]
    p["lambda_p"] = float(p["lambda_p"])
    p["tau"] = int(p["tau"])
    p["iterations"] = int(p["iterations"]) if p["method"] == "diff-ice" else 1
    return p


def config_id(params: Dict[str, Any]) -> str:
    """A stable id of a configuration: a hash of its canonical parameters."""
    text = json.dumps(_canonical(params), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def config_label(p: Dict[str, Any]) -> str:
    lc = "/".join(f"{v:g}" for v in p["lambda_c"])
    it = f" L={p['iterations']}" if p["method"] == "diff-ice" else ""
    return f"{p['method']}{it} tau={p['tau']} lc={lc} lp={p['lambda_p']:g}"


def _axis(name: str, value: Any, where: str) -> List[Any]:
    if name not in METHOD_FIELDS:
        raise ValueError(f"{where}: {name!r} is not a method setting; axes: {METHOD_FIELDS}")
    if name == "lambda_c":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: lambda_c must be a list of numbers or a list of such lists, got {value!r}")
        if all(isinstance(v, (int, float)) for v in value):
            return [list(value)]
        if not all(isinstance(v, list) and v and all(isinstance(u, (int, float)) for u in v) for v in value):
            raise ValueError(f"{where}: lambda_c must be a list of numbers or a list of such lists, got {value!r}")
        return [list(v) for v in value]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{where}: {name} lists no value")
    return values


def _expand(axes: Dict[str, List[Any]], method: Dict[str, Any], where: str) -> List[Dict[str, Any]]:
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        params = dict(method, **dict(zip(names, combo)))
        try:
            ExplainerConfig(**params).validate()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        out.append(_canonical(params))
    return out


def load_sweep(path: Optional[str], overrides: Optional[Dict[str, Any]] = None,
               data: Optional[Dict[str, Any]] = None) -> SweepSpec:
    """Reads a sweep config (the module docstring). overrides: flat keys over [sweep] and the run config (e.g.
    out, batch_size); data: the parsed TOML instead of reading path (relative paths: from the working folder)."""
    from .cluster import cluster_options
    from .run import check_lambda_p, load_config, read_toml

    source = str(path) if path else "sweep config"
    data = dict(read_toml(path) if data is None else data)
    sweep = dict(SWEEP_DEFAULTS)
    axes_main: Dict[str, List[Any]] = {}
    for key, value in (data.pop("sweep", None) or {}).items():
        if key in SWEEP_DEFAULTS:
            sweep[key] = value
        else:
            axes_main[key] = _axis(key, value, f"{source} [sweep]")
    grids = data.pop("grid", None) or []
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ValueError(f"{source}: grid must be an array of tables ([[grid]])")
    overrides = dict(overrides or {})
    out_given = overrides.get("out") is not None
    for key in list(overrides):
        if key in SWEEP_DEFAULTS:
            value = overrides.pop(key)
            if value is not None:
                sweep[key] = value
    base_dir = Path(path).resolve().parent if path else Path.cwd()
    demo = None
    if sweep["models"] is not None:
        if sweep["models"] != "demo":
            raise ValueError(f"{source}: [sweep] models must be \"demo\" (or leave it out and use [models])")
        demo = str(base_dir / sweep["demo_models"]) if sweep["demo_models"] else "bundled"
        # the demo models choose the model files: a [models] section would be ignored, so it is refused
        if data.get("models"):
            raise ValueError(f"{source}: [sweep] models = \"demo\" chooses every model; remove the [models] "
                             f"section (or models = \"demo\")")
        # as diffice explain --models demo: the demo's [method], [diffusion] and image size are the defaults, and
        # [diffusion] values other than the bundled DDPM's are refused (diffice.run.load_config)
        data["models"] = dict(preset="demo")
    cfg = load_config(path, overrides, data=data)
    method = cfg["method"]
    configs: List[Dict[str, Any]] = []
    configs += _expand(axes_main, method, f"{source} [sweep]")
    for i, grid in enumerate(grids):
        configs += _expand({k: _axis(k, v, f"{source} [[grid]] {i + 1}") for k, v in grid.items()}, method,
                           f"{source} [[grid]] {i + 1}")
    unique: Dict[str, Dict[str, Any]] = {}
    for c in configs:
        unique.setdefault(config_id(c), c)
    if demo is None:  # the demo models bring their pixel Lp
        check_lambda_p(cfg["models"], max((float(c["lambda_p"]) for c in configs), default=0.0), source)
    base = {}
    for name in TABLE1_AXES:
        value = _canonical(method)[name]
        main = [_canonical(dict(method, **{name: v}))[name] for v in axes_main.get(name, [])]
        base[name] = value if not main or value in main else main[0]
    if sweep["images"] is None and sweep["phantoms"] is None:
        raise ValueError(f"{source}: [sweep] needs images = \"FOLDER\" or phantoms = N")
    if sweep["images"] is not None and sweep["phantoms"] is not None:
        raise ValueError(f"{source}: [sweep] takes images or phantoms, not both")
    if sweep["images"] is not None:
        sweep["images"] = str(base_dir / sweep["images"])
    if sweep["store_format"] not in ("png", "float16"):
        raise ValueError(f"{source}: [sweep] store_format must be \"png\" or \"float16\", got "
                         f"{sweep['store_format']!r}")
    from .cluster import models_spec

    out = Path(sweep["out"])
    out = out if out.is_absolute() or out_given else base_dir / out
    return SweepSpec(cfg=cfg, sweep=sweep, configs=list(unique.values()), base=base,
                     models=models_spec(cfg, demo), out=out, cluster=cluster_options(data, source), source=source)


# ---- images ----

def load_sweep_images(spec: SweepSpec, stream: Optional[TextIO] = None) -> Tuple[List[str], np.ndarray]:
    """The image set: names (sorted) and pixels (N, 1, H, W) float32 in [-1, 1] at [run] image_size. Unreadable
    files are reported on `stream` and left out."""
    from .data import ImageReadError, list_images, load_image, resize

    size = tuple(int(v) for v in spec.cfg["run"]["image_size"])
    if spec.sweep["phantoms"] is not None:
        from .demo import DEMO_PHANTOM_SEED, demo_phantoms

        n = int(spec.sweep["phantoms"])
        if n < 1:
            raise ValueError(f"{spec.source}: [sweep] phantoms must be at least 1, got {n}")
        seed = DEMO_PHANTOM_SEED if spec.sweep["phantom_seed"] is None else int(spec.sweep["phantom_seed"])
        batch = demo_phantoms(n, seed)
        images = batch.images
        if images.shape[-2:] != size:
            unit = [np.clip(resize((im[0].astype(np.float64) + 1) / 2, size), 0, 1) for im in images]
            images = np.stack([(u * 2 - 1).astype(np.float32)[None] for u in unit])
        names = [f"phantom_{i:03d}_{batch.params[i]['failure_mode']}" for i in range(n)]
        return names, np.ascontiguousarray(images, dtype=np.float32)
    files = list_images(spec.sweep["images"])
    names, pixels = [], []
    for f in files:
        try:
            pixels.append(load_image(f, size))
            names.append(f.name)
        except (ImageReadError, ValueError, OSError) as exc:
            print(f"diffice sweep: skipped {f.name}: {exc}", file=stream or sys.stderr)
    if not pixels:
        raise ValueError(f"{spec.sweep['images']}: no readable image")
    return names, np.stack(pixels).astype(np.float32)


# ---- the store ----

def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """(C, H, W) float32 -> PNG bytes (8-bit, [-1, 1] mapped to 0..255) or raw little-endian float16 bytes."""
    if fmt == "float16":
        return np.ascontiguousarray(image, dtype="<f2").tobytes()
    from PIL import Image

    from .data import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(blob: bytes, fmt: str, shape: Sequence[int]) -> np.ndarray:
    """The inverse of encode_image: (C, H, W) float32 in [-1, 1] (PNG: the 8-bit values)."""
    if fmt == "float16":
        return np.frombuffer(blob, dtype="<f2").reshape(tuple(shape)).astype(np.float32)
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        a = np.asarray(img, dtype=np.float32)
    return (a / 127.5 - 1.0)[None]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (image_id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    pixel_key TEXT NOT NULL, input BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS configs (config_id TEXT PRIMARY KEY, label TEXT NOT NULL, method TEXT NOT NULL,
    iterations INTEGER NOT NULL, tau INTEGER NOT NULL, lambda_c TEXT NOT NULL, lambda_p REAL NOT NULL,
    params TEXT NOT NULL, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS units (unit_id TEXT PRIMARY KEY, config_id TEXT NOT NULL REFERENCES configs,
    batch INTEGER NOT NULL, image_ids TEXT NOT NULL, batch_seconds REAL NOT NULL, iteration_seconds TEXT NOT NULL,
    peak_bytes INTEGER NOT NULL, unet_evaluations INTEGER NOT NULL, worker TEXT, finished_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (config_id TEXT NOT NULL REFERENCES configs,
    image_id INTEGER NOT NULL REFERENCES images, iteration INTEGER NOT NULL, prob_target REAL NOT NULL,
    flipped INTEGER NOT NULL, lambda_used REAL, nonfinite_step INTEGER, counterfactual BLOB,
    PRIMARY KEY (config_id, image_id, iteration));
"""


class SweepStore:
    """The SQLite results store of a sweep (schema: the module docstring). Writes happen in the process that opened
    it (the sweep's client); every write method is one transaction."""

    def __init__(self, path: os.PathLike, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"results store not found: {self.path} (run the sweep first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=60)
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        if create:
            self.db.executescript(_SCHEMA)
        try:
            fmt = self.meta("format")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a diffice sweep store ({exc})") from None
        if fmt is not None and fmt != STORE_FORMAT:
            raise ValueError(f"{self.path}: a {fmt!r} store, expected {STORE_FORMAT!r}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "SweepStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing --
    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self):
                store.db.execute("BEGIN IMMEDIATE")
                return store.db

            def __exit__(self, kind, value, tb):
                store.db.execute("COMMIT" if kind is None else "ROLLBACK")
                return False

        return _Tx()

    def meta(self, key: str) -> Any:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else json.loads(row[0])

    def initialise(self, meta: Dict[str, Any], names: Sequence[str], x: np.ndarray,
                   configs: Sequence[Dict[str, Any]]) -> None:
        """Creates the store's meta, images and configs, or checks that they agree with an existing store
        (ValueError naming what changed; configurations may be added)."""
        fmt = meta["store_format"]
        keys = [f"{k:016x}" for k in image_keys(x)]
        with self._transaction() as db:
            old = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            if old:
                for key in ("run", "diffusion", "store_format", "image_shape"):
                    if old.get(key) != meta[key]:
                        raise ValueError(f"{self.path}: made with {key} = {old.get(key)!r}, now {meta[key]!r}; "
                                         f"use the same settings or another --out")
                stored = [tuple(r) for r in db.execute("SELECT name, pixel_key FROM images ORDER BY image_id")]
                if stored != list(zip(names, keys)):
                    raise ValueError(f"{self.path}: made for another image set ({len(stored)} images, now "
                                     f"{len(names)}, or their pixels changed); use another --out")
                if old.get("models") != meta["models"]:
                    print(f"diffice sweep: note: the models' description differs from the one {self.path} was "
                          f"made with; finished units are kept", file=sys.stderr)
            else:
                db.executemany("INSERT INTO images (image_id, name, pixel_key, input) VALUES (?, ?, ?, ?)",
                               [(i, n, k, encode_image(x[i], fmt)) for i, (n, k) in enumerate(zip(names, keys))])
            for key, value in meta.items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?)", (json.dumps(STORE_FORMAT),))
            known = {r[0] for r in db.execute("SELECT config_id FROM configs")}
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM configs").fetchone()[0]
            for c in configs:
                cid = config_id(c)
                if cid in known:
                    continue
                db.execute("INSERT INTO configs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (cid, config_label(c), c["method"], c["iterations"], c["tau"], json.dumps(c["lambda_c"]),
                            c["lambda_p"], json.dumps(c, sort_keys=True), position))
                known.add(cid)
                position += 1

    def add_warning(self, message: str) -> None:
        """Appends a warning about the run (diffice.explain.SuspiciousRunWarning) to meta 'warnings'."""
        from .run import warning_entry

        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'warnings'").fetchone()
            entries = json.loads(row[0]) if row else []
            entries.append(warning_entry(message))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('warnings', ?)", (json.dumps(entries),))

    def finished_units(self) -> set:
        return {r[0] for r in self.db.execute("SELECT unit_id FROM units")}

    def write_unit(self, unit: Dict[str, Any], result: Dict[str, Any]) -> bool:
        """Writes one finished unit in one transaction; False (nothing written) when it is already there."""
        fmt = self.meta("store_format")
        cid, ids = unit["config_id"], unit["image_ids"]
        cfs = result["counterfactuals"]

        def rows():  # encoded inside the transaction: an interruption anywhere leaves no trace of the unit
            for b, image_id in enumerate(ids):
                yield (cid, image_id, 0, float(result["prob_target"][0, b]), int(result["input_is_target"][b]),
                       None, None, None)
                for l in range(len(cfs)):
                    yield (cid, image_id, l + 1, float(result["prob_target"][l + 1, b]),
                           int(result["flipped"][l, b]), float(result["lambda_used"][l, b]),
                           int(result["nonfinite_step"][l, b]), encode_image(cfs[l, b], fmt))

        with self._transaction() as db:
            if db.execute("SELECT 1 FROM units WHERE unit_id = ?", (unit["unit"],)).fetchone():
                return False
            db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows())
            db.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (unit["unit"], cid, unit["batch"], json.dumps(list(ids)), float(result["batch_seconds"]),
                        json.dumps([float(v) for v in result["iteration_seconds"]]), int(result["peak_bytes"]),
                        int(result["unet_evaluations"]), result.get("worker"),
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        return True

    # -- reading --
    def configs(self) -> List[Dict[str, Any]]:
        rows = self.db.execute("SELECT config_id, label, params FROM configs ORDER BY position").fetchall()
        return [dict(json.loads(p), config_id=cid, label=label) for cid, label, p in rows]

    def image_names(self) -> List[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM images ORDER BY image_id")]

    def _shape(self) -> Tuple[int, ...]:
        return tuple(self.meta("image_shape"))

    def inputs(self, image_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """The inputs as explained (N, C, H, W) float32, in image_id order (or the given ids')."""
        fmt, shape = self.meta("store_format"), self._shape()
        rows = dict(self.db.execute("SELECT image_id, input FROM images").fetchall())
        ids = sorted(rows) if image_ids is None else list(image_ids)
        return np.stack([decode_image(rows[i], fmt, shape) for i in ids]) if ids else np.zeros((0,) + shape,
                                                                                                np.float32)

    def counterfactuals(self, config: str, iteration: int, image_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """The counterfactuals (N, C, H, W) float32 of one configuration and iteration (1..L), for the finished
        images in image_id order (or the given ids')."""
        fmt, shape = self.meta("store_format"), self._shape()
        rows = dict(self.db.execute("SELECT image_id, counterfactual FROM results WHERE config_id = ? AND "
                                    "iteration = ?", (config, int(iteration))).fetchall())
        ids = sorted(rows) if image_ids is None else list(image_ids)
        return np.stack([decode_image(rows[i], fmt, shape) for i in ids]) if ids else np.zeros((0,) + shape,
                                                                                                np.float32)

    def counterfactual_blobs(self) -> Dict[Tuple[str, int, int], bytes]:
        """Every stored counterfactual's bytes by (config_id, image_id, iteration) (bitwise comparisons)."""
        return {(c, i, l): bytes(b) for c, i, l, b in self.db.execute(
            "SELECT config_id, image_id, iteration, counterfactual FROM results WHERE iteration > 0")}

    def results(self, config: Dict[str, Any]) -> "ConfigResults":
        cid = config["config_id"]
        L = int(config["iterations"])
        rows = self.db.execute("SELECT image_id, iteration, prob_target, flipped, lambda_used, nonfinite_step FROM "
                               "results WHERE config_id = ? ORDER BY image_id, iteration", (cid,)).fetchall()
        ids = sorted({r[0] for r in rows})
        index = {i: k for k, i in enumerate(ids)}
        n = len(ids)
        prob = np.full((n, L + 1), np.nan)
        flipped = np.zeros((n, L + 1), bool)
        lam = np.full((n, L), np.nan)
        nonfinite = np.full((n, L), -1, np.int64)
        for image_id, l, p, f, lu, nf in rows:
            k = index[image_id]
            prob[k, l], flipped[k, l] = p, bool(f)
            if l > 0:
                lam[k, l - 1], nonfinite[k, l - 1] = lu, nf
        units = self.db.execute("SELECT batch_seconds, iteration_seconds, peak_bytes FROM units WHERE config_id = ? "
                                "ORDER BY batch", (cid,)).fetchall()
        return ConfigResults(
            config=config, store=self, image_ids=np.array(ids, np.int64), prob_target=prob,
            input_is_target=flipped[:, 0], flipped=flipped[:, 1:], lambda_used=lam, nonfinite_step=nonfinite,
            batch_seconds=np.array([u[0] for u in units], np.float64),
            iteration_seconds=np.array([json.loads(u[1]) for u in units], np.float64).reshape(len(units), L),
            peak_bytes=np.array([u[2] for u in units], np.int64))


@dataclasses.dataclass
class ConfigResults:
    """One configuration's finished results (N images done, L iterations), for the table columns.

    prob_target (N, L + 1): f's target probability of the input and each iteration; input_is_target (N,) bool;
    flipped, lambda_used, nonfinite_step (N, L); per unit: batch_seconds (U,), iteration_seconds (U, L),
    peak_bytes (U,). ``validity`` is the paper's subset for FR / MAD / BKL: the inputs f does not already classify
    as the target. ``finite(l)``: the images whose counterfactual of iteration l is one (the sampler's step did not
    go non-finite; the others were zeroed and are excluded from every column, image metrics such as FID
    included). counterfactuals(l) and inputs() load images from the store.
    """

    config: Dict[str, Any]
    store: SweepStore
    image_ids: np.ndarray
    prob_target: np.ndarray
    input_is_target: np.ndarray
    flipped: np.ndarray
    lambda_used: np.ndarray
    nonfinite_step: np.ndarray
    batch_seconds: np.ndarray
    iteration_seconds: np.ndarray
    peak_bytes: np.ndarray

    @property
    def validity(self) -> np.ndarray:
        return ~self.input_is_target

    def finite(self, iteration: int) -> np.ndarray:
        """(N,) bool: the counterfactual of iteration (1..L) did not go non-finite in the sampler."""
        return self.nonfinite_step[:, iteration - 1] < 0

    def counterfactuals(self, iteration: int) -> np.ndarray:
        return self.store.counterfactuals(self.config["config_id"], iteration, self.image_ids)

    def inputs(self) -> np.ndarray:
        return self.store.inputs(self.image_ids)


# ---- the tables ----

@dataclasses.dataclass
class Column:
    """A metric column of the tables: compute(results, iteration) -> a number (or None: not available).
    `subset` names the images it is computed over (printed under the tables); a column leaves out the images
    whose counterfactual went non-finite (ConfigResults.finite)."""

    name: str
    compute: Callable[[ConfigResults, int], Optional[float]]
    fmt: str = "{:.3f}"
    subset: str = ""


def _on_validity(fn: Callable[[ConfigResults, int, np.ndarray], float]) -> Callable[[ConfigResults, int], Any]:
    def compute(r: ConfigResults, l: int) -> Optional[float]:
        s = r.validity & r.finite(l)
        return float(fn(r, l, s)) if s.any() else None
    return compute


VALIDITY = ("inputs f does not classify as the target (the paper's subset), less those whose counterfactual went "
            "non-finite")
TABLE_COLUMNS: List[Column] = [
    Column("FR", _on_validity(lambda r, l, s: r.flipped[s, l - 1].mean()), subset=VALIDITY),
    Column("dp", _on_validity(lambda r, l, s: (r.prob_target[s, l] - r.prob_target[s, 0]).mean()),
           subset=VALIDITY + "; mean change of f's target probability"),
    Column("MAD", _on_validity(lambda r, l, s: np.abs(r.prob_target[s, l] - r.prob_target[s, 0]).mean()),
           subset=VALIDITY + "; |p_target(x) - p_target(cf)| (= MAD for a two-class f)"),
    Column("BKL", _on_validity(lambda r, l, s: (1.0 - r.prob_target[s, l]).mean()), subset=VALIDITY),
]


def register_column(column: Column, position: Optional[int] = None) -> None:
    """Adds a metric column to every table (e.g. FID from diffice.metrics); replaces one of the same name."""
    for i, c in enumerate(TABLE_COLUMNS):
        if c.name == column.name:
            TABLE_COLUMNS[i] = column
            return
    TABLE_COLUMNS.insert(len(TABLE_COLUMNS) if position is None else position, column)


def _mean_std(a: np.ndarray) -> str:
    return f"{a.mean():.2f} +- {a.std():.2f}" if len(a) else "-"


def _fmt(column: Column, value: Optional[float]) -> str:
    return "-" if value is None or value != value else column.fmt.format(value)


def _metrics(r: ConfigResults, l: int) -> List[str]:
    return [_fmt(c, c.compute(r, l) if len(r.image_ids) else None) for c in TABLE_COLUMNS]


def _efficiency(r: ConfigResults) -> List[str]:
    total = float(r.batch_seconds.sum())
    return [_mean_std(r.batch_seconds), format_seconds(total) if len(r.batch_seconds) else "-",
            f"{r.peak_bytes.max() / 2**20:.0f}" if len(r.peak_bytes) else "-"]


def _lc(c: Dict[str, Any]) -> str:
    return "/".join(f"{v:g}" for v in c["lambda_c"])


def _method(c: Dict[str, Any]) -> str:
    return f"{c['method']} (L={c['iterations']})" if c["method"] == "diff-ice" else c["method"]


def _n(r: ConfigResults, l: int) -> str:
    """validity subset (finite counterfactuals) / images done, and how many went non-finite at iteration l."""
    finite = r.finite(l) if len(r.image_ids) else np.zeros(0, bool)
    excluded = int((~finite).sum())
    return f"{int((r.validity & finite).sum())}/{len(r.image_ids)}" + (f" ({excluded} non-finite)" if excluded
                                                                         else "")


def compute_tables(store: SweepStore) -> List[Dict[str, Any]]:
    """Table 1 (methods at the base setting), Table 2 (Diff-ICE per iteration), Table S3 (every configuration)
    as dicts: title, header (list), rows (lists of strings), notes."""
    base = store.meta("base") or {}
    configs = store.configs()
    results = {c["config_id"]: store.results(c) for c in configs}
    metric_names = [c.name for c in TABLE_COLUMNS]
    eff = ["Batch time (s)", "Total time", "Peak MB"]
    order = {m: i for i, m in enumerate(METHODS)}
    at_base = [c for c in configs if all(c[k] == base.get(k, c[k]) for k in TABLE1_AXES)]
    at_base.sort(key=lambda c: (order.get(c["method"], 99), c["iterations"]))
    base_text = f"tau={base.get('tau')}, lambda_c={'/'.join(f'{v:g}' for v in base.get('lambda_c', []))}, " \
                f"lambda_p={base.get('lambda_p', 0):g}" if base else ""
    t1 = dict(title="Table 1: methods" + (f" ({base_text})" if base_text else ""),
              header=["Method", "n"] + metric_names + eff,
              rows=[[_method(c), _n(results[c["config_id"]], c["iterations"])]
                    + _metrics(results[c["config_id"]], c["iterations"]) + _efficiency(results[c["config_id"]])
                    for c in at_base])
    tables = [t1]
    for c in at_base:
        if c["method"] != "diff-ice":
            continue
        r = results[c["config_id"]]
        rows = []
        for l in range(1, c["iterations"] + 1):
            its = r.iteration_seconds[:, l - 1] if len(r.iteration_seconds) else np.zeros(0)
            rows.append([str(l), _n(r, l)] + _metrics(r, l) +
                        [_mean_std(its), format_seconds(float(its.sum())) if len(its) else "-"])
        tables.append(dict(title=f"Table 2: Diff-ICE per iteration (L={c['iterations']}, {base_text})",
                           header=["Iteration", "n"] + metric_names + ["Batch time (s)", "Iteration time"],
                           rows=rows))
    s3 = sorted(configs, key=lambda c: (order.get(c["method"], 99), c["iterations"], c["tau"], c["lambda_c"],
                                        -c["lambda_p"]))
    tables.append(dict(title="Table S3: ablation (every configuration, last iteration)",
                       header=["Method", "tau", "Lp", "lambda_c", "n"] + metric_names + eff,
                       rows=[[_method(c), str(c["tau"]), f"yes ({c['lambda_p']:g})" if c["lambda_p"] else "no",
                              _lc(c), _n(results[c["config_id"]], c["iterations"])]
                             + _metrics(results[c["config_id"]], c["iterations"])
                             + _efficiency(results[c["config_id"]]) for c in s3]))
    notes = [f"n: validity subset / images done, and (k non-finite): the images whose counterfactual went "
             f"non-finite in the sampler (zeroed), excluded from every column. {c.name}: {c.subset}"
             for c in TABLE_COLUMNS[:1]] + \
            [f"{c.name}: {c.subset}" for c in TABLE_COLUMNS[1:]] + \
            ["Batch time: the sampler's wall time per unit (one batch), mean +- std over units; Total time: their "
             "sum; Peak MB: the sampler's memory peak (largest over units)."]
    for t in tables:
        t["notes"] = notes
    return tables


def format_tables(tables: List[Dict[str, Any]]) -> str:
    """The tables as Markdown (aligned, readable as plain text)."""
    out = []
    for t in tables:
        widths = [max(len(str(v)) for v in [h] + [row[i] for row in t["rows"]]) for i, h in enumerate(t["header"])]
        out.append(f"### {t['title']}\n")
        out.append("| " + " | ".join(h.ljust(w) for h, w in zip(t["header"], widths)) + " |")
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in t["rows"]:
            out.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths)) + " |")
        if not t["rows"]:
            out.append("(no configuration)")
        out.append("")
    if tables:
        out += [f"- {n}" for n in tables[0]["notes"]] + [""]
    return "\n".join(out)


def print_tables(store_path: os.PathLike, stream: Optional[TextIO] = None) -> str:
    """Prints the tables of a results store and writes them to tables.md beside it; returns the text."""
    from .data import atomic_write_bytes

    with SweepStore(store_path) as store:
        text = format_tables(compute_tables(store))
        recorded = store.meta("warnings") or []
    if recorded:
        text += "\n" + "\n".join(f"- WARNING ({w['at']}): {w['message']}" for w in recorded) + "\n"
    atomic_write_bytes(Path(store_path).with_name("tables.md"), text.encode())
    print(text, file=stream or sys.stdout)
    return text


# ---- running ----

def plan_units(configs: Sequence[Dict[str, Any]], n_images: int, batch_size: int) -> List[Dict[str, Any]]:
    """Every unit of the sweep: per configuration (in order), consecutive batches of the sorted image set."""
    from .cluster import batches

    chunks = batches(list(range(n_images)), batch_size)
    return [dict(unit=f"{config_id(c)}-b{b:04d}", config_id=config_id(c), batch=b, image_ids=list(ids), method=c)
            for c in configs for b, ids in enumerate(chunks)]


class _StoreLock:
    """An exclusive lock on the store's folder (one sweep writes a store at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self.fd: Optional[int] = None

    def __enter__(self) -> "_StoreLock":
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise RuntimeError(f"{self.path.with_suffix('')}: another diffice sweep is writing this store") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)


def run_sweep(spec: SweepSpec, executor: Any = None, progress: bool = True, models: Any = None,
              stream: Optional[TextIO] = None, on_unit: Optional[Callable[[int, int, Any], None]] = None
              ) -> Dict[str, Any]:
    """Runs every unit of the sweep not yet in the store (spec.store_path) and returns a summary dict.

    executor: where units run (diffice.cluster.open_executor; default: this process, with `models` -- a loaded
    (unet, diffusion, classifier, perceptual) -- or the spec's models loaded once). on_unit(done, total,
    executor) is called after each unit is written (tests, notebooks).

    When the units run now look like a broken setup (diffice.explain.suspicious_run_message: every input already
    the target, or, per configuration, every image the target at the first guided step), a SuspiciousRunWarning is
    emitted, stored in the store's meta 'warnings' (printed with the tables) and listed in the summary's "warnings".
    """
    from .cluster import LocalExecutor, describe
    from .progress import ProgressBar

    stream = stream or sys.stderr
    executor = executor or LocalExecutor(models)
    names, x = load_sweep_images(spec, stream)
    run = spec.cfg["run"]
    meta = dict(run=dict(image_size=[int(v) for v in run["image_size"]], batch_size=int(run["batch_size"]),
                         seed=int(run["seed"]), target=int(run["target"])),
                diffusion=spec.cfg["diffusion"], models=spec.models, store_format=spec.sweep["store_format"],
                image_shape=list(x.shape[1:]), base=spec.base)
    spec.out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    with _StoreLock(spec.store_path), SweepStore(spec.store_path, create=True) as store:
        store.initialise(meta, names, x, spec.configs)
        units = plan_units(spec.configs, len(names), int(run["batch_size"]))
        done = store.finished_units()
        todo = [u for u in units if u["unit"] not in done]
        by_id = {u["unit"]: u for u in todo}
        tasks = (dict(unit=u["unit"], models=spec.models, method=u["method"], x=x[u["image_ids"]],
                      target=int(run["target"]), seed=int(run["seed"])) for u in todo)
        if todo and executor.description != "this machine":
            describe(executor, stream)
        bar = ProgressBar(len(todo), label="sweep", enabled=progress, stream=stream)
        finished = 0
        checks: Dict[str, List[Dict[str, Any]]] = {}

        def on_step(task, iteration, lambda_index, step, steps, active):
            u = by_id[task["unit"]]
            bar.update(finished, note=f"{u['method']['method']} batch {u['batch'] + 1} it {iteration + 1} "
                                      f"step {step}/{steps}")

        for result in executor.run(tasks, progress=on_step if progress else None):
            store.write_unit(by_id[result["unit"]], result)
            checks.setdefault(by_id[result["unit"]]["config_id"], []).append(
                {k: result.get(k) for k in ("input_is_target", "first_step_target")})
            finished += 1
            bar.update(finished, note=f"units (last: {result['worker']})", force=True)
            if on_unit is not None:
                on_unit(finished, len(todo), executor)
        bar.close()
        found = _check_sweep(checks, spec.configs, int(run["target"]))
        for message in found:
            store.add_warning(message)
    return dict(units=len(units), ran=finished, skipped_done=len(units) - len(todo), images=len(names),
                configs=len(spec.configs), seconds=time.monotonic() - t_start, store=str(spec.store_path),
                warnings=found)


def _check_sweep(checks: Dict[str, List[Dict[str, Any]]], configs: Sequence[Dict[str, Any]],
                 target: int) -> List[str]:
    """The SuspiciousRunWarning checks over the units run now: every input already the target (once, over all
    configurations), else every image the target at the first guided step (per configuration)."""
    from .run import check_run

    everything = [dict(input_is_target=r["input_is_target"]) for rs in checks.values() for r in rs]
    message = check_run(everything, target, None, stacklevel=4)
    if message:
        return [message]
    found = []
    for c in configs:
        rs = checks.get(config_id(c))
        message = check_run(rs or [], target, float(c["lambda_c"][0]), label=config_label(c), stacklevel=4)
        if message:
            found.append(message)
    return found

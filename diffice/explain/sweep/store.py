"""The SQLite results store of a sweep (its schema: diffice.explain.sweep) and one configuration's results read
back from it."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.images import to_uint8
from ..explainer import image_keys
from ..run import changed_model_file, warning_entry
from .config import config_id, config_label

STORE_FORMAT = "diffice sweep store 1"


# ---- the store ----


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """(C, H, W) float32 -> PNG bytes (8-bit, [-1, 1] mapped to 0..255) or raw little-endian float16 bytes."""
    if fmt == "float16":
        return np.ascontiguousarray(image, dtype="<f2").tobytes()
    from PIL import Image

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
CREATE TABLE IF NOT EXISTS first_steps (config_id TEXT NOT NULL REFERENCES configs,
    image_id INTEGER NOT NULL REFERENCES images, target INTEGER NOT NULL, PRIMARY KEY (config_id, image_id));
CREATE TABLE IF NOT EXISTS results (config_id TEXT NOT NULL REFERENCES configs,
    image_id INTEGER NOT NULL REFERENCES images, iteration INTEGER NOT NULL, prob_target REAL NOT NULL,
    flipped INTEGER NOT NULL, lambda_used REAL, nonfinite_step INTEGER, counterfactual BLOB,
    PRIMARY KEY (config_id, image_id, iteration));
"""


def _without_device(models: Any) -> Any:
    """A models description without where the models ran (the same models on another device are the same)."""
    if not isinstance(models, dict):
        return models
    m = {k: v for k, v in models.items() if k != "device"}
    if isinstance(m.get("models"), dict):
        m["models"] = {k: v for k, v in m["models"].items() if k != "device"}
    return m


class SweepStore:
    """The SQLite results store of a sweep (schema: the module docstring). Writes happen in the process that opened
    it (the sweep's client); every write method is one transaction."""

    def __init__(self, path: os.PathLike, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"results store not found: {self.path} (run the sweep first)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=60)
        try:
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            missing = self._missing_tables()
            # read: every table must be there; write: a file with tables, none of them a sweep's, is another
            # database (not one to add a sweep's tables to)
            others = self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] > 0
            if (missing and not create) or (len(missing) == len(self._TABLES) and others):
                raise sqlite3.DatabaseError("no diffice sweep tables in it")
            if create:
                self.db.executescript(_SCHEMA)
            fmt = self.meta("format")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                self.db.close()
                raise
            self.db.close()
            full = self._disk_full(exc)  # not a damaged store: moving it aside would lose its units for nothing
            if full is not None:
                raise full from None
            raise ValueError(self._damaged(exc)) from None
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one ("database disk image is malformed")
            self.db.close()
            raise ValueError(self._damaged(exc)) from None
        if fmt is not None and fmt != STORE_FORMAT:
            self.db.close()
            raise ValueError(f"{self.path}: a {fmt!r} store, expected {STORE_FORMAT!r}")

    _TABLES = ("meta", "images", "configs", "units", "results")

    def _missing_tables(self) -> list[str]:
        have = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [t for t in self._TABLES if t not in have]

    def _damaged(self, exc: Exception) -> str:
        return (
            f"{self.path}: not a readable diffice sweep store ({exc}); it is damaged or another file: move it "
            f"aside and run the sweep again (it starts over), or restore a copy"
        )

    def _disk_full(self, exc: BaseException | None) -> OSError | None:
        """The OSError to raise for SQLite's "database or disk is full" (None for another error)."""
        if not isinstance(exc, sqlite3.OperationalError) or "full" not in str(exc):
            return None
        return OSError(
            errno.ENOSPC,
            f"No space left on device ({exc}): the units finished before are kept in the store; free some space "
            "and run the same command again to resume",
            str(self.path),
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> SweepStore:
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
                try:
                    store.db.execute("COMMIT" if kind is None else "ROLLBACK")
                except sqlite3.OperationalError as exc:  # a COMMIT that did not fit on the disk, say
                    with contextlib.suppress(sqlite3.Error):
                        store.db.execute("ROLLBACK")
                    value = value if kind is not None else exc
                    if kind is None and store._disk_full(exc) is None:
                        raise
                full = store._disk_full(value)  # the unit is not written; those before are whole
                if full is not None:
                    raise full from None
                return False

        return _Tx()

    def meta(self, key: str) -> Any:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if row is None else json.loads(row[0])

    def initialise(
        self, meta: dict[str, Any], names: Sequence[str], x: np.ndarray, configs: Sequence[dict[str, Any]]
    ) -> None:
        """Creates the store's meta, images and configs, or checks that they agree with an existing store
        (ValueError naming what changed; configurations may be added). A store without a finished unit (a sweep
        that failed at its first unit, e.g. on a wrong image size) holds nothing to keep: it is made afresh."""
        fmt = meta["store_format"]
        keys = [f"{k:016x}" for k in image_keys(x)]
        with self._transaction() as db:
            if db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 0:
                for table in ("results", "first_steps", "configs", "images", "meta"):
                    db.execute(f"DELETE FROM {table}")
            old = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            if old:
                for key in ("run", "diffusion", "store_format", "image_shape"):
                    if old.get(key) != meta[key]:
                        raise ValueError(
                            f"{self.path}: made with {key} = {old.get(key)!r}, now {meta[key]!r}; "
                            f"use the same settings or another --out"
                        )
                stored = [tuple(r) for r in db.execute("SELECT name, pixel_key FROM images ORDER BY image_id")]
                if stored != list(zip(names, keys)):
                    raise ValueError(
                        f"{self.path}: made for another image set ({len(stored)} images, now "
                        f"{len(names)}, or their pixels changed); use another --out"
                    )
                # a retrained model at the same path: not the same models
                changed = changed_model_file(old.get("model_files"), meta.get("model_files"))
                if changed is not None:
                    key, then, now = changed
                    path = (meta["models"].get("models") or {}).get(key)
                    raise ValueError(
                        f"{self.path}: made with another {key} file: {path} has changed since (sha256 {now[:12]}..., "
                        f"the store's {then[:12]}...); use another --out, or the same model file to resume"
                    )
                if _without_device(old.get("models")) != _without_device(meta["models"]):
                    print(
                        f"diffice sweep: note: the models' description differs from the one {self.path} was "
                        f"made with; finished units are kept",
                        file=sys.stderr,
                    )
            else:
                db.executemany(
                    "INSERT INTO images (image_id, name, pixel_key, input) VALUES (?, ?, ?, ?)",
                    [(i, n, k, encode_image(x[i], fmt)) for i, (n, k) in enumerate(zip(names, keys))],
                )
            for key, value in meta.items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('format', ?)", (json.dumps(STORE_FORMAT),))
            known = {r[0] for r in db.execute("SELECT config_id FROM configs")}
            position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM configs").fetchone()[0]
            for c in configs:
                cid = config_id(c)
                if cid in known:
                    continue
                db.execute(
                    "INSERT INTO configs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        config_label(c),
                        c["method"],
                        c["iterations"],
                        c["tau"],
                        json.dumps(c["lambda_c"]),
                        c["lambda_p"],
                        json.dumps(c, sort_keys=True),
                        position,
                    ),
                )
                known.add(cid)
                position += 1

    def add_warning(self, message: str) -> None:
        """Appends a warning about the run (diffice.explain.explainer.SuspiciousRunWarning) to meta 'warnings',
        unless the same message is already there (a resumed or rerun sweep finds it again)."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'warnings'").fetchone()
            entries = json.loads(row[0]) if row else []
            if any(e.get("message") == message for e in entries):
                return
            entries.append(warning_entry(message))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('warnings', ?)", (json.dumps(entries),))

    def input_verdicts(self) -> np.ndarray:
        """(N,) bool over the distinct images with results: f classifies the input as the target (iteration 0)."""
        rows = self.db.execute(
            "SELECT image_id, MAX(flipped) FROM results WHERE iteration = 0 GROUP BY image_id ORDER BY image_id"
        ).fetchall()
        return np.array([bool(f) for _, f in rows], bool)

    def first_step_verdicts(self, config_id: str) -> dict[str, np.ndarray] | None:
        """input_is_target and first_step_target, (N,) bool each, over the images of this configuration's finished
        units that recorded f's verdict at the first guided step (stores before it was recorded: none); None when
        there are none."""
        rows = self.db.execute(
            "SELECT r.flipped, f.target FROM first_steps f JOIN results r ON r.config_id = f.config_id AND "
            "r.image_id = f.image_id AND r.iteration = 0 WHERE f.config_id = ? ORDER BY f.image_id",
            (config_id,),
        ).fetchall()
        if not rows:
            return None
        verdicts = np.array(rows, bool)
        return dict(input_is_target=verdicts[:, 0], first_step_target=verdicts[:, 1])

    def finished_units(self) -> set:
        return {r[0] for r in self.db.execute("SELECT unit_id FROM units")}

    def write_unit(self, unit: dict[str, Any], result: dict[str, Any]) -> bool:
        """Writes one finished unit in one transaction; False (nothing written) when it is already there."""
        fmt = self.meta("store_format")
        cid, ids = unit["config_id"], unit["image_ids"]
        cfs = result["counterfactuals"]

        def rows():  # encoded inside the transaction: an interruption anywhere leaves no trace of the unit
            for b, image_id in enumerate(ids):
                yield (
                    cid,
                    image_id,
                    0,
                    float(result["prob_target"][0, b]),
                    int(result["input_is_target"][b]),
                    None,
                    None,
                    None,
                )
                for l in range(len(cfs)):
                    yield (
                        cid,
                        image_id,
                        l + 1,
                        float(result["prob_target"][l + 1, b]),
                        int(result["flipped"][l, b]),
                        float(result["lambda_used"][l, b]),
                        int(result["nonfinite_step"][l, b]),
                        encode_image(cfs[l, b], fmt),
                    )

        with self._transaction() as db:
            if db.execute("SELECT 1 FROM units WHERE unit_id = ?", (unit["unit"],)).fetchone():
                return False
            db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows())
            first = result.get("first_step_target")
            if first is not None:  # f's verdict at the first guided step, for the sweep-wide check after resumes
                db.executemany(
                    "INSERT INTO first_steps VALUES (?, ?, ?)", [(cid, i, int(first[b])) for b, i in enumerate(ids)]
                )
            db.execute(
                "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    unit["unit"],
                    cid,
                    unit["batch"],
                    json.dumps(list(ids)),
                    float(result["batch_seconds"]),
                    json.dumps([float(v) for v in result["iteration_seconds"]]),
                    int(result["peak_bytes"]),
                    int(result["unet_evaluations"]),
                    result.get("worker"),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                ),
            )
        return True

    # -- reading --
    def configs(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT config_id, label, params FROM configs ORDER BY position").fetchall()
        return [dict(json.loads(p), config_id=cid, label=label) for cid, label, p in rows]

    def image_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM images ORDER BY image_id")]

    def _shape(self) -> tuple[int, ...]:
        return tuple(self.meta("image_shape"))

    def inputs(self, image_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The inputs as explained (N, C, H, W) float32, in image_id order (or the given ids')."""
        fmt, shape = self.meta("store_format"), self._shape()
        rows = dict(self.db.execute("SELECT image_id, input FROM images").fetchall())
        ids = sorted(rows) if image_ids is None else list(image_ids)
        return np.stack([decode_image(rows[i], fmt, shape) for i in ids]) if ids else np.zeros((0,) + shape, np.float32)

    def counterfactuals(
        self, config: str, iteration: int, image_ids: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """The counterfactuals (N, C, H, W) float32 of one configuration and iteration (1..L), for the finished
        images in image_id order (or the given ids')."""
        fmt, shape = self.meta("store_format"), self._shape()
        rows = dict(
            self.db.execute(
                "SELECT image_id, counterfactual FROM results WHERE config_id = ? AND iteration = ?",
                (config, int(iteration)),
            ).fetchall()
        )
        ids = sorted(rows) if image_ids is None else list(image_ids)
        return np.stack([decode_image(rows[i], fmt, shape) for i in ids]) if ids else np.zeros((0,) + shape, np.float32)

    def counterfactual_blobs(self) -> dict[tuple[str, int, int], bytes]:
        """Every stored counterfactual's bytes by (config_id, image_id, iteration) (bitwise comparisons)."""
        return {
            (c, i, l): bytes(b)
            for c, i, l, b in self.db.execute(
                "SELECT config_id, image_id, iteration, counterfactual FROM results WHERE iteration > 0"
            )
        }

    def results(self, config: dict[str, Any]) -> ConfigResults:
        cid = config["config_id"]
        L = int(config["iterations"])
        rows = self.db.execute(
            "SELECT image_id, iteration, prob_target, flipped, lambda_used, nonfinite_step FROM "
            "results WHERE config_id = ? ORDER BY image_id, iteration",
            (cid,),
        ).fetchall()
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
        units = self.db.execute(
            "SELECT batch_seconds, iteration_seconds, peak_bytes FROM units WHERE config_id = ? ORDER BY batch", (cid,)
        ).fetchall()
        return ConfigResults(
            config=config,
            store=self,
            image_ids=np.array(ids, np.int64),
            prob_target=prob,
            input_is_target=flipped[:, 0],
            flipped=flipped[:, 1:],
            lambda_used=lam,
            nonfinite_step=nonfinite,
            batch_seconds=np.array([u[0] for u in units], np.float64),
            iteration_seconds=np.array([json.loads(u[1]) for u in units], np.float64).reshape(len(units), L),
            peak_bytes=np.array([u[2] for u in units], np.int64),
        )


@dataclasses.dataclass
class ConfigResults:
    """One configuration's finished results (N images done, L iterations), for the table columns.

    prob_target (N, L + 1): f's target probability of the input and each iteration; input_is_target (N,) bool;
    flipped, lambda_used, nonfinite_step (N, L); per unit: batch_seconds (U,), iteration_seconds (U, L),
    peak_bytes (U,). ``validity`` is the paper's subset for FR / MAD / BKL: the inputs f does not already classify
    as the target. ``finite(l)``: the images whose counterfactual of iteration l is one (the sampler's step did not
    go non-finite; the others were zeroed and are excluded from every column, image metrics such as FID
    included). counterfactuals(l) and inputs() load images from the store; ``judges``: what the tables' image
    columns judge with (set by compute_tables).
    """

    config: dict[str, Any]
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
    judges: Any = None  # the tables' oracle and realism network (diffice.explain.sweep.judges.Judges), or None

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

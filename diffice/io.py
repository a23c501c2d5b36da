"""Weight files: safetensors (read/write), numpy .npz and PyTorch checkpoints (read), all parsed in C.

Every loader returns ``dict[str, np.ndarray]``: float32 arrays keyed by PyTorch module path, in file order.
float16/bfloat16/float64 and integer tensors are converted to float32 (float16/bfloat16 exactly).

Nothing in a file is ever executed: PyTorch checkpoints are read by a restricted unpickler that only knows the
globals ``torch.save`` writes for a state_dict and refuses any other by name. torch is not needed at runtime.

read_json reads the JSON files of a results folder (records, run_settings.json, warnings.json), naming the file when
one is damaged; file_digest is the sha256 a results folder records of an input image or a demo model file.

Errors: a missing path raises FileNotFoundError, a directory IsADirectoryError ("<path> is a folder, not a model
file"), a malformed file ValueError whose message starts with the path and names the problem.
"""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._native import _C

__all__ = [
    "load_weights",
    "load_safetensors",
    "load_safetensors_metadata",
    "peek_safetensors_metadata",
    "save_safetensors",
    "load_npz",
    "load_torch",
    "read_json",
    "read_csv",
    "file_digest",
]

PathLike = Union[str, "os.PathLike[str]"]


def _checked_path(path: PathLike) -> str:
    if isinstance(path, bytes):
        raise TypeError("path must be a str or os.PathLike, got bytes")
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.exists(p):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), p)
    if os.path.isdir(p):  # every model loader reads through here: one message for a folder given as a model
        raise IsADirectoryError(f"{p} is a folder, not a model file")
    return p


def _load(path: PathLike, fmt: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return _C.load_weights(_checked_path(path), fmt)


def load_weights(path: PathLike) -> dict[str, np.ndarray]:
    """Loads any supported weights file, choosing the format from its first bytes (not its extension).

    A zip holding ``<archive>/data.pkl`` is a PyTorch checkpoint, a zip of ``.npy`` members an npz, a pickle a
    legacy PyTorch checkpoint; anything else is read as safetensors.
    """
    return _load(path, "auto")[0]


def load_safetensors(path: PathLike) -> dict[str, np.ndarray]:
    """Reads a .safetensors file (dtypes F32/F16/BF16/F64 and integer/bool, all returned as float32)."""
    return _load(path, "safetensors")[0]


def load_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` string map of a .safetensors file ({} when it has none)."""
    return _load(path, "safetensors")[1]


def peek_safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` map of a .safetensors file from its header alone (the tensors are not read, nor checked:
    for advice at start-up about a file a loader reads whole later); {} for a file that is not one, or has none."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= 100 << 20:
                return {}
            metadata = json.loads(fh.read(n)).get("__metadata__")
    except (OSError, ValueError, AttributeError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Reads an .npz (np.savez or np.savez_compressed) like np.load: keys lose ".npy" ("arr_0").

    Little-endian float16/32/64, integer and bool arrays are returned as float32; fortran-ordered arrays are
    returned C-ordered with the same values. Big-endian, object and structured dtypes raise ValueError.
    """
    return _load(path, "npz")[0]


def load_torch(path: PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``'d state_dict (zip format, torch >= 1.6, or the legacy format) without torch.

    The state_dict is the saved dict itself, or, when the saved dict has one, its ``'state_dict'`` entry, else
    its ``'model'`` entry, else its ``'ema'`` entry (the first of these that is a dict). Entries that are not
    tensors (``_metadata``, epoch counters, ...) are skipped. When every tensor name starts with ``module.``
    (DataParallel / DistributedDataParallel) or ``_orig_mod.`` (torch.compile) that prefix is removed (both, in
    either order, when both wrap the model). A pickled object other than tensors and containers (a whole model
    from ``torch.save(model)``) is refused by its class name, saying to save the state_dict. Non-contiguous
    tensors come back dense with the same values; int64 buffers such as ``num_batches_tracked`` come back as
    float32.
    """
    return _load(path, "torch")[0]


def save_safetensors(
    path: PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    dtype: str = "float32",
) -> None:
    """Writes ``tensors`` as safetensors (header sorted by name, as the reference writer does).

    tensors: name -> array with 0 to 4 dims; float or integer arrays are converted to ``dtype``.
    metadata: optional str -> str map stored as ``__metadata__``.
    dtype: "float32" (F32) or "float16" (F16: half the size, rounded to nearest; a value beyond float16's range
    is an error naming the tensor). Every reader of diffice returns float32 either way.
    The file is written to a temporary name in the same folder and renamed into place, so a reader never sees
    a half-written file.
    """
    if isinstance(path, bytes):
        raise TypeError("path must be a str or os.PathLike, got bytes")
    p = os.fspath(path)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save_safetensors: tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"save_safetensors: dtype must be 'float32' or 'float16', got {dtype!r}")
    names, arrays = [], []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_safetensors: tensor names must be str, got {type(name).__name__}")
        a = np.asarray(value)
        if a.dtype.kind not in "fiub":
            raise TypeError(f"save_safetensors: tensor '{name}' has dtype {a.dtype}; expected a float or integer array")
        if dtype == "float16":
            with np.errstate(over="ignore"):
                h = np.asarray(a, dtype=np.float16, order="C")
            if np.any(np.isinf(h) & ~np.isinf(np.asarray(a, np.float64))):
                raise ValueError(f"save_safetensors: tensor '{name}' has values beyond float16's range (65504)")
            a = h
        else:
            a = np.asarray(a, dtype=np.float32, order="C")
        if not a.flags.aligned:
            a = a.copy()
        names.append(name)
        arrays.append(a)
    meta = {} if metadata is None else metadata
    if not isinstance(meta, Mapping):
        raise TypeError(f"save_safetensors: metadata must be a mapping of str -> str, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"save_safetensors: metadata must map str -> str, got {k!r}: {v!r}")
    _C.save_safetensors(p, names, arrays, list(meta.keys()), list(meta.values()), dtype == "float16")


def read_json(path: PathLike) -> Any:
    """A JSON file a results folder holds (records/<image>.json, run_settings.json, warnings.json): an empty,
    truncated or otherwise unparsable file is a ValueError "<path>: not valid JSON (...)"."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON (not UTF-8 text: {exc})") from None
    if not text.strip():
        raise ValueError(f"{p}: not valid JSON (the file is empty)")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None


CsvRows = list[tuple[int, dict[str, str]]]  # (line number, row) for each row of a CSV file


def read_csv(path: PathLike, required: tuple[str, ...], what: str) -> tuple[list[str], CsvRows]:
    """A UTF-8 CSV file with a header row: its column names and its rows, each with its line number in the file.
    ``what`` says what the file should be ("a CSV of answers"): text that is not UTF-8 or not CSV, and a header
    without the ``required`` columns, are a ValueError naming the file. A leading byte order mark (a spreadsheet's
    "CSV UTF-8") is not part of the first column's name."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            missing = [c for c in required if c not in fields]
            if missing:
                raise ValueError(f"{path}: expected {what} with the columns {list(required)}; it has {fields}")
            return fields, [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not {what} (not UTF-8 text: {exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not {what} ({exc})") from None


def file_digest(path: PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks: what a record remembers of the image it explained, and a
    run of the demo models it used."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

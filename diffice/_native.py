"""Loads the C extension, making sure the oneDNN shared library it links against is found first."""

from __future__ import annotations

import ctypes
import glob
import importlib
import os
import sys
from pathlib import Path
from typing import Any


def _wheel_libraries(dist_name: str, names: tuple[str, ...]) -> list[str]:
    """Absolute paths of the shared libraries `names` (in that order) inside the installed wheel dist_name; [] where
    it is not installed."""
    try:
        from importlib import metadata

        dist = metadata.distribution(dist_name)
    except Exception:
        return []
    files = {Path(str(f)).name: f for f in dist.files or []}
    return [str(dist.locate_file(files[name])) for name in names if name in files]


def onednn_candidates() -> list[str]:
    """Where libdnnl.so.3 is looked for, in order: $DNNL_ROOT/lib where DNNL_ROOT is set (the oneDNN a build with
    DNNL_ROOT linked against: setup.py's switch), then the onednn-cpu-gomp wheel's, then <prefix>/lib."""
    candidates = [os.path.join(os.environ["DNNL_ROOT"], "lib", "libdnnl.so.3")] if os.environ.get("DNNL_ROOT") else []
    candidates += _wheel_libraries("onednn-cpu-gomp", ("libdnnl.so.3",))
    candidates.append(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))
    return candidates


def _preload_onednn() -> None:
    # libdnnl.so.3 lives in <prefix>/lib of whichever environment holds the onednn-cpu-gomp wheel, which is not
    # on the loader path of a venv or an editable install; loading it by absolute path lets _C resolve it by soname.
    for path in onednn_candidates():
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return


def preload_cuda_libraries() -> None:
    """Loads cuBLAS and cuDNN from their PyPI wheels (diffice[cuda]) by absolute path, so the CUDA plugin
    (libdiffice_cuda.so) resolves them by soname also where its rpath does not reach them (editable installs).
    Missing wheels are left for the plugin's loader to report."""
    paths = _wheel_libraries("nvidia-cublas", ("libcublasLt.so.13", "libcublas.so.13"))
    paths += _wheel_libraries("nvidia-cudnn-cu13", ("libcudnn.so.9",))
    for path in paths:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:  # unloadable: the plugin's loader says which library is missing
            continue


# libgomp reads its settings when it loads: threads waiting at a barrier spin 1000 times (tens of microseconds)
# before they sleep. libgomp's own default (300000 spins) loses several-fold as soon as another process shares the
# cores (a training step 4.2 s -> 2.0 s under load with sleeping threads); sleeping at once (OMP_WAIT_POLICY=PASSIVE)
# pays a futex wake-up on each of the thousands of parallel regions of a sampler call: 1.3x slower on an idle
# machine, where the short spin costs under 10% beside a busy process (benchmarks/RESULTS.md, "Threads on this
# machine"). An explicit OMP_WAIT_POLICY or GOMP_SPINCOUNT is respected.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

_preload_onednn()

try:
    _C: Any = importlib.import_module(f"{__package__}._C")  # untyped: its Python wrappers carry the types
except ImportError as exc:  # pragma: no cover - depends on the install
    _package = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(_package, "..", "setup.py")) and not glob.glob(os.path.join(_package, "_C*.so")):
        # `python -c`, a notebook or a script started in a clone puts the clone first on sys.path
        raise ImportError(
            f"diffice was imported from the source checkout {_package}, which holds no built extension "
            f"({exc}): Python looks in the current folder first. Run from another folder to use the diffice "
            "you installed, or build this checkout in place: pip install -e ."
        ) from exc
    raise ImportError(
        f"diffice's C extension could not be loaded ({exc}). Reinstall with `pip install .`; it needs the "
        "onednn-cpu-gomp wheel (oneDNN 3.2, GNU OpenMP) in the same environment."
    ) from exc

__all__ = ["_C"]  # what the package's modules import (from ._native import _C)

"""Builds diffice._C, the C core, against the CPython and NumPy C APIs and oneDNN (CPU).

Environment switches:
  DIFFICE_MARCH=native    add -march=native (faster own kernels; the build then only runs on this CPU family)
  DIFFICE_SANITIZE=1      build with AddressSanitizer + UndefinedBehaviorSanitizer
  DIFFICE_DEBUG=1         -O0 -g
  DIFFICE_WERROR=1        compiler warnings are errors (.ci/run builds this way)
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def _onednn_paths() -> tuple[str, str]:
    """(include dir, lib dir) of oneDNN v3: $DNNL_ROOT, else the PyPI onednn(-devel)-cpu-gomp wheels, else sys.prefix."""
    root = os.environ.get("DNNL_ROOT")
    if root:
        return os.path.join(root, "include"), os.path.join(root, "lib")
    include = lib = None
    try:
        from importlib import metadata

        for dist_name in ("onednn-devel-cpu-gomp", "onednn-cpu-gomp"):
            try:
                dist = metadata.distribution(dist_name)
            except metadata.PackageNotFoundError:
                continue
            for f in dist.files or []:
                p = str(f)
                if p.endswith("oneapi/dnnl/dnnl.h") and include is None:
                    include = str(Path(dist.locate_file(f)).resolve().parents[2])
                if p.endswith("libdnnl.so") and lib is None:
                    lib = str(Path(dist.locate_file(f)).resolve().parent)
    except Exception:  # pragma: no cover - metadata quirks fall back to sys.prefix
        pass
    include = include or os.path.join(sys.prefix, "include")
    lib = lib or os.path.join(sys.prefix, "lib")
    if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.h")):
        sys.exit(
            f"diffice: oneDNN headers not found (looked in {include}). "
            "Install them with `pip install onednn-devel-cpu-gomp==2023.2.0 onednn-cpu-gomp==2023.2.0` "
            "or set DNNL_ROOT."
        )
    return include, lib


def _extension() -> Extension:
    import numpy

    dnnl_include, dnnl_lib = _onednn_paths()
    sources = sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(str(ROOT / "csrc" / "**" / "*.c"), recursive=True)
    )
    cflags = ["-std=c11", "-Wall", "-Wextra", "-fopenmp", "-fvisibility=hidden"]
    ldflags = ["-fopenmp"]
    if os.environ.get("DIFFICE_DEBUG") == "1":
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O3"]
    if os.environ.get("DIFFICE_WERROR") == "1":
        cflags.append("-Werror")
    if os.environ.get("DIFFICE_MARCH"):
        cflags.append("-march=" + os.environ["DIFFICE_MARCH"])
    if os.environ.get("DIFFICE_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        cflags += san
        ldflags += san
    define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    return Extension(
        "diffice._C",
        sources=sources,
        include_dirs=[numpy.get_include(), dnnl_include, str(ROOT / "csrc")],
        library_dirs=[dnnl_lib],
        libraries=["dnnl", "z", "m"],
        # $ORIGIN/../../.. is <prefix>/lib for an install into <prefix>/lib/pythonX.Y/site-packages/diffice;
        # diffice/_native.py also preloads libdnnl from the installed wheel, so editable installs work too.
        runtime_library_dirs=["$ORIGIN/../../..", dnnl_lib],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=define_macros,
    )


setup(ext_modules=[_extension()])

"""Builds diffice._C, the C core, against the CPython and NumPy C APIs and oneDNN (CPU).

Environment switches:
  DIFFICE_MARCH=native    add -march=native (faster own kernels; the build then only runs on this CPU family)
  DIFFICE_SANITIZE=1      build with AddressSanitizer + UndefinedBehaviorSanitizer
  DIFFICE_DEBUG=1         -O0 -g
  DIFFICE_WERROR=1        compiler warnings are errors (.ci/run builds this way)
  DIFFICE_CUDA=0          skip the CUDA plugin (built by default where nvcc is on PATH)
  DIFFICE_CUDA_ARCHS      the GPU architectures the plugin is compiled for (default "80;90": A100, H100/H200)
  DIFFICE_CUDA_LIBS       roots (colon-separated, each with include/ and lib/) of cuDNN and cuBLAS, instead of
                          their PyPI wheels

The CUDA sources (csrc/cuda/*.cu) are built twice: always by the host C++ compiler into _C as the "cuda_emulated"
backend (the kernels as host loops, tested everywhere), and by nvcc into the plugin diffice/libdiffice_cuda.so
where nvcc is found, linking cuBLAS and cuDNN from their PyPI wheels (build_tools/build_backend.py adds them to the
build requirements then).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "build_tools"))
import cuda_build  # noqa: E402  (build_tools/, beside this file)


def _onednn_paths() -> tuple[str, str]:
    """(include dir, lib dir) of oneDNN v3: $DNNL_ROOT, else the PyPI onednn(-devel)-cpu-gomp wheels, else
    sys.prefix."""
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
    sources = sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / "csrc" / "**" / "*.c"), recursive=True))
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
        # diffice/_native.py also preloads libdnnl from the installed wheel, so editable installs work too. The lib
        # folder found here is named only where it is DNNL_ROOT's: the wheel's is in pip's build environment
        # (/tmp/pip-build-env-*), deleted after the build, which any local user could create again and fill.
        runtime_library_dirs=["$ORIGIN/../../.."] + ([dnnl_lib] if os.environ.get("DNNL_ROOT") else []),
        extra_compile_args=cflags,
        extra_link_args=ldflags,
        define_macros=define_macros,
    )


# The system headers the C core includes beyond the C library's, Python's, NumPy's and oneDNN's, and what provides
# them (a build machine without them is common: build-essential does not bring zlib's).
SYSTEM_HEADERS = {
    "zlib.h": "zlib's development files (Debian/Ubuntu: apt install zlib1g-dev; Fedora/RHEL: dnf install "
    "zlib-devel; conda: conda install zlib)",
}


def _require_headers(compiler: Any, scratch: Path, headers: dict[str, str] = SYSTEM_HEADERS) -> None:
    """Stops the build with what to install where a header in `headers` is missing, rather than with the compiler's
    "No such file or directory" deep in pip's log."""
    scratch.mkdir(parents=True, exist_ok=True)
    missing = []
    for header, provider in headers.items():
        source = scratch / ("has_" + header.replace(".", "_").replace("/", "_") + ".c")
        source.write_text(f"#include <{header}>\n")
        try:
            compiler.compile([str(source)], output_dir=str(scratch))
        except CompileError:
            missing.append(f"{header}: install {provider}")
    if missing:
        sys.exit("diffice: the C core needs headers this machine lacks:\n  " + "\n  ".join(missing))


class BuildExtWithCuda(build_ext):
    """Builds _C with the emulated CUDA kernels linked in, then the CUDA plugin beside it where nvcc is found."""

    def build_extensions(self) -> None:
        _require_headers(self.compiler, Path(self.build_temp) / "header_checks")
        ext = self.extensions[0]
        objects_dir = Path(self.build_temp) / "cuda_emulated"
        ext.extra_objects = cuda_build.compile_emulated(ROOT, objects_dir, _flags(), force=bool(self.force))
        ext.depends = list(ext.depends) + list(ext.extra_objects)  # relink _C when an emulated object changed
        super().build_extensions()
        self._cuda_plugin = None
        target = Path(self.get_ext_fullpath(ext.name)).parent / cuda_build.PLUGIN_NAME
        if cuda_build.want_cuda():
            cuda_build.build_plugin(ROOT, Path(self.build_temp) / "cuda", target, _flags(), force=bool(self.force))
            self._cuda_plugin = target
        elif target.exists():
            # a plugin an earlier build with nvcc left in build/ (pip builds in the source tree's build/ too): it
            # would go into this wheel against DIFFICE_CUDA=0, built from other sources than the _C beside it
            print(f"diffice: removing {target} (an earlier build's CUDA plugin; this build makes none)")
            target.unlink()

    def copy_extensions_to_source(self) -> None:
        """build_ext --inplace and editable installs copy _C into the source tree; the plugin goes beside it."""
        super().copy_extensions_to_source()
        plugin = getattr(self, "_cuda_plugin", None)
        if plugin is not None:
            package_dir = Path(self.get_finalized_command("build_py").get_package_dir("diffice")).resolve()
            if plugin.resolve().parent != package_dir:
                self.copy_file(str(plugin), str(package_dir / cuda_build.PLUGIN_NAME))


def _flags() -> dict[str, bool]:
    return {
        "debug": os.environ.get("DIFFICE_DEBUG") == "1",
        "werror": os.environ.get("DIFFICE_WERROR") == "1",
        "sanitize": os.environ.get("DIFFICE_SANITIZE") == "1",
    }


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtWithCuda})

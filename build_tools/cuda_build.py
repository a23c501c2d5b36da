"""How setup.py builds csrc/cuda: the emulated kernels for _C, and the nvcc plugin libdiffice_cuda.so.

Kept beside setup.py (not in the diffice package) because the build backend (build_backend.py) also needs
want_cuda() before setup.py runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PLUGIN_NAME = "libdiffice_cuda.so"
# The PyPI wheels that carry cuDNN 9 and cuBLAS (headers and libraries) for CUDA 13.
CUDA_WHEELS = ["nvidia-cudnn-cu13>=9.0", "nvidia-cublas>=13.0"]
# The C files the plugin needs: the core (errors, tensors) and the argument checks the CUDA kernels share with the
# reference kernels (so every backend rejects the same inputs with the same messages).
PLUGIN_C_SOURCES = [
    "csrc/core/error.c",
    "csrc/core/tensor.c",
    "csrc/ops/norm_check.c",
    "csrc/ops/spatial_check.c",
    "csrc/ops/optim_check.c",
    "csrc/ops/diffusion_check.c",
    "csrc/ops/loss_check.c",
]


def want_cuda() -> bool:
    """True when the plugin should be built: nvcc on PATH and DIFFICE_CUDA not "0". Not in sanitizer builds
    (DIFFICE_SANITIZE=1): ASan's shadow memory and the CUDA driver's mappings do not mix; there the CUDA sources are
    checked through the emulated build, and on a GPU by compute-sanitizer (scripts/gpu_check.sh)."""
    if os.environ.get("DIFFICE_SANITIZE") == "1":
        return False
    return os.environ.get("DIFFICE_CUDA", "1") != "0" and shutil.which("nvcc") is not None


def cu_sources(root: Path) -> list[Path]:
    return sorted((root / "csrc" / "cuda").glob("*.cu"))


def _headers(root: Path) -> list[Path]:
    return [*(root / "csrc").glob("**/*.h"), *(root / "csrc" / "cuda").glob("*.cuh")]


def _up_to_date(target: Path, inputs: list[Path], force: bool) -> bool:
    """target exists and is newer than every input (a rebuild then skips it, as build_ext does for C sources;
    --force rebuilds)."""
    if force or not target.exists():
        return False
    built = target.stat().st_mtime
    return all(p.stat().st_mtime <= built for p in inputs)


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"diffice: build step failed ({result.returncode}): {' '.join(cmd)}")
    if result.stderr.strip():  # warnings (errors with DIFFICE_WERROR=1) are shown, not swallowed
        sys.stderr.write(result.stderr)


def _host_flags(flags: dict[str, bool]) -> list[str]:
    out = ["-O0", "-g"] if flags["debug"] else ["-O3"]
    if flags["werror"]:
        out.append("-Werror")
    if flags["sanitize"]:
        out += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    return out


def compile_emulated(root: Path, out_dir: Path, flags: dict[str, bool], force: bool = False) -> list[str]:
    """Compiles every csrc/cuda/*.cu as host C++ with DFC_CUDA_EMULATE (those whose object is out of date);
    returns the object paths for _C."""
    cxx = os.environ.get("CXX", "g++")
    out_dir.mkdir(parents=True, exist_ok=True)
    common = [
        cxx,
        "-x",
        "c++",
        "-std=c++20",
        "-DDFC_CUDA_EMULATE",
        "-fPIC",
        "-fopenmp",
        "-fvisibility=hidden",
        "-fno-exceptions",
        "-fno-rtti",
        "-Wall",
        "-Wextra",
        f"-I{root / 'csrc'}",
    ] + _host_flags(flags)
    headers = _headers(root)
    jobs, objects = [], []
    for src in cu_sources(root):
        obj = out_dir / (src.stem + ".o")
        objects.append(str(obj))
        if not _up_to_date(obj, [src, *headers], force):
            jobs.append(common + ["-c", str(src), "-o", str(obj)])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_run, jobs))
    return objects


def _wheel_dirs() -> tuple[list[str], list[str]]:
    """(include dirs, library dirs) of the cuDNN and cuBLAS wheels visible to this interpreter, or $DIFFICE_CUDA_LIBS
    (a colon-separated list of roots, each with include/ and lib/)."""
    roots: list[Path] = []
    if os.environ.get("DIFFICE_CUDA_LIBS"):
        roots = [Path(p) for p in os.environ["DIFFICE_CUDA_LIBS"].split(":") if p]
    else:
        for entry in sys.path:
            nvidia = Path(entry) / "nvidia"
            for name in ("cudnn", "cu13", "cublas"):
                if (nvidia / name / "include").is_dir():
                    roots.append(nvidia / name)
    includes = [str(r / "include") for r in roots if (r / "include").is_dir()]
    libs = [str(r / "lib") for r in roots if (r / "lib").is_dir()]
    return includes, libs


def _find(dirs: list[str], name: str) -> bool:
    return any((Path(d) / name).exists() for d in dirs)


def build_plugin(root: Path, out_dir: Path, target: Path, flags: dict[str, bool], force: bool = False) -> None:
    """nvcc-compiles csrc/cuda into target (libdiffice_cuda.so), linking the CUDA runtime statically and cuBLAS and
    cuDNN from their wheels (found at run time through the rpath, or preloaded by diffice/_native.py)."""
    if _up_to_date(target, [*cu_sources(root), *_headers(root), *(root / src for src in PLUGIN_C_SOURCES)], force):
        return  # nvcc is the slow part of a rebuild
    includes, libs = _wheel_dirs()
    missing = [h for h in ("cudnn.h", "cublas_v2.h") if not _find(includes, h)]
    if missing:
        sys.exit(
            f"diffice: nvcc was found but not {', '.join(missing)}: install the CUDA library wheels "
            f"(pip install {' '.join(repr(w) for w in CUDA_WHEELS)}) or set DIFFICE_CUDA_LIBS, or build without "
            "the CUDA plugin with DIFFICE_CUDA=0"
        )
    archs = [a.strip() for a in os.environ.get("DIFFICE_CUDA_ARCHS", "80;90").split(";") if a.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    host = _host_flags(flags)
    nvcc = [
        "nvcc",
        "-std=c++20",
        "--extended-lambda",
        "-O3",
        # no contraction of a * b + c into one fused multiply-add: the kernels round as the host code they are
        # tested against (bit-equal results where the tests ask for them: the optimizer, EMA, resize backward)
        "-fmad=false",
        "-Xcompiler",
        ",".join(["-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"] + host),
        f"-I{root / 'csrc'}",
    ] + [f"-I{d}" for d in includes]
    if flags["werror"]:
        nvcc += ["-Werror", "all-warnings"]
    for arch in archs:
        nvcc += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if archs:  # PTX of the newest as well, which the driver compiles for GPUs newer than every listed one
        nvcc += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    jobs = []
    for src in cu_sources(root):
        obj = out_dir / (src.stem + ".o")
        jobs.append((nvcc + ["-c", str(src), "-o", str(obj)], obj))
    cc = os.environ.get("CC", "gcc")
    for src in PLUGIN_C_SOURCES:
        obj = out_dir / (Path(src).stem + "_c.o")
        jobs.append(
            (
                [cc, "-std=c11", "-fPIC", "-Wall", "-Wextra", "-fvisibility=hidden", f"-I{root / 'csrc'}"]
                + host
                + ["-c", str(root / src), "-o", str(obj)],
                obj,
            )
        )
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda job: _run(job[0]), jobs))
    rpath = "$ORIGIN/../nvidia/cudnn/lib:$ORIGIN/../nvidia/cu13/lib:$ORIGIN/../nvidia/cublas/lib"
    link = ["nvcc", "-shared", "-o", str(target)] + [str(obj) for _, obj in jobs]
    link += [f"-L{d}" for d in libs]
    link += [
        "-cudart",
        "static",
        "-l:libcudnn.so.9",
        "-l:libcublas.so.13",
        "-l:libcublasLt.so.13",
        "-Xlinker",
        f"-rpath,{rpath}",
        "-Xlinker",
        "--no-undefined",  # a symbol the plugin lacks fails here, not at dlopen on the GPU machine
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(link)

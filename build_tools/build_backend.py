"""setuptools' PEP 517 backend, plus the cuDNN and cuBLAS wheels as build requirements where the CUDA plugin will
be built (nvcc on PATH, DIFFICE_CUDA not "0"): their headers are needed to compile it, and a CPU-only build never
downloads them."""

from __future__ import annotations

from typing import Any

import cuda_build
from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks this module does not change)


def _cuda_requires() -> list[str]:
    return list(cuda_build.CUDA_WHEELS) if cuda_build.want_cuda() else []


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _setuptools.get_requires_for_build_wheel(config_settings) + _cuda_requires()


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _setuptools.get_requires_for_build_editable(config_settings) + _cuda_requires()

"""Fuzzing the C file readers (issue 9).

- The seed corpus (tests/fuzz/corpus: valid files made with numpy/torch/safetensors, truncated and bit-flipped
  copies, headers claiming a terabyte) goes through diffice.io: each file loads or raises ValueError naming it.
- Each libFuzzer harness (tests/fuzz/fuzz_*.c, ASan + UBSan) runs for a few seconds through tests/fuzz/run.sh when
  clang with libFuzzer is installed (.ci/run installs it); longer campaigns: `tests/fuzz/run.sh 3600`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import env_without_sanitizer_preload

import diffice.io as dio

FUZZ = Path(__file__).resolve().parent / "fuzz"
CORPUS = FUZZ / "corpus"
HARNESSES = ("safetensors", "npz", "torch", "pickle")
SECONDS_EACH = int(os.environ.get("DIFFICE_FUZZ_SECONDS", "7"))
LOADER = {"safetensors": dio.load_safetensors, "npz": dio.load_npz, "torch": dio.load_torch, "pickle": dio.load_weights}


def corpus_files(reader):
    return sorted((CORPUS / reader).iterdir())


def test_corpus_is_present():
    for h in HARNESSES:
        files = corpus_files(h)
        assert len(files) >= 8, f"tests/fuzz/corpus/{h} has {len(files)} files"
        assert all(f.stat().st_size <= 64 * 1024 for f in files)
    # both valid seeds and corrupted ones
    assert any(".trunc" in f.name for f in corpus_files("safetensors"))
    assert any(f.name.startswith("huge") for f in corpus_files("npz"))


@pytest.mark.parametrize("reader", HARNESSES)
def test_corpus_through_python_loaders(reader):
    """Every seed either loads or raises ValueError whose message starts with the path; the terabyte claims are
    refused, the evil pickle is refused by name."""
    loaded = refused = 0
    for f in corpus_files(reader):
        for load in (LOADER[reader], dio.load_weights):
            try:
                out = load(f)
            except ValueError as exc:
                assert str(exc).startswith(str(f)), f"{f.name}: message does not name the file: {exc}"
                refused += 1
                if f.name.startswith("evil"):
                    assert "os" in str(exc) and "system" in str(exc), str(exc)
                continue
            assert not f.name.startswith(("huge", "evil", "deep")), f"{f.name} loaded"
            assert isinstance(out, dict)
            loaded += 1
    assert refused and (loaded or reader == "pickle")  # a bare data.pkl is no checkpoint


def _libfuzzer_available() -> str | None:
    """None when clang can build a libFuzzer + ASan binary here, else why not."""
    cc = os.environ.get("CC", "clang")
    if not shutil.which(cc):
        return f"{cc} not installed (apt-get install clang)"
    probe = subprocess.run(
        [cc, "-fsanitize=fuzzer,address,undefined", "-x", "c", "-", "-o", os.devnull],
        input="#include <stdint.h>\n#include <stddef.h>\n"
        "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n){(void)d;(void)n;return 0;}\n",
        capture_output=True,
        text=True,
        env=env_without_sanitizer_preload(),
    )
    if probe.returncode != 0:
        return f"{cc} cannot link libFuzzer: {probe.stderr.strip()[:200]}"
    if not Path("/usr/include/zlib.h").exists():
        return "zlib headers missing (apt-get install zlib1g-dev)"
    return None


@pytest.fixture(scope="module")
def fuzz_out(tmp_path_factory):
    """A fresh folder per test session; the reader objects are compiled once in it and shared by the harnesses."""
    why = _libfuzzer_available()
    if why:
        pytest.skip(why)
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("harness", HARNESSES)
def test_libfuzzer_harness(harness, fuzz_out):
    done = subprocess.run(
        [str(FUZZ / "run.sh"), str(SECONDS_EACH), harness],
        capture_output=True,
        text=True,
        env=env_without_sanitizer_preload(FUZZ_OUT=str(fuzz_out)),
        timeout=SECONDS_EACH + 600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"fuzz_{harness}" in done.stdout and "ok:" in done.stdout, done.stdout

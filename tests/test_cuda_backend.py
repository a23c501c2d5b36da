"""The CUDA backend (csrc/cuda): its kernels through the "cuda_emulated" backend (the same sources compiled for the
host, so every machine tests their arithmetic, indexing, argument checks and the binder's staging through backend
memory), the "cuda" loader's errors where no GPU is present, and the GPU itself where one is (skipped otherwise).

Each op runs on cuda_emulated and on the fast CPU backend with the same fresh random inputs at odd sizes; fp32
results agree to ~1e-5 relative (the kernels follow the reference kernels' operation order where they can)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import randn, rel_err

import diffice
from diffice import ops

EMU = "cuda_emulated"


def _both(fn, *args, **kwargs):
    return fn(*args, backend="cpu", **kwargs), fn(*args, backend=EMU, **kwargs)


def test_registry_has_the_cuda_backends():
    assert "cuda_emulated" in ops.BACKENDS and "cuda" in ops.BACKENDS
    assert ops.BACKENDS[0] == "cpu"


@pytest.mark.parametrize("name", ["silu", "relu", "sigmoid"])
def test_activations(rng, name):
    x = randn(rng, 3, 5, 7, 9) * 4
    dy = randn(rng, 3, 5, 7, 9)
    a, b = _both(getattr(ops, name), x)
    assert rel_err(b, a) < 1e-6
    a, b = _both(getattr(ops, name + "_backward"), dy, x)
    assert rel_err(b, a) < 1e-6


def test_fill_and_scale(rng):
    like = randn(rng, 2, 3, 5)
    a, b = _both(ops.fill, like, -0.75)
    assert np.array_equal(a, b) and np.all(b == -0.75)
    x = randn(rng, 4, 7, 3)
    a, b = _both(ops.scale, x, 0.3)
    assert rel_err(b, a) < 1e-7 and rel_err(b, x * np.float32(0.3)) < 1e-7


def test_row_scale_and_axpy(rng):
    x, y = randn(rng, 3, 5, 7, 9), randn(rng, 3, 5, 7, 9)
    alpha = randn(rng, 3)
    a, b = _both(ops.row_scale, x, alpha)
    assert rel_err(b, a) == 0.0
    a, b = _both(ops.row_axpy, alpha, x, y)
    assert rel_err(b, a) < 1e-7
    expected = y.astype(np.float64) + alpha.astype(np.float64)[:, None, None, None] * x
    assert rel_err(b, expected) < 1e-6


def test_argument_errors_match_the_cpu_backend(rng):
    """The same bad input gets the same message on both backends: the binder's (a per-row vector's length) and the
    op's own check (a broadcast), which the CUDA kernels share with the reference kernels."""
    x = randn(rng, 3, 4)
    calls = [
        lambda backend: ops.row_scale(x, randn(rng, 2), backend=backend),
        lambda backend: ops.add(randn(rng, 2, 3, 4, 5), randn(rng, 2, 2, 1, 1), backend=backend),
    ]
    for call in calls:
        messages = []
        for backend in ("cpu", EMU):
            with pytest.raises(ValueError) as info:
                call(backend)
            messages.append(str(info.value))
        assert messages[0] == messages[1]
    assert messages[1].startswith("add: b with shape (2, 2, 1, 1) cannot be broadcast")


def test_cuda_backend_names():
    with pytest.raises(ValueError, match="cuda:N"):
        ops.get_backend("cuda:x")
    with pytest.raises(ValueError, match="cuda:N"):
        ops.get_backend("cpu:1")
    with pytest.raises(ValueError, match="the cpu backend has no devices"):
        diffice._C.Backend("cpu:1", 1)  # the C registry refuses it too, not only the Python check
    with pytest.raises(ValueError, match="device 3 does not exist"):
        diffice._C.Backend("cuda:3", 1) if diffice.cuda_available() else diffice._C.Backend("cuda_emulated:3", 1)


def test_device_count():
    """diffice.cuda_device_count(): the GPUs a "cuda:N" may name, 0 where none can run (no plugin, driver or
    device), without creating a backend; the host backends count their one CPU."""
    count = diffice.cuda_device_count()
    assert (count >= 1) == diffice.cuda_available()
    assert diffice._C.device_count("cpu") == diffice._C.device_count("ref") == diffice._C.device_count(EMU) == 1
    with pytest.raises(ValueError, match="device_count: unknown backend 'gpu'"):
        diffice._C.device_count("gpu")
    if count:  # the next number is the first that does not exist
        with pytest.raises(ValueError, match=f"device {count} does not exist"):
            diffice._C.Backend(f"cuda:{count}", 1)


def test_precision_is_offered_by_the_gpu_backends_only():
    """precision="tf32" (TF32 tensor cores for convolutions and GEMMs) and "bf16" (bf16 operands, fp32 sums) exist on
    "cuda" and its emulation; the host backends compute in fp32 and refuse both, naming what they offer."""
    assert ops.get_backend("cpu").precision == "fp32"
    tf32 = ops.get_backend(EMU, precision="tf32")
    assert tf32.precision == "tf32" and tf32 is not ops.get_backend(EMU) and "precision='tf32'" in repr(tf32)
    assert ops.get_backend(EMU, precision="tf32") is tf32  # cached per (name, threads, precision)
    for name in ("cpu", "ref"):
        refused = f"the {name} backend does not offer precision 'tf32' \\(it offers 'fp32'\\)"
        with pytest.raises(ValueError, match=refused):
            ops.get_backend(name, precision="tf32")
    assert ops.get_backend(EMU, precision="bf16").precision == "bf16"
    refused = "the cpu backend does not offer precision 'bf16' \\(it offers 'fp32'\\)"
    with pytest.raises(ValueError, match=refused):
        ops.get_backend("cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ops.get_backend("cpu", precision="fp16")
    with pytest.raises(ValueError, match="Backend: precision must be 'fp32', 'tf32' or 'bf16', got 'half'"):
        diffice._C.Backend("cpu", 1, "half")
    if diffice.cuda_available():
        assert ops.get_backend("cuda", precision="tf32").precision == "tf32"


def test_cuda_without_a_gpu_says_why():
    if diffice.cuda_available():
        pytest.skip("a GPU is present: the error path is not reachable")
    with pytest.raises(NotImplementedError) as info:  # whatever is missing: the plugin, a library or the GPU
        ops.get_backend("cuda")
    message = str(info.value)
    assert message.startswith("cuda: ")
    built = (Path(diffice._C.__file__).parent / "libdiffice_cuda.so").exists()
    assert diffice.build_info()["cuda"] == ("built" if built else "not built")
    if built:
        assert "no CUDA device" in message or "cannot load the CUDA plugin" in message
    else:
        assert "built without CUDA" in message


def test_strict_emulation_refuses_host_tensors():
    """An op handed a host array on the emulated GPU (conftest sets DIFFICE_CUDA_EMULATE_STRICT=1 for the suite):
    an error naming the op, where a GPU would read a host pointer; the same call on a host backend works."""
    x = np.zeros((2, 3), np.float32)
    diffice._C.fill_unstaged(ops.get_backend("cpu"), x, 2.0)
    assert (x == 2).all()
    with pytest.raises(ValueError, match="fill: tensor argument 2 is not in the backend's memory"):
        diffice._C.fill_unstaged(ops.get_backend(EMU), x, 3.0)
    assert (x == 2).all()

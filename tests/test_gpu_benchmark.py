"""benchmarks/gpu.py runs the PyTorch eager sampler on a GPU, which CI does not have. What can break it unseen is a
tensor created without a device (it lands on the CPU and the GPU run stops with a device mismatch). With the
default device set to 'meta', every such tensor lands on 'meta' instead, and mixing it with the CPU inputs fails
here the same way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("method", ["diff-ice", "xt", "dime"])
def test_torch_sampler_creates_every_tensor_on_the_inputs_device(method):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
        from torch_sampler import TorchDiffusion, explain
    finally:
        sys.path.remove(str(BENCHMARKS))
    unet, clf, perceptual = gpu.build_torch("small", "cpu")
    diffusion = TorchDiffusion(1000, 400, device="cpu")
    x = torch.rand((2, 1) + gpu.CONFIGS["small"]["size"]) * 2 - 1
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        out = explain(unet, diffusion, clf, perceptual, x, 1, iterations=1, tau=2, lambdas=(60.0,), method=method)
    finally:
        torch.set_default_device(previous)
    assert out[-1].device.type == "cpu" and out[-1].shape == x.shape and torch.isfinite(out[-1]).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_diffice_rows_run_on_the_cuda_backend_code(precision):
    """benchmarks/gpu.py's diffice rows, at the small configuration on the emulated GPU (the CUDA kernels on the
    host, strict about memory): the code path the GPU run takes, short of the GPU."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    row = gpu.worker("diffice", "small", "diff-ice-1", 2, 3, precision, "cuda_emulated")
    assert "error" not in row and row["seconds"] > 0 and row["arena_gb"] > 0


def test_torch_bf16_rows_run_under_autocast():
    """The PyTorch bf16 row: the sampler under torch.autocast(bfloat16) (here on the CPU) gives finite images."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    row = gpu.worker("torch", "small", "diff-ice-1", 2, 2, "bf16", "cpu")
    assert "error" not in row and row["seconds"] > 0


def test_precision_benchmark_runs_on_the_cuda_backend_code():
    """benchmarks/precision.py (tf32 and bf16 vs fp32, the README's deviation figures) on the emulated GPU, whose fp32
    products are exact in tf32 mode too: the same counterfactuals, so tf32's deviation is 0; bf16's operands are
    rounded, so its deviation is not."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import precision
    finally:
        sys.path.remove(str(BENCHMARKS))
    tf32, bf16 = precision.deviation("small", "cuda_emulated", 2, 1)
    assert tf32["precision"] == "tf32" and bf16["precision"] == "bf16"
    assert tf32["max_abs"] == tf32["rel_to_change"] == tf32["prob_max_abs"] == 0.0
    assert tf32["flipped_fp32"] == tf32["flipped"]
    assert 0.0 < bf16["max_abs"] and 0.0 < bf16["rel_to_change"] < 1.0

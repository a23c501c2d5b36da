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


def test_diffice_rows_run_on_the_cuda_backend_code():
    """benchmarks/gpu.py's diffice rows, at the small configuration on the emulated GPU (the CUDA kernels on the
    host, strict about memory): the code path the GPU run takes, short of the GPU."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu
    finally:
        sys.path.remove(str(BENCHMARKS))
    row = gpu.diffice_worker("small", "diff-ice-1", 2, 3, "cuda_emulated")
    assert "error" not in row and row["seconds"] > 0 and row["arena_gb"] > 0


def test_precision_benchmark_runs_on_the_cuda_backend_code():
    """benchmarks/precision.py (tf32 vs fp32, the README's deviation figures) on the emulated GPU, whose products
    are exact in both modes: the same counterfactuals, so every deviation is 0."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import precision
    finally:
        sys.path.remove(str(BENCHMARKS))
    row = precision.deviation("small", "cuda_emulated", 2, 1)
    assert row["max_abs"] == row["rel_to_change"] == row["prob_max_abs"] == 0.0
    assert row["flipped_fp32"] == row["flipped_tf32"]

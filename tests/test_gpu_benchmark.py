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

"""Shared test helpers: fresh random inputs, relative error against float64 references, the shared/ folder."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

# Before torch: the torch wheel's libgomp.so.1 is the one diffice then runs on, and libgomp reads its wait policy
# once, when it loads, so diffice's own default would come too late (README, "Threads"). PASSIVE, not diffice's
# short spin: the suite shares the cores with the Dask workers and CLI processes it starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The CUDA kernels' host build ("cuda_emulated") in its strict form: backend memory is inaccessible outside the
# backend's own functions and every tensor an op gets must be backend memory, so what would touch a host pointer
# on a GPU (or a device pointer on the host) fails here (csrc/cuda/backend.cu).
os.environ.setdefault("DIFFICE_CUDA_EMULATE_STRICT", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402  test-only reference; .ci/run installs the CPU wheel

import diffice  # noqa: E402

torch.set_num_threads(2)

SHARED = Path(os.environ.get("DIFFICE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


# The smallest real models the sampler tests share: a 2-level UNet and a plane classifier (segmenter + SonoNet-4).
TINY_UNET_CONFIG = dict(
    in_channels=1,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 1),
    attention_resolutions=(),
    learn_sigma=True,
    num_heads=1,
)


def tiny_unet():
    from diffice import UNet

    return UNet.random(TINY_UNET_CONFIG, seed=4)


def tiny_plane_classifier():
    from diffice import PlaneClassifier, Segmenter, SonoNet

    seg = Segmenter(classes=3, width=8, levels=2, groups=4)
    seg._randomize(1)
    return PlaneClassifier(seg, SonoNet.random(k=4, in_channels=4, num_classes=2, seed=2))


def write_tiny_models(folder: Path) -> Path:
    """tiny_unet() and tiny_plane_classifier() as folder/ddpm.safetensors and folder/f.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_unet().save(folder / "ddpm.safetensors")
    tiny_plane_classifier().save(folder / "f.safetensors")
    return folder


def write_sononet_authors_npz(net, path: Path) -> Path:
    """A SonoNet's weights in the SonoNet authors' .npz layout (arr_0 ... arr_74: per conv its weight, the BN's
    beta, gamma, mean and 1 / sqrt(var + 1e-4)), the file a researcher has without diffice's description."""
    from diffice.models.sononet import _conv_names

    sd = net.state_dict()
    arrays = []
    for conv, bn in _conv_names():
        var = sd[f"{bn}.running_var"].astype(np.float64)
        arrays += [sd[f"{conv}.weight"], sd[f"{bn}.bias"], sd[f"{bn}.weight"], sd[f"{bn}.running_mean"]]
        arrays.append((1.0 / np.sqrt(var + 1e-4)).astype(np.float32))
    np.savez(path, *arrays)
    return path


def read_first_line_and_close(script: str) -> tuple[int, bytes]:
    """Runs `python -c script`, reads the first line of its output and closes the pipe, as `... | head -1` does:
    (its exit status, its stderr). The script is expected to print lines starting "line 0 ", "line 1 ", ..."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"line 0 ")
    proc.stdout.close()
    status = proc.wait(timeout=60)
    err = proc.stderr.read()
    proc.stderr.close()
    return status, err


def interrupt_training_step(monkeypatch, module, step: int = 2):
    """Makes `module.clip_grad_norm` (called once per training step) send SIGINT to this process on its step-th
    call, as Ctrl-C during that step. Returns the original, to put back with monkeypatch.setattr."""
    import signal

    calls, clip = [], module.clip_grad_norm

    def clip_and_interrupt(grads, max_norm=0.0, num_threads=0):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return clip(grads, max_norm, num_threads)

    monkeypatch.setattr(module, "clip_grad_norm", clip_and_interrupt)
    return clip


def env_without_sanitizer_preload(**extra: str) -> dict:
    """os.environ for programs that are not Python: without the gcc libasan that the sanitized suite preloads
    (README, Build options). Programs with their own sanitizer runtime (the clang-built fuzz harnesses) or with a
    fixed memory layout (chromedriver) abort under it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    env.update(extra)
    return env


def rel_err(got: np.ndarray, want) -> float:
    """max |got - want| / max |want|: the error relative to the scale of the reference (fp32 supports ~1e-6)."""
    want = want.detach().cpu().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference shape {want.shape}"
    scale = max(np.abs(want).max(), 1e-30)
    return float(np.abs(got - want).max() / scale)


# Fresh random inputs every run; DIFFICE_TEST_SEED=<n> replays a failing run (the seed is in pytest's header, and
# after the failures where -q hides the header).
RUN_SEED = int(os.environ.get("DIFFICE_TEST_SEED", np.random.SeedSequence().entropy % (2**31)))


def pytest_report_header(config):
    return f"diffice test seed: DIFFICE_TEST_SEED={RUN_SEED}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # pytest -q (CI, the README) hides the header: say the seed again where a failure is reported
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        terminalreporter.write_line(f"diffice test seed: DIFFICE_TEST_SEED={RUN_SEED} replays this run's inputs")


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the run seed and the test's id: fresh per run, reproducible with the seed."""
    return np.random.default_rng([RUN_SEED, zlib.crc32(request.node.nodeid.encode())])


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    """A float64 torch copy of a, for references computed in double precision."""
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def autograd_saved_bytes(model: torch.nn.Module, x: np.ndarray) -> int:
    """Bytes of the activations PyTorch's autograd saves for the backward of model(x) with respect to x (float32,
    weights frozen; the weights themselves not counted): the yardstick for a network's taped memory."""
    model = model.float()
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.from_numpy(x).requires_grad_(True))
    return sum(saved.values())


BACKENDS = ["ref", "cpu"]
# plus the CUDA kernels built for the host (csrc/cuda as "cuda_emulated"), and the GPU itself where there is one: the
# op tests of each family whose CUDA kernels exist run on them too
ALL_BACKENDS = BACKENDS + ["cuda_emulated"] + (["cuda"] if diffice.cuda_available() else [])


def torch_class_probabilities(logits) -> np.ndarray:
    """The probability convention in torch, float64: softmax for C >= 2; for one logit l the two classes'
    (1 - sigmoid(l), sigmoid(l))."""
    z = torch.tensor(np.asarray(logits, np.float64))
    if z.shape[1] == 1:
        s = torch.sigmoid(z)
        return torch.cat([1 - s, s], dim=1).numpy()
    return torch.softmax(z, dim=1).numpy()

"""One memory budget per host backend: every arena chunk and op scratch buffer (the oneDNN workspace, attention's
weights) counts against Backend.memory_limit, so an image or batch too large for the machine raises MemoryError
instead of meeting the kernel's out-of-memory handler (a 4096x4096 explain once filled a 24 GB machine)."""

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import diffice
from diffice import _C
from diffice.cli import main
from diffice.data.images import save_png
from diffice.ops import get_backend

GIB = 2**30


def expected_default_limit() -> int:
    """The rule, read independently: 90% of the physical memory, or of the lowest memory limit of this process's
    cgroup and the cgroups above it (v2 memory.max, v1 memory.limit_in_bytes) where that is lower."""
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    physical = pages // 10 * 9 * page
    limits = []
    with open("/proc/self/cgroup") as f:
        for line in f.read().splitlines():
            _, controllers, path = line.split(":", 2)
            if not controllers:
                root, name = "/sys/fs/cgroup", "memory.max"
            elif "memory" in controllers.split(","):
                root, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
            else:
                continue
            parts = [p for p in path.split("/") if p]
            for k in range(len(parts), -1, -1):
                try:
                    text = open(os.path.join(root, *parts[:k], name)).read().strip()
                except OSError:
                    continue
                if text.isdigit() and int(text) > 0:
                    limits.append(int(text))
    cgroup = min(limits) // 10 * 9 if limits else physical
    return min(cgroup, physical)


def available_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    pytest.skip("/proc/meminfo has no MemAvailable")


@pytest.fixture
def cpu_backend_limit():
    """Sets the memory limit of this thread's cached cpu backend (what the Explainer and the CLI use) for one test."""
    be = get_backend("cpu")
    saved = be.memory_limit
    yield be
    be.memory_limit = saved


def test_the_default_limit_is_90_percent_of_physical_or_cgroup_memory():
    assert _C.default_memory_limit() == expected_default_limit() > 0
    for name in ("ref", "cpu", "cuda_emulated"):
        be = _C.Backend(name, 1)
        assert be.memory_limit == _C.default_memory_limit(), name
        assert be.memory_held == 0, name


def test_a_cgroup_memory_limit_lowers_the_default():
    """In a cgroup with a 3 GiB limit (as a container or a SLURM job runs) the default is 90% of 3 GiB: made here
    as root (v1 or v2 memory controller); skipped where the cgroup file system cannot be written."""
    group = None
    for root, limit_file in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes"), ("/sys/fs/cgroup", "memory.max")):
        path = os.path.join(root, f"diffice-test-{os.getpid()}")
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(3 << 30))
        except OSError:
            os.rmdir(path)
            continue
        group = path
        break
    if group is None:
        pytest.skip("no writable cgroup memory controller here (needs root)")
    try:
        code = "from diffice import _C; print(_C.default_memory_limit(), _C.Backend('cpu', 1).memory_limit)"
        script = f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1"'
        run = subprocess.run(["sh", "-c", script, sys.executable, code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [str((3 << 30) // 10 * 9)] * 2
    finally:
        os.rmdir(group)  # empty again: the process has exited


def test_memory_limit_takes_a_number_of_bytes():
    be = _C.Backend("cpu", 1)
    be.memory_limit = 123 << 20
    assert be.memory_limit == 123 << 20
    be.memory_limit = 0  # no limit
    assert be.memory_limit == 0
    with pytest.raises(ValueError, match=r"memory_limit must be a number of bytes >= 0"):
        be.memory_limit = -1
    with pytest.raises(TypeError, match=r"memory_limit must be an int .* got float"):
        be.memory_limit = 1.5
    with pytest.raises(TypeError, match=r"got bool"):
        be.memory_limit = True
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del be.memory_limit
    with pytest.raises(AttributeError):
        be.memory_held = 0  # read only


def test_attention_weights_count_while_the_op_runs_and_are_given_back():
    rng = np.random.default_rng()
    be = _C.Backend("cpu", 1)
    T = 37 * 41
    qkv = rng.standard_normal((2, 3 * 6, T)).astype(np.float32)  # 3 heads of 2 channels
    y = _C.attention_forward(be, qkv, 3, True)
    # after the op only the oneDNN workspace (kept by the backend for the next op) is held: the weights are back
    assert be.memory_held == _C.onednn_workspace_bytes(be)
    weights = 3 * T * T * 4
    be.memory_limit = be.memory_held + weights - 1  # one byte short of one sample's weights
    with pytest.raises(MemoryError, match=r"attention: the attention weights: .* MiB more would pass the cpu "):
        _C.attention_forward(be, qkv, 3, True)
    with pytest.raises(MemoryError, match=r"attention_backward: the attention weights"):
        _C.attention_backward(be, y, qkv, 3, True)
    be.memory_limit = be.memory_held + 2 * weights  # the backward takes P and dP
    np.testing.assert_array_equal(_C.attention_forward(be, qkv, 3, True), y)
    _C.attention_backward(be, y, qkv, 3, True)
    assert be.memory_held == _C.onednn_workspace_bytes(be)


def test_a_buffer_larger_than_the_memory_available_is_refused_before_it_is_touched():
    be = _C.Backend("cpu", 1)
    T = int(np.sqrt(2 * available_memory() / 4)) + 1  # one head's T x T weights: twice the available memory
    qkv = np.zeros((1, 3, T), np.float32)
    with pytest.raises(MemoryError, match=r"would pass the cpu backend's memory limit of .* GiB \(.* held by its "):
        _C.attention_forward(be, qkv, 1, True)
    be.memory_limit = 2**62  # past any machine: the memory available now still refuses it
    with pytest.raises(MemoryError, match=r"GiB more, but the machine has only .* GiB available now"):
        _C.attention_forward(be, qkv, 1, True)
    assert be.memory_held == _C.onednn_workspace_bytes(be)


def test_a_network_too_large_for_the_limit_raises_and_runs_once_the_limit_allows(cpu_backend_limit):
    rng = np.random.default_rng()
    models = diffice.load_demo_models()
    x = rng.uniform(-1, 1, (3, 1, 128, 160)).astype(np.float32)
    t = np.full(3, 10)
    expected = models.unet.forward(x, t)
    be = cpu_backend_limit
    unet = diffice.load_demo_models().unet  # a network of its own: arenas not grown yet
    be.memory_limit = be.memory_held + (16 << 20)
    with pytest.raises(
        MemoryError, match=r"arena: .* more would pass the cpu backend's memory limit of [\d.]+ [MG]iB \("
    ):
        unet.forward(x, t)
    be.memory_limit = expected_default_limit()
    np.testing.assert_array_equal(unet.forward(x, t), expected)
    # a network's arenas are given back with it; the backend keeps only its oneDNN workspace between calls
    held_but_workspace = be.memory_held - _C.onednn_workspace_bytes(be)
    del unet
    gc.collect()
    assert be.memory_held - _C.onednn_workspace_bytes(be) < held_but_workspace


def test_explain_past_the_limit_is_a_one_line_error(tmp_path, capsys, cpu_backend_limit):
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "a.png", np.zeros((512, 640), np.float32))
    be = cpu_backend_limit
    be.memory_limit = be.memory_held + (64 << 20)
    code = main(["explain", "--models", "demo", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--image-size", "512", "640", "--iterations", "1", "--tau", "2", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "diffice explain: error: " in err and "would pass the cpu backend's memory limit of" in err
    assert "a smaller batch or image size needs less" in err and "Traceback" not in err

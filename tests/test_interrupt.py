"""`diffice explain` as a real process: SIGKILL mid-run leaves nothing corrupt and loses nothing finished;
SIGINT (Ctrl-C) stops within a sampler step and exits 130 with the finished work saved."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_models
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
H, W = 16, 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("models"))


def write_run(tmp_path: Path, model_dir: Path, n_images: int, tau: int, iterations: int) -> list:
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (H, W), dtype=np.uint8)).save(images / f"img{i:02d}.png")
    (tmp_path / "run.toml").write_text(f"""
[models]
unet = "{model_dir / "ddpm.safetensors"}"
num_heads = 1
classifier = "{model_dir / "f.safetensors"}"
classifier_kind = "plane"
[diffusion]
respacing = "400"
[method]
iterations = {iterations}
tau = {tau}
lambda_c = [10, 20]
lambda_p = 0.0
[run]
image_size = [{H}, {W}]
batch_size = 1
""")
    return [
        sys.executable,
        "-m",
        "diffice",
        "explain",
        "--config",
        str(tmp_path / "run.toml"),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]


def start(cmd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    # SIGINT back to its default: a test runner started as a background job inherits it ignored, and Python then
    # installs no KeyboardInterrupt handler (as a user's `nohup diffice explain &` intends)
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_records(out: Path, count: int, proc, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "records").glob("*.json"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no progress")


def check_outputs_intact(out: Path) -> dict:
    """Every output file parses completely; returns {record stem: bytes of its files} for finished images."""
    finished = {}
    for record in sorted((out / "records").glob("*.json")):
        data = json.loads(record.read_text())  # a half-written record would not parse
        assert data["image"] == record.stem + ".png" and len(data["iterations"]) == 3
        files = {}
        for name in ("input.png", "iteration_1.png", "iteration_2.png", "strip.png"):
            p = out / record.stem / name
            with Image.open(p) as img:  # a finished image has all its PNGs, each complete
                img.load()
            files[name] = p.read_bytes()
        finished[record.stem] = files
    for png in out.glob("*/*.png"):  # PNGs of an unfinished image are whole too (written atomically)
        with Image.open(png) as img:
            img.load()
    if (out / "results.csv").exists():
        rows = list(csv.DictReader(open(out / "results.csv")))
        assert {r["image"] for r in rows} <= {s + ".png" for s in finished}
    return finished


def test_sigkill_mid_run_loses_nothing_finished(tmp_path, model_dir):
    cmd = write_run(tmp_path, model_dir, n_images=12, tau=6, iterations=2)
    out = tmp_path / "out"
    killed_at = []
    for kill_after in (2, 5):  # kill twice, at different points, then let it finish
        proc = start(cmd)
        try:
            wait_for_records(out, kill_after, proc)
        except BaseException:
            proc.kill()
            raise
        time.sleep(0.07 * kill_after)  # somewhere inside the next image
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        finished = check_outputs_intact(out)
        killed_at.append(finished)
        if len(killed_at) == 2:  # the second run kept what the first finished, byte for byte
            for stem, files in killed_at[0].items():
                assert finished[stem] == files
    assert len(killed_at[-1]) < 12, "the run finished before it was killed; nothing was tested"
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    assert done.returncode == 0, done.stderr[-2000:]
    final = check_outputs_intact(out)
    assert sorted(final) == [f"img{i:02d}" for i in range(12)]
    for stem, files in killed_at[-1].items():  # nothing finished was redone
        assert final[stem] == files
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 12 * 3
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_sigint_stops_within_a_step(tmp_path, model_dir):
    # 400 respaced steps, tau = 399, 3 iterations: a run of minutes; a step takes milliseconds
    cmd = write_run(tmp_path, model_dir, n_images=3, tau=399, iterations=3)
    proc = start(cmd)
    out = tmp_path / "out"
    try:
        deadline = time.monotonic() + 120
        while not (out / "records").exists() and time.monotonic() < deadline:  # the run has started
            time.sleep(0.05)
        time.sleep(3.0)  # inside the sampler
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    # a reverse step of this UNet takes milliseconds and the whole run minutes; the bound leaves room for the
    # interpreter's exit on a loaded machine or under ASan (typically under 1 s)
    assert elapsed < 20.0, f"took {elapsed:.1f} s to stop after SIGINT"
    assert not list(out.rglob("*.tmp"))
    check_outputs_intact(out)

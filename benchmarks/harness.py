"""What every network benchmark shares: each measurement runs in a fresh process (its own peak RSS, its own
thread count), the median of several timed runs after a warm-up."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Callable


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(run: Callable[[], object], repeats: int) -> dict:
    """{"seconds": median of `repeats` timed calls after one warm-up (oneDNN kernel generation, first touch of
    memory), "peak_rss_mb": this process's peak RSS}."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return dict(seconds=times[len(times) // 2], peak_rss_mb=peak_rss_mb())


def in_subprocess(script: str, args: Sequence[object], threads: int) -> dict:
    """Runs `python script --worker *args` with OMP_NUM_THREADS=threads; its last stdout line is a JSON dict.
    A failed worker (e.g. killed for memory) gives {"error": "exit N: last line"}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, script, "--worker"] + [str(a) for a in args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["killed"]
        return dict(error=f"exit {done.returncode}: {tail[0][:160]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

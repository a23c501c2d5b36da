"""Dask scale-out (issue 10): a LocalCluster of 2 worker processes gives the local run's bytes, a worker killed
mid-run loses and corrupts nothing, `diffice explain` on a cluster, the clear message without Dask, the SLURM and PBS
job scripts (no SLURM here: dask-jobqueue's generated script is checked for the requested resources)."""

import builtins
import importlib.util
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_sweep import RESULT_ROWS, check_consistent, models_dir, reference, spec_for  # noqa: F401

from diffice.explain.cluster import DistributedUnavailable, LocalExecutor, make_cluster, open_executor, worker_device
from diffice.explain.sweep import SweepStore, run_sweep

distributed = pytest.importorskip(
    "distributed", reason="dask[distributed] is not installed (pip install 'diffice[distributed]')"
)


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, as `--cluster local:2` makes it."""
    executor = open_executor(cluster="local:2", options=dict(dashboard_address=":0"))
    executor.client.wait_for_workers(2, timeout=60)
    yield executor
    executor.close()


def test_a_local_cluster_leaves_the_environment_as_it_was():
    """Dask's nanny writes its workers' settings (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, ...) into the parent's
    os.environ; diffice puts it back, so later subprocesses (a notebook's `!diffice ...`) keep their threads and the
    phantoms keep their pixels (single-threaded OpenBLAS rounds their interpolation differently)."""
    before = dict(os.environ)
    executor = open_executor(cluster="local:1", options=dict(dashboard_address=":0"))
    try:
        executor.client.wait_for_workers(1, timeout=60)
        assert dict(os.environ) == before
    finally:
        executor.close()
    assert dict(os.environ) == before


def stored(spec):
    with SweepStore(spec.store_path) as store:
        return (
            store.counterfactual_blobs(),
            store.db.execute(RESULT_ROWS).fetchall(),
            {r[0] for r in store.db.execute("SELECT worker FROM units")},
        )


def test_local_cluster_gives_the_local_results(tmp_path, models_dir, reference, cluster):
    spec = spec_for(tmp_path, models_dir, name="dask")
    summary = run_sweep(spec, executor=cluster, progress=False)
    assert summary["ran"] == reference[1]["units"]
    blobs, rows, workers = stored(spec)
    assert blobs == reference[2] and rows == reference[3]
    assert len(workers) == 2  # both worker processes ran units
    check_consistent(spec.store_path)

    def models_loaded():
        from diffice.explain import cluster as c

        return len(c._MODELS), c._LOADS

    # each worker loaded the models once and reused them for all its units
    assert set(cluster.client.run(models_loaded).values()) == {(1, 1)}


def test_killed_worker_loses_and_corrupts_nothing(tmp_path, models_dir, reference, cluster):
    spec = spec_for(tmp_path, models_dir, name="killed")
    client = cluster.client
    killed = []

    def kill_a_busy_worker(done, total, executor):
        if killed:
            return
        processing = client.processing()
        busy = [w for w, keys in processing.items() if keys] or list(processing)
        pids = client.run(os.getpid)
        victim = busy[0]
        killed.append((victim, list(processing[victim])))
        os.kill(pids[victim], signal.SIGKILL)  # the nanny starts a fresh worker; Dask re-runs its unit

    run_sweep(spec, executor=cluster, progress=False, on_unit=kill_a_busy_worker)
    assert killed
    blobs, rows, _ = stored(spec)
    assert blobs == reference[2] and rows == reference[3]
    check_consistent(spec.store_path)
    client.wait_for_workers(2, timeout=60)


def test_explain_on_a_cluster_matches_local(tmp_path, models_dir, cluster, rng):
    from PIL import Image

    from diffice.explain.config import load_config
    from diffice.explain.run import run_explain

    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(tmp_path / "in" / f"img{i}.png")
    cfg = load_config(
        None,
        dict(
            unet=str(models_dir / "ddpm.safetensors"),
            num_heads=1,
            classifier=str(models_dir / "f.safetensors"),
            perceptual_kind="pixel-l2",
            respacing="10",
            image_size=[16, 24],
            batch_size=2,
            tau=3,
            iterations=2,
            lambda_c=[5.0, 50.0],
            lambda_p=1.0,
        ),
    )
    run_explain(cfg, tmp_path / "in", tmp_path / "local", progress=False)
    summary = run_explain(cfg, tmp_path / "in", tmp_path / "dask", progress=False, executor=cluster)
    assert summary["explained"] == 3
    for i in range(3):
        for name in ("iteration_1.png", "iteration_2.png", "input.png"):
            assert (tmp_path / "dask" / f"img{i}" / name).read_bytes() == (
                tmp_path / "local" / f"img{i}" / name
            ).read_bytes()
    assert (tmp_path / "dask" / "results.csv").read_text().count("\n") == 3 * 3 + 1


def test_each_worker_of_a_machine_takes_a_gpu_of_its_own(cluster):
    """`--device cuda` on a cluster: "cuda" becomes cuda:(k mod GPUs) on the machine's k-th worker (LocalCluster
    names 0..N-1, dask-jobqueue's processes "<job>-<process>"), so N workers share the GPUs out instead of all taking
    cuda:0; an explicit "cuda:N", the CPU and a process that is no worker keep what they were given."""
    assert [worker_device("cuda", k, gpus=2) for k in range(5)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda", "SLURMCluster-3-1", gpus=4) == "cuda:1"
    assert worker_device("cuda", "3", gpus=2) == "cuda:1"
    for name in ("SLURMCluster-3", "my-cluster-3", "tcp://10.0.0.2:4001", True):  # one process per job, by hand
        assert worker_device("cuda", name, gpus=4) == "cuda"
    assert worker_device("cuda", 1, gpus=0) == "cuda"  # no GPU: creating the backend says so
    assert worker_device("cuda:1", 0, gpus=2) == "cuda:1" and worker_device("cpu", 1, gpus=2) == "cpu"
    assert worker_device("cuda") == "cuda"  # this process is no Dask worker
    # the LocalCluster's own worker names, looked up on the workers
    got = executor_run(cluster, lambda: worker_device("cuda", gpus=2))
    assert sorted(got) == ["cuda:0", "cuda:1"]


def executor_run(executor, fn):
    """fn() as a task on each worker of the executor's cluster (get_worker() answers in a task): their results."""
    client = executor.client
    workers = list(client.scheduler_info()["workers"])
    return client.gather([client.submit(fn, pure=False, workers=[w]) for w in workers])


def test_without_dask_the_options_say_so(tmp_path, models_dir, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("dask", "distributed", "dask_jobqueue"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(DistributedUnavailable, match="pip install"):
        open_executor(cluster="local:2")
    with pytest.raises(DistributedUnavailable, match="pip install"):
        open_executor(scheduler="tcp://127.0.0.1:8786")
    assert isinstance(open_executor(), LocalExecutor)  # no option: this machine, as before
    from diffice.cli import main

    spec = spec_for(tmp_path, models_dir, name="nodask")
    path = tmp_path / "nodask.toml"
    for flags in (["--cluster", "local:2"], ["--scheduler", "tcp://127.0.0.1:1"]):
        assert main(["sweep", "--config", str(path), "--quiet"] + flags) == 2
        err = capsys.readouterr().err
        assert "need Dask, which is not installed" in err and "diffice[distributed]" in err
    assert main(["explain", "--images", str(tmp_path), "--out", str(tmp_path / "o"), "--cluster", "slurm"]) == 2
    assert "need Dask" in capsys.readouterr().err
    assert not spec.store_path.exists()


def needs_jobqueue() -> None:
    """Skips without dask-jobqueue; never imports it here (its import would set this process's SIGINT handler to
    sys.exit() for every later test: diffice imports it through import_jobqueue)."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        pytest.skip("dask-jobqueue is not installed")


def test_importing_dask_jobqueue_keeps_ctrl_c_a_keyboardinterrupt():
    """dask_jobqueue's runner module sets SIGINT to sys.exit() when imported: Ctrl-C of a --cluster slurm sweep ended
    with exit code 0 and no word of what was kept (and every later test saw SystemExit for SIGINT)."""
    needs_jobqueue()
    code = (
        "import signal, sys\n"
        "sys.modules.pop('dask_jobqueue.runner', None)\n"
        "from diffice.explain.cluster import import_jobqueue\n"
        "import_jobqueue()\n"
        "assert 'dask_jobqueue.runner' in sys.modules\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGINT)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slurm_and_pbs_job_scripts_request_the_resources():
    needs_jobqueue()
    options = dict(
        cores=8,
        memory="32GB",
        gpus=2,
        queue="gpu",
        account="proj42",
        walltime="02:30:00",
        job_script_prologue=["source ~/venv/bin/activate"],
        dashboard_address=":0",
    )
    cluster = make_cluster("slurm", options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in (
        "#SBATCH -p gpu",
        "#SBATCH -A proj42",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=30G",
        "#SBATCH -t 02:30:00",
        "#SBATCH --gres=gpu:2",
        "source ~/venv/bin/activate",
    ):
        assert line in script, (line, script)
    assert "--resources diffice_unit=1" in script and "--memory-limit 29.80GiB" in script
    cluster = make_cluster("pbs", dict(options, gpus=1))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in (
        "#PBS -q gpu",
        "#PBS -A proj42",
        "#PBS -l select=1:ncpus=8:mem=32GB:ngpus=1",
        "#PBS -l walltime=02:30:00",
    ):
        assert line in script, (line, script)
    with pytest.raises(ValueError, match="local:N, slurm or pbs"):
        make_cluster("sge", options)
    from diffice.explain.cluster import cluster_options

    with pytest.raises(ValueError, match="unknown keys in \\[cluster\\]"):
        cluster_options({"cluster": {"gpu": 1}})


def test_cli_sweep_on_a_local_cluster(tmp_path, models_dir, reference, capsys):
    """`diffice sweep --cluster local:2` end to end: dashboard line, the reference bytes, the tables."""
    from diffice.cli import main

    spec = spec_for(tmp_path, models_dir, name="cli", extra='[cluster]\ndashboard_address = ":0"\n')
    assert main(["sweep", "--config", str(tmp_path / "cli.toml"), "--cluster", "local:2"]) == 0
    captured = capsys.readouterr()
    assert "running on Dask scheduler tcp://" in captured.err and "dashboard: http" in captured.err
    assert "sweep [" in captured.err and "8/8" in captured.err  # one progress bar over the cluster
    assert "Table 1" in captured.out
    assert stored(spec)[:2] == tuple(reference[2:])


def _serve(reply: bytes):
    """A TCP server on a free local port that accepts connections, sends `reply` (if any) and then holds them open
    without a word more: what a service that is no Dask scheduler (a dashboard, a web server) looks like to Dask."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply:
                conn.sendall(reply)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.0 400 Bad request\r\n\r\n"], ids=["silent", "http"])
def test_a_scheduler_address_that_is_no_scheduler_fails_in_bounded_time(monkeypatch, reply):
    """--scheduler with the dashboard's port (or any service that is not a Dask scheduler) hung the Client forever
    (silent), or read the reply as a frame length ("Unable to allocate 3.07 EiB"): now one clear error in bounded
    time."""
    import threading
    import time

    from diffice.explain import cluster as c

    monkeypatch.setattr(c, "SCHEDULER_TIMEOUT", 2.0)
    server, held = _serve(reply)
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    outcome = {}

    def connect():
        try:
            outcome["executor"] = open_executor(scheduler=address)
        except BaseException as exc:
            outcome["error"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(20)
    try:
        assert not thread.is_alive(), f"open_executor(scheduler={address!r}) still waiting after 20 s"
        exc = outcome.get("error")
        assert isinstance(exc, c.SchedulerUnreachable) and isinstance(exc, OSError), outcome
        assert str(exc).startswith(f"--scheduler {address}: ") and "tcp://head-node:8786" in str(exc)
        assert "EiB" not in str(exc) or "not a Dask scheduler" in str(exc)
        assert time.monotonic() - t0 < 15
    finally:
        server.close()
        for conn in held:
            conn.close()


def test_a_worker_that_is_no_scheduler_is_named(cluster):
    worker = next(iter(cluster.client.scheduler_info()["workers"]))
    with pytest.raises(ConnectionError, match="a Dask Worker answers there, not a scheduler"):
        open_executor(scheduler=worker)


class _FakeClient:
    """A Dask client whose workers answer check_workers' probe with `answers` (an exception: it cannot import
    diffice); submitting anything is an error (nothing may be sent to such workers)."""

    def __init__(self, answers):
        self.answers = answers
        self.scheduler = type("S", (), {"address": "tcp://head-node:8786"})()
        self.dashboard_link = None

    def run(self, fn, *args, workers=None, on_error="raise"):
        assert on_error == "return"
        return {w: a for w, a in self.answers.items() if workers is None or w in workers}

    def ncores(self):
        return {w: 1 for w in self.answers}

    def scheduler_info(self):
        return dict(workers={w: {} for w in self.answers})

    def submit(self, *args, **kwargs):
        raise AssertionError("a unit was sent to workers that cannot import diffice")


def test_workers_without_diffice_are_named_before_any_unit_is_sent(cluster):
    """A worker whose environment lacks diffice died on the first unit sent to it (unpickling the task), and the
    client then waited forever for workers, saying nothing: the workers are now asked first."""
    from diffice import __version__
    from diffice.explain.cluster import DaskExecutor, WorkersLackDiffice, check_workers

    assert set(check_workers(cluster.client).values()) == {__version__}  # a real cluster's workers pass
    answers = {
        "tcp://10.0.0.7:40001": ModuleNotFoundError("No module named 'diffice'"),
        "tcp://10.0.0.8:40002": "0.1.0",
    }
    executor = DaskExecutor(_FakeClient(answers))
    with pytest.raises(WorkersLackDiffice) as caught:
        next(executor.run(iter([dict(unit="u0")])))
    text = str(caught.value)
    assert "1 of 2 Dask workers cannot import diffice (ModuleNotFoundError: No module named 'diffice')" in text
    assert "tcp://10.0.0.7:40001" in text and "tcp://10.0.0.8:40002" not in text and "job_script_prologue" in text
    assert isinstance(caught.value, DistributedUnavailable)  # the CLIs report it as one line, exit 2


def test_workers_with_another_diffice_version_are_named():
    """The install advice says "the same version as here", and a worker of another version would mix its results
    with this one's: such workers are named before any unit is sent."""
    from diffice import __version__
    from diffice.explain.cluster import DaskExecutor, WorkersLackDiffice

    answers = {"tcp://10.0.0.7:40001": "0.0.9", "tcp://10.0.0.8:40002": __version__}
    with pytest.raises(WorkersLackDiffice) as caught:
        next(DaskExecutor(_FakeClient(answers)).run(iter([dict(unit="u0")])))
    text = str(caught.value)
    assert (
        f"1 of 2 Dask workers run diffice 0.0.9, not {__version__} as this machine does: tcp://10.0.0.7:40001" in text
    )
    assert "tcp://10.0.0.8:40002" not in text


def start_worker_without_diffice(scheduler, folder):
    """A `dask worker` process (no nanny: nothing restarts it) connected to `scheduler` whose Python cannot import
    diffice, as in an environment that lacks it."""
    import subprocess
    import sys

    script = folder / "worker_without_diffice.py"
    script.write_text(
        "import sys\n"
        "sys.modules['diffice'] = None  # this environment lacks diffice\n"
        "from distributed.cli.dask_worker import main\n"
        "main()\n"
    )
    log = open(folder / "worker_without_diffice.log", "wb")
    return subprocess.Popen(
        [sys.executable, str(script), scheduler, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
        cwd=folder,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def finished_units(spec):
    with SweepStore(spec.store_path) as store:
        return len(store.finished_units())


def test_a_worker_without_diffice_that_joins_mid_run_is_named(tmp_path, models_dir, reference):
    """Only the workers there at the start were asked to import diffice: one that joined later (a job that left the
    queue, a `dask worker` started by hand) got units and died on them, restarted by its nanny again and again. Now it
    is asked when it joins, before more units are sent: the same one-line error, naming it; the units finished so far
    are kept and a rerun resumes."""
    from diffice.explain.cluster import WorkersLackDiffice

    base = open_executor(cluster="local:1", options=dict(dashboard_address=":0"))  # a scheduler and a good worker
    address = base.client.scheduler.address
    spec = spec_for(tmp_path, models_dir, name="late")
    late = []

    def a_worker_without_diffice_joins(done, total, executor):
        if not late:
            before = set(executor.client.ncores())
            late.append(start_worker_without_diffice(address, tmp_path))
            executor.client.wait_for_workers(2, timeout=60)
            late.extend(set(executor.client.ncores()) - before)

    try:
        executor = open_executor(scheduler=address)  # --scheduler: units may go to any worker
        try:
            with pytest.raises(WorkersLackDiffice) as caught:
                run_sweep(spec, executor=executor, progress=False, on_unit=a_worker_without_diffice_joins)
        finally:
            executor.close()
        process, worker = late
        text = str(caught.value)
        assert "\n" not in text and isinstance(caught.value, DistributedUnavailable)  # the CLIs: one line, exit 2
        assert text.startswith("1 of 1 Dask workers that joined during the run cannot import diffice (ModuleNotFound")
        assert worker in text and "job_script_prologue" in text and "rerun the same command to resume" in text
        assert process.poll() is None  # a unit sent to it before it was asked failed there; it did not kill it
        process.kill()
        process.wait(30)
        done = finished_units(spec)
        assert 1 <= done < reference[1]["units"]
        check_consistent(spec.store_path)
        base.client.wait_for_workers(1, timeout=60)
        summary = run_sweep(spec, executor=base, progress=False)  # the rerun resumes
        assert summary["skipped_done"] == done and summary["ran"] == reference[1]["units"] - done
        assert stored(spec)[:2] == tuple(reference[2:])
    finally:
        for p in late[:1]:
            p.kill()
        base.close()


def test_a_first_worker_without_diffice_that_arrives_after_the_start_is_named(tmp_path, models_dir):
    """SLURM jobs still queued at the start: no worker to ask then, and the first one to arrive is sent units at
    once, before the client can ask it. Such a unit used to kill a worker lacking diffice (unpickling it), Dask
    waited forever for workers; now the unit fails there (it names no diffice function until it runs) and the
    client names the worker."""
    import threading

    from distributed import LocalCluster

    from diffice.explain.cluster import WorkersLackDiffice

    spec = spec_for(tmp_path, models_dir, name="queued")
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as queued:
        executor = open_executor(scheduler=queued.scheduler_address)
        process = start_worker_without_diffice(queued.scheduler_address, tmp_path)
        outcome = {}

        def sweep():
            try:
                outcome["summary"] = run_sweep(spec, executor=executor, progress=False)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=sweep, daemon=True)
        try:
            thread.start()
            thread.join(90)
            assert not thread.is_alive(), "the run still waits 90 s after a worker without diffice joined"
            exc = outcome.get("error")
            assert isinstance(exc, WorkersLackDiffice), outcome
            assert str(exc).startswith("1 of 1 Dask workers that joined during the run cannot import diffice")
            assert process.poll() is None  # alive: its units failed there instead of killing it
        finally:
            executor.close()
            process.kill()
            process.wait(30)
    assert finished_units(spec) == 0


def test_a_run_waits_for_its_first_workers_but_not_forever_once_all_have_left(
    tmp_path, models_dir, reference, monkeypatch
):
    """Every worker gone mid-run (jobs past their walltime, pre-empted, killed) left Dask waiting forever. Now the run
    stops NO_WORKERS_GRACE s after the last one left, in one line that says the finished units are kept and a rerun
    resumes (they are). A cluster that has had no worker yet (SLURM jobs still queued) is waited for as before."""
    import threading
    import time

    from diffice.explain import cluster as c

    monkeypatch.setattr(c, "NO_WORKERS_GRACE", 2.0)
    monkeypatch.setattr(c, "WATCH_INTERVAL", 0.2)
    executor = open_executor(cluster="local:1", options=dict(dashboard_address=":0"))
    client = executor.client
    spec = spec_for(tmp_path, models_dir, name="lost")

    def scale(n):
        executor.cluster.scale(n)
        deadline = time.monotonic() + 60
        while len(client.ncores()) != n:
            assert time.monotonic() < deadline, f"the local cluster did not reach {n} workers"
            time.sleep(0.1)

    def all_workers_leave(done, total, ex):
        if done == 1:
            scale(0)

    outcome = {}

    def sweep():
        try:
            outcome["summary"] = run_sweep(spec, executor=executor, progress=False, on_unit=all_workers_leave)
        except BaseException as exc:
            outcome["error"] = exc

    try:
        scale(0)  # the run starts without workers, like jobs still in the queue
        thread = threading.Thread(target=sweep, daemon=True)
        thread.start()
        time.sleep(3 * c.NO_WORKERS_GRACE)
        assert thread.is_alive() and not outcome  # still waiting for its first worker: no error
        scale(1)  # the queued job starts
        thread.join(90)
        assert not thread.is_alive(), "the run still waits 90 s after its last worker left"
        exc = outcome.get("error")
        assert isinstance(exc, c.WorkersLost) and isinstance(exc, DistributedUnavailable), outcome
        done = finished_units(spec)
        assert 1 <= done < reference[1]["units"]
        check_consistent(spec.store_path)
        text = str(exc)
        assert "\n" not in text and text.startswith("all Dask workers left (tcp://")
        assert "none joined within 2 s" in text and f"the {done} finished in this run are kept" in text
        assert "rerun the same command to resume" in text
        scale(1)
        summary = run_sweep(spec, executor=executor, progress=False)
        assert summary["skipped_done"] == done and summary["ran"] == reference[1]["units"] - done
        assert stored(spec)[:2] == tuple(reference[2:])
    finally:
        executor.close()

"""Running units of work locally or on a Dask cluster (``--scheduler ADDRESS``, ``--cluster local:N|slurm|pbs``).

A *unit* is one image batch explained with one method configuration. :func:`compute_unit` does it -- in this
process, or on a Dask worker -- and returns plain numpy arrays; the caller (``diffice sweep``'s results store,
``diffice explain``'s output folder) writes them. Design:

- **Only the client process writes.** Workers return each unit's arrays through Dask; the client writes the whole
  unit at once (one SQLite transaction for ``diffice sweep``, files + a record written last for ``diffice
  explain``). SQLite's locking is unreliable on the network file systems clusters share (NFS, Lustre), many
  writers would serialise on the database lock anyway, and a worker that dies mid-unit then cannot leave anything
  half-written: its unit is simply re-run by Dask on another worker (a task whose worker is lost is rescheduled;
  after ``distributed.scheduler.allowed-failures`` losses of the same unit Dask gives up with KilledWorker).
- **Models are loaded once per worker process** (:func:`load_models`, cached by their description), so a unit
  sends only its images and method settings.
- **Units are fixed before anything runs** (consecutive batches of the sorted image list, per configuration):
  which worker runs a unit, and in which order, cannot change its batch, and the sampler's noise follows each
  image's pixels and the seed (:func:`diffice.explain.explainer.image_keys`), so the results are identical to a run on
  one
  machine -- bit for bit where the workers have the same CPU kind and thread count as that machine.
- At most a few units per worker are queued at a time (each carries its images inline, so a lost worker loses
  nothing that cannot be re-sent, and the scheduler's memory stays bounded whatever the grid size).
- **The client watches the workers** while it waits (every WATCH_INTERVAL s): a worker that joins mid-run is asked
  to import diffice like those there at the start, and a run whose workers have all left stops after
  NO_WORKERS_GRACE s instead of waiting forever (workers that never arrived yet, queued jobs, are waited for).

Dask and dask-jobqueue are optional (``pip install diffice[distributed]``); without them everything runs locally
and the cluster options raise :class:`DistributedUnavailable` with the install command.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

import numpy as np

__all__ = [
    "compute_unit",
    "load_models",
    "DistributedUnavailable",
    "SchedulerUnreachable",
    "WorkersLackDiffice",
    "WorkersLost",
    "check_scheduler",
    "check_workers",
    "LocalExecutor",
    "DaskExecutor",
    "open_executor",
    "make_cluster",
    "CLUSTER_DEFAULTS",
    "cluster_options",
]

INSTALL_HINT = "pip install 'diffice[distributed]'  (or: pip install 'dask[distributed]' dask-jobqueue)"
UNIT_RESOURCE = "diffice_unit"  # one unit at a time per worker process: a unit already uses every core (OpenMP)

CLUSTER_DEFAULTS: dict[str, Any] = dict(
    cores=1,  # cores per job (SLURM --cpus-per-task, PBS ncpus)
    memory="8GB",  # memory per job
    processes=1,  # worker processes per job (each runs one unit at a time)
    gpus=0,  # GPUs per job (SLURM --gres=gpu:N, PBS ngpus=N)
    queue=None,  # partition / queue
    account=None,  # project to charge
    walltime="04:00:00",  # per job
    jobs=1,  # number of jobs (workers = jobs x processes)
    job_script_prologue=[],  # shell lines before the worker starts, e.g. ["source ~/venv/bin/activate"]
    job_extra_directives=[],  # extra #SBATCH / #PBS lines, e.g. ["--constraint=avx512"]
    python=None,  # the python on the compute nodes (default: this one)
    interface=None,  # network interface of the workers, e.g. "ib0"
    local_directory=None,  # worker scratch space
    log_directory=None,  # job logs
    dashboard_address=":8787",  # the scheduler's dashboard (":0": any free port)
)


class DistributedUnavailable(RuntimeError):
    """A cluster option was given but Dask (or dask-jobqueue) is not installed; also the base of the cluster's own
    failures that the commands report as one line, exit 2."""


class WorkersLackDiffice(DistributedUnavailable):
    """Dask workers of the cluster cannot import diffice (their environment lacks it)."""


class WorkersLost(DistributedUnavailable):
    """Every Dask worker of a run left and none joined within NO_WORKERS_GRACE seconds."""


class SchedulerUnreachable(ConnectionError):
    """--scheduler names no Dask scheduler that answers: nothing listens there, or something that is not a Dask
    scheduler (a dashboard, a worker, another service)."""


#: How long --scheduler waits for the scheduler to answer (seconds).
SCHEDULER_TIMEOUT = 30.0
#: How often a Dask run looks at the cluster's workers while it waits for units (seconds).
WATCH_INTERVAL = 1.0
#: How long a Dask run waits once all its workers have left before it stops with WorkersLost (seconds). Long enough
#: for a nanny to restart its worker or a pre-empted job to be replaced at once; workers that have not arrived yet
#: (jobs still queued at the start) are waited for without limit.
NO_WORKERS_GRACE = 120.0


def _import_distributed():
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise DistributedUnavailable(
            f"--scheduler / --cluster need Dask, which is not installed: {INSTALL_HINT}. Without these options "
            f"the command runs on this machine."
        ) from None
    return Client, LocalCluster, as_completed


# ---- the unit of work ----

_MODELS: dict[str, tuple[Any, Any, Any, Any]] = {}
_LOADS = 0  # how many times this process loaded models (tests: once per worker)


def models_spec(cfg: dict[str, dict[str, Any]], demo: str | None = None) -> dict[str, Any]:
    """A JSON-able description of a run's models that every worker can load: the [models] and [diffusion]
    sections of a run config, or the demo models (demo: "bundled" or a folder with the demo file names; also
    [models] preset = "demo", which is the bundled ones)."""
    preset = cfg["models"].get("preset")
    if demo is None and preset is not None:
        if preset != "demo":
            raise ValueError(f'models.preset must be "demo", got {preset!r}')
        demo = "bundled"
    device = cfg["models"].get("device", "cpu")
    if demo is not None:
        return dict(source="demo", folder=None if demo == "bundled" else str(demo), device=device)
    models = {k: v for k, v in cfg["models"].items() if k != "preset"}
    return dict(source="files", models=models, diffusion=dict(cfg["diffusion"]))


def spec_device(spec: dict[str, Any]) -> str:
    """The device a models_spec names ("cpu", "cuda", "cuda:N", ...)."""
    return str(spec.get("device") or spec.get("models", {}).get("device") or "cpu")


def check_device_here(spec: dict[str, Any]) -> None:
    """Creates the backend of the spec's device in this process: a device this machine lacks (no GPU, no CUDA
    build or libraries) is a NotImplementedError saying why, before a run writes anything."""
    from ..ops import get_backend

    get_backend(spec_device(spec))


def _worker_index(name: Any) -> int | None:
    """A Dask worker's index on its machine: a LocalCluster names its workers 0..N-1; dask-jobqueue names the
    processes of a job "<job>-<process>" (with --processes > 1: "SLURMCluster-3-0", "SLURMCluster-3-1"). None for
    any other name (a worker started by hand)."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        return int(name)
    if isinstance(name, str):
        if name.isdigit():
            return int(name)
        parts = name.rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            return int(parts[2])
    return None


def worker_device(device: str, worker_name: Any = None, gpus: int | None = None) -> str:
    """The device a unit runs on in this process: on a Dask worker, "cuda" (no number) becomes cuda:(k mod G), k the
    worker's index on its machine (:func:`_worker_index`) and G the GPUs it sees, so the workers of one machine
    share its GPUs out one each instead of all taking cuda:0. "cuda:N", "cpu", a worker without an index and a
    process that is no Dask worker keep the device as given. worker_name and gpus: the worker's name and
    :func:`diffice.cuda_device_count` (looked up when None)."""
    if device != "cuda":
        return device
    if worker_name is None:
        try:
            from distributed import get_worker

            worker_name = get_worker().name
        except (ImportError, ValueError):  # not a Dask worker
            return device
    index = _worker_index(worker_name)
    if gpus is None:
        from ..ops import cuda_device_count

        gpus = cuda_device_count()
    if index is None or gpus < 1:
        return device  # creating the backend then says what is missing
    return f"cuda:{index % gpus}"


def _load(spec: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    global _LOADS
    _LOADS += 1
    if spec["source"] == "demo":
        from .demo import load_demo_models

        m = load_demo_models(spec["folder"], backend=worker_device(spec.get("device", "cpu")))
        return m.unet, m.diffusion, m.classifier, m.perceptual
    from ..models.files import load_run_models

    models = dict(spec["models"])
    if "device" in models:
        models["device"] = worker_device(str(models["device"]))
    return load_run_models(dict(models=models, diffusion=spec["diffusion"]))


def load_models(spec: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(unet, diffusion, classifier, perceptual) for a :func:`models_spec`, loaded once per (worker) process."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _MODELS:
        _MODELS[key] = _load(spec)
    return _MODELS[key]


def compute_unit(
    task: dict[str, Any], models: tuple[Any, Any, Any, Any] | None = None, progress: Callable[..., Any] | None = None
) -> dict[str, Any]:
    """Explains one image batch with one configuration.

    task: ``unit`` (an id, echoed back), ``models`` (a :func:`models_spec`; ignored when `models` is given),
    ``method`` (ExplainerConfig fields), ``x`` (N, C, H, W) float32 in [-1, 1], ``target``, ``seed``.
    Returns the unit id, ``worker`` (host:pid) and numpy arrays: counterfactuals (L, N, C, H, W) float32,
    prob_target (L + 1, N), lambda_used (L, N), flipped (L, N) bool, nonfinite_step (L, N), input_is_target (N,)
    bool (f's verdict on the input), first_step_target (N,) bool and first_step_prob (N,) (f on x0_hat at the first
    guided step: diffice.explain.explainer.suspicious_run_message), iteration_seconds (L,); batch_seconds (wall time
    of the
    sampler), peak_bytes (the sampler's memory peak), unet_evaluations. The SuspiciousRunWarning check is left to
    the caller, over the whole run.
    """
    from .explainer import Explainer

    unet, diffusion, classifier, perceptual = models or load_models(task["models"])
    explainer = Explainer(unet, diffusion, classifier, perceptual, **task["method"])  # runs where the UNet is
    x = np.require(task["x"], np.float32, ["C_CONTIGUOUS", "ALIGNED", "OWNDATA"])  # Dask may hand a view
    target = int(task["target"])
    t0 = time.perf_counter()
    result = explainer.explain(x, target=target, seed=int(task["seed"]), progress=progress, warn=False)
    seconds = time.perf_counter() - t0
    return dict(
        unit=task["unit"],
        worker=f"{socket.gethostname()}:{os.getpid()}",
        counterfactuals=result.counterfactuals,
        prob_target=result.prob_target,
        lambda_used=result.lambda_used,
        flipped=result.flipped,
        nonfinite_step=result.nonfinite_step,
        input_is_target=result.input_is_target,
        first_step_target=result.first_step_target,
        first_step_prob=result.first_step_prob,
        iteration_seconds=np.asarray(result.iteration_seconds),
        batch_seconds=seconds,
        peak_bytes=int(result.peak_bytes),
        unet_evaluations=int(result.unet_evaluations),
    )


# ---- executors: where the units run ----


class LocalExecutor:
    """Runs units one after the other in this process with the models given, or those of the first task's spec
    (loaded once, held by this executor only)."""

    dashboard: str | None = None
    description = "this machine"

    def __init__(self, models: tuple[Any, Any, Any, Any] | None = None) -> None:
        self.models = models

    def run(
        self, tasks: Iterable[dict[str, Any]], progress: Callable[..., Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yields each task's :func:`compute_unit` result in task order. progress(task, *step_args) is called
        after every reverse step of the sampler."""
        for task in tasks:
            if self.models is None:
                self.models = _load(task["models"])
            step = None if progress is None else (lambda *a, task=task: progress(task, *a))
            yield compute_unit(task, models=self.models, progress=step)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Runs units on a Dask cluster: at most `window` per worker in flight, results as they complete."""

    def __init__(
        self,
        client: Any,
        cluster: Any = None,
        restrict: bool = False,
        window: int = 2,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.client, self.cluster = client, cluster
        # a local cluster's environment before it started: its nanny rewrites os.environ when it restarts a worker,
        # so close() puts this back (None: a remote cluster or scheduler, which leaves os.environ alone)
        self.environ = environ
        self.restrict = restrict  # the workers were started with the UNIT_RESOURCE (one unit at a time each)
        self.window = window
        self.dashboard = getattr(client, "dashboard_link", None)
        self.description = f"Dask scheduler {client.scheduler.address}"

    def run(
        self, tasks: Iterable[dict[str, Any]], progress: Callable[..., Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yields each task's :func:`compute_unit` result as it completes (any order). Every worker is asked to
        import diffice before it can be sent a unit by this run (:class:`WorkerWatch`: WorkersLackDiffice), and a run
        whose workers have all left stops after NO_WORKERS_GRACE s (WorkersLost)."""
        from distributed import wait

        pending = iter(tasks)
        flying: set[Any] = set()
        count = 0
        watch = WorkerWatch(self.client)

        def top_up() -> None:
            nonlocal count
            limit = max(4, self.window * max(1, len(watch.workers)))
            while len(flying) < limit:
                task = next(pending, None)
                if task is None:
                    return
                kwargs = dict(resources={UNIT_RESOURCE: 1}) if self.restrict else {}
                # pure=False: a unit re-submitted after a failed run is computed again, never taken from a cache
                future = self.client.submit(
                    eval, _UNIT_CALL, dict(task=task), key=f"diffice-unit-{task['unit']}-{count}", pure=False, **kwargs
                )
                flying.add(future)
                count += 1

        watch.check()
        top_up()
        while flying:
            try:
                done, _ = wait(list(flying), timeout=WATCH_INTERVAL, return_when="FIRST_COMPLETED")
            except (TimeoutError, asyncio.TimeoutError):  # distinct before Python 3.11
                watch.check()
                continue
            for future in done:
                flying.discard(future)
                try:
                    result = future.result()  # re-raises a unit's exception (or KilledWorker) here
                except Exception as exc:
                    watch.check()  # a unit that failed on a late worker lacking diffice: name the worker instead
                    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "diffice":
                        raise WorkersLackDiffice(  # that worker has left since
                            f"a unit failed on a Dask worker that cannot import diffice ({type(exc).__name__}: {exc})"
                            f" and has left since. {_INSTALL_ON_WORKERS}; the units finished so far are kept: rerun "
                            f"the same command to resume"
                        ) from None
                    raise
                future.release()
                watch.finished += 1
                watch.check()  # before more units are sent: a worker that joined meanwhile is asked first
                top_up()
                yield result

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.environ is not None:
            restore_environ(self.environ)


def cluster_options(data: dict[str, Any] | None, source: str = "config") -> dict[str, Any]:
    """The [cluster] section over CLUSTER_DEFAULTS; ValueError naming unknown keys."""
    values = dict((data or {}).get("cluster", {}) or {})
    unknown = set(values) - set(CLUSTER_DEFAULTS)
    if unknown:
        raise ValueError(f"{source}: unknown keys in [cluster]: {sorted(unknown)}; known: {sorted(CLUSTER_DEFAULTS)}")
    return dict(CLUSTER_DEFAULTS, **values)


def restore_environ(environ: dict[str, str]) -> None:
    """Puts this process's environment back as it was. Dask's nanny writes its workers' settings
    (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, PYTHONHASHSEED, ...) into the *parent's*
    os.environ before spawning each worker and leaves them there: every later subprocess of the user's session (a
    notebook's `!diffice explain`) would run single-threaded, and single-threaded OpenBLAS rounds the phantoms'
    interpolation products differently, so their pixels (and a sweep store's image keys) would change."""
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


def import_jobqueue(kind: str = "slurm") -> Any:
    """dask_jobqueue, imported without its side effect on this process: its runner module replaces the SIGINT
    handler with sys.exit(), which made Ctrl-C of `diffice sweep --cluster slurm` end silently with exit code 0
    (no KeyboardInterrupt: nothing said what was kept). DistributedUnavailable when it is not installed."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    except ImportError:
        raise DistributedUnavailable(
            f"--cluster {kind} needs dask-jobqueue, which is not installed: {INSTALL_HINT}"
        ) from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


def make_cluster(kind: str, options: dict[str, Any] | None = None) -> Any:
    """A Dask cluster object, not yet scaled: kind "local:N" (a LocalCluster of N worker processes, started) or
    "slurm" / "pbs" (a dask-jobqueue cluster; its job script is ``cluster.job_script()``)."""
    opts = dict(CLUSTER_DEFAULTS, **(options or {}))
    Client, LocalCluster, _ = _import_distributed()
    if kind.startswith("local"):
        _, _, n = kind.partition(":")
        try:
            workers = int(n) if n else (os.cpu_count() or 1)
        except ValueError:
            raise ValueError(f"--cluster local:N needs a number of workers, got {kind!r}") from None
        if workers < 1:
            raise ValueError(f"--cluster local:N needs at least one worker, got {kind!r}")
        environ = dict(os.environ)
        try:
            return LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=opts["dashboard_address"],
                resources={UNIT_RESOURCE: 1},
            )
        finally:
            restore_environ(environ)
    if kind not in ("slurm", "pbs"):
        raise ValueError(f"--cluster must be local:N, slurm or pbs, got {kind!r}")
    dask_jobqueue = import_jobqueue(kind)
    gpus = int(opts["gpus"] or 0)
    directives = list(opts["job_extra_directives"] or [])
    if kind == "slurm":
        cls: Any = dask_jobqueue.SLURMCluster
        if gpus:
            directives.append(f"--gres=gpu:{gpus}")
        resource_spec = {}
    else:
        cls = dask_jobqueue.PBSCluster
        resource_spec = dict(
            resource_spec=f"select=1:ncpus={int(opts['cores'])}:mem={opts['memory']}"
            + (f":ngpus={gpus}" if gpus else "")
        )
    kwargs = dict(
        cores=int(opts["cores"]),
        memory=str(opts["memory"]),
        processes=int(opts["processes"]),
        queue=opts["queue"],
        account=opts["account"],
        walltime=opts["walltime"],
        job_script_prologue=list(opts["job_script_prologue"] or []),
        job_extra_directives=directives,
        worker_extra_args=["--resources", f"{UNIT_RESOURCE}=1"],
        scheduler_options=dict(dashboard_address=opts["dashboard_address"]),
        **resource_spec,
    )
    for key in ("python", "interface", "local_directory", "log_directory"):
        if opts[key]:
            kwargs[key] = opts[key]
    return cls(**kwargs)


def open_executor(
    scheduler: str | None = None,
    cluster: str | None = None,
    options: dict[str, Any] | None = None,
    models: tuple[Any, Any, Any, Any] | None = None,
) -> Any:
    """A LocalExecutor (neither option), or a DaskExecutor connected to `scheduler` (an address such as
    tcp://host:8786) or to a new `cluster` ("local:N", "slurm", "pbs"; jobs from options["jobs"])."""
    if scheduler and cluster:
        raise ValueError("give either --scheduler or --cluster, not both")
    if not scheduler and not cluster:
        return LocalExecutor(models)
    if models is not None:
        raise ValueError("models loaded in this process cannot be sent to a cluster; give them in the config")
    Client, _, _ = _import_distributed()
    if scheduler:
        check_scheduler(scheduler)
        return DaskExecutor(Client(scheduler, timeout=SCHEDULER_TIMEOUT), restrict=False)
    assert cluster, "open_executor: the one option left is cluster"
    opts = dict(CLUSTER_DEFAULTS, **(options or {}))
    made = make_cluster(cluster, opts)
    local = cluster.startswith("local")
    try:
        if not local:
            made.scale(jobs=int(opts["jobs"]))
        client = Client(made)
    except BaseException:
        made.close()
        raise
    return DaskExecutor(client, made, restrict=True, environ=dict(os.environ) if local else None)


def check_scheduler(address: str, timeout: float | None = None) -> None:
    """Asks `address` who it is and raises SchedulerUnreachable unless a Dask scheduler answers within `timeout`
    seconds (default SCHEDULER_TIMEOUT). Dask's own connect timeout does not bound the handshake: a service that
    accepts the connection but is no Dask scheduler (the dashboard's port, another server) hangs a Client forever,
    or makes it read its reply as a frame length (``Unable to allocate 3.07 EiB``). Runs in a thread of its own, so
    that it works under a running event loop (a notebook) too."""
    import asyncio
    import threading

    from distributed.core import rpc

    limit = SCHEDULER_TIMEOUT if timeout is None else float(timeout)
    hint = "give the scheduler's address, e.g. tcp://head-node:8786 (not its dashboard's port)"
    answer: dict[str, Any] = {}

    async def ask() -> Any:
        async with rpc(address, timeout=limit) as scheduler:
            return await scheduler.identity()

    def probe() -> None:
        try:
            answer["identity"] = asyncio.run(asyncio.wait_for(ask(), limit))
        except BaseException as exc:  # reported by the caller, in its thread
            answer["error"] = exc

    thread = threading.Thread(target=probe, name="diffice-check-scheduler", daemon=True)
    thread.start()
    thread.join(limit + 5.0)
    exc = answer.get("error")
    if thread.is_alive() or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        raise SchedulerUnreachable(
            f"--scheduler {address}: no answer from a Dask scheduler within {limit:g} s; {hint}"
        ) from None
    if isinstance(exc, OSError):
        raise SchedulerUnreachable(f"--scheduler {address}: cannot connect ({exc}); {hint}") from None
    if exc is not None:
        raise SchedulerUnreachable(
            f"--scheduler {address}: what answers there is not a Dask scheduler ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    kind = answer["identity"].get("type") if isinstance(answer.get("identity"), dict) else None
    if kind != "Scheduler":
        raise SchedulerUnreachable(
            f"--scheduler {address}: a Dask {kind or 'service'} answers there, not a scheduler; {hint}"
        )


#: Run on each worker by check_workers: imports diffice's unit code and returns diffice's version. (A builtin and a
#: string, so that a worker without diffice can still unpickle it: a unit's task, which names diffice's functions,
#: kills such a worker when it arrives, and Dask then waits forever for workers.)
_WORKER_PROBE = "__import__('diffice.explain.cluster').__version__"
#: A unit's task, run as eval(_UNIT_CALL, {"task": task}), for the same reason: a worker lacking diffice that is sent
#: a unit before WorkerWatch has asked it (it joined just then) fails the unit with ModuleNotFoundError, which the
#: client can explain, instead of dying on it and being restarted by its nanny, again and again.
_UNIT_CALL = "__import__('diffice.explain.cluster').explain.cluster.compute_unit(task)"
_INSTALL_ON_WORKERS = (
    "Install diffice in the workers' environment (the same version as here), e.g. [cluster] job_script_prologue = "
    '["source ~/venvs/diffice/bin/activate"] or python = "..." for --cluster slurm|pbs, or start `dask worker` from '
    "that environment"
)


def check_workers(client: Any, workers: Sequence[str] | None = None, late: bool = False) -> dict[str, str]:
    """Checks that every worker connected now (or those named) imports diffice; WorkersLackDiffice naming those that
    do not (and why; late: they joined during the run, whose finished units are kept). Returns the diffice version
    of each worker that answered; one that could not be asked (it left meanwhile: a connection error) is left out.
    A run checks the workers that join later too (WorkerWatch)."""
    found = client.run(eval, _WORKER_PROBE, workers=None if workers is None else list(workers), on_error="return")
    # an OSError (CommClosedError, a connect timeout) is no answer from the worker, not its import failing
    asked = {w: r for w, r in found.items() if not isinstance(r, OSError)}
    bad = {w: r for w, r in asked.items() if isinstance(r, BaseException)}
    when = " that joined during the run" if late else ""
    after = "; the units finished so far are kept: rerun the same command to resume" if late else ""
    if bad:
        first = next(iter(bad.values()))
        raise WorkersLackDiffice(
            f"{len(bad)} of {len(asked)} Dask workers{when} cannot import diffice ({type(first).__name__}: {first}): "
            f"{', '.join(sorted(bad))}. {_INSTALL_ON_WORKERS}{after}"
        )
    from .. import __version__ as here

    versions = {w: str(r) for w, r in asked.items()}
    other = sorted(w for w, v in versions.items() if v != here)
    if other:  # another version's units would be mixed with this one's in the same results
        raise WorkersLackDiffice(
            f"{len(other)} of {len(asked)} Dask workers{when} run diffice {versions[other[0]]}, not {here} as this "
            f"machine does: {', '.join(other)}. {_INSTALL_ON_WORKERS}{after}"
        )
    return versions


class WorkerWatch:
    """A run's view of its cluster's workers, refreshed by :meth:`check` (the DaskExecutor calls it at the start,
    every WATCH_INTERVAL s and before sending more units): workers not seen before are asked to import diffice
    (:func:`check_workers`; WorkersLackDiffice), and once every worker has left, WorkersLost after NO_WORKERS_GRACE
    s without one. A cluster that has had no worker yet (jobs still queued) is waited for without limit."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.workers: set[str] = set()  # connected at the last check
        self.checked: set[str] = set()  # connected and answered the probe
        self.last: set[str] = set()  # the workers before all left (empty: never had one)
        self.empty_since: float | None = None
        self.checks = 0
        self.finished = 0  # units this run finished (kept by the caller): for WorkersLost's message

    def check(self) -> None:
        try:
            workers = set(self.client.ncores())
        except OSError:  # the scheduler does not answer now: Dask's client reconnects (or cancels the units)
            return
        self.checks += 1
        self.workers = workers
        self.checked &= workers  # one that left and comes back at the same address is asked again
        new = workers - self.checked
        if new:
            self.checked |= set(check_workers(self.client, sorted(new), late=self.checks > 1))
        if workers:
            self.last, self.empty_since = workers, None
            return
        if not self.last:
            return  # never had a worker: queued jobs may take hours to start
        now = time.monotonic()
        if self.empty_since is None:
            self.empty_since = now
        elif now - self.empty_since >= NO_WORKERS_GRACE:
            names = sorted(self.last)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise WorkersLost(
                f"all Dask workers left ({shown}) and none joined within {NO_WORKERS_GRACE:g} s: the units they were "
                f"running did not finish, the {self.finished} finished in this run are kept; start workers (or see "
                f"why they stopped: their logs, the jobs' walltime) and rerun the same command to resume"
            )


def describe(executor: Any, stream: Any = None) -> None:
    """One line on where the units run (and the dashboard) to `stream` (stderr)."""
    stream = stream or sys.stderr
    line = f"running on {executor.description}"
    if getattr(executor, "dashboard", None):
        line += f"; dashboard: {executor.dashboard}"
    print(line, file=stream, flush=True)


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Consecutive chunks of `size` (the last may be shorter): the units' image batches."""
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]

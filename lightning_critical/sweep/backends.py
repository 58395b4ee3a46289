"""Where the runs of a sweep execute: in this process, in local worker processes, on any Executor, on Ray.

The interface is deliberately small. The engine owns the schedule (the DAG of runs, which
run may start when, results, retries); a backend only executes runs that are ready::

    class Backend:
        name: str                      # shown in messages
        max_in_flight: int | None      # runs submitted at once (None: no limit)
        needs_pickling: bool           # tasks cross a process boundary
        def submit(self, task: Task) -> Future: ...  # a concurrent.futures.Future, or any
                                       # object with done() and result() (polled)
        def restart(self) -> bool: ... # after a worker died: start afresh (False: cannot)
        def close(self, cancel: bool) -> None: ...

``submit`` must eventually run :func:`lightning_critical.sweep.units.run_unit` on the unit
(or :func:`~lightning_critical.sweep.units.run_payload` on
:func:`~lightning_critical.sweep.units.dumps` of it, in another process) and resolve the future
with the returned records. A runner never raises for a failing run (it returns
``status="failed"``); a future that raises means the worker itself died or was interrupted.

How the DAG reaches the backend: a run is submitted only once it is ready, i.e. once the
checkpoint it branches from exists on disk (``task.resume_path``; written atomically by its
parent *during* the parent's training, so children start while the parent still trains).
The engine polls for those files, so a backend needs no notion of dependencies, only a file
system shared with the workers (the out directory).

Threads: every run sets ``torch.set_num_threads(threads_per_run)`` itself (the same value
whatever the backend, so results are identical); worker processes also limit BLAS pools.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import multiprocessing
import os
import shutil
import tempfile
from typing import Any, Protocol

from lightning_critical._checks import check_choice
from lightning_critical.sweep.ray_backend import RayBackend  # imports Ray itself only when a run is submitted
from lightning_critical.sweep.units import dumps, run_payload, run_unit
from lightning_critical.sweep.workers import REPORT_ENV, WorkerStartupError, explain_death, init_worker

BACKENDS: tuple[str, ...] = ("serial", "process", "ray")


class Backend(Protocol):
    name: str
    max_in_flight: int | None
    needs_pickling: bool

    def submit(self, task: Any) -> cf.Future[dict[str, Any]]: ...

    def restart(self) -> bool: ...

    def close(self, cancel: bool) -> None: ...


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class SerialBackend:
    """Runs each task in this process when it is submitted."""

    name = "serial"
    max_in_flight: int | None = 1
    needs_pickling = False

    def submit(self, task: Any) -> cf.Future[dict[str, Any]]:
        future: cf.Future = cf.Future()
        future.set_result(run_unit(task))  # KeyboardInterrupt propagates to the engine
        return future

    def restart(self) -> bool:
        return False

    def close(self, cancel: bool) -> None:
        pass


class ProcessBackend:
    """Spawned local worker processes (a ``ProcessPoolExecutor``), one per core by default.

    Workers die with this process (:func:`~lightning_critical.sweep.workers.init_worker`), and a
    worker that dies is named with its cause (:meth:`explain_broken`): a start-up failure stops
    the sweep at once, since no run could succeed.
    """

    name = "process"
    needs_pickling = True

    def __init__(self, workers: int | None = None, threads_per_run: int = 1) -> None:
        self.workers = workers or default_workers()
        self.max_in_flight = self.workers
        self.threads = threads_per_run
        self._pool: cf.ProcessPoolExecutor | None = None
        self._reports: str | None = None  # where starting workers write their errors
        self._old_env: str | None = None
        self._processes: dict[int, Any] = {}
        self._startup_failed = False

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            # spawned workers inherit the environment when they start (before they import anything of ours)
            self._reports = tempfile.mkdtemp(prefix="lightning-critical-workers-")
            self._old_env = os.environ.get(REPORT_ENV)
            os.environ[REPORT_ENV] = self._reports
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker, initargs=(self.threads, os.getpid()),
            )
        return self._pool

    def submit(self, task: Any) -> cf.Future[dict[str, Any]]:
        future = self._executor().submit(run_payload, dumps(task))
        # keep the Process objects: their exit codes name the cause once the pool has broken
        self._processes.update(getattr(self._pool, "_processes", None) or {})
        return future

    def explain_broken(self, err: BaseException) -> BaseException:
        """The broken pool's error with its cause: a worker's start-up error, or its exit code / signal."""
        for process in self._processes.values():
            process.join(timeout=1)  # the pool has already stopped them; make their exit codes readable
        explained = explain_death(err, self._reports, list(self._processes.values()))
        self._startup_failed = isinstance(explained, WorkerStartupError)
        return explained

    def restart(self) -> bool:
        self.close(cancel=True)
        return not self._startup_failed  # every fresh worker would fail the same way

    def close(self, cancel: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=cancel)
        self._processes.clear()
        if self._old_env is None:
            os.environ.pop(REPORT_ENV, None)
        else:
            os.environ[REPORT_ENV] = self._old_env
        if self._reports is not None:
            shutil.rmtree(self._reports, ignore_errors=True)
            self._reports = None


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes (public API from Python 3.14, the pool's table before)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:  # pragma: no cover - Python >= 3.14
        terminate()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


class ExecutorBackend:
    """Any executor the caller owns: a ``concurrent.futures.Executor``, or any object whose
    ``submit(fn, *args)`` returns a job with ``done()`` and ``result()`` (e.g. a submitit
    ``AutoExecutor`` for SLURM: one job per run; ``out`` must be on storage the jobs share).
    """

    needs_pickling = True
    max_in_flight: int | None = None

    def __init__(self, executor: Any) -> None:
        _check_usable(executor)
        self.executor = executor
        self.name = type(executor).__name__
        workers = getattr(executor, "_max_workers", None)
        if isinstance(workers, int):
            self.max_in_flight = workers

    def submit(self, task: Any) -> Any:
        return self.executor.submit(run_payload, dumps(task))

    def restart(self) -> bool:
        return False

    def close(self, cancel: bool) -> None:
        pass  # the caller owns the executor


def _check_usable(executor: Any) -> None:
    """Refuse an executor that is shut down or broken now, rather than at its first run."""
    name = type(executor).__name__
    broken = getattr(executor, "_broken", False)
    if broken:
        raise ValueError(
            f"backend={name} is broken ({broken}): it cannot run anything. Create a new executor, or use "
            "backend='process'."
        )
    if getattr(executor, "_shutdown_thread", False) or getattr(executor, "_shutdown", False) is True:
        raise ValueError(
            f"backend={name} is already shut down (its `with` block ended, or shutdown() was called): it cannot "
            "run anything. Call lc.sweep.run inside the executor's `with` block, or use backend='process'."
        )


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def resolve_backend(
    backend: str | cf.Executor | Any, workers: int | None, threads_per_run: int, options: dict[str, Any] | None = None,
) -> Any:
    """Turn ``backend=`` into a backend object (see the module docstring); errors name the valid choices."""
    options = dict(options or {})
    if isinstance(backend, cf.ThreadPoolExecutor):
        raise ValueError(
            "backend=ThreadPoolExecutor is not valid: threads share this process's random states, so runs would "
            "not be reproducible; use backend='process', a ProcessPoolExecutor or backend='serial'."
        )
    if not isinstance(backend, str):
        if all(hasattr(backend, a) for a in ("submit", "restart", "close", "max_in_flight")):
            return backend
        if callable(getattr(backend, "submit", None)):
            return ExecutorBackend(backend)
        raise ValueError(
            f"backend={backend!r} is not valid; choose one of {BACKENDS}, a concurrent.futures.Executor (or any "
            "executor whose submit(fn, *args) returns a job with done() and result(), e.g. submitit's), or an object "
            "with the Backend interface (see lightning_critical.sweep.backends)."
        )
    check_choice("backend", backend, BACKENDS, extra=" or a concurrent.futures.Executor")
    if backend == "serial":
        return SerialBackend()
    if backend == "process":
        return ProcessBackend(workers, threads_per_run, **options)
    if not ray_available():
        raise ImportError('backend="ray" needs Ray, which is not installed: pip install "lightning-critical[ray]"')

    return RayBackend(workers=workers, threads_per_run=threads_per_run, **options)

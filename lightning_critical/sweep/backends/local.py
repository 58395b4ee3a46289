"""Local backends: this process (serial), spawned worker processes, any executor the caller owns."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import shutil
import tempfile
from typing import Any

from lightning_critical.sweep.backends.base import default_workers
from lightning_critical.sweep.backends.workers import REPORT_ENV, WorkerStartupError, explain_death, init_worker
from lightning_critical.sweep.units import dumps, run_payload, run_unit


class SerialBackend:
    """Runs each job in this process when it is submitted."""

    name = "serial"
    max_in_flight: int | None = 1
    needs_pickling = False

    def submit(self, job: Any) -> cf.Future[list[dict[str, Any]]]:
        future: cf.Future = cf.Future()
        future.set_result(run_unit(job))  # KeyboardInterrupt propagates to the dispatcher
        return future

    def restart(self) -> bool:
        return False

    def close(self, cancel: bool) -> None:
        pass


class ProcessBackend:
    """Spawned local worker processes (a ``ProcessPoolExecutor``), one per core by default.

    Workers die with this process (:func:`~lightning_critical.sweep.backends.workers.init_worker`), and a
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

    def submit(self, job: Any) -> cf.Future[list[dict[str, Any]]]:
        future = self._executor().submit(run_payload, dumps(job))
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

    def submit(self, job: Any) -> Any:
        return self.executor.submit(run_payload, dumps(job))

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


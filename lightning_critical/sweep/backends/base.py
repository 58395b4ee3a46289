"""The backend interface: where the jobs of a sweep execute (this process, local workers, any Executor, Ray).

The interface is deliberately small. The dispatcher (:mod:`lightning_critical.sweep.dispatcher`)
owns the schedule (the DAG of runs, which run may start when, results, retries); a backend only
executes jobs that are ready::

    class Backend:
        name: str                      # shown in messages
        max_in_flight: int | None      # jobs submitted at once (None: no limit)
        needs_pickling: bool           # jobs cross a process boundary
        def submit(self, job: Job) -> Future: ...  # a concurrent.futures.Future, or any
                                       # object with done() and result() (polled)
        def restart(self) -> bool: ... # after a worker died: start afresh (False: cannot)
        def close(self, cancel: bool) -> None: ...

``submit`` must eventually run :func:`lightning_critical.sweep.units.run_unit` on the job
(or :func:`~lightning_critical.sweep.units.run_payload` on
:func:`~lightning_critical.sweep.units.dumps` of it, in another process) and resolve the future
with the returned records (one per task of the job, in order). A runner never raises for a
failing run (it returns ``status="failed"``); a future that raises means the worker itself died
or was interrupted.

How the DAG reaches the backend: a job is submitted only once it is ready, i.e. once the
checkpoint each of its runs branches from exists on disk (``task.resume_path``; written
atomically by its parent *during* the parent's training, so children start while the parent
still trains). The dispatcher polls for those files, so a backend needs no notion of dependencies, only a file
system shared with the workers (the out directory).

Threads: every run sets ``torch.set_num_threads(threads_per_run)`` itself (the same value
whatever the backend, so results are identical); worker processes also limit BLAS pools.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Any, Protocol


class Backend(Protocol):
    """What the dispatcher needs of a backend (see the module docstring)."""

    name: str
    max_in_flight: int | None
    needs_pickling: bool

    def submit(self, job: Any) -> cf.Future[list[dict[str, Any]]]: ...

    def restart(self) -> bool: ...

    def close(self, cancel: bool) -> None: ...


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


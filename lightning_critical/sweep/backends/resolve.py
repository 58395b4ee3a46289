"""``backend=`` of :func:`lightning_critical.sweep.run` turned into a backend object; errors name the valid choices."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
from typing import Any

from lightning_critical._checks import check_choice
from lightning_critical.sweep.backends.local import ExecutorBackend, ProcessBackend, SerialBackend
from lightning_critical.sweep.backends.ray import RayBackend  # imports Ray itself only when a job is submitted

BACKENDS: tuple[str, ...] = ("serial", "process", "ray")


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def resolve_backend(
    backend: str | cf.Executor | Any, workers: int | None, threads_per_run: int, options: dict[str, Any] | None = None,
) -> Any:
    """Turn ``backend=`` into a backend object (:mod:`~.base`); errors name the valid choices.

    Example::

        >>> resolve_backend("process", 2, 1).max_in_flight
        2
    """
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
            "with the Backend interface (see lightning_critical.sweep.backends.base)."
        )
    check_choice("backend", backend, BACKENDS, extra=" or a concurrent.futures.Executor")
    if backend == "serial":
        return SerialBackend()
    if backend == "process":
        return ProcessBackend(workers, threads_per_run, **options)
    if not ray_available():
        raise ImportError('backend="ray" needs Ray, which is not installed: pip install "lightning-critical[ray]"')

    return RayBackend(workers=workers, threads_per_run=threads_per_run, **options)

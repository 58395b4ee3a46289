"""The Ray backend of :func:`lightning_critical.sweep.run`: each run is one Ray task, locally or on a cluster.

Why Ray core tasks, not Ray Tune trials: the sweep engine already does what Tune would add.
It owns the schedule (the prefix DAG: a run is submitted only once the checkpoint it branches
from exists), the retries (a rerun of the sweep retries failed runs), the resume (finished
runs are in ``<out>/results.jsonl``) and the results table. What it needs from Ray is only
"run this function somewhere with these resources", which is a task
(``ray.remote(...).options(num_cpus=, num_gpus=, max_retries=)``); a Tune trial would add a
second scheduler, its own result directory and its own resume logic on top, which would then
have to agree with ours. So a run is a task, and a Ray cluster is just more workers.

* **Local by default.** ``backend="ray"`` starts a local Ray with ``workers`` runs' worth of
  CPUs (``workers x num_cpus``) the first time a run is submitted, and shuts it down at the
  end. If Ray is already initialised in this process (``ray.init(...)`` by the caller), that
  Ray is used and left running.
* **A cluster** with ``address=`` (e.g. ``"auto"`` on a node of the cluster, or
  ``"ray://head:10001"``): runs are then not limited by ``workers``; Ray places them by their
  resources. Prefixes are shared through checkpoint files in the sweep's ``out`` directory,
  which must then be on storage every node sees (NFS, a cluster file system): a child run
  loads its parent's checkpoint from there, possibly on another node. The object store is not
  used for this because a parent's checkpoint must outlive the parent's task (children start
  while it still trains, and a rerun after a crash starts from the checkpoints on disk).
* **Resources per run:** ``num_cpus`` (default ``threads_per_run``) and ``num_gpus``, which may
  be a fraction (``0.25``: four small runs share one GPU; give the Trainer
  ``accelerator="gpu", devices=1``; Ray sets ``CUDA_VISIBLE_DEVICES`` for each task).
* **Retries:** ``max_retries`` re-executes a run whose worker process died (killed, out of
  memory, a lost node); after the last one the run is recorded as failed and the sweep goes
  on. A run that raises is not retried by Ray: it is recorded with its error at once
  (:func:`lightning_critical.sweep.runners.base.envelope` makes it), and rerunning the sweep
  retries it.
* **Code on the workers:** the driver's ``sys.path`` is appended to each worker's, so
  factories in the caller's own modules are found as with the ``"process"`` backend; on a
  cluster, ship code that is not installed on every node with ``runtime_env`` (e.g.
  ``{"working_dir": "."}``), passed through to every task.
* **Failing fast:** ``address`` is checked when the sweep starts, before training: a malformed
  one is a ``ValueError``, one where nothing accepts a TCP connection within
  :data:`PROBE_SECONDS` a ``ConnectionError`` naming ``backend_options['address']``, what was
  tried and what to do (``ray.init`` itself would retry for minutes without a word). If
  ``ray.init`` still has not connected after 30 s, a message says so.
* **A driver killed with SIGKILL:** the local Ray this backend started stops its runs by itself
  (measured: the training workers were gone within 5 s); Ray's idle ``DashboardAgent`` and
  ``RuntimeEnvAgent`` processes were still there 30 s later (``ray stop`` ends them).
* Ctrl-C (or any error in the driver) cancels the runs in flight (``ray.cancel(force=True)``)
  before the Ray this backend started is shut down; finished runs are saved.

Example (nothing starts until the sweep submits its first run)::

    >>> backend = RayBackend(workers=2, num_gpus=0.25, max_retries=1)
    >>> options = backend.task_options()  # the Lightning namespace travels in the task's environment
    >>> options["num_cpus"], options["num_gpus"], options["max_retries"], list(options["runtime_env"]["env_vars"])
    (1.0, 0.25, 1, ['LIGHTNING_CRITICAL_NAMESPACE'])

and in a sweep: ``lc.sweep.run(..., backend="ray", backend_options={"num_gpus": 0.25})``, or on a
cluster ``backend_options={"address": "auto", "num_cpus": 4, "runtime_env": {"working_dir": "."}}``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

from lightning_critical import _namespace
from lightning_critical._checks import check_float, check_int
from lightning_critical.sweep.units import dumps, run_payload

OPTIONS = ("address", "num_cpus", "num_gpus", "max_retries", "runtime_env", "init_options")
"""What ``backend_options`` may hold for ``backend="ray"``."""


def _run_task(payload: bytes, paths: list[str]) -> Any:
    """The Ray task: make the driver's modules importable, then execute the job."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    return run_payload(payload)


PROBE_SECONDS = 5.0
"""How long a TCP connection to ``backend_options['address']`` may take before the sweep is refused."""
CONNECT_WARNING_SECONDS = 30.0

_CONNECT_HELP = (
    "Check that the Ray cluster is running there (`ray status` on its head node; `ray start --head` starts one), "
    "that host and port are right (the head's GCS port, 6379 by default, or 'ray://host:10001' for Ray Client) and "
    "that no firewall blocks it; or leave the address out for a local Ray."
)


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address, ``None`` for ``"auto"`` / ``"local"``; ``ValueError`` when malformed.

    Example::

        >>> parse_address("ray://head:10001"), parse_address("10.0.0.5:6379"), parse_address("auto")
        (('head', 10001), ('10.0.0.5', 6379), None)
    """
    if address in ("auto", "local"):
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or "/" in rest or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"backend_options['address']={address!r} is not a Ray address: give 'host:port' (the head node's GCS "
            "port, e.g. '10.0.0.5:6379'), 'ray://host:10001' (Ray Client), 'auto' (the cluster this node belongs "
            "to), or leave it out (None) for a local Ray."
        )
    return host, int(port)


def check_address(address: Any, timeout: float | None = None) -> None:
    """Refuse, within seconds, a Ray address that is malformed or that nothing answers on (a TCP connection)."""
    import socket

    if address is None:
        return
    if not isinstance(address, str) or not address:
        raise ValueError(
            f"backend_options['address']={address!r} is not valid: give a Ray address such as 'auto' or "
            "'ray://head:10001', or None for a local Ray."
        )
    target = parse_address(address)
    if target is None:
        return
    seconds = PROBE_SECONDS if timeout is None else timeout
    try:
        socket.create_connection(target, timeout=seconds).close()
    except OSError as err:
        raise ConnectionError(
            f"backend_options['address']={address!r} cannot be reached: a TCP connection to {target[0]}:{target[1]} "
            f"failed within {seconds:g} s ({type(err).__name__}: {err}). {_CONNECT_HELP}"
        ) from None


def _still_connecting(address: str | None) -> None:
    print(f"lightning-critical: ray.init(address={address!r}) has not connected after {CONNECT_WARNING_SECONDS:g} s "
          f"(backend_options['address']); it may hang. {_CONNECT_HELP}", file=sys.stderr, flush=True)


def _caller_started_ray() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not initialised (and importing it costs a second)
    return ray is not None and bool(ray.is_initialized())


class RayBackend:
    """Runs each run of a sweep as a Ray task (see the module docstring).

    Args:
        workers: runs at once on the local Ray this backend starts (ignored when connecting to
            an existing Ray, where the cluster's resources decide).
        threads_per_run: intra-op threads of every run (set by the run itself); the default
            ``num_cpus`` of a run.
        address: a Ray cluster to connect to (``"auto"``, ``"ray://host:10001"``...); ``None``
            starts a local Ray unless one is already initialised in this process.
        num_cpus: CPUs reserved per run (a fraction is allowed); default ``threads_per_run``.
        num_gpus: GPUs reserved per run; a fraction lets several runs share one GPU.
        max_retries: times Ray re-executes a run whose worker process died.
        runtime_env: Ray ``runtime_env`` of every task (e.g. ``{"working_dir": "."}``).
        init_options: extra keyword arguments of ``ray.init`` (when this backend calls it).
    """

    name = "ray"
    needs_pickling = True

    def __init__(
        self,
        workers: int | None = None,
        threads_per_run: int = 1,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        max_retries: int = 2,
        runtime_env: Mapping[str, Any] | None = None,
        init_options: Mapping[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ValueError(
                f"backend_options={sorted(unknown)} are not options of backend='ray'; valid options: {list(OPTIONS)}."
            )
        self.workers = check_int("workers", workers, low=1, allow_none=True)
        self.threads = check_int("threads_per_run", threads_per_run, low=1)
        check_address(address)
        self.address = address
        cpus = self.threads if num_cpus is None else num_cpus
        self.num_cpus = check_float("backend_options['num_cpus']", cpus, low=0)
        self.num_gpus = check_float("backend_options['num_gpus']", num_gpus, low=0)
        self.max_retries = check_int("backend_options['max_retries']", max_retries, low=0)
        for key, value in (("runtime_env", runtime_env), ("init_options", init_options)):
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"backend_options[{key!r}]={value!r} is not valid: give a dict or None.")
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.init_options = dict(init_options or {})
        # Runs at once: ours to limit on a local Ray we start; a cluster (or a Ray the caller
        # started) places them by their resources itself.
        self.max_in_flight: int | None = None if address is not None or _caller_started_ray() else self.workers
        self.started = False  # this backend called ray.init, so it shuts Ray down at close
        self._remote: Any = None
        self._refs: dict[cf.Future, Any] = {}
        self._lock = threading.Lock()

    def task_options(self) -> dict[str, Any]:
        """The ``.options(...)`` of every run's task."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                                   "max_retries": self.max_retries, "retry_exceptions": False}
        # Ray workers bind to the driver's Lightning namespace before they unpickle the run.
        runtime_env = dict(self.runtime_env or {})
        runtime_env["env_vars"] = {_namespace.ENV: _namespace.NAME, **dict(runtime_env.get("env_vars") or {})}
        options["runtime_env"] = runtime_env
        return options

    def _connect(self) -> Any:
        import ray

        if self._remote is not None:
            return self._remote
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if self.address is None:
                kwargs["num_cpus"] = max(1, math.ceil((self.workers or 1) * max(self.num_cpus, 1)))
            kwargs.update(self.init_options)
            # reachable by TCP (checked when the backend was made) yet no answer: say so rather than hang silently
            watchdog = threading.Timer(CONNECT_WARNING_SECONDS, _still_connecting, (self.address,))
            watchdog.daemon = True
            watchdog.start()
            try:
                ray.init(address=self.address, **kwargs)
            except ConnectionError as err:  # e.g. "auto" with no cluster running on this node
                raise ConnectionError(
                    f"backend_options['address']={self.address!r}: Ray could not connect ({err}). {_CONNECT_HELP}"
                ) from err
            finally:
                watchdog.cancel()
            self.started = True
            if self.address is None and self.num_gpus > 0 and not ray.cluster_resources().get("GPU"):
                self.close(cancel=True)
                raise ValueError(
                    f"backend_options['num_gpus']={self.num_gpus} but the local Ray found no GPU: every run would "
                    "wait forever. Use num_gpus=0 (the default), or connect to a cluster with GPUs via address=."
                )
        else:
            self.max_in_flight = None
        self._remote = ray.remote(_run_task)
        return self._remote

    def submit(self, job: Any) -> cf.Future:
        remote = self._connect()
        # absolute: Ray's workers run in another directory, where '' or 'src' would name other folders
        paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        ref = remote.options(**self.task_options()).remote(dumps(job), paths)
        future: cf.Future = ref.future()
        with self._lock:
            self._refs[future] = ref
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: cf.Future) -> None:
        with self._lock:
            self._refs.pop(future, None)

    def restart(self) -> bool:
        return False  # a dead worker surfaces as that run's error (after max_retries), never as a broken pool

    def close(self, cancel: bool) -> None:
        if self._remote is None and not self.started:
            return  # never connected: nothing to stop
        import ray

        with self._lock:
            refs = list(self._refs.values())
            self._refs.clear()
        if cancel and ray.is_initialized():
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
        self._remote = None
        if self.started:
            self.started = False
            ray.shutdown()

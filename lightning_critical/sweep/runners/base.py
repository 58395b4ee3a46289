"""The runner contract: what a runner receives (:class:`Task`), what it returns (:func:`record`), and THE run envelope.

Every unit of work of a sweep is a *job*: a runner and the tasks it trains at once
(:class:`~lightning_critical.sweep.units.Job`). A worker calls ``runner.run(tasks)`` and
nothing else, for the default runner too, so a runner's ``run`` is what trains.

:func:`envelope` is what every bundled runner trains under, and what a user runner may use:
it gives a run its own threads and random states (the caller gets its own back), quiet
Lightning logs, turns Ctrl-C into ``KeyboardInterrupt``, an exception into a ``"failed"``
record with the traceback and the exception carried for ``errors="raise"``,
:class:`BranchRefused` into a ``"refused"`` record (the sweep retrains the run from scratch)
and :class:`MetricNotFound` into a fatal one (the sweep stops), and times the run.

Example (a runner that trains nothing, with the envelope)::

    >>> class Constant:
    ...     name, shares_prefixes = "constant", False
    ...     def batches(self, tasks):
    ...         return [list(tasks)]
    ...     def run(self, tasks):
    ...         return envelope(tasks, lambda ts: [{"metrics": {"value": 1.0}} for _ in ts])
    >>> isinstance(Constant(), Runner)
    True
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload, runtime_checkable

from lightning_critical.sweep.failures import carry
from lightning_critical.sweep.runners.isolation import isolated, quiet
from lightning_critical.sweep.spec import RunSpec, SweepSpec

RUNNER_OPTIONS: frozenset[str] = frozenset({"callbacks", "test", "save_model", "tensorboard"})
"""The ``lc.sweep.run`` options a runner may implement; a runner lists the ones it honours in an
optional ``supports`` attribute (all of them when it has none), and the sweep refuses the others."""


class MetricNotFound(ValueError):
    """A metric named in ``metrics=`` is not among what the run produced (the sweep stops: every run would miss it)."""


class BranchRefused(RuntimeError):
    """A branched run cannot end exactly as the same run trained from scratch; ``reason`` says why.

    Raised inside :func:`envelope` it makes a ``"refused"`` record: the sweep trains the run
    again from scratch and its row's ``branch_refused`` says why.

    Example::

        >>> err = BranchRefused("lr_schedulers[0].T_max: 6 -> 4")
        >>> err.reason
        'lr_schedulers[0].T_max: 6 -> 4'
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"branch refused: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return type(self), (self.reason,)


@dataclass
class Task:
    """One planned run, as a runner receives it (picklable when the spec is).

    ``run`` is the grid point (``windows``, ``seed``, ``params``), ``epochs`` its length,
    ``spec`` the sweep (factories, ``trainer`` arguments, ``metrics``, ``threads_per_run``;
    ``build_model(spec, run)`` and friends of :mod:`~lightning_critical.sweep.build` build a run's
    objects). A branched run starts from
    ``resume_path`` after ``branch_epoch`` epochs; ``save_paths`` are the branch checkpoints it
    writes for others; ``audit_path``: write the final weights there (the exactness audit).
    """

    spec: SweepSpec
    run: RunSpec
    run_id: str
    label: str
    out: str
    epochs: int
    branch_epoch: int = 0
    resume_path: str | None = None
    save_paths: dict[int, str] | None = None
    parent: str | None = None
    sweep_kind: str = "explicit"
    audit_path: str | None = None

    @property
    def log_dir(self) -> str | None:
        return os.path.join(self.out, "tensorboard", self.label) if self.spec.tensorboard else None


@runtime_checkable
class Runner(Protocol):
    """Trains planned runs and returns their records (see :mod:`lightning_critical.sweep.runners`)."""

    name: str
    shares_prefixes: bool

    def batches(self, tasks: list[Any]) -> list[list[Any]]: ...

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]: ...


def record(task: Any, status: str = "ok", metrics: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """A result record for ``task`` with the engine's defaults (trained from scratch, no logs).

    Example::

        >>> from types import SimpleNamespace
        >>> r = record(SimpleNamespace(run_id="abc", label="baseline_seed0", epochs=5), metrics={"loss": 0.1})
        >>> r["status"], r["epochs_trained"], r["metrics"]
        ('ok', 5, {'loss': 0.1})
    """
    out: dict[str, Any] = {
        "run_id": task.run_id, "label": task.label, "status": status, "error": None, "metrics": dict(metrics or {}),
        "epochs": task.epochs, "epochs_trained": task.epochs if status == "ok" else 0, "branch_epoch": 0,
        "parent": None, "branch_step": 0, "log_dir": None, "seconds": None,
    }
    out.update(extra)
    return out


STATUSES: tuple[str, ...] = ("ok", "failed", "refused")
"""The statuses a runner's record may say (see :func:`conform`)."""


def conform(rec: Any, task: Any, runner: str) -> dict[str, Any]:
    """``rec`` as the record of ``task``, or a ``"failed"`` one saying how runner ``runner`` broke the contract.

    A record is a dict with ``task``'s ``run_id`` (records come one per task, in order: a record
    of another run is never re-keyed) and a ``status`` among :data:`STATUSES`; any other key it
    lacks takes :func:`record`'s default (``task``'s ``branch_epoch``, ``parent``, ``log_dir``).

    Example::

        >>> from types import SimpleNamespace
        >>> task = SimpleNamespace(run_id="a1", label="w0-1_seed0", epochs=3, branch_epoch=0, parent=None,
        ...                        log_dir=None)
        >>> conform({"run_id": "a1", "status": "ok"}, task, "mine")["epochs_trained"]
        3
        >>> print(conform({"run_id": "b2", "status": "ok"}, task, "mine")["error"])  # doctest: +ELLIPSIS
        runner 'mine' returned the record of run 'b2' for run 'a1' (w0-1_seed0): a runner returns one record per ...
        >>> print(conform({"metrics": {}}, task, "mine")["error"])  # doctest: +ELLIPSIS
        runner 'mine': the record of run 'a1' (w0-1_seed0) has no 'run_id', no 'status' (lc.sweep.runners.record...
    """
    where = {"branch_epoch": task.branch_epoch, "parent": task.parent, "log_dir": task.log_dir}
    run = f"run {task.run_id!r} ({task.label})"
    if not isinstance(rec, Mapping):
        problem = f"runner {runner!r} returned a {type(rec).__name__} for {run}, not a record (a dict)"
    elif missing := [key for key in ("run_id", "status") if key not in rec]:
        problem = (f"runner {runner!r}: the record of {run} has no {', no '.join(map(repr, missing))} "
                   "(lc.sweep.runners.record(task, ...) makes one)")
    elif rec["run_id"] != task.run_id:
        problem = (f"runner {runner!r} returned the record of run {rec['run_id']!r} for {run}: a runner returns "
                   "one record per task, in the order of the tasks")
    elif rec["status"] not in STATUSES:
        problem = f"runner {runner!r}: the record of {run} says status {rec['status']!r}, not one of {STATUSES}"
    else:
        out = dict(rec)
        for key, value in record(task, str(rec["status"]), **where).items():
            out.setdefault(key, value)  # appended: a complete record keeps its own order
        return out
    return record(task, "failed", error=problem, **where)


Fields = Mapping[str, Any]


@overload
def envelope(tasks: Task, train: Callable[[Any], Fields]) -> dict[str, Any]: ...


@overload
def envelope(tasks: Sequence[Any], train: Callable[[Any], Sequence[Fields]]) -> list[dict[str, Any]]: ...


def envelope(tasks: Any, train: Callable[[Any], Any]) -> Any:
    """Train ``tasks`` as one unit with ``train(tasks)`` under the run envelope; their records.

    ``tasks``: one task (``train(task)`` returns that run's fields) or a sequence trained at
    once (``train(tasks)`` returns one mapping of fields per task, in order). The fields
    (``metrics``, ``epochs_trained``, ``global_step``, ... or ``status="failed"`` with an
    ``error``) update the task's :func:`record`, which also says its ``branch_epoch``,
    ``parent``, ``log_dir``, ``pid`` and ``seconds`` (of the whole unit). It runs with the
    first task's ``spec.threads_per_run`` threads, isolated (:mod:`.isolation`) and quiet.

    Outcomes: a return is ``"ok"`` (unless the fields say otherwise); an exception makes every
    task ``"failed"`` with its traceback and the exception carried (``"exception"``, for
    ``errors="raise"``: :mod:`lightning_critical.sweep.failures`); :class:`BranchRefused`
    makes them ``"refused"``; :class:`MetricNotFound` ``"failed"`` and ``"fatal"``; Ctrl-C
    (or ``SystemExit``) propagates as ``KeyboardInterrupt``.

    Example::

        >>> from types import SimpleNamespace
        >>> spec = SimpleNamespace(threads_per_run=1, tensorboard=False)
        >>> task = Task(spec, None, "r1", "w0-1_seed0", "out", epochs=3)
        >>> envelope(task, lambda t: {"metrics": {"loss": 0.5}})["status"]
        'ok'
        >>> rec = envelope([task], lambda ts: 1 / 0)[0]
        >>> rec["status"], rec["error"].splitlines()[0]
        ('failed', 'ZeroDivisionError: division by zero')
    """
    single = isinstance(tasks, Task) or not isinstance(tasks, Sequence)
    group: list[Any] = [tasks] if single else list(tasks)
    start = time.perf_counter()
    with isolated(group[0].spec.threads_per_run), quiet():
        try:
            out = train(tasks)
            rows = [out] if single else list(out)
            if len(rows) != len(group):
                raise RuntimeError(f"train returned {len(rows)} results for {len(group)} tasks")
            records = [_base(t, str(row.get("status", "ok")), row) for t, row in zip(group, rows, strict=True)]
        except (KeyboardInterrupt, SystemExit) as err:
            raise KeyboardInterrupt(f"run {_labels(group)} interrupted") from err
        except MetricNotFound as err:
            records = [_base(t, "failed", {"error": str(err), "fatal": True}) for t in group]
        except BranchRefused as err:  # the sweep trains these runs from scratch and records why
            records = [_base(t, "refused", {"refused": err.reason, "error": str(err)}) for t in group]
        except Exception as err:
            records = failed(group, err)
    seconds = time.perf_counter() - start
    for rec in records:
        rec["seconds"] = seconds
    return records[0] if single else records


def failed(tasks: Sequence[Any], err: Exception) -> list[dict[str, Any]]:
    """The ``"failed"`` records of ``tasks`` that ``err`` stopped (call it in the ``except`` that caught ``err``).

    Each holds the error with its traceback and the exception carried for ``errors="raise"``.

    Example::

        >>> from types import SimpleNamespace
        >>> spec = SimpleNamespace(threads_per_run=1, tensorboard=False)
        >>> try:
        ...     raise KeyError("lr")
        ... except KeyError as err:
        ...     rec = failed([Task(spec, None, "r1", "w0-1_seed0", "out", epochs=3)], err)[0]
        >>> rec["status"], rec["error"].splitlines()[0]
        ('failed', "KeyError: 'lr'")
    """
    error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=12)}"
    carried = carry(err, _labels(tasks))
    return [_base(t, "failed", {"error": error, "exception": carried}) for t in tasks]


def _base(task: Any, status: str, fields: Fields) -> dict[str, Any]:
    out = record(task, status, branch_epoch=getattr(task, "branch_epoch", 0), parent=getattr(task, "parent", None),
                 log_dir=getattr(task, "log_dir", None), pid=os.getpid())
    out.update(fields)
    return out


def _labels(group: Sequence[Any]) -> str:
    return group[0].label if len(group) == 1 else f"{group[0].label} (+{len(group) - 1} more)"

"""Runners: what turns the planned runs of a sweep into result records.

The engine (:func:`lightning_critical.sweep.run`) owns everything around training: the grid
(windows x seeds x swept values), the checks, the plan, the backend (serial, processes, an
Executor, Ray), the results store, the table and its summary. A *runner* owns only the training
itself. Every sweep has one; ``runner=None`` is :class:`LightningRunner`.

The interface (a :class:`Runner` is any object with these members, picklable when the backend
crosses processes)::

    class Runner:
        name: str                    # shown in messages, part of the sweep's identity
        shares_prefixes: bool        # True: the engine plans shared prefixes (branch checkpoints)
        supports: frozenset[str]     # optional: which of callbacks/test/save_model/tensorboard it honours
                                     # and submits one run at a time; False: no engine branching
        def batches(self, tasks: list[Task]) -> list[list[Task]]: ...
                                     # how the ready runs are grouped into units of work
        def run(self, tasks: Sequence[Task]) -> list[dict]: ...
                                     # train one unit: one result record per task, in order

What a runner receives: :class:`~lightning_critical.sweep.execute.Task` objects, one per run.
``task.run`` is the grid point (``windows``, ``seed``, ``params``), ``task.epochs`` its length,
``task.spec`` the sweep (factories, ``trainer`` arguments, ``metrics``, ``threads_per_run``;
``build_model(spec, run)``, ``build_datamodule``, ``build_deficits``, ``build_callbacks`` of
:mod:`~lightning_critical.sweep.build` build a run's objects), ``task.run_id`` / ``task.label``
its names and ``task.out`` the sweep directory.

What it returns, per task: ``{"run_id", "label", "status": "ok" | "failed", "error": str | None,
"metrics": {name: float}, "epochs", "epochs_trained", "branch_epoch", "parent", "log_dir",
"seconds"}`` (:func:`record` fills the defaults). A failing run is a record with
``status="failed"``, never an exception (an exception means the whole unit could not run; the
engine records every run of the unit as failed). A metric name the run did not produce is a
record with ``"fatal": True`` and the error listing what it produced: the engine stops the sweep.
The engine appends the records to ``<out>/results.jsonl`` and builds the same table, summary
and plot whatever the runner.

Two runners ship:

* :class:`LightningRunner` (the default): one ``pl.Trainer`` fit of a fresh model per run,
  branching shared prefixes (:mod:`lightning_critical.sweep.execute`).
* :class:`~lightning_critical.sweep.ensemble_runner.FactorizationEnsembleRunner`: all runs of
  one seed and swept values (deep matrix factorizations whose windows are ``TaskSwitch``
  schedules) trained at once as one vectorized
  :class:`~lightning_critical.models.FactorizationEnsemble`; same rows, far faster.

Example (a runner that trains nothing, to show the contract)::

    >>> class Constant:
    ...     name, shares_prefixes = "constant", False
    ...     def batches(self, tasks):
    ...         return [list(tasks)]
    ...     def run(self, tasks):
    ...         return [record(t, metrics={"value": 1.0}) for t in tasks]
    >>> isinstance(Constant(), Runner)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from lightning_critical.sweep.execute import execute

RUNNER_OPTIONS: frozenset[str] = frozenset({"callbacks", "test", "save_model", "tensorboard"})
"""The ``lc.sweep.run`` options a runner may implement; a runner lists the ones it honours in an
optional ``supports`` attribute (all of them when it has none), and the sweep refuses the others."""


@runtime_checkable
class Runner(Protocol):
    """Trains planned runs and returns their records (see the module docstring)."""

    name: str
    shares_prefixes: bool

    def batches(self, tasks: list[Any]) -> list[list[Any]]: ...

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]: ...


class LightningRunner:
    """The default runner: one ``pl.Trainer`` fit per run, shared prefixes branched from checkpoints.

    Example::

        >>> LightningRunner().batches(["a", "b"])
        [['a'], ['b']]
    """

    name = "lightning"
    shares_prefixes = True
    supports = RUNNER_OPTIONS

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        return [[t] for t in tasks]

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]:
        return [execute(t) for t in tasks]

    def __eq__(self, other: object) -> bool:
        return type(other) is LightningRunner

    def __hash__(self) -> int:
        return hash(LightningRunner)


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


def check_runner(runner: Any) -> Any:
    """``None`` -> :class:`LightningRunner`; anything else must have the runner interface.

    Example::

        >>> check_runner(None).name
        'lightning'
    """
    if runner is None:
        return LightningRunner()
    missing = [m for m in ("name", "shares_prefixes", "batches", "run") if not hasattr(runner, m)]
    if missing:
        raise TypeError(
            f"runner={runner!r} is not valid: it lacks {missing}. Give None (one Lightning fit per run), "
            "lc.sweep.FactorizationEnsembleRunner(), or an object with name, shares_prefixes, batches(tasks) and "
            "run(tasks) (see lightning_critical.sweep.runners)."
        )
    return runner

"""Runners: what turns the planned runs of a sweep into result records.

The engine (:func:`lightning_critical.sweep.run`) owns everything around training: the grid
(windows x seeds x swept values), the checks, the plan, the backend (serial, processes, an
Executor, Ray), the results store, the table and its summary. A *runner* owns only the training
itself. Every sweep has one; ``runner=None`` is :class:`LightningRunner`.

The contract (a :class:`Runner` is any object with these members, picklable when the backend
crosses processes)::

    class Runner:
        name: str                    # shown in messages, part of the sweep's identity
        shares_prefixes: bool        # True: the engine plans shared prefixes (branch checkpoints)
        supports: frozenset[str]     # optional: which of callbacks/test/save_model/tensorboard it honours
        def batches(self, tasks: list[Task]) -> list[list[Task]]: ...
                                     # how the runs are grouped into jobs (each task in exactly one)
        def run(self, tasks: Sequence[Task]) -> list[dict]: ...
                                     # train one job: one result record per task, in order

Every unit of work is a job of ``(runner, tasks)`` (:class:`~lightning_critical.sweep.units.Job`),
for the default runner too (one task per job): the worker calls ``runner.run(tasks)`` and
nothing else, so a subclass's ``run`` is what trains. ``batches`` receives every planned task
once, before any trains, in plan order when the runner shares prefixes (a parent before the
runs that branch from it), else in grid order (windows, swept values, seeds); its groups are
submitted as they become ready (a branched run once its parent wrote the checkpoint).

What a runner receives: :class:`~lightning_critical.sweep.runners.base.Task` objects, one per
run. ``task.run`` is the grid point (``windows``, ``seed``, ``params``), ``task.epochs`` its
length, ``task.spec`` the sweep (factories, ``trainer`` arguments, ``metrics``,
``threads_per_run``; ``build_model(spec, run)``, ``build_datamodule``, ``build_deficits``,
``build_callbacks`` of :mod:`~lightning_critical.sweep.build` build a run's objects),
``task.run_id`` / ``task.label`` its names and
``task.out`` the sweep directory.

What it returns, per task: ``{"run_id", "label", "status": "ok" | "failed" | "refused",
"error": str | None, "metrics": {name: float}, "epochs", "epochs_trained", "branch_epoch",
"parent", "log_dir", "seconds"}`` (:func:`record` fills the defaults). A failing run is a record
with ``status="failed"``, never an exception (an exception means the whole job could not run;
the engine records every run of the job as failed). A record of another run (out of order), or one
without ``run_id`` or ``status``, fails its run with an error naming the runner (:func:`~.base.conform`);
it is never re-keyed and never overwrites the run's own columns. A metric name the run did not produce is a
record with ``"fatal": True`` and the error listing what it produced: the engine stops the
sweep. ``"refused"`` (a branched run that cannot end as the same run from scratch) makes the
engine train the run again from scratch. :func:`envelope` gives all of this to a training
function: every bundled runner trains under it. The engine appends the records to
``<out>/results.jsonl`` and builds the same table, summary and plot whatever the runner.

Modules: ``base`` (the contract and the envelope), ``isolation`` / ``rng`` (what a run must
not leak: threads, random states, Ctrl-C, logs), ``lightning`` (:class:`LightningRunner`,
with ``branching``: starting a run from another's checkpoint, exactly or refused), ``ensemble``
(:class:`FactorizationEnsembleRunner`: all runs of one seed and swept values as one vectorized
factorization ensemble; same rows, far faster).

Example (a runner that trains nothing, to show the contract)::

    >>> class Constant:
    ...     name, shares_prefixes = "constant", False
    ...     def batches(self, tasks):
    ...         return [list(tasks)]
    ...     def run(self, tasks):
    ...         return [record(t, metrics={"value": 1.0}) for t in tasks]
    >>> isinstance(check_runner(Constant()), Runner), check_runner(None).name
    (True, 'lightning')
"""

from __future__ import annotations

from typing import Any

from lightning_critical.sweep.runners.base import (
    RUNNER_OPTIONS,
    BranchRefused,
    MetricNotFound,
    Runner,
    Task,
    envelope,
    failed,
    record,
)
from lightning_critical.sweep.runners.ensemble import FactorizationEnsembleRunner
from lightning_critical.sweep.runners.lightning import LightningRunner
from lightning_critical.sweep.runners.vectorized import AutoRunner, VectorizedRefused, VectorizedRunner

__all__ = [
    "RUNNER_OPTIONS",
    "AutoRunner",
    "BranchRefused",
    "FactorizationEnsembleRunner",
    "LightningRunner",
    "MetricNotFound",
    "Runner",
    "Task",
    "VectorizedRefused",
    "VectorizedRunner",
    "check_runner",
    "envelope",
    "failed",
    "record",
]


def check_runner(runner: Any) -> Any:
    """``None`` -> :class:`LightningRunner`; ``"vectorized"`` / ``"auto"`` -> :class:`VectorizedRunner` /
    :class:`AutoRunner`; anything else must have the runner contract.

    Example::

        >>> check_runner(None).name, check_runner("vectorized").name, check_runner("auto").name
        ('lightning', 'vectorized', 'auto')
    """
    if runner is None:
        return LightningRunner()
    if isinstance(runner, str):
        named = {"lightning": LightningRunner, "vectorized": VectorizedRunner, "auto": AutoRunner}
        if runner not in named:
            raise TypeError(f"runner={runner!r} is not valid; choose one of {tuple(named)}, None or a runner object.")
        return named[runner]()
    missing = [m for m in ("name", "shares_prefixes", "batches", "run") if not hasattr(runner, m)]
    if missing:
        raise TypeError(
            f"runner={runner!r} is not valid: it lacks {missing}. Give None (one Lightning fit per run), "
            "lc.sweep.FactorizationEnsembleRunner(), or an object with name, shares_prefixes, batches(tasks) and "
            "run(tasks) (see lightning_critical.sweep.runners)."
        )
    return runner

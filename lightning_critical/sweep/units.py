"""Units of work: what a backend runs, in this process or pickled for another one.

Every unit is a :class:`Job`: a runner and the tasks it trains at once (one task per job for
the default runner). :func:`run_unit` runs one by calling ``runner.run(tasks)``, the only way
anything trains (a ``run`` that raises makes every task of the job ``"failed"`` with that
error, as :func:`~lightning_critical.sweep.runners.base.envelope` would); :func:`dumps` /
:func:`run_payload` carry it to a worker process or a Ray task and back. :func:`job_groups`
checks a runner's grouping of the planned runs into jobs. Backends know nothing else of
runners or training.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_critical.sweep.runners.base import failed


@dataclass
class Job:
    """A unit of work a backend executes: ``runner.run(tasks)`` (picklable when the runner and tasks are)."""

    runner: Any
    tasks: list[Any]


def run_unit(job: Job) -> list[dict[str, Any]]:
    """The records of a :class:`Job`: ``job.runner.run(job.tasks)``, one per task, in order.

    Example::

        >>> class Echo:
        ...     def run(self, tasks):
        ...         return [{"run_id": t} for t in tasks]
        >>> run_unit(Job(Echo(), ["a", "b"]))
        [{'run_id': 'a'}, {'run_id': 'b'}]
    """
    if not isinstance(job, Job):
        raise TypeError(f"a backend was given {type(job).__name__}, not a units.Job (a runner and its tasks).")
    try:
        records = job.runner.run(job.tasks)
    except Exception as err:  # the whole job could not run: each of its runs failed, with this error
        return failed(job.tasks, err)
    if isinstance(records, (Mapping, str, bytes)) or not isinstance(records, Sequence):
        raise TypeError(f"runner {getattr(job.runner, 'name', job.runner)!r}: run(tasks) returned "
                        f"{type(records).__name__}, not a list of records (one per task, in order).")
    return list(records)


def job_groups(runner: Any, tasks: Sequence[Any], asked: dict[tuple[str, ...], list[list[str]]] | None = None
               ) -> list[list[str]]:
    """The run ids of each job, from ``runner.batches(tasks)``: every task in exactly one non-empty job.

    ``asked``: the jobs of earlier calls, by their tasks' run ids: ``batches`` is asked once for the same
    tasks (the sweep asks before claiming its directory, so that a refusal writes nothing, and again after).

    Example::

        >>> from types import SimpleNamespace
        >>> class Pairs:
        ...     def batches(self, tasks):
        ...         return [list(tasks[i:i + 2]) for i in range(0, len(tasks), 2)]
        >>> job_groups(Pairs(), [SimpleNamespace(run_id=r) for r in "abc"])
        [['a', 'b'], ['c']]
    """
    key = tuple(t.run_id for t in tasks)
    if asked is not None and key in asked:
        return asked[key]
    groups = [[t.run_id for t in group] for group in runner.batches(list(tasks))]
    given = [rid for group in groups for rid in group]
    expected = [t.run_id for t in tasks]
    if sorted(given) != sorted(expected) or any(not group for group in groups):
        missing = sorted(set(expected) - set(given))
        repeated = sorted({rid for rid in given if given.count(rid) > 1})
        raise ValueError(
            f"runner {getattr(runner, 'name', runner)!r}: batches(tasks) must put every task in exactly one "
            f"non-empty group; missing {missing}, repeated {repeated}, unknown {sorted(set(given) - set(expected))}.")
    if asked is not None:
        asked[key] = groups
    return groups


def dumps(obj: Any) -> bytes:
    """Pickle with cloudpickle when it is installed (lambdas, notebook functions), else with pickle."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - depends on the environment
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


def run_payload(payload: bytes) -> Any:
    """Worker entry point: unpickle a :class:`Job` (see :func:`dumps`) and run it."""
    return run_unit(pickle.loads(payload))

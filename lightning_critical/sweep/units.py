"""Units of work: what a backend runs, in this process or pickled for another one.

The engine hands every backend :class:`Batch` objects (a runner and the tasks it trains at
once); :func:`run_unit` runs one, and :func:`dumps` / :func:`run_payload` carry it to a worker
process or a Ray task and back. Backends know nothing else of runners or training.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from lightning_critical.sweep.execute import execute


@dataclass
class Batch:
    """A unit of work a backend executes: ``runner.run(tasks)`` (picklable when the runner and tasks are)."""

    runner: Any
    tasks: list[Any]


def run_unit(unit: Any) -> Any:
    """The records of a :class:`Batch` (one per task), or the record of a single task.

    Example::

        >>> class Echo:
        ...     def run(self, tasks):
        ...         return [{"run_id": t} for t in tasks]
        >>> run_unit(Batch(Echo(), ["a", "b"]))
        [{'run_id': 'a'}, {'run_id': 'b'}]
    """
    if isinstance(unit, Batch):
        return unit.runner.run(unit.tasks)
    return execute(unit)


def dumps(obj: Any) -> bytes:
    """Pickle with cloudpickle when it is installed (lambdas, notebook functions), else with pickle."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - depends on the environment
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


def run_payload(payload: bytes) -> Any:
    """Worker entry point: unpickle a unit (see :func:`dumps`) and run it."""
    return run_unit(pickle.loads(payload))

"""The schedule file beside every run's logs: what was scheduled when, in a form any tool can read.

Every run with a logger writes ``schedule.json`` into its log directory at the end of ``fit``
(:mod:`lightning_critical.views` does), whatever the logger: TensorBoard, CSV, W&B or MLflow.
It holds::

    {"format": 1,
     "global_step": 24, "epochs": 6, "steps_per_epoch": 4, "seed": 0,
     "deficits": [{"name": "freeze/right", "kind": "PathwayDeficit/freeze", "target": "right",
                   "windows": [{"start": 2, "end": 4, "unit": "epoch"}], "steps": [[8, 16]]}],
     "tasks": [{"target": "datamodule", "tasks": ["pretrain", "target"], "unit": "epoch",
                "initial": "pretrain", "schedule": [{"at": 3, "task": "target"}],
                "steps": [[0, "pretrain"], [12, "target"]]}],
     "run": {...}}

``steps`` are optimizer steps (``trainer.global_step``): half-open ``[start, end)`` windows cut
at the end of training, and the step from which each task trains. ``seed`` is the global seed
(``seed_everything``), a deficit's ``seed`` the one its random draws use; ``run`` holds what a
driver adds (a sweep: the run's window, seed and swept values). :func:`read_schedule` reads it
back for :mod:`lightning_critical.plots`. This module knows nothing about Lightning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

FILE_NAME = "schedule.json"
FORMAT = 1


def window_steps(
    start: int, end: int | None, unit: str, steps_per_epoch: int | None, last_step: int
) -> tuple[int, int] | None:
    """A window ``[start, end)`` in ``unit`` as optimizer steps, cut at ``last_step`` (the end of training).

    ``None`` when it lies after the end, or when it is in epochs and the epoch's length is unknown.

    Example::

        >>> window_steps(2, 4, "epoch", 4, last_step=24), window_steps(0, None, "step", None, last_step=30)
        ((8, 16), (0, 30))
        >>> window_steps(10, 20, "epoch", 4, last_step=24), window_steps(2, 4, "epoch", None, last_step=24)
        (None, None)
    """
    scale = 1 if unit == "step" else steps_per_epoch
    if scale is None:
        return None
    first = start * scale
    stop = last_step if end is None else min(end * scale, last_step)
    return (first, stop) if first < stop else None


def switch_steps(
    schedule: Mapping[int, str], unit: str, initial: str | None, steps_per_epoch: int | None, last_step: int
) -> list[tuple[int, str]] | None:
    """``[(step, task), ...]``: from which optimizer step each task trains (``initial`` from step 0).

    Switches at or after ``last_step`` trained nothing and are left out; ``None`` when the
    schedule is in epochs and the epoch's length is unknown.

    Example::

        >>> switch_steps({3: "target"}, "epoch", "pretrain", 4, last_step=24)
        [(0, 'pretrain'), (12, 'target')]
        >>> switch_steps({0: "a", 50: "b"}, "step", None, None, last_step=40)
        [(0, 'a')]
    """
    scale = 1 if unit == "step" else steps_per_epoch
    if scale is None:
        return None
    out: list[tuple[int, str]] = [] if initial is None or 0 in schedule else [(0, initial)]
    for time, task in sorted(schedule.items()):
        step = int(time) * scale
        if step < last_step or step == 0:
            out.append((step, task))
    return out


def write_schedule(directory: str | os.PathLike[str], schedule: Mapping[str, Any]) -> str:
    """Write ``schedule`` as ``<directory>/schedule.json`` (atomically: a reader never sees half a file)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILE_NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"format": FORMAT, **schedule}, fh, indent=1, default=str)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_schedule(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The schedule file of a run directory, or ``None`` when it has none.

    Raises:
        ValueError: the file is not a schedule file (the message names it).

    Example::

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> read_schedule(d) is None
        True
        >>> _ = write_schedule(d, {"deficits": [{"name": "blur", "steps": [[0, 5]]}]})
        >>> deficit_windows(read_schedule(d))
        {'blur': [(0, 5)]}
    """
    path = os.path.join(directory, FILE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            schedule = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a readable schedule file ({err}); delete it or write it again.") from err
    if not isinstance(schedule, dict) or not isinstance(schedule.get("format"), int):
        raise ValueError(f"{path!r} is not a schedule file: it lacks the 'format' entry lightning-critical writes.")
    return schedule


def deficit_windows(schedule: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """``{deficit name: [(start, end), ...]}`` in optimizer steps, from a schedule (deficits that never ran: none)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for entry in schedule.get("deficits", ()):
        spans = [(a, b) for a, b in entry.get("steps") or ()]
        if spans:
            out.setdefault(str(entry["name"]), []).extend(spans)
    return out


def task_switches(schedule: Mapping[str, Any]) -> dict[str, list[tuple[int, str]]]:
    """``{target: [(step, task), ...]}``: the step from which each task trained, from a schedule.

    Example::

        >>> task_switches({"tasks": [{"target": "datamodule", "steps": [[0, "a"], [12, "b"]]}]})
        {'datamodule': [(0, 'a'), (12, 'b')]}
    """
    return {str(e["target"]): [(int(s), str(t)) for s, t in e.get("steps") or ()] for e in schedule.get("tasks", ())}

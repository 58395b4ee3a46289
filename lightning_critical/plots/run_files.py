"""Read a run directory back: the monitors' history tables and the deficits' windows.

A *run directory* is a logger's ``log_dir`` (for ``TensorBoardLogger``,
``<save_dir>/<name>/version_<n>``). It holds what the callbacks wrote during ``fit``:

* the monitors' history CSVs (``spectral_history.csv``, ``fisher_history.csv``, or the
  ``history_file`` given to a monitor; any CSV in the directory or its subfolders with the
  history header ``step,epoch,target,metric,index,value`` is read, rows of metric
  ``fisher_trace`` go to the Fisher table, every other row to the spectral table);
* ``schedule.json`` (:mod:`lightning_critical.schedule_file`), which every run with a logger
  writes (TensorBoard, CSV, W&B, MLflow): each deficit's windows in optimizer steps and the step
  from which each task of a ``TaskSwitch`` trained;
* for runs older than the schedule file, TensorBoard's event file(s), where every deficit logs
  ``deficit/<name>`` (1 inside its window, 0 outside): a window opens at the first step that
  reads 1 and closes at the next step that reads 0 (or at the last logged step, the end of
  training). Without either there are no windows; give them to the plotting functions instead.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical.history import COLUMNS, read_history
from lightning_critical.schedule_file import FILE_NAME, deficit_windows, read_schedule, task_switches

FISHER_METRIC = "fisher_trace"
DEFAULT_FILES: tuple[str, ...] = ("spectral_history.csv", "fisher_history.csv")
EVENT_PREFIX = "events.out.tfevents."
Windows = Mapping[str, Sequence[tuple[float, float]]]


@dataclass
class Run:
    """The tables of one run directory (see :func:`load_run`).

    Attributes:
        directory: the run directory.
        spectral: the :class:`~lightning_critical.SpectralMonitor` history (tidy: step, epoch,
            target, metric, index, value); empty without one.
        fisher: the :class:`~lightning_critical.FisherMonitor` history (metric ``fisher_trace``);
            empty without one.
        windows: ``{deficit name: [(start, end), ...]}``, half-open windows in optimizer steps
            read from ``schedule.json`` (else from an event file's ``deficit/<name>`` scalars);
            empty without either.
        switches: ``{target: [(step, task), ...]}``: the step from which each task trained
            (``schedule.json`` of a run with a ``TaskSwitch``).
        schedule: the whole ``schedule.json`` (``None`` for a run without one).
        steps_per_epoch: optimizer steps per epoch when the histories tell (two Fisher records
            at different epochs), else ``None``.
        files: the history files read.
    """

    directory: str
    spectral: pd.DataFrame
    fisher: pd.DataFrame
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    steps_per_epoch: float | None = None
    files: list[str] = field(default_factory=list)
    switches: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None


def _is_run_dir(path: str) -> bool:
    if glob.glob(os.path.join(path, EVENT_PREFIX + "*")):
        return True
    return any(os.path.exists(os.path.join(path, name)) for name in ("hparams.yaml", FILE_NAME))


def _history_files(directory: str) -> list[str]:
    """CSV files with the monitors' header in ``directory`` and its subfolders, skipping nested runs."""
    found = []
    for root, dirs, files in os.walk(directory):
        # A subfolder that is a run of its own (version_1 beside version_0's files) is not ours.
        dirs[:] = sorted(d for d in dirs if not _is_run_dir(os.path.join(root, d)))
        for name in sorted(files):
            if not name.endswith(".csv"):
                continue
            path = os.path.join(root, name)
            with open(path, newline="") as fh:
                if next(csv.reader(fh), None) == list(COLUMNS):
                    found.append(path)
    return found


def _steps_per_epoch(table: pd.DataFrame) -> float | None:
    """Steps between records of consecutive epochs of an every-epoch monitor (the Fisher's)."""
    if table.empty:
        return None
    firsts = table.groupby("epoch")["step"].min().sort_index()
    if len(firsts) < 2:
        return None
    ratios = np.diff(firsts.to_numpy(float)) / np.diff(firsts.index.to_numpy(float))
    return float(np.median(ratios))


def windows_from_indicator(points: Sequence[tuple[int, float]]) -> list[tuple[float, float]]:
    """Half-open ``[start, end)`` windows from a 0/1 indicator logged at some steps.

    A window opens at the first step that reads 1 (> 0.5) and closes at the next step that
    reads 0; one still open at the last point closes there. When a step was logged twice (a
    resumed run) the later value wins.

    Example::

        >>> windows_from_indicator([(0, 0.0), (7, 0.0), (8, 1.0), (15, 1.0), (16, 0.0), (24, 0.0)])
        [(8, 16)]
        >>> windows_from_indicator([(0, 1.0), (9, 1.0)])
        [(0, 9)]
    """
    last: dict[int, float] = {}
    for step, value in points:
        last[int(step)] = float(value)
    windows: list[tuple[float, float]] = []
    start: int | None = None
    steps = sorted(last)
    for step in steps:
        on = last[step] > 0.5
        if on and start is None:
            start = step
        elif not on and start is not None:
            windows.append((start, step))
            start = None
    if start is not None and steps[-1] > start:
        windows.append((start, steps[-1]))
    return windows


def read_deficit_windows(run_dir: str) -> dict[str, list[tuple[float, float]]]:
    """The deficits' windows, in optimizer steps, from the ``deficit/<name>`` scalars of the event files in ``run_dir``.

    Returns ``{}`` when ``run_dir`` holds no TensorBoard event file or no ``deficit/`` scalar.
    """
    if not glob.glob(os.path.join(run_dir, EVENT_PREFIX + "*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Scalars only: every point of them, nothing of the (large) histograms and images.
    guidance = {"scalars": 0, "histograms": 1, "images": 1, "audio": 1, "tensors": 1, "compressedHistograms": 1}
    acc = EventAccumulator(run_dir, size_guidance=guidance)
    acc.Reload()
    out = {}
    for tag in sorted(acc.Tags().get("scalars", [])):
        if tag.startswith("deficit/"):
            events = sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))
            windows = windows_from_indicator([(e.step, e.value) for e in events])
            if windows:
                out[tag[len("deficit/"):]] = windows
    return out


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read the monitors' histories and the deficits' windows of one run directory.

    Args:
        run_dir: a logger's ``log_dir`` (e.g. ``lightning_logs/version_0``).

    Raises:
        ValueError: ``run_dir`` is not a directory, holds an unreadable ``schedule.json``, or holds
            no monitor history (the message
            says what was looked for, and lists the runs in it when it is a parent folder
            such as ``lightning_logs``).

    Example::

        >>> import tempfile
        >>> load_run(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... holds no monitor history: looked for CSV files with the header ...
    """
    directory = os.fspath(run_dir)
    if not os.path.isdir(directory):
        raise ValueError(f"run_dir={directory!r} is not a directory: give a logger's log_dir, "
                         "e.g. lightning_logs/version_0.")
    files = _history_files(directory)
    if not files:
        runs = [os.path.relpath(root, directory) for root, _, _ in os.walk(directory)
                if root != directory and _is_run_dir(root) and _history_files(root)]
        hint = (f" It holds runs of its own: {sorted(runs)[:10]}; pass one of them." if runs else
                " Give the log directory of a run with a SpectralMonitor or FisherMonitor and a logger "
                "(without a logger the monitors write no file).")
        raise ValueError(
            f"run_dir={directory!r} holds no monitor history: looked for CSV files with the header "
            f"{','.join(COLUMNS)} (the monitors' {' / '.join(DEFAULT_FILES)}) in it and its subfolders.{hint}"
        )
    tables = [read_history(p) for p in files]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(COLUMNS))
    table = table.drop_duplicates(["step", "target", "metric", "index"], keep="last")
    is_fisher = table["metric"] == FISHER_METRIC
    fisher = table[is_fisher].reset_index(drop=True)
    schedule = read_schedule(directory)
    per_epoch = schedule.get("steps_per_epoch") if schedule else None
    return Run(
        directory=directory,
        spectral=table[~is_fisher].reset_index(drop=True),
        fisher=fisher,
        windows=deficit_windows(schedule) if schedule else read_deficit_windows(directory),
        steps_per_epoch=float(per_epoch) if per_epoch else _steps_per_epoch(fisher),
        files=files,
        switches=task_switches(schedule) if schedule else {},
        schedule=schedule,
    )

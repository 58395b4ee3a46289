"""The long-format record table (step, epoch, target, metric, index, value), in memory and in a CSV file.

Monitors and the factorization ensemble write their records through it; plots read it back.

Semantics (shared by every monitor):

* **One fit, one history.** :meth:`History.start` is called when a fit starts training, with
  the number of optimizer steps already done (0 for a new run, the checkpoint's step for a
  resumed one). Records at or after that step are dropped, in memory and in the file, so a
  monitor reused for a second ``fit`` starts empty, a second run into the same directory
  replaces the first run's file (the monitor warns), and a run resumed after a crash continues
  the file without duplicating the records taken after the checkpoint.
* **Only our own files.** ``history_file`` is a relative path inside the run's log directory
  (no absolute paths, no ``..``, not Lightning's ``metrics.csv`` / ``hparams.yaml`` / event
  files); an existing file is only ever touched if it has exactly our header, and a directory
  never is.
* **Without a logger there is no log directory**, so no file is written; records stay in memory.
* **A crash can cut the last line short.** Rows that do not parse are dropped when the file
  is read back (they were written after the checkpoint a resume starts from).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

COLUMNS: tuple[str, ...] = ("step", "epoch", "target", "metric", "index", "value")
Record = tuple[int, int, str, str, int, float]
RESERVED_FILES: tuple[str, ...] = ("metrics.csv", "hparams.yaml")
RESERVED_PREFIXES: tuple[str, ...] = ("events.out.tfevents",)


def check_history_file(value: Any) -> str | None:
    """Validate a monitor's ``history_file`` argument: ``None`` or a relative path inside the log directory.

    Example::

        >>> check_history_file("spectral_history.csv")
        'spectral_history.csv'
        >>> check_history_file("../../elsewhere.csv")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: history_file='../../elsewhere.csv' is not valid: it must be a relative path inside the run's
        log directory (no '..').
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"history_file={value!r} is not valid: give a file name such as 'history.csv', or None for no file."
        )
    norm = os.path.normpath(value)
    if os.path.isabs(value) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise ValueError(
            f"history_file={value!r} is not valid: it must be a relative path inside the run's log directory (no '..')."
        )
    base = os.path.basename(norm)
    if base in RESERVED_FILES or base.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"history_file={value!r} is not valid: {base!r} belongs to Lightning or TensorBoard; choose another name."
        )
    return value


def _parse(row: list[str]) -> Record | None:
    """One CSV row as a record, or ``None`` if it is malformed (e.g. cut short by a crash)."""
    if len(row) != len(COLUMNS):
        return None
    try:
        return (int(row[0]), int(row[1]), row[2], row[3], int(row[4]), float(row[5]))
    except ValueError:
        return None


def check_history_path(path: str) -> None:
    """Raise a ``ValueError`` unless ``path`` is absent, empty or a history written by a monitor.

    Example::

        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "notes.csv")
        >>> with open(path, "w") as fh:
        ...     _ = fh.write("a,b\\n1,2\\n")
        >>> check_history_path(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ... exists and is not a monitor history (its header is ['a', 'b'], ...
    """
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a monitor history: choose another history_file.")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), None)
    if header != list(COLUMNS):
        raise ValueError(
            f"{path!r} exists and is not a monitor history (its header is {header}, expected {list(COLUMNS)}); "
            "refusing to write into it: choose another history_file."
        )


def _read_records(path: str) -> list[Record]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        return [r for r in map(_parse, reader) if r is not None]


class History:
    """Records ``(step, epoch, target, metric, index, value)``; ``index`` is -1 for scalars.

    ``path`` (set by :meth:`start`) receives every record as soon as it is added, so a crashed
    or running job can be analysed from disk; only one process (rank zero) should write it.

    Example::

        >>> h = History()
        >>> h.start(None, from_step=0)
        0
        >>> h.extend([(0, 0, "w", "stable_rank", -1, 1.5)], write=False)
        >>> h.to_frame().value.tolist()
        [1.5]
        >>> h.start(None, from_step=0)   # a new fit starts empty
        1
        >>> len(h.to_frame())
        0
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.path: str | None = None

    def start(self, path: str | None, from_step: int) -> int:
        """Begin a fit that starts after ``from_step`` optimizer steps; return how many records were dropped.

        Keeps the records taken before ``from_step`` (in memory, and in ``path`` if given), so
        a resumed run continues its history and a new run (``from_step=0``) starts empty. When
        memory holds nothing but ``path`` has this run's earlier records (a resume in a new
        process), they are read back so :meth:`to_frame` shows the whole run.

        Raises:
            ValueError: ``path`` exists but is not a history written by a monitor.
        """
        dropped = sum(1 for r in self.records if r[0] >= from_step)
        self.records = [r for r in self.records if r[0] < from_step]
        self.path = None
        if path is None:
            return dropped
        check_history_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        kept: list[Record] = []
        if os.path.exists(path) and os.path.getsize(path) > 0:
            on_disk = _read_records(path)
            kept = [r for r in on_disk if r[0] < from_step]
            dropped = max(dropped, len(on_disk) - len(kept))
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows(kept)
        self.path = path
        if not self.records and kept:
            self.records = kept
        return dropped

    def close(self) -> None:
        self.path = None

    def extend(self, records: Iterable[Record], write: bool = True) -> None:
        new = list(records)
        self.records.extend(new)
        if write and self.path is not None and new:
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerows(new)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame.from_records(self.records, columns=list(COLUMNS))


def read_history(path: str) -> pd.DataFrame:
    """Read a history CSV written by a monitor back into the tidy table.

    Target and metric names stay strings (a target called ``"0"`` or ``"nan"`` is not turned
    into a number), and rows cut short by a crash are skipped.

    Raises:
        ValueError: ``path`` is not a monitor history.
    """
    check_history_path(path)
    return pd.DataFrame.from_records(_read_records(path) if os.path.exists(path) else [], columns=list(COLUMNS))

"""A tidy, append-only table of monitor records, kept in memory and mirrored to a CSV file."""

from __future__ import annotations

import csv
import os
from typing import Iterable, Optional

import pandas as pd

COLUMNS: tuple[str, ...] = ("step", "epoch", "target", "metric", "index", "value")
Record = tuple[int, int, str, str, int, float]


class History:
    """Records ``(step, epoch, target, metric, index, value)``; ``index`` is -1 for scalars.

    ``path`` (set with :meth:`open`) receives every record as soon as it is added, so a
    crashed or running job can be analysed from disk; only one process should write it.

    Example::

        >>> h = History()
        >>> h.extend([(0, 0, "w", "stable_rank", -1, 1.5)], write=False)
        >>> h.to_frame().value.tolist()
        [1.5]
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.path: Optional[str] = None

    def open(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            with open(path, "w", newline="") as fh:
                csv.writer(fh).writerow(COLUMNS)

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
    """Read a history CSV written by a monitor back into the tidy table."""
    return pd.read_csv(path)

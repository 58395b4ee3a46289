"""Window grids of a critical-period sweep: which deficit window(s) each run gets.

Two curves define a critical period (Achille, Rovere & Soatto, ICLR 2019): the *removal*
curve (deficit during ``[0, k)``, final metric against ``k``) and the *sliding-window* curve
(a deficit of fixed length during ``[k, k + length)``, metric against ``k``). Every grid
includes the no-deficit baseline exactly once.

This module knows nothing about Lightning.
"""

from __future__ import annotations

import itertools
import numbers
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lightning_critical._checks import check_int
from lightning_critical.schedule import Window, check_unit

Kind = Literal["removal", "sliding", "explicit"]
RunWindows = tuple[Window, ...]
"""The windows of one run, sorted by start; ``()`` is the no-deficit baseline."""


@dataclass(frozen=True)
class GridEntry:
    """One point of a grid: the run's deficit windows (``()`` = baseline) and, optionally, its own length.

    ``max_epochs`` is ``None`` when the run trains for the sweep's ``max_epochs``.
    """

    windows: RunWindows
    max_epochs: int | None = None

    @property
    def baseline(self) -> bool:
        return not self.windows

    def label(self) -> str:
        """A short, file-system safe name: ``baseline``, ``w0-5``, ``w0-5+w10-15``, ``w200-400s`` (steps)."""
        if not self.windows:
            return "baseline"
        suffix = "s" if self.windows[0].unit == "step" else ""
        return "+".join(f"w{w.start}-{w.end}{suffix}" for w in self.windows)


@dataclass(frozen=True)
class WindowGrid:
    """The windows of a sweep: a tuple of :class:`GridEntry`, the baseline first, and the grid's kind.

    Build it with :func:`removal`, :func:`sliding` or :func:`windows`.

    Example::

        >>> grid = removal([0, 5, 10])
        >>> [e.label() for e in grid.entries], grid.kind, grid.unit
        (['baseline', 'w0-5', 'w0-10'], 'removal', 'epoch')
    """

    entries: tuple[GridEntry, ...]
    kind: Kind
    unit: str = "epoch"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Any:
        return iter(self.entries)


def _check_points(name: str, values: Any, low: int) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "__iter__"):
        raise ValueError(f"{name}={values!r} is not valid: give a list of integers.")
    points = [check_int(f"{name}[{i}]", v, low=low) for i, v in enumerate(list(values))]
    if not points:
        raise ValueError(f"{name}=[] is empty: give at least one value.")
    duplicates = sorted({p for p in points if points.count(p) > 1})
    if duplicates:
        raise ValueError(f"{name}={list(values)!r} repeats {duplicates}: give each value once.")
    return sorted(points)


def removal(ends: Iterable[int], unit: str = "epoch", epochs_after: int | None = None) -> WindowGrid:
    """The removal grid: one run with the deficit during ``[0, k)`` for each ``k`` in ``ends``.

    ``k = 0`` is the no-deficit baseline, which is always included (once).

    Args:
        ends: when the deficit is removed, in ``unit`` (integers ``>= 0``, no repeats).
        unit: ``"epoch"`` or ``"step"`` (optimizer steps).
        epochs_after: if given (epoch units only), the run with end ``k`` trains ``k + epochs_after``
            epochs (the classic protocol: a fixed number of clean epochs after the deficit), so
            the baseline trains ``epochs_after`` epochs. Otherwise every run trains the sweep's
            ``max_epochs``.

    Raises:
        ValueError: empty or repeated ends, a negative or non-integer end, a bad unit or
            ``epochs_after``.

    Example::

        >>> [e.label() for e in removal([10, 20])]
        ['baseline', 'w0-10', 'w0-20']
        >>> [e.max_epochs for e in removal([0, 10], epochs_after=30)]
        [30, 40]
    """
    unit = check_unit(unit)
    points = _check_points("ends", ends, low=0)
    _check_epochs_after(epochs_after, unit)
    entries = [GridEntry((), epochs_after)]
    entries += [GridEntry((Window(0, k, unit),), None if epochs_after is None else k + epochs_after)
                for k in points if k > 0]
    return WindowGrid(tuple(entries), "removal", unit)


def sliding(onsets: Iterable[int], length: int, unit: str = "epoch", epochs_after: int | None = None) -> WindowGrid:
    """The sliding-window grid: one run with the deficit during ``[k, k + length)`` per onset ``k``, plus the baseline.

    Args:
        onsets: when each window starts, in ``unit`` (integers ``>= 0``, no repeats).
        length: every window's length, in ``unit`` (``>= 1``).
        unit: ``"epoch"`` or ``"step"`` (optimizer steps).
        epochs_after: if given (epoch units only), the run with onset ``k`` trains
            ``k + length + epochs_after`` epochs: every window is followed by the same number of
            clean epochs, and the baseline trains as long as the latest window's run
            (``max(onsets) + length + epochs_after``). Otherwise every run trains the sweep's
            ``max_epochs``, and late windows get fewer clean epochs than early ones (the sweep
            warns, see :func:`uneven_clean_epochs`).

    Raises:
        ValueError: empty or repeated onsets, a negative onset, ``length < 1``, a bad unit or
            ``epochs_after``.

    Example::

        >>> [e.label() for e in sliding([0, 10], length=5)]
        ['baseline', 'w0-5', 'w10-15']
        >>> [e.max_epochs for e in sliding([0, 10], length=5, epochs_after=20)]
        [35, 25, 35]
    """
    unit = check_unit(unit)
    points = _check_points("onsets", onsets, low=0)
    length = check_int("length", length, low=1)
    _check_epochs_after(epochs_after, unit)
    after = None if epochs_after is None else length + epochs_after
    entries = [GridEntry((), None if after is None else max(points) + after)]
    entries += [GridEntry((Window(k, k + length, unit),), None if after is None else k + after) for k in points]
    return WindowGrid(tuple(entries), "sliding", unit)


def _check_epochs_after(epochs_after: int | None, unit: str) -> None:
    if epochs_after is not None:
        check_int("epochs_after", epochs_after, low=1)
        if unit != "epoch":
            raise ValueError(f"epochs_after={epochs_after!r} needs unit='epoch', not unit={unit!r}.")


class CleanEpochsWarning(UserWarning):
    """A grid gives its windows different numbers of clean epochs after them (see :func:`uneven_clean_epochs`)."""


def clean_epochs(grid: WindowGrid, max_epochs: int) -> dict[str, int]:
    """Epochs each windowed run trains after its last window ends (epoch units; ``{}`` for step grids).

    Example::

        >>> clean_epochs(sliding([0, 5, 10], length=5), max_epochs=20)
        {'w0-5': 15, 'w5-10': 10, 'w10-15': 5}
    """
    if grid.unit != "epoch":
        return {}
    ends = {e: [w.end for w in e.windows] for e in grid if e.windows}
    return {e.label(): (e.max_epochs or max_epochs) - max(int(end) for end in stops)
            for e, stops in ends.items() if None not in stops}


def uneven_clean_epochs(grid: WindowGrid, max_epochs: int) -> str | None:
    """Warn (a :class:`CleanEpochsWarning`) when late windows get fewer clean epochs than early ones; the message.

    Under a fixed ``max_epochs`` a window that ends later leaves fewer epochs to recover in, so
    a late window's smaller effect can be the shorter recovery rather than a closed critical
    period. ``epochs_after=`` (:func:`removal`, :func:`sliding`) gives every window the same.
    Only :func:`removal` and :func:`sliding` grids warn: the windows of an explicit grid
    (:func:`windows`, e.g. the paper's early / middle / late deficits in one fixed-length run)
    are placed as their author chose.

    Example::

        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = uneven_clean_epochs(sliding([0, 10], length=5), max_epochs=20)
        ...     _ = uneven_clean_epochs(sliding([0, 10], length=5, epochs_after=5), max_epochs=20)
        >>> [str(w.message)[:72] for w in caught]
        ['windows get different numbers of clean epochs under max_epochs=20 (w0-5:']
    """
    if grid.kind not in ("removal", "sliding"):  # an explicit grid's windows are placed by design (e.g. the paper's)
        return None
    after = clean_epochs(grid, max_epochs)
    if len(set(after.values())) < 2:
        return None
    shown = ", ".join(f"{label}: {n}" for label, n in after.items())
    maker = {"removal": "removal", "sliding": "sliding"}.get(grid.kind)
    remedy = (f"lc.sweep.{maker}(..., epochs_after=N) (a CLI config: windows: {{{maker}: {{..., epochs_after: N}}}}) "
              "trains each run N clean epochs after its window"
              if maker else "give each GridEntry its own max_epochs (window end + the clean epochs)")
    message = (f"windows get different numbers of clean epochs under max_epochs={max_epochs} ({shown} clean "
               f"epochs after the window): a late window's smaller effect may only be its shorter recovery. "
               f"{remedy}.")
    warnings.warn(message, CleanEpochsWarning, stacklevel=_caller_level())
    return message


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package: the user's call that starts the sweep."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("lightning_critical."):
        frame, level = frame.f_back, level + 1
    return level


WindowSpec = None | Window | Sequence[Any]


def _is_single(value: Any) -> bool:
    """A ``(start, end)`` / ``(start, end, unit)`` pair (numbers, maybe a unit string), not a list of windows."""
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        return False
    numeric = all(isinstance(v, numbers.Number) or v is None for v in value[:2])
    return numeric and (len(value) == 2 or isinstance(value[2], str))


def _entry(value: Any, unit: str, position: int) -> RunWindows:
    if value is None:
        return ()
    try:
        if isinstance(value, Window) or _is_single(value):
            parts = [Window.coerce(value, unit)]
        elif isinstance(value, (tuple, list)) and value:
            parts = [Window.coerce(v, unit) for v in value]
        else:
            raise ValueError("not a window")
    except ValueError as err:
        raise ValueError(
            f"windows[{position}]={value!r} is not valid ({err}); give None (no deficit), lc.Window(start, end), "
            "(start, end), or a list of them for several windows in one run."
        ) from None
    parts = sorted(parts, key=lambda w: (w.start, w.stop))
    units = {w.unit for w in parts}
    if len(units) > 1:
        raise ValueError(f"windows[{position}]={value!r} mixes units {sorted(units)}; use one unit per grid.")
    for a, b in itertools.pairwise(parts):
        if a.overlaps(b):
            raise ValueError(
                f"windows[{position}] has overlapping windows {a} and {b} inside one run; "
                "merge them into one window or make them disjoint."
            )
    return tuple(parts)


def windows(entries: Sequence[WindowSpec], unit: str = "epoch") -> WindowGrid:
    """An explicit grid: each entry is one run's window, a list of windows, or ``None``; the baseline is added.

    Example::

        >>> grid = windows([(0, 5), [(0, 5), (10, 15)]])
        >>> [e.label() for e in grid]
        ['baseline', 'w0-5', 'w0-5+w10-15']

    Raises:
        ValueError: an empty grid, a malformed entry, overlapping windows inside one run,
            repeated entries or mixed units.
    """
    unit = check_unit(unit)
    if isinstance(entries, (str, bytes, Window)) or not isinstance(entries, Sequence):
        raise ValueError(f"windows={entries!r} is not valid: give a list of windows (one per run).")
    if not entries:
        raise ValueError("windows=[] is empty: give at least one window.")
    schedules = [_entry(v, unit, i) for i, v in enumerate(entries)]
    units = {w.unit for s in schedules for w in s}
    if len(units) > 1:
        raise ValueError(f"windows mixes units {sorted(units)}; use one unit per grid.")
    seen: list[RunWindows] = []
    for i, s in enumerate(schedules):
        if s in seen and s:
            raise ValueError(f"windows[{i}]={entries[i]!r} repeats an earlier entry: give each run once.")
        seen.append(s)
    ordered = [()] + [s for s in schedules if s]
    return WindowGrid(tuple(GridEntry(s) for s in ordered), "explicit", units.pop() if units else unit)


def as_grid(value: Any) -> WindowGrid:
    """Accept a :class:`WindowGrid` or anything :func:`windows` takes."""
    if isinstance(value, WindowGrid):
        if not value.entries:
            raise ValueError("windows is an empty grid: give at least one window.")
        return value
    return windows(value)

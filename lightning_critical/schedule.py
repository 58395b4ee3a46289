"""Training time: when a scheduled intervention acts, as pure functions of ``(epoch, step)``.

Two shapes of schedule share one unit check and one notion of an integer time:

* :class:`Window`: a half-open interval ``[start, end)`` (when a deficit is active);
* :class:`Schedule`: a piecewise-constant value ``{time: value}`` (which task trains now).

Time is counted in epochs or in optimizer steps. ``step`` always means the number of optimizer
steps completed so far (Lightning's ``trainer.global_step``), so the update that turns step
``t`` into ``t + 1`` happens *inside* a window exactly when ``start <= t < end``.

This module knows nothing about Lightning.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from lightning_critical._checks import check_choice

Unit = Literal["epoch", "step"]
UNITS: tuple[Unit, ...] = ("epoch", "step")


def check_unit(unit: Any, name: str = "unit") -> Unit:
    """Return ``unit`` if it is ``"epoch"`` or ``"step"``; the ``ValueError`` lists both.

    Shared by :class:`Window`, the deficits and :class:`~lightning_critical.TaskSwitch`.

    Example::

        >>> check_unit("step")
        'step'
        >>> check_unit("batch")
        Traceback (most recent call last):
        ...
        ValueError: unit='batch' is not valid; choose one of ('epoch', 'step').
    """
    return check_choice(name, unit, UNITS)


def time_in(unit: Unit, epoch: int, step: int) -> int:
    """The training time ``(epoch, step)`` counted in ``unit``: the epoch, or the optimizer steps completed.

    Example::

        >>> time_in("epoch", epoch=3, step=120), time_in("step", epoch=3, step=120)
        (3, 120)
    """
    return epoch if unit == "epoch" else step


def integer_time(value: Any) -> int | None:
    """``value`` as an ``int`` when it is a whole number, else ``None``.

    Python and numpy integers (``np.arange`` sweeps) and integral floats count; ``bool`` never
    does. The one rule for the times of :class:`Window` and :class:`Schedule` (each says in its
    own message what it expected).

    Example::

        >>> import numpy as np
        >>> integer_time(np.int64(3)), integer_time(3.0), integer_time(2.5), integer_time(True)
        (3, 3, None, None)
    """
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        return None
    return int(value)


V = TypeVar("V")


class Schedule(Mapping[int, V], Generic[V]):
    """A value that changes at given times and is constant in between: ``{time: value}`` in one unit.

    Like Lightning's ``GradientAccumulationScheduler`` (``{epoch: factor}``), the value in force
    is a pure function of the trainer's counters, recomputed whenever it is needed: at
    ``(epoch, step)`` it is the value of the latest entry at or before that time (the epoch for
    ``unit="epoch"``, the optimizer steps completed for ``unit="step"``), and ``default`` before
    the first entry. A run resumed from a checkpoint therefore needs no saved state.
    :class:`~lightning_critical.TaskSwitch` keeps its tasks in one.

    A schedule is a read-only mapping ``{time: value}`` sorted by time.

    Args:
        changes: ``{time: value}``. Times are non-negative whole numbers (see
            :func:`integer_time`), or digit strings as JSON/YAML configs write keys; ``"3"``
            and ``3`` in one mapping are an error.
        unit: ``"epoch"`` or ``"step"``; a ``Schedule`` given as ``changes`` keeps its own
            (another ``unit`` than the default is then an error).
        name: what the mapping is called in error messages.
        check_value: called as ``check_value(label, value)`` on every value (``label`` reads
            e.g. ``schedule[3]``); it returns the value to keep or raises ``ValueError``.

    Raises:
        ValueError: for an unknown unit or one that contradicts a given ``Schedule``, an empty
            or non-mapping ``changes``, a negative or non-integer time, two keys for one time, or
            a value ``check_value`` refuses.

    Example::

        >>> decay = Schedule({0: 1.0, 10: 0.1, 20: 0.01})
        >>> [decay.value_at(epoch=e, step=0) for e in (0, 9, 10, 25)]
        [1.0, 1.0, 0.1, 0.01]
        >>> switch = Schedule({"400": "target"}, unit="step")  # a key as a JSON config writes it
        >>> switch.value_at(epoch=0, step=399, default="pretrain"), switch.value_at(epoch=0, step=400)
        ('pretrain', 'target')
        >>> switch
        Schedule({400: 'target'}, unit='step')
        >>> Schedule({-1: "a"})
        Traceback (most recent call last):
        ...
        ValueError: schedule time -1 must be a non-negative integer number of epochs.
    """

    def __init__(
        self,
        changes: Mapping[Any, V],
        unit: str = "epoch",
        name: str = "schedule",
        check_value: Callable[[str, Any], V] | None = None,
        *,
        value_name: str = "value",
    ) -> None:
        self.unit: Unit = check_unit(unit)
        if isinstance(changes, Schedule):  # it knows its unit, as a Window does (see Window.coerce)
            if unit != "epoch" and unit != changes.unit:
                raise ValueError(f"unit={unit!r} contradicts the schedule {changes!r}; give the unit in one place.")
            self.unit = changes.unit
            unit = changes.unit
        if not isinstance(changes, Mapping) or not changes:
            raise ValueError(f"{name}={changes!r} must be a non-empty mapping {{time: {value_name}}}.")
        clean: dict[int, V] = {}
        keys: dict[int, Any] = {}
        for key, value in changes.items():
            # JSON / YAML configs write mapping keys as strings
            time = integer_time(int(key) if isinstance(key, str) and key.strip().isdecimal() else key)
            if time is None or time < 0:
                raise ValueError(f"{name} time {key!r} must be a non-negative integer number of {unit}s.")
            if time in keys:
                raise ValueError(
                    f"{name} keys {keys[time]!r} and {key!r} both mean {unit} {time}; give each time once."
                )
            clean[time] = value if check_value is None else check_value(f"{name}[{time}]", value)
            keys[time] = key
        self._changes = dict(sorted(clean.items()))
        self._times = list(self._changes)

    def __getitem__(self, time: int) -> V:
        return self._changes[time]

    def __iter__(self) -> Iterator[int]:
        return iter(self._changes)

    def __len__(self) -> int:
        return len(self._changes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Schedule) and other.unit != self.unit:
            return False
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # equal to a dict, so unhashable like one

    def __repr__(self) -> str:
        return f"Schedule({self._changes!r}, unit={self.unit!r})"

    def at(self, time: int, default: V | None = None) -> V | None:
        """The value in force at ``time`` (in :attr:`unit`): the latest entry at or before it, else ``default``."""
        i = bisect.bisect_right(self._times, time)
        return self._changes[self._times[i - 1]] if i else default

    def value_at(self, epoch: int, step: int, default: V | None = None) -> V | None:
        """The value in force for the update taken at ``(epoch, step)`` (``step``: optimizer steps completed)."""
        return self.at(time_in(self.unit, epoch, step), default)


@dataclass(frozen=True)
class Window:
    """A half-open training window ``[start, end)`` in epochs or optimizer steps.

    Args:
        start: first epoch (or step) inside the window, ``>= 0``.
        end: first epoch (or step) after the window; ``None`` means "until training ends".
        unit: ``"epoch"`` or ``"step"`` (optimizer steps completed, ``trainer.global_step``).

    Raises:
        ValueError: for a negative start, an empty window (``end <= start``), a non-integer
            bound or an unknown unit.

    Example::

        >>> w = Window(0, 150)
        >>> w.contains(epoch=149, step=0), w.contains(epoch=150, step=0)
        (True, False)
        >>> Window.coerce((400, 550), unit="step")
        Window(start=400, end=550, unit='step')
    """

    start: int
    end: int | None = None
    unit: Unit = "epoch"

    def __post_init__(self) -> None:
        check_unit(self.unit)
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None and name == "end":
                continue
            time = integer_time(value)
            if time is None:
                raise ValueError(f"Window {name}={value!r} must be an integer number of {self.unit}s.")
            object.__setattr__(self, name, time)
        if self.start < 0:
            raise ValueError(f"Window start={self.start} must be >= 0.")
        if self.end is not None and self.end <= self.start:
            raise ValueError(
                f"Window [{self.start}, {self.end}) is empty: end must be greater than start."
            )

    @classmethod
    def coerce(cls, value: WindowLike, unit: str = "epoch") -> Window:
        """Build a window from a ``Window``, ``(start, end)`` or ``(start, end, unit)``.

        ``unit`` is the default when the value does not name one itself.
        """
        default_unit = check_unit(unit)
        if isinstance(value, Window):
            if unit != "epoch" and unit != value.unit:
                raise ValueError(f"unit={unit!r} contradicts the window {value}; give the unit in one place.")
            return value
        if isinstance(value, dict):
            return cls(**{"unit": unit, **value})
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(
                f"window={value!r} is not valid; give lc.Window(start, end, unit) "
                "or a (start, end) tuple."
            )
        if len(value) == 2:
            return cls(value[0], value[1], default_unit)
        if len(value) == 3:
            return cls(value[0], value[1], check_unit(value[2], "window unit"))
        raise ValueError(f"window={value!r} must have 2 or 3 entries: (start, end[, unit]).")

    @property
    def stop(self) -> float:
        """``end`` as a number (``inf`` for an open window)."""
        return math.inf if self.end is None else self.end

    def contains(self, epoch: int, step: int) -> bool:
        """Whether the update taken at ``(epoch, step)`` lies inside the window."""
        return self.start <= time_in(self.unit, epoch, step) < self.stop

    def in_steps(self, steps_per_epoch: int | None) -> tuple[float, float] | None:
        """The window as ``(start, stop)`` in optimizer steps, if that can be known."""
        if self.unit == "step":
            return float(self.start), self.stop
        if steps_per_epoch is None:
            return None
        return float(self.start * steps_per_epoch), self.stop * steps_per_epoch

    def overlaps(self, other: Window, steps_per_epoch: int | None = None) -> bool:
        """Whether two windows share at least one update.

        Windows in different units compare through ``steps_per_epoch``; without it the
        answer is unknown and ``True`` (they *may* overlap) is returned: see
        :meth:`comparable`.
        """
        if self.unit == other.unit:
            return self.start < other.stop and other.start < self.stop
        a, b = self.in_steps(steps_per_epoch), other.in_steps(steps_per_epoch)
        if a is None or b is None:
            return True
        return a[0] < b[1] and b[0] < a[1]

    def comparable(self, other: Window, steps_per_epoch: int | None = None) -> bool:
        """Whether :meth:`overlaps` can give a certain answer: same unit, or a known epoch length.

        Example::

            >>> Window(0, 2).comparable(Window(5, 9, "step")), Window(0, 2).comparable(Window(5, 9, "step"), 4)
            (False, True)
        """
        return self.unit == other.unit or steps_per_epoch is not None

    def __str__(self) -> str:
        end = "end" if self.end is None else str(self.end)
        return f"[{self.start}, {end}) {self.unit}s"


WindowLike = Window | Sequence[Any]
"""A :class:`Window`, ``(start, end)`` or ``(start, end, unit)``; ``end`` may be ``None``."""


def largest_common_divisor(times: Sequence[int], cap: int = 1000) -> int:
    """The largest divisor of every time in ``times`` that is at most ``cap`` (1 when all are 0).

    A chunk of that many steps ends exactly on every time (switch epochs, run lengths), so a
    vectorized trainer can take that many SGD steps per Lightning step without stepping over
    one; ``cap`` bounds the chunk (and so the spacing of what is recorded between chunks).

    Example::

        >>> largest_common_divisor([0, 3000, 6000, 3000])
        1000
        >>> largest_common_divisor([5000, 30000], cap=500)
        500
        >>> largest_common_divisor([0])
        1
    """
    g = 0
    for t in times:
        g = math.gcd(g, int(t))
    if g == 0:
        return 1
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)

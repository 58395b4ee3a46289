"""Training-time windows: when a deficit (or any scheduled intervention) is active.

A window is half-open, ``[start, end)``, counted in epochs or in optimizer steps.
``step`` always means the number of optimizer steps completed so far (Lightning's
``trainer.global_step``), so the update that turns step ``t`` into ``t + 1`` happens
*inside* the window exactly when ``start <= t < end``.

This module knows nothing about Lightning.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


_check_unit = check_unit  # the name this had before it was shared


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
            # numpy integers (np.arange sweeps) and integral floats are accepted as ints.
            integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not integral:
                raise ValueError(f"Window {name}={value!r} must be an integer number of {self.unit}s.")
            object.__setattr__(self, name, int(value))
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
        t = epoch if self.unit == "epoch" else step
        return self.start <= t < self.stop

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

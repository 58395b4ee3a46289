"""When a monitor records: a cadence is a pure function of the optimizer step.

A cadence answers one question, :meth:`Cadence.is_due`: is a record due after ``step``
optimizer steps? Because the answer depends on the step alone (no counters, no clock), a run
resumed from a checkpoint records at exactly the steps an uninterrupted run would, and two
runs with the same cadence record at the same steps.

* :class:`EveryNSteps` ``(n)``: steps ``0, n, 2n, ...`` (what an integer ``every_n_steps`` means).
* :class:`LogSpaced` ``(per_octave=2)``: dense early, where critical periods live, then
  sparser: every step up to ``per_octave``, then ``per_octave`` evenly spaced records in each
  doubling of the step count, i.e. for ``per_octave=2`` steps
  ``0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...`` (``2^e`` and ``1.5 * 2^e``). A fit of
  ``N`` steps gets about ``per_octave * log2(N)`` records, so the cost of monitoring
  shrinks relative to training as the fit grows. ``max_every`` caps the spacing: every
  multiple of ``max_every`` is recorded too, so no two records of a long run are more than
  ``max_every`` steps apart.

Nothing here imports Lightning.

Example::

    >>> from lightning_critical.cadence import LogSpaced, as_cadence
    >>> LogSpaced(per_octave=2).steps(50)
    [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48]
    >>> as_cadence(10, "every_n_steps").steps(30)
    [0, 10, 20, 30]
    >>> LogSpaced(per_octave=1, max_every=16).steps(70)
    [0, 1, 2, 4, 8, 16, 32, 48, 64]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from lightning_critical._checks import check_int

CADENCE_NAMES: tuple[str, ...] = ("log",)


class Cadence(ABC):
    """When to record: :meth:`is_due` is a pure function of the number of optimizer steps done."""

    @abstractmethod
    def is_due(self, step: int) -> bool:
        """Whether a record is due after ``step`` optimizer steps (``step`` 0 is before the first update)."""

    def steps(self, until: int) -> list[int]:
        """Every step in ``[0, until]`` at which a record is due (for docs, tests and planning)."""
        return [s for s in range(until + 1) if self.is_due(s)]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class EveryNSteps(Cadence):
    """Steps ``0, n, 2n, ...``.

    Example::

        >>> EveryNSteps(4).steps(10)
        [0, 4, 8]
    """

    def __init__(self, n: int) -> None:
        self.n = check_int("n", n)

    def is_due(self, step: int) -> bool:
        return step % self.n == 0

    def __repr__(self) -> str:
        return f"EveryNSteps({self.n})"


class LogSpaced(Cadence):
    """Every step up to ``per_octave``, then ``per_octave`` evenly spaced records per doubling.

    With ``e = floor(log2(step))`` the spacing at ``step >= 1`` is
    ``max(1, 2^e / per_octave)`` (at most ``max_every``), and a record is due when ``step`` is
    a multiple of it; step 0 is always due. ``per_octave`` is a power of two so that every
    octave holds exactly ``per_octave`` records starting at ``2^e``.

    Args:
        per_octave: records per doubling of the step count: 1, 2, 4, 8, ...
        max_every: largest spacing in steps: where ``2^e / per_octave`` exceeds it, records
            fall on the multiples of ``max_every`` (``None``: no cap, purely logarithmic).

    Raises:
        ValueError: ``per_octave`` is not a power of two, or either argument is not a
            positive integer.

    Example::

        >>> LogSpaced(per_octave=4).steps(40)
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40]
        >>> len(LogSpaced().steps(10_000))  # about per_octave * log2(10_000) records
        27
    """

    def __init__(self, per_octave: int = 2, max_every: int | None = None) -> None:
        per_octave = check_int("per_octave", per_octave)
        if per_octave & (per_octave - 1):
            raise ValueError(f"per_octave={per_octave} must be a power of two (1, 2, 4, 8, ...).")
        self.per_octave = per_octave
        self.max_every = check_int("max_every", max_every, allow_none=True)

    def spacing(self, step: int) -> int:
        """The logarithmic spacing of records around ``step`` (``step >= 1``), before any cap."""
        return max(1, (1 << (step.bit_length() - 1)) // self.per_octave)

    def is_due(self, step: int) -> bool:
        if step == 0:
            return True
        gap = self.spacing(step)
        if self.max_every is None:
            return step % gap == 0
        # Every multiple of the cap, plus the log-spaced steps where they are closer than it: no two
        # consecutive records are more than max_every apart, whatever max_every is.
        return step % self.max_every == 0 or (gap <= self.max_every and step % gap == 0)

    def __repr__(self) -> str:
        cap = "" if self.max_every is None else f", max_every={self.max_every}"
        return f"LogSpaced(per_octave={self.per_octave}{cap})"


def as_cadence(value: Any, name: str = "every_n_steps") -> Cadence:
    """A cadence from an argument: an integer ``n`` (every ``n`` steps), ``"log"`` (:class:`LogSpaced`
    at its defaults) or a :class:`Cadence`.

    Raises:
        ValueError: anything else; the message names the argument and the valid choices.

    Example::

        >>> as_cadence("log")
        LogSpaced(per_octave=2)
        >>> as_cadence("often")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: every_n_steps='often' must be an integer >= 1, not str. Other choices: 'log'
        (lightning_critical.cadence.LogSpaced()) or a lightning_critical.cadence.Cadence.
    """
    if isinstance(value, Cadence):
        return value
    if isinstance(value, str) and value in CADENCE_NAMES:
        return LogSpaced()
    try:
        return EveryNSteps(check_int(name, value))
    except ValueError as err:
        others = "'log' (lightning_critical.cadence.LogSpaced()) or a lightning_critical.cadence.Cadence"
        raise ValueError(f"{err} Other choices: {others}.") from None

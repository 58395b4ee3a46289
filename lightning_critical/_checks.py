"""Argument checks shared by the public constructors (plain Python, no Lightning)."""

from __future__ import annotations

from typing import Any, Optional


def check_int(name: str, value: Any, low: int = 1, high: Optional[int] = None, allow_none: bool = False) -> Any:
    """Return ``value`` if it is an int in ``[low, high]`` (or ``None`` when allowed), else raise.

    The ``ValueError`` names the argument, the bad value and the valid range.

    Example::

        >>> check_int("depth", 3)
        3
        >>> check_int("depth", 0)
        Traceback (most recent call last):
        ...
        ValueError: depth=0 must be an integer >= 1.
    """
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name}={value!r} must be an integer {bound}{extra}.")
    return value

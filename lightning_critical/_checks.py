"""Argument checks shared by the public constructors (plain Python, no Lightning).

Every check raises before training starts, with a message that names the argument, shows the
bad value and says what is valid. numpy scalars (``np.int64`` from ``np.arange`` sweeps,
``np.float32``) count as the Python numbers they stand for; ``bool`` never counts as a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any, Literal, TypeVar, overload

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None, allow_none: bool = False) -> Any:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]`` (or ``None`` when allowed).

    The ``ValueError`` names the argument, the bad value and the valid range.

    Example::

        >>> check_int("depth", 3)
        3
        >>> import numpy as np
        >>> check_int("depth", np.int64(3))
        3
        >>> check_int("depth", 0)
        Traceback (most recent call last):
        ...
        ValueError: depth=0 must be an integer >= 1.
    """
    if value is None and allow_none:
        return value
    bound = f"[{low}, {high}]" if high is not None else f">= {low}"
    extra = " or None" if allow_none else ""
    if not _is_int(value):
        raise ValueError(f"{name}={value!r} must be an integer {bound}{extra}, not {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value!r} must be an integer {bound}{extra}.")
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """Return a seed as an ``int`` (any integer ``>= 0``); floats and strings are refused, never truncated.

    Example::

        >>> check_seed("seed", 7)
        7
        >>> check_seed("seed", 1.7)
        Traceback (most recent call last):
        ...
        ValueError: seed=1.7 must be an integer >= 0, not float.
    """
    return int(check_int(name, value, low=0))


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    allow_none: bool = False,
) -> Any:
    """Return ``value`` as a finite ``float`` in the given range (or ``None`` when allowed).

    Strings, ``bool``, NaN and infinities are refused.

    Example::

        >>> check_float("noise_std", 0.5, low=0)
        0.5
        >>> check_float("noise_std", float("inf"), low=0)
        Traceback (most recent call last):
        ...
        ValueError: noise_std=inf is not valid: it must be a finite number >= 0.
        >>> check_float("lr", 0.0, low=0, low_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: lr=0.0 is not valid: it must be a finite number > 0.
    """
    if value is None and allow_none:
        return value
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    what = "a finite number" + (" " + " and ".join(parts) if parts else "") + (" or None" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is not valid: it must be {what}, not {type(value).__name__}.")
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and (number < low or (not low_inclusive and number == low)))
        or (high is not None and number > high)
    ):
        raise ValueError(f"{name}={value!r} is not valid: it must be {what}.")
    return number


def check_choice(name: str, value: Any, choices: Collection[T], extra: str = "") -> T:
    """Return ``value`` if it is one of ``choices``; the error lists them (``extra`` adds alternatives).

    Example::

        >>> check_choice("mode", "freeze", ("freeze", "silence"))
        'freeze'
        >>> check_choice("mode", "sleep", ("freeze", "silence"))
        Traceback (most recent call last):
        ...
        ValueError: mode='sleep' is not valid; choose one of ('freeze', 'silence').
    """
    try:
        known = value in choices
    except TypeError:  # unhashable value against a dict / set
        known = False
    if not known:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {tuple(choices)}{extra}.")
    return value


@overload
def check_names(name: str, value: Any, allow_none: Literal[False] = False, allow_empty: bool = False) -> list[str]: ...
@overload
def check_names(name: str, value: Any, allow_none: bool, allow_empty: bool = False) -> list[str] | None: ...
def check_names(name: str, value: Any, allow_none: bool = False, allow_empty: bool = False) -> list[str] | None:
    """A name or a sequence of names as a list of non-empty strings (``None`` when allowed).

    Example::

        >>> check_names("exclude", "head.*")
        ['head.*']
        >>> check_names("exclude", 5)
        Traceback (most recent call last):
        ...
        ValueError: exclude=5 is not valid: give a name / glob (a non-empty string) or a list of them.
    """
    if value is None and allow_none:
        return None
    names: Sequence[Any] = [value] if isinstance(value, str) else value
    ok = isinstance(names, (list, tuple)) and (allow_empty or len(names) > 0)
    if not ok or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{name}={value!r} is not valid: give a name / glob (a non-empty string) or a list of them.")
    return list(names)


def check_key(name: str, value: Any, allow_none: bool = True) -> int | str | None:
    """A batch key: ``None`` (the default look-up), an integer index or a string key.

    Example::

        >>> check_key("input_key", "pixel_values")
        'pixel_values'
        >>> check_key("input_key", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: input_key=1.5 is not valid: it must be None, an integer index or a string key.
    """
    if value is None and allow_none:
        return None
    if _is_int(value):
        return int(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"{name}={value!r} is not valid: it must be None, an integer index or a string key.")


def check_float_dtype(name: str, value: Any, allow_none: bool = False) -> Any:
    """Return ``value`` if it is ``torch.float32`` or ``torch.float64`` (or ``None`` when allowed).

    Example::

        >>> import torch
        >>> check_float_dtype("dtype", torch.float64)
        torch.float64
        >>> check_float_dtype("dtype", torch.float16)
        Traceback (most recent call last):
        ...
        ValueError: dtype=torch.float16 is not valid; choose one of (torch.float32, torch.float64).
    """
    import torch  # the other checks are plain Python; only this one needs torch

    if value is None and allow_none:
        return value
    return check_choice(name, value, (torch.float32, torch.float64), extra=" or None" if allow_none else "")

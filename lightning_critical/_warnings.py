"""Warnings given once per distinct cause per process.

A sweep or a demo runs many fits in one process; a warning about a cause that does not change
from fit to fit (a window cut short by ``max_epochs``, an optimizer with weight decay) is said
once, not once per fit. Python's own ``"default"`` filter cannot do this: Lightning's
``rank_zero_warn`` resets the registry it relies on, so the same message came back every fit.

Example::

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     first = warn_once("doctest: the same cause")
    ...     second = warn_once("doctest: the same cause")
    >>> first, second, len(caught)
    (True, False, 1)
"""

from __future__ import annotations

from lightning_critical._namespace import pl

_GIVEN: set[str] = set()


def warn_once(message: str, key: str | None = None) -> bool:
    """Warn ``message`` on rank zero unless ``key`` (default: the message) was warned before in this process.

    Returns whether the warning was given now (on every rank, so ranks agree).
    """
    key = message if key is None else key
    if key in _GIVEN:
        return False
    _GIVEN.add(key)
    pl.utilities.rank_zero_warn(message, stacklevel=5)  # the location shown: the caller of warn_once
    return True


def forget(key: str | None = None) -> None:
    """Forget one key (or, with ``None``, every key) so that it warns again (tests use it)."""
    if key is None:
        _GIVEN.clear()
    else:
        _GIVEN.discard(key)

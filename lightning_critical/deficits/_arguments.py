"""Constructor arguments of deficits, recorded at construction, so a deficit can be built again for another window.

Every ``WindowedDeficit`` subclass's ``__init__`` is wrapped (``WindowedDeficit.__init_subclass__``)
to record the arguments of the outermost call; :func:`rebuild` calls the class again with them,
the window replaced (:meth:`~lightning_critical.deficits.base.WindowedDeficit.with_window`).
Nothing here imports the deficit classes: the base module imports this one.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from lightning_critical.schedule import Window

_T = TypeVar("_T")
_RUNTIME_ATTRIBUTES = ("window", "targets")  # replaced by with_window / set by resolve() in a fit


def recording_arguments(init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that first records its arguments when it is the class's own constructor (the outermost call)."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(type(self).__init__, "__wrapped__", None) is init:
            self.__dict__["_init_call"] = (args, dict(kwargs))
        init(self, *args, **kwargs)

    __init__._records_arguments = True  # type: ignore[attr-defined]
    return __init__


def bound_call(deficit: Any) -> inspect.BoundArguments:
    """The recorded constructor call of ``deficit``, bound to its class's signature."""
    cls = type(deficit)
    call = deficit.__dict__.get("_init_call")
    if call is None:
        raise TypeError(
            f"{cls.__qualname__}'s constructor arguments were not recorded (its __init__ was replaced after "
            "the class was created, or the object was not built by calling the class), so it cannot be "
            "rebuilt for another window. Build the deficits with a factory window -> deficit instead."
        )
    args, kwargs = call
    return inspect.signature(cls).bind(*args, **kwargs)


def rebuild(deficit: _T, window: Any, overrides: Mapping[str, Any]) -> _T:
    """``type(deficit)(...)`` with the recorded arguments, ``window`` and ``overrides`` (see ``with_window``)."""
    cls = type(deficit)
    bound = bound_call(deficit)
    params = bound.signature.parameters
    by_name = {n for n, p in params.items()
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    var_keyword = next((n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    extra = dict(bound.arguments.get(var_keyword, {})) if var_keyword else {}
    if "window" not in by_name and "window" not in extra:
        raise TypeError(
            f"{cls.__qualname__}.with_window: cannot tell which constructor argument is the window: "
            f"{cls.__qualname__}{bound.signature} has no 'window' parameter. Give its __init__ a `window` "
            "parameter (passed on to WindowedDeficit.__init__), or build the deficits with a factory "
            "window -> deficit."
        )
    _check_unchanged(deficit, bound)
    bad = sorted(k for k in overrides if k not in by_name and var_keyword is None)
    if bad:
        raise TypeError(f"{cls.__qualname__}.with_window: {bad} are not arguments of {cls.__qualname__}"
                        f"{bound.signature}; valid: {sorted(by_name - {'window'})}.")
    changes: dict[str, Any] = {"window": window, **overrides}
    if isinstance(window, Window) and "unit" in bound.arguments and "unit" not in overrides:
        changes["unit"] = window.unit  # the Window brings its unit; a stale one would contradict it
    arguments = dict(bound.arguments)
    for key, value in changes.items():
        if key in by_name:
            arguments[key] = value
        else:
            extra[key] = value
    if var_keyword is not None:
        arguments[var_keyword] = extra
    call = inspect.BoundArguments(bound.signature, arguments)
    args, kwargs = copy.deepcopy((call.args, call.kwargs))  # no run shares a mutable setting with another
    return cls(*args, **kwargs)


def _check_unchanged(deficit: Any, bound: inspect.BoundArguments) -> None:
    # A deficit edited after __init__ (deficit.noise_std = 2) cannot be rebuilt from its arguments:
    # refuse rather than lose the edit. ``targets`` is set by resolve() during a fit, not a setting.
    probe = type(deficit)(*bound.args, **bound.kwargs)
    mine, theirs = _settings(deficit), _settings(probe)
    changed = sorted(k for k in set(mine) | set(theirs)
                     if k not in mine or k not in theirs or not _same(mine[k], theirs[k]))
    if changed:
        raise ValueError(
            f"{deficit!r} has attribute(s) {changed} changed after construction; it cannot be rebuilt for another "
            "window from its constructor arguments without losing that change. Pass the setting to the "
            "constructor instead."
        )


def _settings(deficit: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(deficit).items() if not k.startswith("_") and k not in _RUNTIME_ATTRIBUTES}


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    """Equal values; objects without their own ``==`` compare by their attributes (a few levels deep)."""
    if a is b:
        return True
    if depth > 4 or type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], depth + 1) for k in a)
    if getattr(type(a), "__eq__", None) is object.__eq__ and hasattr(a, "__dict__"):
        return _same(vars(a), vars(b), depth + 1)
    try:
        return bool(a == b)
    except Exception:  # objects whose == is not a truth value
        return False

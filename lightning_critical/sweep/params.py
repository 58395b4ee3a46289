"""Swept parameters: checked into JSON combinations, and handed to the factories that name them.

``params={"depth": [1, 2], "lr": [0.1]}`` (or a list of combinations) becomes one sorted
``((name, value), ...)`` tuple per combination (:func:`check_params`), each value plain JSON so
it can enter a run's id, the table's columns and TensorBoard's hparams. A run's factories are
called with the keywords their signature names out of ``seed`` and those values
(:func:`accepted_kwargs`); keywords bound by a ``functools.partial`` are left alone. Pure
Python: no Lightning.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning_critical.sweep.spec import Params, canonical_json


def check_params(
    params: Any,
) -> list[Params]:
    """Expand swept parameters into a list of ``((name, value), ...)`` combinations.

    ``None`` gives one empty combination; a mapping ``name -> list of values`` gives the
    cartesian product; a list of mappings gives exactly those combinations.

    Example::

        >>> check_params({"depth": [1, 2], "lr": [0.1]})
        [(('depth', 1), ('lr', 0.1)), (('depth', 2), ('lr', 0.1))]
    """
    reserved = {"seed", "window", "windows"}
    if params is None:
        return [()]
    if isinstance(params, Mapping):
        if not params:
            return [()]
        names = sorted(str(k) for k in params)
        for name in names:
            values = params[name]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"params[{name!r}]={values!r} is not valid: give a non-empty list of values.")
        combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*(params[n] for n in names))]
    elif (isinstance(params, Sequence) and not isinstance(params, (str, bytes))
          and all(isinstance(p, Mapping) for p in params)):
        combos = [dict(p) for p in params]
        if not combos:
            raise ValueError("params=[] is empty: give at least one combination (or None).")
    else:
        raise ValueError(f"params={params!r} is not valid: give a dict name -> list of values, or a list of dicts.")
    out: list[Params] = []
    seen: set[str] = set()
    for combo in combos:
        bad = sorted(reserved & set(combo))
        if bad:
            raise ValueError(f"params may not contain {bad}: seeds go in seeds=..., windows in windows=....")
        item = tuple(sorted((str(k), _json_value(str(k), v)) for k, v in combo.items()))
        if canonical_json(dict(item)) in seen:  # by JSON value: 1, 1.0, True and "1" are different values
            raise ValueError(f"params repeats the combination {dict(item)}: give each once.")
        seen.add(canonical_json(dict(item)))
        out.append(item)
    return out


def _json_value(name: str, value: Any) -> Any:
    """A swept value as plain JSON (numpy scalars become Python numbers, tuples lists); refuse anything else."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(name, v) for v in value]
    if isinstance(value, Mapping):
        keys = [k for k in value if not isinstance(k, str)]
        if keys:
            raise ValueError(
                f"params[{name!r}] value {value!r} is not valid: a swept dict needs string keys (JSON objects do), "
                f"not {keys[0]!r}.")
        return {k: _json_value(name, v) for k, v in value.items()}
    raise ValueError(
        f"params[{name!r}] value {value!r} is not valid: swept values must be numbers, strings, booleans, None "
        f"or lists and dicts of them (they become table columns and TensorBoard hparams), not {type(value).__name__}."
    )


def accepted_kwargs(factory: Callable[..., Any], available: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``available`` that ``factory``'s signature names (all of them for ``**kwargs``).

    Keywords already bound by a ``functools.partial`` are never overridden.

    Example::

        >>> def make(seed, depth=2): ...
        >>> accepted_kwargs(make, {"seed": 0, "depth": 3, "lr": 0.1})
        {'seed': 0, 'depth': 3}
    """
    bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: pass nothing
        return {}
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {k: v for k, v in available.items() if k not in bound}
    by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {n for n, p in params.items() if p.kind in by_name}
    return {k: v for k, v in available.items() if k in named and k not in bound}


def names_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory``'s signature names ``name`` (``**kwargs`` does not count), unbound by a partial."""
    if isinstance(factory, functools.partial) and name in factory.keywords:
        return False
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False

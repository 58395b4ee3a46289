"""Swept parameters: checked into JSON combinations, and handed to the factories that name them.

``params={"depth": [1, 2], "lr": [0.1]}`` (or a list of combinations) becomes one sorted
``((name, value), ...)`` tuple per combination (:func:`check_params`), each value plain JSON so
it can enter a run's id, the table's columns and TensorBoard's hparams. A run's factories are
called with the keywords their signature names out of ``seed`` and those values
(:func:`accepted_kwargs`); keywords bound by a ``functools.partial`` are left alone.

A name ``deficit.<argument>`` sets an argument of the template deficit (a ``WindowedDeficit``
given as ``deficit=``, rebuilt through its constructor with the value), never a factory's:
``params={"deficit.factor": [2, 4]}`` with ``deficit=lc.InputDeficit("blur", window=(0, 1))``.
With a list of deficits, ``deficit.<index>.<argument>`` names one of them, and
``deficit.<argument>`` works when exactly one template takes that argument
(:func:`address_deficit`). A swept value that reaches only the deficit (those names, and
arguments only deficit factories take: :func:`deficit_only`) does not change the no-deficit
run, so the baseline is one run per seed, not one per value (:func:`runs_of`). Every name is
checked before training (:func:`check_reach`). Pure Python: no Lightning; the template
deficits' classes are given by the caller.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lightning_critical.sweep.spec import DEFICIT_PREFIX, Params, RunSpec, canonical_json

Templates = Sequence[Callable[..., Any] | None]
"""Per entry of ``deficit=`` (in order): the class of a template deficit, ``None`` for a factory."""
_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_NOT_SWEPT = ("window", "unit")  # a run's window (and its unit) comes from windows=


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


# -- where a swept value goes ----------------------------------------------------------------
def template_arguments(cls: Callable[..., Any]) -> list[str] | None:
    """The constructor arguments of a template deficit's class that ``params`` may set (``None``: any, ``**kwargs``).

    Example::

        >>> class Blur:
        ...     def __init__(self, window, factor=2, unit="epoch", seed=0): ...
        >>> template_arguments(Blur)
        ['factor', 'seed']
    """
    parameters = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [n for n, p in parameters.items() if p.kind in _BY_NAME and n not in _NOT_SWEPT]


def _takes(cls: Callable[..., Any] | None, argument: str) -> bool:
    if cls is None or argument in _NOT_SWEPT:
        return False
    names = template_arguments(cls)
    return names is None or argument in names


def deficit_names(templates: Templates) -> list[str]:
    """The names ``params`` may give the templates' arguments: ``deficit.<argument>`` for an argument exactly
    one template takes, and (with several entries in ``deficit=``) ``deficit.<index>.<argument>`` for each.

    Example::

        >>> class Blur:
        ...     def __init__(self, window, factor=2): ...
        >>> deficit_names([Blur]), deficit_names([Blur, None])
        (['deficit.factor'], ['deficit.factor', 'deficit.0.factor'])
    """
    arguments = [(i, a) for i, cls in enumerate(templates) if cls is not None for a in template_arguments(cls) or []]
    counts = [a for _, a in arguments]
    short = [f"{DEFICIT_PREFIX}{a}" for i, a in arguments if counts.count(a) == 1]
    indexed = [f"{DEFICIT_PREFIX}{i}.{a}" for i, a in arguments] if len(templates) > 1 else []
    return short + indexed


def address_deficit(name: str, templates: Templates) -> tuple[int, str]:
    """Which template (its index in ``deficit=``) and which of its arguments the swept ``name`` sets.

    Raises:
        ValueError: ``name`` addresses no template's argument (a factory, the window, an argument
            no template takes, or one several take), naming the valid names.

    Example::

        >>> class Blur:
        ...     def __init__(self, window, factor=2, noise_std=1.0): ...
        >>> class Noise:
        ...     def __init__(self, window, noise_std=1.0): ...
        >>> address_deficit("deficit.factor", [Blur, Noise]), address_deficit("deficit.1.noise_std", [Blur, Noise])
        ((0, 'factor'), (1, 'noise_std'))
        >>> address_deficit("deficit.noise_std", [Blur, Noise])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: params['deficit.noise_std'] is not valid: 'noise_std' is an argument of deficits [0, 1]: ...
    """
    rest = name[len(DEFICIT_PREFIX):]
    head, _, tail = rest.partition(".")
    if tail and head.isdigit():
        index, argument = int(head), tail
        if index >= len(templates) or templates[index] is None:
            what = "a factory" if index < len(templates) else "not in deficit="
            reason = (f"deficit entry {index} is {what}; a factory takes swept values by its own argument names "
                      "(params={'name': [...]})")
        elif argument in _NOT_SWEPT:
            reason = "a run's window (and unit) come from windows="
        elif _takes(templates[index], argument):
            return index, argument
        else:
            reason = f"deficit entry {index} takes no argument {argument!r}"
    else:
        argument = rest
        takers = [i for i, cls in enumerate(templates) if _takes(cls, argument)]
        if len(takers) == 1:
            return takers[0], argument
        if argument in _NOT_SWEPT:
            reason = "a run's window (and unit) come from windows="
        elif not any(templates):
            reason = (f"deficit= holds no WindowedDeficit template, only factories (a CLI config's deficit is one): "
                      f"a factory takes a swept value by its own argument name, params={{{argument!r}: [...]}}")
        elif takers:
            reason = (f"{argument!r} is an argument of deficits {takers}: name one, e.g. "
                      f"'{DEFICIT_PREFIX}{takers[0]}.{argument}'")
        else:
            reason = f"no template deficit takes an argument {argument!r}"
    valid = deficit_names(templates) or ["none: deficit= holds no WindowedDeficit template"]
    raise ValueError(f"params[{name!r}] is not valid: {reason}. The template deficit arguments params may set: "
                     f"{valid}.")


def deficit_overrides(params: Mapping[str, Any], templates: Templates) -> dict[int, dict[str, Any]]:
    """The ``deficit.`` values of one run's ``params``, per template index: ``{index: {argument: value}}``.

    Example::

        >>> class Blur:
        ...     def __init__(self, window, factor=2): ...
        >>> deficit_overrides({"deficit.factor": 4, "lr": 0.1}, [Blur])
        {0: {'factor': 4}}

    Raises:
        ValueError: a bad name (:func:`address_deficit`), or two names that set one argument.
    """
    out: dict[int, dict[str, Any]] = {}
    names: dict[tuple[int, str], str] = {}
    for name, value in params.items():
        if not name.startswith(DEFICIT_PREFIX):
            continue
        index, argument = address_deficit(name, templates)
        if (index, argument) in names:
            raise ValueError(f"params {names[index, argument]!r} and {name!r} both set argument {argument!r} of "
                             f"deficit entry {index}: give one.")
        names[index, argument] = name
        out.setdefault(index, {})[argument] = value
    return out


def _reaches(factory: Callable[..., Any] | None, name: str) -> bool:
    return factory is not None and name in accepted_kwargs(factory, {name: None})


def _factory_arguments(factories: Iterable[tuple[str, Any]]) -> list[str]:
    out: list[str] = []
    for role, factory in factories:
        bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
        try:
            parameters = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            continue
        for name, p in parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                out.append(f"any name ({role} takes **{name})")
            elif p.kind in _BY_NAME and name not in bound and name not in ("seed", "window", "windows"):
                out.append(name)
    return list(dict.fromkeys(out))


def check_reach(names: Iterable[str], factories: Sequence[tuple[str, Any]], templates: Templates) -> None:
    """Refuse a swept name that reaches no factory's argument and no template deficit's, naming the valid names.

    ``factories``: ``(role, factory)`` pairs (model, datamodule, callbacks, deficit factories);
    ``templates``: as :func:`deficit_names`.

    Example::

        >>> def model(seed, depth=2): ...
        >>> check_reach(["depth"], [("model", model)], [None])
        >>> check_reach(["width"], [("model", model)], [None])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: params['width'] is not an argument of any factory (model, deficit) ... arguments ['depth']...
    """
    for name in sorted(names):
        if name.startswith(DEFICIT_PREFIX):
            address_deficit(name, templates)
            continue
        if any(_reaches(f, name) for _, f in factories):
            continue
        hint = (f" ({DEFICIT_PREFIX + name!r} sets the template deficit's {name!r})"
                if any(_takes(cls, name) for cls in templates) else "")
        roles = ", ".join(dict.fromkeys([r for r, f in factories if f is not None] + ["deficit"]))
        raise ValueError(
            f"params[{name!r}] is not an argument of any factory ({roles}) nor a template deficit's: a swept value "
            f"must reach the run{hint}. Valid names: factory arguments {_factory_arguments(factories)}, template "
            f"deficit arguments {deficit_names(templates)}."
        )


def deficit_only(names: Iterable[str], factories: Sequence[Callable[..., Any] | None]) -> list[str]:
    """The swept names that reach only the deficit: ``deficit.<...>`` names, and names none of ``factories``
    (the model, datamodule and callbacks factories) takes. They do not change the no-deficit run.

    Example::

        >>> def model(seed, depth=2): ...
        >>> deficit_only(["depth", "noise_std", "deficit.factor"], [model, None])
        ['deficit.factor', 'noise_std']
    """
    return sorted(n for n in names if n.startswith(DEFICIT_PREFIX) or not any(_reaches(f, n) for f in factories))


def runs_of(grid: Iterable[Any], combos: Sequence[Params], seeds: Sequence[int],
            deficit_params: Iterable[str] = ()) -> tuple[list[RunSpec], list[Params]]:
    """A sweep's runs in grid order (windows, then swept values, then seeds), and the swept values each was
    listed with (its plan group).

    A baseline run goes without the ``deficit_params`` (:func:`deficit_only`), so it is one run
    per seed (and per value of the other swept names), whatever the deficit's values: listed
    first with the first combination, left out after.

    Example::

        >>> from lightning_critical.sweep.grids import as_grid
        >>> runs, _ = runs_of(as_grid([(0, 2)]), [(("deficit.factor", 2),), (("deficit.factor", 4),)], [0],
        ...                   ["deficit.factor"])
        >>> [r.label() for r in runs]
        ['baseline_seed0', 'w0-2_seed0_deficit.factor=2', 'w0-2_seed0_deficit.factor=4']
    """
    shared = set(deficit_params)
    runs: list[RunSpec] = []
    groups: list[Params] = []
    seen: set[str] = set()
    for entry in grid:
        for combo in combos:
            kept = combo if entry.windows else tuple((k, v) for k, v in combo if k not in shared)
            for seed in seeds:
                run = RunSpec(entry.windows, seed, kept, entry.max_epochs)
                key = canonical_json(run.encode())
                if key not in seen:
                    seen.add(key)
                    runs.append(run)
                    groups.append(combo)
    return runs, groups

"""Build one run's Lightning objects from a sweep's spec: model, datamodule, deficits, callbacks.

The sweep's core (:mod:`~lightning_critical.sweep.spec`, identity, grids, plan, store, table)
is pure: it says what a run is and names it, and imports neither Lightning nor the deficits.
This module is where a :class:`~lightning_critical.sweep.spec.RunSpec` becomes objects a
Trainer takes, beside the runners that train them. Each factory is called with the keyword
arguments its signature names out of ``seed`` and the run's swept values
(:func:`~lightning_critical.sweep.params.accepted_kwargs`), and what it returns is checked: a
``LightningModule`` of the bound Lightning namespace, a ``LightningDataModule``, callbacks.

Example::

    >>> from lightning_critical.sweep.spec import RunSpec, SweepSpec
    >>> from lightning_critical import InputDeficit, Window
    >>> spec = SweepSpec(model=lambda seed: None, deficit=InputDeficit("noise", (0, 1)))
    >>> [d.window for d in build_deficits(spec, RunSpec((Window(2, 4),), seed=0))]
    [Window(start=2, end=4, unit='epoch')]
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning_critical import _namespace
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.schedule import Window
from lightning_critical.sweep.params import Params, accepted_kwargs, check_reach, deficit_overrides, names_argument
from lightning_critical.sweep.spec import RunSpec, SweepSpec, describe, qualname


def build_model(spec: SweepSpec, run: RunSpec) -> Any:
    """``spec.model`` called for ``run``, checked to be a ``LightningModule`` of the bound namespace.

    Raises:
        TypeError: the factory returned something else (the message names the factory).
    """
    model = spec.model(**accepted_kwargs(spec.model, spec.factory_kwargs(run)))
    return _checked(model, spec.model, "model", pl.LightningModule,
                    "pass a function or class that builds one (called as factory(seed=..., **params)).")


def build_datamodule(spec: SweepSpec, run: RunSpec) -> Any:
    """``spec.datamodule`` called for ``run`` and checked; ``None`` when the model brings its own loaders."""
    if spec.datamodule is None:
        return None
    dm = spec.datamodule(**accepted_kwargs(spec.datamodule, spec.factory_kwargs(run)))
    return _checked(dm, spec.datamodule, "datamodule", pl.LightningDataModule,
                    "pass a function or class that builds one (or datamodule=None when the model has its own "
                    "dataloaders).")


def build_deficits(spec: SweepSpec, run: RunSpec) -> list[Any]:
    """The deficit callbacks of ``run``: each of ``spec.deficit``'s makers for each of the run's windows, in order.

    ``[]`` for the baseline (no windows). See :func:`make_deficit` for the forms and the seed rule.
    """
    out: list[Any] = []
    makers = deficit_makers(spec, run) if run.windows else []
    for window in run.windows:
        for maker in makers:
            made = make_deficit(maker, window, spec.factory_kwargs(run))
            out.extend(_as_callbacks(made, functools.partial(_deficit_name, maker)))
    return out


def deficit_makers(spec: SweepSpec, run: RunSpec) -> list[Any]:
    """The entries of ``spec.deficit`` for ``run``: its templates with the run's ``deficit.`` values (see
    :func:`swept_deficits`), its factories as they are."""
    return swept_deficits(spec.deficit, run.params_dict)


def swept_deficits(deficit: Any, params: Mapping[str, Any]) -> list[Any]:
    """``deficit`` as a list, each template rebuilt through its constructor with the values ``params`` give its
    arguments (``deficit.<argument>``, ``deficit.<index>.<argument>``:
    :func:`~lightning_critical.sweep.params.address_deficit`); a bad value is refused by the constructor.

    Example::

        >>> from lightning_critical import InputDeficit
        >>> [d.factor for d in swept_deficits(InputDeficit("blur", (0, 1), factor=2), {"deficit.factor": 4})]
        [4]
    """
    makers = list(deficit) if isinstance(deficit, (list, tuple)) else [deficit]
    overrides = deficit_overrides(params, template_classes(makers))
    return [m.with_window(m.window, **overrides[i]) if i in overrides else m for i, m in enumerate(makers)]


def check_swept(combos: Sequence[Params], factories: Sequence[tuple[str, Any]], deficit: Any) -> None:
    """Before training: every swept name reaches a factory (``(role, factory)`` pairs, the deficit's added) or a
    template deficit's argument (:func:`~lightning_critical.sweep.params.check_reach`), and every template is
    rebuilt with each combination's values, so its constructor refuses a bad one now."""
    makers = list(deficit) if isinstance(deficit, (list, tuple)) else [deficit]
    templates = template_classes(makers)
    named = [*factories, *(("deficit", m) for m, cls in zip(makers, templates, strict=True) if cls is None)]
    check_reach({k for combo in combos for k, _ in combo}, named, templates)
    for combo in combos:
        swept_deficits(makers, dict(combo))


def is_template(maker: Any) -> bool:
    """Whether an entry of ``deficit=`` is a template (rebuilt for each window with ``with_window``), not a factory."""
    return isinstance(maker, WindowedDeficit)


def template_classes(makers: Sequence[Any]) -> list[type | None]:
    """Per entry of ``deficit=``: the class of a template (:func:`is_template`), ``None`` for a factory."""
    return [type(m) if is_template(m) else None for m in makers]


def intervention(spec: SweepSpec, runs: Sequence[RunSpec]) -> str | None:
    """What the sweep's windows hold, for its figure: ``"deficit"``, ``"task switch"`` or ``"deficit + task switch"``.

    Built from the first windowed run's deficits (``None`` when there is none, or they cannot be
    built here: the table then just says "intervention").

    Example::

        >>> from lightning_critical import TaskSwitch, Window
        >>> spec = SweepSpec(model=lambda seed: None, deficit=lambda window: TaskSwitch({window.end: "b"}))
        >>> intervention(spec, [RunSpec((), seed=0), RunSpec((Window(0, 2),), seed=0)])
        'task switch'
    """
    run = next((r for r in runs if r.windows), None)
    try:
        made = build_deficits(spec, run) if run is not None else []
    except Exception:  # a factory that only works in a run's own process: the figure stays neutral
        return None
    kinds = sorted({"task switch" if isinstance(c, TaskSwitch) else "deficit" for c in made})
    return " + ".join(kinds) or None


def build_callbacks(spec: SweepSpec, run: RunSpec) -> list[Any]:
    """The extra callbacks of ``run`` (``spec.callbacks`` called fresh, with ``windows=`` when it names them)."""
    if spec.callbacks is None:
        return []
    factory = spec.callbacks
    kwargs = accepted_kwargs(factory, spec.factory_kwargs(run))
    if names_argument(factory, "windows"):
        kwargs["windows"] = run.windows
    made = factory(**kwargs)
    return _as_callbacks(made, lambda: f"callbacks factory {qualname(factory)}")


def make_deficit(maker: Any, window: Window, kwargs: Mapping[str, Any]) -> Any:
    """One deficit for ``window``: a ``WindowedDeficit`` template rebuilt for it, or a factory's callbacks.

    The seed rule (the same for every form, so a template, a factory and the CLI's YAML give
    one table): a deficit draws its random numbers with the run's seed (``kwargs["seed"]``)
    unless its seed was fixed explicitly. A template is rebuilt through its constructor with
    :meth:`~lightning_critical.deficits.base.WindowedDeficit.with_window` (never copied and
    re-windowed behind ``__init__``'s back), with ``seed=`` the run's seed when its class takes
    a ``seed`` and the template was built without one. A factory is called with the run's seed
    when it names a ``seed`` argument (one bound by ``functools.partial`` stays bound); a
    deficit it returns that takes a ``seed`` but was built without one is rebuilt with the
    run's seed. "Fixed explicitly" is ``seed=`` given to the deficit's constructor (or bound by
    a partial).

    Example::

        >>> from lightning_critical import InputDeficit, Window
        >>> make_deficit(InputDeficit("noise", (0, 1)), Window(0, 3), {"seed": 7}).seed
        7
        >>> make_deficit(InputDeficit("noise", (0, 1), seed=0), Window(0, 3), {"seed": 7}).seed
        0

    Raises:
        TypeError: ``maker`` is neither a ``WindowedDeficit`` nor callable.
    """
    seed = kwargs.get("seed")
    if is_template(maker):
        return maker.with_window(window, **_run_seed(maker, seed))
    if not callable(maker):
        raise TypeError(
            f"deficit={maker!r} is not valid: give a WindowedDeficit (used as a template), a callable "
            "window -> Callback | list[Callback], or a list of these."
        )
    extra = {k: v for k, v in accepted_kwargs(maker, kwargs).items() if k != "window"}
    made = maker(window=window, **extra) if names_argument(maker, "window") else maker(window, **extra)
    if isinstance(made, (list, tuple)):
        return type(made)(_seeded(item, seed) for item in made)
    return _seeded(made, seed)


def deficit_seed(callbacks: Sequence[Any]) -> int | str | None:
    """The seed(s) a run's deficit callbacks draw with: one integer when they agree (the usual case),
    ``"a + b"`` in callback order when they differ, ``None`` when none has a ``seed``.

    Example::

        >>> from lightning_critical import InputDeficit, PathwayDeficit
        >>> deficit_seed([InputDeficit("noise", (0, 1), seed=3), PathwayDeficit("b", (0, 1), seed=3)])
        3
        >>> deficit_seed([InputDeficit("noise", (0, 1), seed=3), PathwayDeficit("b", (0, 1), seed=4)])
        '3 + 4'
    """
    seeds = [int(s) for s in (getattr(cb, "seed", None) for cb in callbacks)
             if isinstance(s, numbers.Integral) and not isinstance(s, bool)]
    if not seeds:
        return None
    return seeds[0] if len(set(seeds)) == 1 else " + ".join(map(str, seeds))


def _run_seed(deficit: WindowedDeficit, seed: Any) -> dict[str, Any]:
    """``{"seed": seed}`` when ``deficit`` takes a seed that was not given explicitly, else ``{}``."""
    if seed is None or "seed" not in inspect.signature(type(deficit)).parameters:
        return {}
    return {} if "seed" in deficit.init_arguments else {"seed": seed}


def _seeded(made: Any, seed: Any) -> Any:
    if not isinstance(made, WindowedDeficit):
        return made
    override = _run_seed(made, seed)
    return made.with_window(made.window, **override) if override else made


def _checked(obj: Any, factory: Any, kind: str, cls: type, hint: str) -> Any:
    """``obj`` as a factory built it, checked: of the bound Lightning namespace and of class ``cls``."""
    who = f"{kind} factory {qualname(factory)}"
    mismatch = _namespace.mismatch_message(obj, f"{who}'s {kind}")
    if mismatch:
        raise TypeError(mismatch)
    if not isinstance(obj, cls):
        raise TypeError(f"{who} returned {type(obj).__name__}, not a {cls.__name__}; {hint}")
    return obj


def _deficit_name(maker: Any) -> str:
    return f"deficit {describe(maker)}"


def _as_callbacks(made: Any, what: Callable[[], str]) -> list[Any]:
    items = list(made) if isinstance(made, (list, tuple)) else [made]
    for item in items:
        if not isinstance(item, pl.Callback):
            raise TypeError(f"{what()} returned {type(item).__name__}, not a Lightning Callback.")
    return items

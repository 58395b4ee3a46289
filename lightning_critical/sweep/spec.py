"""What defines a sweep and each of its runs, with stable identities for resuming.

A run is ``RunSpec(windows, seed, params, max_epochs)``; its ``run_id`` is a short hash of the
sweep's identity and those fields, in a canonical JSON encoding, so the same run has the same
id in every process and every session. The sweep's identity describes what trains a run
(factories, deficit, callbacks, Trainer arguments, metrics, the user code they run and the
library versions: :mod:`~lightning_critical.sweep.identity`), not which runs exist: adding
seeds, windows or swept values to a finished sweep runs only the new runs.

Factories are called with the keyword arguments their signature names, out of ``seed`` and
the run's swept parameters (all of them if they take ``**kwargs``); keywords bound in a
``functools.partial`` are left alone.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_critical import _namespace
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.schedule import Window
from lightning_critical.sweep import identity as ident
from lightning_critical.sweep import source
from lightning_critical.sweep.grids import GridEntry, RunWindows

Metric = str | Callable[..., Mapping[str, float]]
Params = tuple[tuple[str, Any], ...]


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings.

    Example::

        >>> canonical_json({"b": 1, "a": [1.0, None]})
        '{"a":[1.0,null],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def short_hash(value: Any, length: int = 12) -> str:
    """A hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _qualname(obj: Any) -> str:
    # repr only as the last resort (a partial's repr prints every bound argument, arrays included)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        inner = getattr(obj, "func", None)
        name = f"partial({_qualname(inner)})" if inner is not None else _ADDRESS.sub("", repr(obj))
    return f"{getattr(obj, '__module__', '?')}:{name}"


def describe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-able description of a factory, callback or value, stable across processes and sessions.

    Functions are named by module and qualified name plus a digest of their code (docstrings,
    comments and formatting aside: :func:`~lightning_critical.sweep.source.function_digest`),
    defaults and closure (so editing a lambda's body changes the sweep); classes by name (their
    code is in :meth:`SweepSpec.describe`'s ``code``);
    ``functools.partial`` by function and bound arguments; other objects by class and public
    attributes. Memory addresses never enter.

    Example::

        >>> import functools
        >>> describe(functools.partial(max, 3))["partial"]
        'builtins:max'
    """
    if _depth > 8:
        return _ADDRESS.sub("", repr(obj))
    d = _depth + 1
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        number = float(obj)
        return number if math.isfinite(number) else repr(number)
    if isinstance(obj, Window):
        return [obj.start, obj.end, obj.unit]
    if isinstance(obj, (list, tuple)):
        return [describe(v, d) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v, d) for v in obj), key=canonical_json)
    if isinstance(obj, Mapping):
        return {str(k): describe(v, d) for k, v in obj.items()}
    if inspect.ismodule(obj):
        return f"module:{obj.__name__}"
    if isinstance(obj, functools.partial):
        return {"partial": _qualname(obj.func), "args": describe(obj.args, d), "keywords": describe(obj.keywords, d)}
    if inspect.isclass(obj) or inspect.isbuiltin(obj):
        return _qualname(obj)
    if inspect.ismethod(obj):
        return {"method": _qualname(obj.__func__), "self": describe(obj.__self__, d)}
    if inspect.isfunction(obj):
        closure = [describe(c.cell_contents, d) for c in (obj.__closure__ or ()) if _has_contents(c)]
        body = [source.function_digest(obj), describe(obj.__defaults__, d), describe(obj.__kwdefaults__, d), closure]
        return {"function": _qualname(obj), "code": short_hash(body)}
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a tensor
        t = obj.detach().cpu()
        return {"tensor": list(t.shape), "digest": hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]}
    if hasattr(obj, "tobytes") and hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a numpy array (not its repr)
        digest = hashlib.sha256(str(obj.dtype).encode() + obj.tobytes()).hexdigest()[:12]
        return {"array": list(obj.shape), "digest": digest}
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None:
        public = {k: v for k, v in attrs.items() if not k.startswith("_")}
        return {"object": _qualname(type(obj)), "attrs": describe(public, d)}
    return _ADDRESS.sub("", repr(obj))


def _has_contents(cell: Any) -> bool:
    try:
        _ = cell.cell_contents  # raises ValueError for an empty cell
    except ValueError:
        return False
    return True


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


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its deficit windows (``()`` = no deficit), seed, swept values and length.

    Example::

        >>> run = RunSpec((Window(0, 5),), seed=1, params=(("lr", 0.1),))
        >>> run.window, run.baseline, run.label()
        (Window(start=0, end=5, unit='epoch'), False, 'w0-5_seed1_lr=0.1')
    """

    windows: RunWindows
    seed: int
    params: Params = ()
    max_epochs: int | None = None

    @property
    def baseline(self) -> bool:
        return not self.windows

    @property
    def window(self) -> Window | None:
        """The run's window when it has exactly one (``None`` for the baseline)."""
        return self.windows[0] if len(self.windows) == 1 else None

    @property
    def params_dict(self) -> dict[str, Any]:
        """The swept values, copied: a factory that changes a list it was given cannot change other runs."""
        return {k: copy.deepcopy(v) for k, v in self.params}

    def encode(self) -> dict[str, Any]:
        return {
            "windows": [describe(w) for w in self.windows],
            "seed": self.seed,
            "params": {k: v for k, v in self.params},
            "max_epochs": self.max_epochs,
        }

    def run_id(self, sweep_identity: str) -> str:
        """A 12-character hash of the sweep's identity and this run."""
        return short_hash({"sweep": sweep_identity, "run": self.encode()})

    def label(self) -> str:
        """A readable, file-system safe name (ASCII letters, digits and ``.+-_=``, at most 120 characters).

        Characters outside that set become ``-``; a longer name keeps its first 100 characters
        plus a hash of the whole. Distinct runs may share a label (values differing only in
        replaced characters or in case); the engine appends the run id to those.
        """
        parts = [GridEntry(self.windows).label(), f"seed{self.seed}"]
        parts += [f"{_label_value(k)}={_label_value(v)}" for k, v in self.params]
        if self.max_epochs is not None and self.baseline:
            parts.append(f"{self.max_epochs}ep")
        label = "_".join(parts).rstrip(".")  # a trailing dot vanishes on Windows file systems
        if len(label) > LABEL_LENGTH:
            label = f"{label[:LABEL_LENGTH - 20].rstrip('.-')}~{short_hash(label, 12)}"
        return label


LABEL_LENGTH = 120
"""The longest run label (a file and directory name under ``<out>``); longer ones are cut and hashed."""


def _label_value(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)  # digits, ".eE+-", Infinity, NaN: all safe, the sign kept
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


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


def _takes_window_keyword(factory: Callable[..., Any]) -> bool:
    return _names_argument(factory, "window")


def _names_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory``'s signature names ``name`` (``**kwargs`` does not count), unbound by a partial."""
    if isinstance(factory, functools.partial) and name in factory.keywords:
        return False
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def identity_of(description: Mapping[str, Any]) -> str:
    """The sweep identity of a description (:meth:`SweepSpec.describe`)."""
    return short_hash(description, 16)


@dataclass(frozen=True)
class SweepSpec:
    """Everything that trains one run of a sweep (the grid and the seeds live in the plan).

    Attributes:
        model: factory returning a ``LightningModule``.
        datamodule: factory returning a ``LightningDataModule`` (``None``: the model's own loaders).
        deficit: ``window -> Callback | list[Callback]``, a ``WindowedDeficit`` used as a template
            (copied with each window), or a list of these.
        callbacks: factory returning the extra callbacks of a run (fresh ones per run).
        trainer: ``pl.Trainer`` keyword arguments (``max_epochs`` required).
        metrics: names in ``trainer.callback_metrics`` or functions ``(trainer, module) -> dict``.
        test: run ``trainer.test`` after fitting (its metrics join ``callback_metrics``).
        threads_per_run: ``torch.set_num_threads`` inside every run, whatever the backend.
        steps_per_epoch: optimizer steps per epoch, if known (lets step windows share prefixes).
        save_model: write each run's final ``state_dict`` to ``<out>/models/<label>.pt``.
        tensorboard: per-run TensorBoard logs under ``<out>/tensorboard/<label>``.
        runner: the runner when it is not the default one-fit-per-run (part of the identity:
            a sweep's results are never mixed across runners).
    """

    model: Callable[..., Any]
    datamodule: Callable[..., Any] | None = None
    deficit: Any = None
    callbacks: Callable[..., Any] | None = None
    trainer: Mapping[str, Any] = field(default_factory=dict)
    metrics: tuple[Metric, ...] = ()
    test: bool = False
    threads_per_run: int = 1
    steps_per_epoch: int | None = None
    save_model: bool = False
    tensorboard: bool = True
    runner: Any = None

    @property
    def max_epochs(self) -> int:
        return int(self.trainer["max_epochs"])

    def describe(self, built: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
        """What trains a run, as JSON (stored in ``<out>/sweep.json``).

        ``code`` holds the digest of the user code each part runs
        (:func:`~lightning_critical.sweep.identity.code_digest`), from the factories and from
        ``built``: the classes the factories built, per role (``{"model": [Net], ...}``, known
        once the first run's objects are built). ``versions``: torch, Lightning, numpy, this package.
        """
        runner = {} if self.runner is None else {"runner": describe(self.runner)}
        extra = built or {}
        roles = {
            "model": [self.model, *extra.get("model", ())],
            "datamodule": [self.datamodule, *extra.get("datamodule", ())],
            "deficit": [self.deficit, *extra.get("deficit", ())],
            "callbacks": [self.callbacks, *extra.get("callbacks", ())],
            "metrics": list(self.metrics),
            "runner": [self.runner],
        }
        return {
            **runner,
            "model": describe(self.model),
            "datamodule": describe(self.datamodule),
            "deficit": describe(self.deficit),
            "callbacks": describe(self.callbacks),
            "trainer": describe(dict(self.trainer)),
            "metrics": describe(list(self.metrics)),
            "test": self.test,
            "code": ident.code_digest(roles),
            "versions": ident.versions(_namespace.NAME),
        }

    def identity(self, built: Mapping[str, Sequence[Any]] | None = None) -> str:
        """A 16-character hash of :meth:`describe`."""
        return identity_of(self.describe(built))

    # -- building one run ------------------------------------------------------------------
    def factory_kwargs(self, run: RunSpec) -> dict[str, Any]:
        return {"seed": run.seed, **run.params_dict}

    def build_model(self, run: RunSpec) -> Any:
        model = self.model(**accepted_kwargs(self.model, self.factory_kwargs(run)))
        return _built(model, self.model, "model", pl.LightningModule,
                      "pass a function or class that builds one (called as factory(seed=..., **params)).")

    def build_datamodule(self, run: RunSpec) -> Any:
        if self.datamodule is None:
            return None
        dm = self.datamodule(**accepted_kwargs(self.datamodule, self.factory_kwargs(run)))
        return _built(dm, self.datamodule, "datamodule", pl.LightningDataModule,
                      "pass a function or class that builds one (or datamodule=None when the model has its own "
                      "dataloaders).")

    def build_deficits(self, run: RunSpec) -> list[Any]:
        out: list[Any] = []
        makers = self.deficit if isinstance(self.deficit, (list, tuple)) else [self.deficit]
        for window in run.windows:
            for maker in makers:
                made = make_deficit(maker, window, self.factory_kwargs(run))
                out.extend(_as_callbacks(made, functools.partial(_deficit_name, maker)))
        return out

    def build_callbacks(self, run: RunSpec) -> list[Any]:
        if self.callbacks is None:
            return []
        kwargs = accepted_kwargs(self.callbacks, self.factory_kwargs(run))
        if _names_argument(self.callbacks, "windows"):
            kwargs["windows"] = run.windows
        made = self.callbacks(**kwargs)
        return _as_callbacks(made, lambda: f"callbacks factory {_qualname(self.callbacks)}")


def make_deficit(maker: Any, window: Window, kwargs: Mapping[str, Any]) -> Any:
    """One deficit for ``window``: a ``WindowedDeficit`` template rebuilt for it, or a factory's callbacks.

    The seed rule (the same for every form, so a template, a factory and the CLI's YAML give
    one table): a deficit draws its random numbers with the run's seed (``kwargs["seed"]``)
    unless its seed was fixed explicitly. A template is rebuilt with
    :meth:`~lightning_critical.deficits.base.WindowedDeficit.with_window`, with ``seed=`` the
    run's seed when its class takes a ``seed`` and the template was built without one. A
    factory is called with the run's seed when it names a ``seed`` argument (one bound by
    ``functools.partial`` stays bound); a deficit it returns that takes a ``seed`` but was built
    without one is rebuilt with the run's seed. "Fixed explicitly" is ``seed=`` given to the
    deficit's constructor (or bound by a partial).

    Example::

        >>> from lightning_critical import InputDeficit, Window
        >>> make_deficit(InputDeficit("noise", (0, 1)), Window(0, 3), {"seed": 7}).seed
        7
        >>> make_deficit(InputDeficit("noise", (0, 1), seed=0), Window(0, 3), {"seed": 7}).seed
        0
    """

    seed = kwargs.get("seed")
    if isinstance(maker, WindowedDeficit):
        return maker.with_window(window, **_run_seed(maker, seed))
    if not callable(maker):
        raise TypeError(
            f"deficit={maker!r} is not valid: give a WindowedDeficit (used as a template), a callable "
            "window -> Callback | list[Callback], or a list of these."
        )
    extra = {k: v for k, v in accepted_kwargs(maker, kwargs).items() if k != "window"}
    made = maker(window=window, **extra) if _takes_window_keyword(maker) else maker(window, **extra)
    if isinstance(made, (list, tuple)):
        return type(made)(_seeded(item, seed) for item in made)
    return _seeded(made, seed)


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


def _built(obj: Any, factory: Any, kind: str, cls: type, hint: str) -> Any:
    """``obj`` as a factory built it, checked: of the bound Lightning namespace and of class ``cls``."""

    who = f"{kind} factory {_qualname(factory)}"
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
    import itertools

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

"""A sweep read from YAML (``lightning-critical sweep --config``) into ``Study``, ``Execution`` and ``Output``.

The three sections are the three option groups of :func:`~lightning_critical.sweep.run_study`;
their keys are the fields of :class:`~lightning_critical.sweep.Study`,
:class:`~lightning_critical.sweep.Execution` and :class:`~lightning_critical.sweep.Output`, with
their defaults (a key left out keeps the dataclass's default)::

    study:
      model:      {class_path: lightning_critical.models.SmallCNN, init_args: {lr_decay: 0.97}}
      datamodule: {class_path: lightning_critical.data.DigitsDataModule, init_args: {subset: 400}}
      deficit:    {class_path: lightning_critical.InputDeficit, init_args: {transform: blur, factor: 4}}
      windows:    {removal: [0, 2, 4, 8]}   # or {removal: {ends: [...], epochs_after: 10}},
                                            # {sliding: {onsets: [...], length: 4}}, or a list of windows
      seeds: [0, 1, 2]
      params: {lr: [0.05, 0.1]}             # swept values (arguments of model / datamodule / deficit)
      trainer: {max_epochs: 12}
      metrics: [val_acc]                    # names, or dotted paths of functions
      callbacks: [{class_path: lightning_critical.FisherMonitor, init_args: {every_n_epochs: 2}}]
    execution: {backend: process, runner: {class_path: lightning_critical.sweep.FactorizationEnsembleRunner}}
    output: {out: outputs/sweep}

jsonargparse reads it: it imports each ``class_path``, checks ``init_args`` against the class's
signature and builds factories (``functools.partial`` of the classes, so every backend can send
them to its workers and a sweep's identity is the one the same partial has in Python). A
deficit's ``init_args`` never hold ``window`` (the grid gives it) and take the run's ``seed``
unless they fix one: the seed rule of :func:`~lightning_critical.sweep.spec.make_deficit`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import MISSING, fields
from typing import Any, Protocol

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lightning_critical._namespace import pl
from lightning_critical.schedule import Window
from lightning_critical.sweep import grids
from lightning_critical.sweep.config_errors import ConfigError, one_line
from lightning_critical.sweep.runners import Runner
from lightning_critical.sweep.study import Execution, Output, Study, check_together

GROUPS: dict[str, type] = {"study": Study, "execution": Execution, "output": Output}


class ModelFactory(Protocol):
    """A ``LightningModule`` class given by ``class_path``; called with ``seed`` and swept values."""

    def __call__(self, **kwargs: Any) -> pl.LightningModule: ...


class DataModuleFactory(Protocol):
    """A ``LightningDataModule`` class given by ``class_path`` (same call as the model)."""

    def __call__(self, **kwargs: Any) -> pl.LightningDataModule: ...


class DeficitFactory(Protocol):
    """A deficit's class given by ``class_path``, without ``window`` (the sweep gives each run's)."""

    def __call__(self, window: Window, **kwargs: Any) -> pl.Callback: ...


class CallbackClass(Protocol):
    """A callback's class given by ``class_path``, built fresh for every run."""

    def __call__(self, **kwargs: Any) -> pl.Callback: ...


Metric = Callable[..., Mapping[str, float]]

# The YAML form of the fields the dataclasses type loosely (``Any``, any callable): jsonargparse
# needs a class to check ``class_path`` against. Every other field is read with its own annotation.
YAML_TYPES: dict[str, dict[str, Any]] = {
    "study": {
        # a class by class_path, or any factory function by its dotted path (``mymodels.make_net``)
        "model": ModelFactory | Callable[..., Any],
        "datamodule": DataModuleFactory | Callable[..., Any] | None,
        "deficit": DeficitFactory | Callable[..., Any] | list[DeficitFactory | Callable[..., Any]],
        "windows": dict[str, Any] | list[Any],  # read by grid() below
        "metrics": Metric | str | list[Metric | str],
        "callbacks": list[CallbackClass] | None,
    },
    "execution": {"runner": Runner | str | None, "backend": str | Executor},  # str: "lightning" | "vectorized" | "auto"
}


def grid(value: Any) -> grids.WindowGrid:
    """A window grid from YAML: ``{removal: ...}``, ``{sliding: ...}``, ``{explicit: ...}`` or a list of windows.

    Example::

        >>> [e.label() for e in grid({"sliding": {"onsets": [0, 4], "length": 2}})]
        ['baseline', 'w0-2', 'w4-6']
        >>> [e.label() for e in grid([[0, 3]])]
        ['baseline', 'w0-3']
    """
    if not isinstance(value, Mapping):
        return grids.windows(value)
    makers: dict[str, Callable[..., grids.WindowGrid]] = {
        "removal": grids.removal, "sliding": grids.sliding, "explicit": grids.windows}
    if len(value) != 1 or next(iter(value)) not in makers:
        raise ValueError(f"{dict(value)!r} is not a grid: give one key of {list(makers)}, or a list of windows")
    (kind, args), = value.items()
    if not isinstance(args, Mapping):
        return makers[kind](args)
    try:
        return makers[kind](**args)
    except TypeError as err:
        names = list(inspect.signature(makers[kind]).parameters)
        raise ValueError(f"{kind}: {err}; its arguments are {names}") from None


class CallbackFactory:
    """Fresh callbacks for every run from ``[(class, init_args), ...]`` (picklable)."""

    def __init__(self, specs: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        self.specs = list(specs)

    def __call__(self) -> list[Any]:
        return [cls(**args) for cls, args in self.specs]


def plain_factory(value: Any) -> Any:
    """jsonargparse's factory ``partial(instantiator, cls, **kw)`` as ``partial(cls, **kw)`` (``cls`` without kw).

    The plain form is what the same sweep written in Python holds: one identity, one seed rule
    (keywords bound by a ``partial`` stay bound), and a signature that names the class's arguments.
    """
    if isinstance(value, list):
        return [plain_factory(v) for v in value]
    if not isinstance(value, functools.partial) or not value.args or not inspect.isclass(value.args[-1]):
        return value
    if not getattr(value.func, "__module__", "").startswith("jsonargparse"):
        return value
    cls = value.args[-1]
    return functools.partial(cls, **value.keywords) if value.keywords else cls


def parser(prog: str = "lightning-critical sweep") -> ArgumentParser:
    """The parser of a sweep config: ``--config``, ``--out``, ``--backend`` and every ``--<group>.<field>``."""
    made = ArgumentParser(prog=prog, exit_on_error=False, description=(
        "Train a model once per deficit window x seed (x swept values); write the critical-period table and curve."))
    made.add_argument("--config", action=ActionConfigFile, help="YAML sweep config (see examples/configs/*sweep*.yaml)")
    made.add_argument("--out", type=str | None, help="output directory (default: the config's output.out)")
    made.add_argument("--backend", type=str | None, help="serial, process or ray (default: the config's)")
    for name, group in GROUPS.items():
        typed = YAML_TYPES.get(name, {})
        made.add_class_arguments(group, name, skip=set(typed), instantiate=False)
        for field, hint in typed.items():
            made.add_argument(f"--{name}.{field}", type=hint, help=f"see {group.__name__}.{field}")
    return made


def read_config(args: Sequence[str], default_out: str | None = None) -> tuple[Study, Execution, Output]:
    """``Study``, ``Execution`` and ``Output`` from ``--config FILE`` and command-line overrides.

    ``default_out`` is the output directory when neither the config nor ``--out`` gives one.

    Raises:
        ConfigError: one line naming the key and what is valid (unknown key, wrong type, a class
            that cannot be imported, a required field missing, a value the dataclasses refuse).
    """
    reader = parser()
    try:
        # ``defaults=False``: a key left out stays out, so the dataclasses' defaults apply and no
        # class's own defaults are bound into a factory (a deficit must still take the run's seed).
        cfg = reader.parse_args(list(args), defaults=False)
    except Exception as err:  # jsonargparse raises ArgumentError, or TypeError/ValueError from a deserializer
        raise ConfigError(one_line(err, GROUPS)) from None
    for flag, group, key in (("out", "output", "out"), ("backend", "execution", "backend")):
        if cfg.get(flag) is not None:
            cfg[f"{group}.{key}"] = cfg[flag]
    if default_out is not None and cfg.get("output.out") is None:
        cfg["output.out"] = default_out
    windows = cfg.get("study.windows")
    if windows is not None:
        try:
            grid(windows)
        except ValueError as err:
            raise ConfigError(f"study.windows={windows!r} is not valid: {err}") from None
    return _build(reader, cfg)


def _build(reader: ArgumentParser, cfg: Namespace) -> tuple[Study, Execution, Output]:
    for name, group in GROUPS.items():
        missing = [f.name for f in fields(group)
                   if f.default is MISSING and f.default_factory is MISSING and cfg.get(f"{name}.{f.name}") is None]
        if missing:
            raise ConfigError(f"{name}.{missing[0]} is required: give it in the config's {name}: section.")
    try:
        # jsonargparse builds the values (classes -> factories, runners, executors); the
        # dataclasses are built once, here, from the final values, so they check what
        # lc.sweep.run would get.
        values = reader.instantiate(Namespace({name: cfg.get(name) or Namespace() for name in GROUPS}))
        kwargs = {name: dict(values[name].items(branches=True, nested=False)) if values.get(name) else {}
                  for name in GROUPS}
        study = kwargs["study"]
        for key in ("model", "datamodule", "deficit"):
            if key in study:
                study[key] = plain_factory(study[key])
        if study.get("windows") is not None:
            study["windows"] = grid(study["windows"])
        if study.get("callbacks") is not None:
            classes = [plain_factory(c) for c in study["callbacks"]]
            study["callbacks"] = CallbackFactory(
                [(c.func, dict(c.keywords)) if isinstance(c, functools.partial) else (c, {}) for c in classes])
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).splitlines()[0] if str(err) else repr(err)) from None
    made: dict[str, Any] = {}
    for name, group in GROUPS.items():  # the dataclasses check their fields: one line, named by section
        try:
            made[name] = group(**kwargs[name])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {str(err).splitlines()[0] if str(err) else repr(err)}") from None
    try:
        check_together(made["study"], made["execution"], made["output"])
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    return made["study"], made["execution"], made["output"]

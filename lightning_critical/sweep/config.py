"""A sweep described in YAML (for ``lightning-critical sweep --config``): classes by ``class_path``.

::

    model:   {class_path: lightning_critical.models.SmallCNN, init_args: {lr_decay: 0.97}}
    data:    {class_path: lightning_critical.data.DigitsDataModule, init_args: {subset: 400}}
    deficit: {class_path: lightning_critical.InputDeficit, init_args: {transform: blur, factor: 4}}
    windows: {removal: [0, 2, 4, 8]}       # or {removal: {ends: [...], epochs_after: 10}},
                                           # {sliding: {onsets: [...], length: 4}}, or a list of windows
    seeds: [0, 1, 2]
    params: {lr: [0.05, 0.1]}              # optional swept values (arguments of model / data / deficit)
    trainer: {max_epochs: 12}
    metrics: [val_acc]                     # names, or "package.module:function"
    callbacks: [{class_path: lightning_critical.FisherMonitor, init_args: {every_n_epochs: 2}}]
    test: false
    backend: process                       # serial | process | ray
    workers: null
    out: outputs/sweep

Every other key of :func:`lightning_critical.sweep.run` may appear too (``share_prefixes``,
``threads_per_run``, ``steps_per_epoch``, ``save_model``, ``tensorboard``, ``preflight``...).
The deficit's class is called with ``window=`` for each window and, when it takes one, the run's
``seed`` (unless ``init_args`` fixes it): the same seed rule as a template deficit in Python, so
both give one table. Factories are ``functools.partial`` of the classes, so every backend can
send them to its workers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from lightning_critical._checks import check_choice
from lightning_critical.sweep import grids

RUN_KEYS = (
    "seeds", "params", "trainer", "test", "out", "backend", "workers", "threads_per_run", "share_prefixes",
    "steps_per_epoch", "progress", "save_model", "tensorboard", "plot", "keep_checkpoints", "backend_options",
    "preflight", "resume",
)
KEYS = ("model", "data", "deficit", "windows", "metrics", "callbacks") + RUN_KEYS


def import_object(path: str, what: str) -> Any:
    """``"package.module.Name"`` or ``"package.module:name"``; a bare name is looked up in ``lightning_critical``."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}={path!r} is not valid: give a dotted path such as 'lightning_critical.InputDeficit'.")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    elif "." in path:
        module_name, _, attr = path.rpartition(".")
    else:
        module_name, attr = "lightning_critical", path
    try:
        module = importlib.import_module(module_name)
        return functools.reduce(getattr, attr.split("."), module)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what}={path!r} cannot be imported ({err}).") from None


def _class_spec(value: Any, what: str) -> tuple[Any, dict[str, Any]]:
    if isinstance(value, str):
        return import_object(value, f"{what}.class_path"), {}
    if not isinstance(value, Mapping) or "class_path" not in value:
        raise ValueError(f"{what}={value!r} is not valid: give {{class_path: package.Class, init_args: {{...}}}}.")
    unknown = sorted(set(value) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; valid keys: ['class_path', 'init_args'].")
    args = value.get("init_args") or {}
    if not isinstance(args, Mapping):
        raise ValueError(f"{what}.init_args={args!r} must be a mapping of keyword arguments.")
    cls = import_object(value["class_path"], f"{what}.class_path")
    if not callable(cls):
        raise ValueError(f"{what}.class_path={value['class_path']!r} is not a class or function.")
    return cls, dict(args)


def _factory(value: Any, what: str) -> Any:
    cls, args = _class_spec(value, what)
    return functools.partial(cls, **args) if args else cls


class CallbackFactory:
    """Fresh callbacks for every run from ``[(class, init_args), ...]`` (picklable)."""

    def __init__(self, specs: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        self.specs = list(specs)

    def __call__(self) -> list[Any]:
        return [cls(**args) for cls, args in self.specs]


def _windows(value: Any) -> Any:
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ValueError(f"windows={dict(value)!r} is not valid: give one of removal, sliding or explicit.")
        (kind, args), = value.items()
        makers: dict[str, Callable[..., grids.WindowGrid]] = {
            "removal": grids.removal, "sliding": grids.sliding, "explicit": grids.windows}
        check_choice("windows", kind, tuple(makers))
        if isinstance(args, Mapping):
            try:
                return makers[kind](**args)
            except TypeError as err:
                sig = inspect.signature(makers[kind])
                raise ValueError(f"windows.{kind}: {err}; its arguments are {list(sig.parameters)}.") from None
        return makers[kind](args)
    return grids.windows(value)


def _metrics(value: Any) -> Any:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ValueError(f"metrics={value!r} is not valid: give a name or a list of names / 'module:function' paths.")
    return [import_object(m, "metrics") if isinstance(m, str) and ":" in m else m for m in items]


def load_config(path: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML sweep config into the keyword arguments of :func:`lightning_critical.sweep.run`.

    ``overrides`` maps dotted keys (``"trainer.max_epochs"``) to values, applied before parsing.

    Raises:
        ValueError: unknown keys, missing ``model`` / ``deficit`` / ``windows`` / ``metrics``,
            classes that cannot be imported (each message names the key).
    """
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep config must be a mapping of keys {list(KEYS)}.")
    for dotted, value in (overrides or {}).items():
        _set(raw, dotted, value)
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys: {list(KEYS)}.")
    missing = [k for k in ("model", "deficit", "windows", "metrics", "trainer") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing {missing}; a sweep needs model, deficit, windows, metrics and trainer.")
    kwargs: dict[str, Any] = {k: raw[k] for k in RUN_KEYS if k in raw}
    kwargs["model"] = _factory(raw["model"], "model")
    kwargs["datamodule"] = _factory(raw["data"], "data") if raw.get("data") is not None else None
    deficits = raw["deficit"] if isinstance(raw["deficit"], list) else [raw["deficit"]]
    made = [_factory(d, f"deficit[{i}]") for i, d in enumerate(deficits)]
    kwargs["deficit"] = made if len(made) > 1 else made[0]
    kwargs["windows"] = _windows(raw["windows"])
    kwargs["metrics"] = _metrics(raw["metrics"])
    if raw.get("callbacks"):
        specs = raw["callbacks"] if isinstance(raw["callbacks"], list) else [raw["callbacks"]]
        kwargs["callbacks"] = CallbackFactory([_class_spec(c, f"callbacks[{i}]") for i, c in enumerate(specs)])
    return kwargs


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a mapping in the config.")
        node = nxt
    node[keys[-1]] = value

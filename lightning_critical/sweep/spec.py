"""What defines a sweep and each of its runs, with stable identities for resuming.

A run is ``RunSpec(windows, seed, params, max_epochs)``; its ``run_id`` is a short hash of the
sweep's identity and those fields, in a canonical JSON encoding, so the same run has the same
id in every process and every session. The sweep's identity describes what trains a run
(factories, deficit, callbacks, Trainer arguments, metrics, the user code they run and the
library versions: :mod:`~lightning_critical.sweep.identity`), not which runs exist: adding
seeds, windows or swept values to a finished sweep runs only the new runs.

Factories are called with the keyword arguments their signature names, out of ``seed`` and
the run's swept parameters (:mod:`~lightning_critical.sweep.params`).

This module is pure: it imports neither Lightning nor the deficits, so a sweep's identity, its
plan, its store and its table can be computed, read and tested without a Trainer. Building a
run's objects (model, datamodule, deficits, callbacks) is
:mod:`~lightning_critical.sweep.build`'s, beside the runners. What this module needs of the
Lightning side is given to it: the Lightning namespace in use (``describe(namespace=...)``),
the classes a run's factories built (``describe(built=...)``).
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

from lightning_critical.schedule import Window
from lightning_critical.sweep import identity as ident
from lightning_critical.sweep import source
from lightning_critical.sweep.grids import GridEntry, RunWindows

Metric = str | Callable[..., Mapping[str, float]]
Params = tuple[tuple[str, Any], ...]
DEFICIT_PREFIX = "deficit."
"""Swept names with this prefix set a template deficit's own arguments, never a factory's
(:mod:`~lightning_critical.sweep.params`)."""


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


def qualname(obj: Any) -> str:
    """``module:qualified name`` of a function, class or partial, for identities and messages.

    Example::

        >>> qualname(len), qualname(RunSpec)
        ('builtins:len', 'lightning_critical.sweep.spec:RunSpec')
    """
    # repr only as the last resort (a partial's repr prints every bound argument, arrays included)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        inner = getattr(obj, "func", None)
        name = f"partial({qualname(inner)})" if inner is not None else _ADDRESS.sub("", repr(obj))
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
        return {"partial": qualname(obj.func), "args": describe(obj.args, d), "keywords": describe(obj.keywords, d)}
    if inspect.isclass(obj) or inspect.isbuiltin(obj):
        return qualname(obj)
    if inspect.ismethod(obj):
        return {"method": qualname(obj.__func__), "self": describe(obj.__self__, d)}
    if inspect.isfunction(obj):
        closure = [describe(c.cell_contents, d) for c in (obj.__closure__ or ()) if _has_contents(c)]
        body = [source.function_digest(obj), describe(obj.__defaults__, d), describe(obj.__kwdefaults__, d), closure]
        return {"function": qualname(obj), "code": short_hash(body)}
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):  # a tensor
        t = obj.detach().cpu()
        return {"tensor": list(t.shape), "digest": hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]}
    if hasattr(obj, "tobytes") and hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a numpy array (not its repr)
        digest = hashlib.sha256(str(obj.dtype).encode() + obj.tobytes()).hexdigest()[:12]
        return {"array": list(obj.shape), "digest": digest}
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None:
        public = {k: v for k, v in attrs.items() if not k.startswith("_")}
        return {"object": qualname(type(obj)), "attrs": describe(public, d)}
    return _ADDRESS.sub("", repr(obj))


def _has_contents(cell: Any) -> bool:
    try:
        _ = cell.cell_contents  # raises ValueError for an empty cell
    except ValueError:
        return False
    return True


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
            (rebuilt for each window with its ``with_window``), or a list of these.
        callbacks: factory returning the extra callbacks of a run (fresh ones per run).
        trainer: ``pl.Trainer`` keyword arguments (``max_epochs`` required).
        metrics: names in ``trainer.callback_metrics`` or functions ``(trainer, module) -> dict``.
        test: run ``trainer.test`` after fitting (its metrics join ``callback_metrics``).
        threads_per_run: ``torch.set_num_threads`` inside every run, whatever the backend.
        steps_per_epoch: optimizer steps per epoch, if known (lets step windows share prefixes).
        share_prefixes: ``False``: a runner that shares prefixes inside its jobs (the vectorized
            runner) trains every run from scratch, as the engine then does (not in the identity).
        save_model: write each run's final ``state_dict`` to ``<out>/models/<label>.pt``.
        tensorboard: per-run TensorBoard logs under ``<out>/tensorboard/<label>``.
        runner: the runner when it is not the default one-fit-per-run (part of the identity:
            a sweep's results are never mixed across runners).

    Example::

        >>> spec = SweepSpec(model=len, trainer={"max_epochs": 3})
        >>> spec.max_epochs, spec.factory_kwargs(RunSpec((), seed=2, params=(("lr", 0.1),)))
        (3, {'seed': 2, 'lr': 0.1})
        >>> len(spec.identity(namespace="pytorch_lightning"))
        16
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
    share_prefixes: bool = True
    save_model: bool = False
    tensorboard: bool = True
    runner: Any = None

    @property
    def max_epochs(self) -> int:
        return int(self.trainer["max_epochs"])

    def describe(self, built: Mapping[str, Sequence[Any]] | None = None, *, namespace: str) -> dict[str, Any]:
        """What trains a run, as JSON (stored in ``<out>/sweep.json``).

        ``code`` holds the digest of the user code each part runs
        (:func:`~lightning_critical.sweep.identity.code_digest`), from the factories and from
        ``built``: the classes the factories built, per role (``{"model": [Net], ...}``, known
        once the first run's objects are built). ``versions``: torch, the Lightning
        ``namespace`` the runs train with (``lightning_critical._namespace.NAME``:
        ``"pytorch_lightning"`` or ``"lightning.pytorch"``; given by the caller, so this module
        imports no Lightning), numpy, this package.
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
            "versions": ident.versions(namespace),
        }

    def identity(self, built: Mapping[str, Sequence[Any]] | None = None, *, namespace: str) -> str:
        """A 16-character hash of :meth:`describe`."""
        return identity_of(self.describe(built, namespace=namespace))

    def factory_kwargs(self, run: RunSpec) -> dict[str, Any]:
        """The keyword arguments a factory may take for ``run``: ``seed`` and the swept values (copied), but not
        the ``deficit.``-prefixed ones (they set the template deficit's own arguments)."""
        return {"seed": run.seed, **{k: v for k, v in run.params_dict.items() if not k.startswith(DEFICIT_PREFIX)}}

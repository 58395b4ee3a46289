"""The three option groups of a sweep: :class:`Study` (what to train), :class:`Execution` (where
and how), :class:`Output` (what to write); each checks its own fields when it is made.

``lc.sweep.run(model, datamodule, deficit=..., ...)`` is the convenience form of
``lc.sweep.run_study(Study(...), Execution(...), Output(...))``: the keywords are the fields of
these classes, with the same defaults. A bad value is refused when its group is made (or
rebuilt by :func:`dataclasses.replace`), naming the field, the value and what is valid; the
checks that need two groups at once (:func:`check_together`) run where the groups meet, when
the sweep starts. Everything is checked before anything trains.

Example::

    >>> import dataclasses, lightning_critical as lc
    >>> study = lc.sweep.Study(
    ...     model=lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
    ...     datamodule=lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
    ...     deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
    ...     windows=lc.sweep.removal([1]), metrics="val_acc", trainer={"max_epochs": 2})
    >>> dataclasses.replace(study, seeds=[0, 1]).seed_list
    [0, 1]
    >>> Execution(backend="serial").backend, Output(out="outputs/x").plot
    ('serial', True)
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_critical._checks import check_choice, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.sweep import backends as _backends
from lightning_critical.sweep.audit import check_verify
from lightning_critical.sweep.build import check_swept
from lightning_critical.sweep.grids import WindowGrid, as_grid, uneven_clean_epochs
from lightning_critical.sweep.params import check_params, deficit_only
from lightning_critical.sweep.runners import RUNNER_OPTIONS, check_runner
from lightning_critical.sweep.runners.lightning import RESERVED_TRAINER
from lightning_critical.sweep.spec import Params
from lightning_critical.sweep.store import RESUME
from lightning_critical.sweep.table import check_columns

__all__ = ["Execution", "MetricsArg", "Output", "Study", "check_together"]

MetricsArg = str | Callable[..., Mapping[str, float]] | Sequence[str | Callable[..., Mapping[str, float]]]


@dataclass
class Study:
    """What to train: factories, the deficit and its windows, seeds, swept values, final metrics.

    Fields are the like-named arguments of :func:`lightning_critical.sweep.run` (see it for each
    one's meaning); ``deficit``, ``windows``, ``metrics`` and ``trainer`` must be given. Every
    field is checked when the study is made; the checked forms are the properties
    :attr:`grid`, :attr:`seed_list`, :attr:`combos`, :attr:`metric_list` and
    :attr:`trainer_kwargs` (recomputed from the fields, so a changed field is checked again);
    :attr:`deficit_params` names the swept values the baseline goes without.

    Raises:
        ValueError / TypeError: a bad field, naming it, the value and what is valid.

    Example::

        >>> import lightning_critical as lc
        >>> study = Study(lc.models.MultiPathwayLinearNet, lc.data.HierarchicalDataModule,
        ...               deficit=lambda window: lc.PathwayDeficit("b", window, mode="freeze"),
        ...               windows=lc.sweep.removal([2]), metrics="train_loss", trainer={"max_epochs": 3})
        >>> [e.label() for e in study.grid], study.trainer_kwargs["max_epochs"]
        (['baseline', 'w0-2'], 3)
        >>> Study(lc.models.MultiPathwayLinearNet, deficit=study.deficit, windows=[(0, 2)],
        ...       metrics="train_loss", trainer={"max_epochs": 3}, seeds=[0, 0])
        Traceback (most recent call last):
        ...
        ValueError: seeds=[0, 0] repeats [0]: give each seed once.
    """

    model: Callable[..., Any]
    datamodule: Callable[..., Any] | None = None
    deficit: Any = None
    windows: Any = None
    metrics: MetricsArg = ()
    trainer: Mapping[str, Any] = field(default_factory=dict)
    seeds: Sequence[int] = (0,)
    params: Any = None
    callbacks: Callable[..., Any] | None = None
    test: bool = False
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field (done when the study is made; again when a sweep starts)."""
        grid, _, combos, metrics = self.grid, self.seed_list, self.combos, self.metric_list  # in the order of run's
        check_columns(sorted({k for combo in combos for k, _ in combo}), [m for m in metrics if isinstance(m, str)])
        trainer = self.trainer_kwargs
        check_int("steps_per_epoch", self.steps_per_epoch, low=1, allow_none=True)
        _check_windows_fit(grid, trainer["max_epochs"], self.steps_per_epoch)
        _check_callables(self.model, self.datamodule, self.deficit, self.callbacks)
        check_swept(self.combos, [("model", self.model), ("datamodule", self.datamodule),
                                  ("callbacks", self.callbacks)], self.deficit)

    @property
    def grid(self) -> WindowGrid:
        """``windows`` as a :class:`~lightning_critical.sweep.grids.WindowGrid` (the baseline included)."""
        return as_grid(self.windows)

    @property
    def seed_list(self) -> list[int]:
        """``seeds`` as a list of distinct integers."""
        return _check_seeds(self.seeds)

    @property
    def combos(self) -> list[Params]:
        """The swept values, one tuple of ``(name, value)`` pairs per combination (``[()]`` without ``params``)."""
        return check_params(self.params)

    @property
    def deficit_params(self) -> list[str]:
        """The swept names that reach only the deficit (``deficit.<argument>``, or arguments no model, datamodule
        or callbacks factory takes): the baseline goes without them, one run per seed whatever their values."""
        names = {k for combo in self.combos for k, _ in combo}
        return deficit_only(names, [self.model, self.datamodule, self.callbacks])

    @property
    def metric_list(self) -> list[Any]:
        """``metrics`` as a non-empty list of names and functions."""
        return _check_metrics(self.metrics)

    @property
    def trainer_kwargs(self) -> dict[str, Any]:
        """``trainer`` checked, with ``max_epochs`` set (from the grid when every entry sets its length)."""
        return _check_trainer(self.trainer, self.grid)


@dataclass
class Execution:
    """Where and how the runs train: backend, workers, runner, sharing, errors, resume, audit.

    Fields are the like-named arguments of :func:`lightning_critical.sweep.run`. A backend
    object (an Executor) is only checked when the sweep starts (``backend="ray"`` then also
    needs Ray installed).

    Raises:
        ValueError / TypeError: a bad field, naming it, the value and what is valid.

    Example::

        >>> Execution(backend="serial", verify="all").audit_limit is None
        True
        >>> Execution(errors="ignore")
        Traceback (most recent call last):
        ...
        ValueError: errors='ignore' is not valid; choose one of ('record', 'raise').
    """

    backend: Any = "process"
    workers: int | None = None
    threads_per_run: int = 1
    share_prefixes: bool = True
    backend_options: Mapping[str, Any] | None = None
    runner: Any = None
    errors: str = "record"
    preflight: bool = True
    resume: str = "refuse"
    verify: bool | int | str = "first"
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field (done when the group is made; again when a sweep starts)."""
        _ = self.training_runner
        check_choice("errors", self.errors, ("record", "raise"))
        check_choice("resume", self.resume, RESUME,
                     extra=" (what to do with results of a sweep whose identity differs)")
        _ = self.audit_limit
        if isinstance(self.backend, str):
            check_choice("backend", self.backend, _backends.BACKENDS, extra=" or a concurrent.futures.Executor")
        if self.backend_options is not None and not isinstance(self.backend_options, Mapping):
            raise TypeError(f"backend_options={self.backend_options!r} is not valid: give a dict of the backend's "
                            "keyword arguments (e.g. {'num_gpus': 0.25} for Ray), or None.")
        check_int("threads_per_run", self.threads_per_run, low=1)
        check_int("workers", self.workers, low=1, allow_none=True)

    @property
    def training_runner(self) -> Any:
        """The runner object (``runner=None``: a :class:`~lightning_critical.sweep.runners.LightningRunner`)."""
        return check_runner(self.runner)

    @property
    def audit_limit(self) -> int | None:
        """How many branched runs the audit retrains (``None``: all), from ``verify``."""
        return check_verify(self.verify)


@dataclass
class Output:
    """What the sweep writes: its directory, models, TensorBoard logs, the figure, checkpoints.

    Fields are the like-named arguments of :func:`lightning_critical.sweep.run`; ``plot`` may
    name one of the study's metrics (checked when the sweep starts, see :func:`check_together`).

    Raises:
        TypeError: a bad field, naming it, the value and what is valid.

    Example::

        >>> Output(out="outputs/demo", plot="val_acc").plot
        'val_acc'
        >>> Output(plot=[1])
        Traceback (most recent call last):
        ...
        TypeError: plot=[1] is not valid: give True, False or the name of one of the sweep's metrics.
    """

    out: str | os.PathLike = "outputs/sweep"
    save_model: bool = False
    tensorboard: bool | None = None
    plot: bool | str = True
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field (done when the group is made; again when a sweep starts)."""
        if not isinstance(self.out, (str, os.PathLike)) or not os.fspath(self.out):
            raise TypeError(f"out={self.out!r} is not valid: give the sweep's directory (a path).")
        if self.plot is not None and not isinstance(self.plot, (str, numbers.Integral)):
            raise TypeError(f"plot={self.plot!r} is not valid: give True, False or the name of one of the sweep's "
                            "metrics.")
        if self.tensorboard is not None and not isinstance(self.tensorboard, numbers.Integral):
            raise TypeError(f"tensorboard={self.tensorboard!r} is not valid: give True, False or None (when the "
                            "runner supports it).")


def check_together(study: Study, execution: Execution, output: Output) -> bool:
    """The checks that need two groups at once; returns whether the runs write TensorBoard logs.

    A runner's ``supports`` must cover the ``callbacks``, ``test``, ``save_model`` and
    ``tensorboard`` asked for (refused rather than ignored); ``tensorboard=None`` means "when the
    runner supports it", and ``trainer={"logger": False}`` turns it off; ``plot`` naming a metric
    must name one of ``metrics`` (when they are all names).

    Example::

        >>> import lightning_critical as lc
        >>> study = Study(lc.models.MultiPathwayLinearNet, deficit=lambda window: lc.PathwayDeficit("b", window),
        ...               windows=[(0, 1)], metrics="train_loss", trainer={"max_epochs": 2})
        >>> check_together(study, Execution(), Output()), check_together(study, Execution(), Output(tensorboard=False))
        (True, False)
        >>> check_together(study, Execution(), Output(plot="val_acc"))
        Traceback (most recent call last):
        ...
        ValueError: plot='val_acc' is not valid; choose one of ('train_loss',) (the sweep's metrics) or True / False.
    """
    runner = execution.training_runner
    supported = getattr(runner, "supports", RUNNER_OPTIONS)
    tensorboard = "tensorboard" in supported if output.tensorboard is None else bool(output.tensorboard)
    asked = {"callbacks": study.callbacks is not None, "test": bool(study.test),
             "save_model": bool(output.save_model), "tensorboard": tensorboard}
    refused = [name for name, on in asked.items() if on and name not in supported]
    if refused:
        raise ValueError(f"runner {runner.name!r} does not support {refused} (it would ignore them silently); "
                         f"it supports {sorted(supported)}. Leave them out, or use the default Lightning runner.")
    metrics = study.metric_list
    if isinstance(output.plot, str) and all(isinstance(m, str) for m in metrics):
        check_choice("plot", output.plot, metrics, extra=" (the sweep's metrics) or True / False")
    uneven_clean_epochs(study.grid, study.trainer_kwargs["max_epochs"])  # once per sweep, before training
    return tensorboard and study.trainer_kwargs.get("logger") is not False


# -- the checks of single fields -----------------------------------------------------------
def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) and not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds={seeds!r} is not valid: give a list of integer seeds, e.g. seeds=[0, 1, 2].")
    values = list(seeds)
    if not values:
        raise ValueError("seeds=[] is empty: give at least one integer seed.")
    out = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(values)]
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds={values!r} repeats {repeated}: give each seed once.")
    return out


def _check_metrics(metrics: Any) -> list[Any]:
    items = [metrics] if isinstance(metrics, str) or callable(metrics) else metrics
    if isinstance(items, (bytes, Mapping)) or not isinstance(items, Sequence) or not items:
        raise ValueError(
            f"metrics={metrics!r} is not valid: give a metric name (from trainer.callback_metrics), a function "
            "(trainer, module) -> dict, or a non-empty list of them."
        )
    for item in items:
        if not (isinstance(item, str) and item) and not callable(item):
            raise ValueError(
                f"metrics entry {item!r} is not valid: give a name or a function (trainer, module) -> dict.")
    return list(items)


def _check_trainer(trainer: Any, grid: WindowGrid) -> dict[str, Any]:
    if not isinstance(trainer, Mapping):
        raise ValueError(
            f"trainer={trainer!r} is not valid: give a dict of pl.Trainer arguments, e.g. {{'max_epochs': 20}}.")
    kwargs = dict(trainer)
    _check_trainer_keys(kwargs)
    reserved = [k for k in RESERVED_TRAINER if k in kwargs]
    if reserved:
        raise ValueError(
            f"trainer= may not set {reserved}: the sweep owns them (pass extra callbacks with callbacks=; "
            "every run writes under <out>)."
        )
    check_choice("trainer['logger']", kwargs.get("logger", True), (True, False),
                 extra=" (every run logs to its own TensorBoard directory under <out>/tensorboard; "
                       "or pass tensorboard=False)")
    for key in ("enable_checkpointing", "enable_autolog_hparams"):
        kwargs.pop(key, None)  # set by the sweep (branch checkpoints; hparams logged once at the end)
    for key in ("max_steps", "max_time"):
        if kwargs.get(key) not in (None, -1):
            raise ValueError(f"trainer[{key!r}]={kwargs[key]!r} is not supported by sweeps: give max_epochs.")
    if "max_epochs" in kwargs:
        kwargs["max_epochs"] = check_int("trainer['max_epochs']", kwargs["max_epochs"], low=1)
    elif any(e.max_epochs is None for e in grid):
        raise ValueError("trainer= needs max_epochs (how long every run trains), e.g. trainer={'max_epochs': 20}.")
    else:
        kwargs["max_epochs"] = max(e.max_epochs for e in grid)
    return kwargs


def _check_trainer_keys(kwargs: Mapping[str, Any]) -> None:
    valid = list(inspect.signature(pl.Trainer).parameters)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), valid, n=3) for k in unknown}
        hints = "; ".join(f"for {k!r} did you mean {m}?" for k, m in close.items() if m)
        raise ValueError(f"trainer= has unknown pl.Trainer arguments {unknown}" + (f" ({hints})" if hints else "")
                         + f"; valid: {sorted(valid)}.")


def _check_windows_fit(grid: WindowGrid, max_epochs: int, steps_per_epoch: int | None) -> None:
    for entry in grid:
        epochs = entry.max_epochs or max_epochs
        for w in entry.windows:
            if w.unit == "epoch":
                limit, what = epochs, f"max_epochs={epochs}"
            elif steps_per_epoch is not None:
                limit, what = epochs * steps_per_epoch, f"the run's {epochs * steps_per_epoch} steps"
            else:
                continue
            if w.start >= limit or (w.end is not None and w.end > limit):
                raise ValueError(
                    f"window {w} does not fit in training ({what}): every window must end by the end of training. "
                    "Raise max_epochs or drop the window."
                )


def _check_callables(model: Any, datamodule: Any, deficit: Any, callbacks: Any) -> None:
    if not callable(model) or _is_instance_of_lightning(model):
        raise TypeError(
            f"model={model!r} is not valid: give a factory (a LightningModule class or a function returning one), "
            "not a model instance: every run builds a fresh model."
        )
    if datamodule is not None and (not callable(datamodule) or _is_instance_of_lightning(datamodule)):
        raise TypeError(
            f"datamodule={datamodule!r} is not valid: give a factory (a LightningDataModule class or a function "
            "returning one), or None."
        )
    makers = deficit if isinstance(deficit, (list, tuple)) else [deficit]
    if not makers:
        raise ValueError("deficit=[] is empty: give the deficit to place in each window.")
    for maker in makers:
        if not isinstance(maker, WindowedDeficit) and not callable(maker):
            raise TypeError(
                f"deficit={maker!r} is not valid: give a WindowedDeficit (e.g. lc.InputDeficit('blur', window=(0, 1)), "
                "used as a template), a callable window -> Callback | list[Callback], or a list of these."
            )
    if callbacks is not None and (not callable(callbacks) or isinstance(callbacks, (list, tuple))):
        raise TypeError(
            f"callbacks={callbacks!r} is not valid: give a factory returning a list of callbacks "
            "(e.g. lambda: [lc.SpectralMonitor()]), so every run gets fresh ones."
        )


def _is_instance_of_lightning(obj: Any) -> bool:
    return isinstance(obj, (pl.LightningModule, pl.LightningDataModule))

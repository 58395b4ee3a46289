"""The three option groups of a sweep: :class:`Study` (what to train), :class:`Execution` (where
and how), :class:`Output` (what to write).

``lc.sweep.run(model, datamodule, deficit=..., ...)`` is the convenience form of
``lc.sweep.run_study(Study(...), Execution(...), Output(...))``: the keywords are the fields of
these classes, with the same defaults.

Example::

    >>> import lightning_critical as lc
    >>> study = lc.sweep.Study(
    ...     model=lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
    ...     datamodule=lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
    ...     deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
    ...     windows=lc.sweep.removal([1]), metrics="val_acc", trainer={"max_epochs": 2})
    >>> Execution(backend="serial").backend, Output(out="outputs/x").plot
    ('serial', True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

MetricsArg = str | Callable[..., Mapping[str, float]] | Sequence[str | Callable[..., Mapping[str, float]]]


@dataclass
class Study:
    """What to train: factories, the deficit and its windows, seeds, swept values, final metrics.

    Fields are the like-named arguments of :func:`lightning_critical.sweep.run`.
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


@dataclass
class Execution:
    """Where and how the runs train: backend, workers, runner, sharing, errors, resume, audit."""

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


@dataclass
class Output:
    """What the sweep writes: its directory, models, TensorBoard logs, the figure, checkpoints."""

    out: str | os.PathLike = "outputs/sweep"
    save_model: bool = False
    tensorboard: bool | None = None
    plot: bool | str = True
    keep_checkpoints: bool = False


def as_kwargs(*groups: Any) -> dict[str, Any]:
    """The fields of ``groups`` as one keyword dictionary (the convenience form's arguments)."""
    return {f.name: getattr(g, f.name) for g in groups for f in fields(g)}


def run_study(study: Study, execution: Execution | None = None, output: Output | None = None) -> Any:
    """Run ``study`` (see :func:`lightning_critical.sweep.run`, whose keywords are these fields)."""
    from lightning_critical.sweep.engine import run

    kwargs = as_kwargs(study, execution or Execution(), output or Output())
    return run(kwargs.pop("model"), kwargs.pop("datamodule"), **kwargs)

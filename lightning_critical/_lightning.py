"""The one place that knows how to talk to Lightning's loggers and trainer internals.

Everything here uses public Lightning API; if a Lightning upgrade breaks one of these
helpers, ``tests/test_lightning_adapter.py`` fails loudly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from lightning_critical._namespace import instance_of, pl


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Send scalars to every logger at an explicit optimizer step.

    Lightning's ``self.log`` only flushes every ``log_every_n_steps``; records taken on our own
    cadence go straight to the loggers (whose ``log_metrics`` are rank-zero-only), so every
    rank calls this with the same keys and no collective is involved.
    """
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger, on rank zero only (else empty).

    Either namespace's TensorBoardLogger: a script on `lightning` with the package bound to
    `pytorch_lightning` (or the reverse) still gets its histograms and layouts.
    """
    return [lg.experiment for lg in tensorboard_loggers(trainer)]


def run_dir(trainer: pl.Trainer) -> str:
    """Where per-run files go: the first logger's directory, else ``default_root_dir``."""
    for logger in trainer.loggers:
        directory = getattr(logger, "log_dir", None) or logger.save_dir
        if directory:
            return str(directory)
    return str(trainer.default_root_dir)


def log_dirs(trainer: pl.Trainer) -> list[str]:
    """The directories of the trainer's loggers, first logger first, without repeats.

    A logger's ``log_dir`` where it has one (TensorBoard, CSV), else the first logger's
    ``save_dir`` (W&B, MLflow), else ``default_root_dir``; empty without a logger.
    """
    dirs = (getattr(lg, "log_dir", None) for lg in trainer.loggers)
    found = [str(d) for d in dirs if isinstance(d, (str, os.PathLike))]
    if not found and trainer.loggers:
        found = [run_dir(trainer)]
    return list(dict.fromkeys(found))


def history_path(trainer: pl.Trainer, history_file: str | None) -> str | None:
    """Where a monitor's history CSV goes: under the first logger's directory, on rank zero only.

    ``None`` without a logger (there is no run directory to write into; records stay in
    memory), on other ranks, or when ``history_file`` is ``None``.
    """
    if not history_file or not trainer.loggers or not trainer.is_global_zero:
        return None
    return os.path.join(run_dir(trainer), history_file)


def callbacks_of(trainer: pl.Trainer) -> list[pl.Callback]:
    """``trainer.callbacks``, typed: Lightning assigns it in a connector, so the class does not declare it."""
    return trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's CallbackConnector


def datamodule_of(trainer: pl.Trainer) -> pl.LightningDataModule | None:
    """``trainer.datamodule``, typed: Lightning assigns it in a connector, so the class does not declare it."""
    return trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's DataConnector


def steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per epoch when the train loader has a finite length, else ``None``."""
    batches = trainer.num_training_batches
    if batches is None or batches == float("inf"):
        return None
    # Lightning also steps on the last, incomplete accumulation group of an epoch.
    return max(1, math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)))


def tensorboard_loggers(trainer: pl.Trainer) -> list[Any]:
    """Every TensorBoard logger of the trainer (either Lightning namespace), on rank zero only (else empty)."""
    if not trainer.is_global_zero:
        return []
    return [lg for lg in trainer.loggers if instance_of(lg, "loggers.TensorBoardLogger")]


class PlaceholderHpMetric:
    """Keeps Lightning's placeholder HParams session (``hp_metric=-1``) out of one fit, then puts the flag back.

    TensorBoard keeps the first session a run directory receives, so the one written at the end
    of fit (with the run's deficits, schedule and final metrics) must be the only one. The run's
    view (:class:`lightning_critical.views.RunView`) owns one of these: :meth:`skip` before
    Lightning's start-of-fit hparams autolog (``setup`` / ``on_fit_start``), :meth:`restore` when
    the fit ends, so the user's logger is left as it was. The logger's ``_default_hp_metric`` flag is private:
    ``tests/test_tensorboard_views.py`` fails loudly if a Lightning upgrade renames it.

    Example::

        >>> placeholder = PlaceholderHpMetric()
        >>> placeholder.changed, placeholder.restore()
        ([], None)
    """

    def __init__(self) -> None:
        self.changed: list[Any] = []  # the loggers whose flag :meth:`skip` turned off

    def skip(self, trainer: pl.Trainer) -> None:
        """Turn the placeholder off on every TensorBoard logger of ``trainer`` that has it on."""
        self.changed = []
        for logger in tensorboard_loggers(trainer):
            if getattr(logger, "_default_hp_metric", False):
                logger._default_hp_metric = False
                self.changed.append(logger)

    def restore(self) -> None:
        """Turn the placeholder back on where :meth:`skip` turned it off."""
        for logger in self.changed:
            logger._default_hp_metric = True
        self.changed = []


def log_every_n_steps(trainer: pl.Trainer) -> int:
    """``trainer.log_every_n_steps``, typed: Lightning assigns it in a connector, so the class does not declare it."""
    return int(getattr(trainer, "log_every_n_steps", 50) or 1)

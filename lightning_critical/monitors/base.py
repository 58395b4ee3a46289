"""``Monitor``: the base of callbacks that measure a model during training and keep what they measure.

What :class:`~lightning_critical.SpectralMonitor`, :class:`~lightning_critical.FisherMonitor`
and a user's own monitor share lives here, once:

* **cadence**: a record is due when :meth:`~Monitor.is_due` says so, by default when the
  :class:`~lightning_critical.cadence.Cadence` given as ``every_n_steps`` is due at
  ``trainer.global_step`` (a pure function of the step: a resumed fit records at the same
  steps as an uninterrupted one), never twice at one step;
* **history**: every record's tidy rows ``(step, epoch, target, metric, index, value)`` in a
  :class:`~lightning_critical.history.History` (:meth:`~Monitor.to_frame`), appended to
  ``<log dir>/<history_file>`` on rank zero; one fit, one history (a resumed fit keeps the
  records before its step); two monitors writing one file are refused before training;
* **report once**: every skipped target or degraded record is reported once per fit
  (:meth:`~Monitor.report_once`), never silently dropped and never repeated every step;
* **DDP hygiene**: scalars are logged on every rank with identical keys (Lightning's logger
  API; ranks differ only in values), the history file and rich content are written on rank
  zero only, and the process group is destroyed when the process exits.

Extension points (public names; override them, never an underscore method):
:meth:`~Monitor.measure` (the one a simple monitor needs), :attr:`~Monitor.metric`,
:meth:`~Monitor.check`, :meth:`~Monitor.reset`, :meth:`~Monitor.is_due`, :meth:`~Monitor.record`,
and any Lightning hook (call ``super()`` in those this class implements).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn
from typing_extensions import override

from lightning_critical import views
from lightning_critical._distributed import destroy_process_group_at_exit
from lightning_critical._lightning import callbacks_of, history_path
from lightning_critical._namespace import pl, rank_zero_info, rank_zero_warn
from lightning_critical.cadence import Cadence, as_cadence
from lightning_critical.history import History, Record, check_history_file
from lightning_critical.probing import probing

__all__ = ["Monitor", "probe_devices"]


def probe_devices(module: nn.Module) -> list[torch.device] | None:
    """The device whose random-number generator a probe of ``module`` may touch (a LightningModule
    knows it; ``None`` lets :func:`~lightning_critical.probing.probing` pick the current CUDA device).

    Example::

        >>> probe_devices(torch.nn.Linear(2, 2)) is None
        True
    """
    device = getattr(module, "device", None)
    return [device] if isinstance(device, torch.device) else None


class Monitor(pl.Callback):
    """Base class of monitors: measure the model on a cadence, keep a tidy history, log scalars.

    A subclass implements :meth:`measure` (``{target: value}`` of one scalar :attr:`metric`);
    the base calls it under :func:`~lightning_critical.probing.probing` (deficit hooks inert,
    every random-number stream restored) and ``torch.no_grad()`` whenever a record is due,
    adds the rows to the history and logs ``<metric>/<target>`` on every rank. Monitors with
    richer records override :meth:`record` and call :meth:`publish`.

    Args:
        every_n_steps: when to record (an integer ``n``, ``"log"`` or a
            :class:`~lightning_critical.cadence.Cadence`); ``None`` for a monitor that overrides
            :meth:`is_due` (or the hooks that record).
        history_file: CSV file name under the run's log directory (``None``: none).

    Example (a user-written monitor of each layer's weight norm, every 2 steps)::

        >>> import lightning_critical as lc
        >>> class WeightNorm(Monitor):
        ...     metric = "weight_norm"
        ...     def measure(self, trainer, pl_module):
        ...         return {name: float(p.norm()) for name, p in pl_module.named_parameters()}
        >>> monitor = WeightNorm(every_n_steps=2, history_file="weight_norms.csv")
        >>> monitor.cadence.steps(6), monitor.to_frame().columns.tolist()
        ([0, 2, 4, 6], ['step', 'epoch', 'target', 'metric', 'index', 'value'])
    """

    metric: str = "value"
    """The metric name of :meth:`measure`'s values (rows' ``metric``, scalars' ``<metric>/<target>``)."""

    def __init__(self, every_n_steps: int | str | Cadence | None = 1, history_file: str | None = None) -> None:
        self.cadence: Cadence | None = None if every_n_steps is None else as_cadence(every_n_steps, "every_n_steps")
        self.history_file = check_history_file(history_file)
        self.history = History()
        self._reported: set[str] = set()
        self._last_step: int | None = None

    # -- extension points ------------------------------------------------------------------
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Mapping[str, float]:
        """``{target: value}`` of :attr:`metric` now (called by :meth:`record`, under probing and no_grad)."""
        raise NotImplementedError(f"{type(self).__name__} must implement measure() or override record().")

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate the targets before the first update (``on_train_start``); raise ``ValueError`` on bad input."""

    def reset(self) -> None:
        """Forget the state a previous fit left (called at ``setup``, before a checkpoint is restored)."""

    def is_due(self, trainer: pl.Trainer) -> bool:
        """Whether a record is due before this training batch (default: the cadence at ``global_step``)."""
        if self.cadence is None:
            raise NotImplementedError(f"{type(self).__name__} has no cadence: give every_n_steps or override is_due().")
        return self.cadence.is_due(trainer.global_step)

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take one record now (normally called by the hooks): :meth:`measure`, then :meth:`publish`."""
        step, epoch = trainer.global_step, trainer.current_epoch
        self._last_step = step
        with probing(probe_devices(pl_module)), torch.no_grad():
            values = {str(target): float(value) for target, value in self.measure(trainer, pl_module).items()}
        rows: list[Record] = [(step, epoch, target, self.metric, -1, v) for target, v in values.items()]
        self.publish(trainer, rows, {f"{self.metric}/{target}": v for target, v in values.items()}, step)

    # -- what the base provides ---------------------------------------------------------------
    def publish(self, trainer: pl.Trainer, rows: Iterable[Record], scalars: Mapping[str, float], step: int) -> None:
        """Add ``rows`` to the history (the file on rank zero) and log ``scalars`` on every rank at ``step``."""
        self.history.extend(rows, write=trainer.is_global_zero)
        self._log(trainer, scalars, step)

    def _log(self, trainer: pl.Trainer, scalars: Mapping[str, float], step: int) -> None:
        # The monitors' one logger call for scalars (identical keys on every rank), through the run's view.
        views.of(trainer).series(dict(scalars), step)

    def report_once(self, key: str, message: str, warn: bool = False) -> None:
        """Say ``message`` (info, or a warning with ``warn``) the first time ``key`` comes up in this fit."""
        if key in self._reported:
            return
        self._reported.add(key)
        say = rank_zero_warn if warn else rank_zero_info
        say(f"{type(self).__name__}: {message}")

    def to_frame(self) -> pd.DataFrame:
        """Everything recorded in this fit (and, after a resume, the run's earlier records) as a tidy ``DataFrame``."""
        return self.history.to_frame()

    @property
    def history_path(self) -> str | None:
        """The CSV file the records are appended to (rank zero, while fitting)."""
        return self.history.path

    def _check_history_file_unique(self, trainer: pl.Trainer) -> None:
        if self.history_file is None or not trainer.loggers:
            return
        mine = os.path.normpath(self.history_file)
        for other in callbacks_of(trainer):
            theirs = getattr(other, "history_file", None)
            if other is self or not isinstance(getattr(other, "history", None), History) or not isinstance(theirs, str):
                continue
            if os.path.normpath(theirs) == mine:
                raise ValueError(
                    f"history_file={self.history_file!r} is used by two monitors ({self.state_key} and "
                    f"{other.state_key}); give each monitor its own history_file (or None)."
                )

    def _start_history(self, trainer: pl.Trainer) -> None:
        if self.history_file and not trainer.loggers:
            self.report_once("no-logger", "no logger: the history is kept in memory only (to_frame()).")
        step = trainer.global_step
        path = history_path(trainer, self.history_file)
        dropped = self.history.start(path, from_step=step)
        if dropped and step == 0:
            rank_zero_warn(f"{type(self).__name__}: a new fit replaces the {dropped} records of an earlier run"
                           + (f" in {path!r}." if path else " (to_frame() shows this fit only)."))
        # Records at or after `step` were just dropped and will be taken again.
        self._last_step = None

    # -- Lightning hooks -----------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        destroy_process_group_at_exit()  # CPU DDP: gloo groups must not outlive Python (see _distributed)
        views.of(trainer).start(self)  # before Lightning's hparams autolog: the view writes the one session
        # Before Lightning restores a checkpoint: a resumed fit then gets the checkpoint's state.
        self._reported = set()
        self._last_step = None
        self.reset()
        self._check_history_file_unique(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer, pl_module)
        self._start_history(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self._last_step and self.is_due(trainer):
            self.record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.history.close()
        views.of(trainer).end(self)  # the last callback to end closes the run: schedule, session, series runs

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.history.close()
        views.of(trainer).release()

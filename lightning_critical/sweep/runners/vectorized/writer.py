"""A member's TensorBoard logs, written after the job as the default runner's run writes them during its fit.

The run's directory (``<out>/tensorboard/<label>``, started afresh) gets, from the member's logs
(:class:`~.history.MemberLogs`) and deficits, through the same code the default runner's fit
goes through:

* Lightning's scalars (what ``self.log`` sent, at Lightning's steps, with ``epoch``) through a
  ``TensorBoardLogger`` made as :func:`~lightning_critical.sweep.runners.lightning.fit` makes it;
* the deficits' indicators (``deficit/<name>``), their custom-scalars charts and ``schedule.json``:
  the member's own deficit callbacks driven through their hooks (``setup``, ``on_fit_start``,
  ``on_train_start``, each step's indicator, ``on_train_end``, ``teardown``) against
  :class:`LoggedRun`, a stand-in for the run's ``Trainer`` whose counters walk the run's steps
  (the deficits' hooks that act on training are not called);
* the run's one HParams session (the module's hyperparameters as ``model/<name>``, the deficits',
  the sweep's window, seed and swept values, ``final/<name>`` metrics) through the run's view
  (:func:`lightning_critical.views.of`), so the sweep's one view (``finish_sweep``) reads it.

Example::

    >>> run = LoggedRun([], [], None, steps_per_epoch=3, log_every_n_steps=50)
    >>> run.at(7)
    >>> run.global_step, run.current_epoch
    (7, 2)
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

from lightning_critical import views
from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.lightning import hparams
from lightning_critical.sweep.runners.vectorized.history import MemberLogs


class LoggedRun:
    """What a run's logging code reads of its ``Trainer``, for a run already trained: counters set by :meth:`at`."""

    is_global_zero = True
    global_rank = local_rank = node_rank = 0
    world_size = accumulate_grad_batches = 1
    max_steps = -1
    should_stop = sanity_checking = False

    def __init__(self, loggers: list[Any], callbacks: list[Any], module: Any, steps_per_epoch: int,
                 log_every_n_steps: int, max_epochs: int | None = None, optimizers: list[Any] | None = None,
                 default_root_dir: str = ".", datamodule: Any = None) -> None:
        self.loggers, self.callbacks, self.lightning_module, self.datamodule = loggers, callbacks, module, datamodule
        self.num_training_batches, self.log_every_n_steps = steps_per_epoch, log_every_n_steps
        self.max_epochs, self.optimizers, self.default_root_dir = max_epochs, list(optimizers or []), default_root_dir
        self.logger = loggers[0] if loggers else None
        self.global_step = self.current_epoch = 0

    def at(self, step: int) -> None:
        """The counters before optimizer step ``step`` (``step`` = the run's length: after its last epoch)."""
        self.global_step, self.current_epoch = step, step // self.num_training_batches


def write_logs(task: Any, member: Any, logs: MemberLogs, metrics: dict[str, float], steps_per_epoch: int,
               log_every_n_steps: int) -> str:
    """Write ``member``'s TensorBoard logs into ``task.log_dir`` (see the module docstring); return it.

    ``metrics``: the run's final metrics (its session's ``final/<name>``).
    """
    log_dir = str(task.log_dir)
    if os.path.isdir(log_dir):
        shutil.rmtree(log_dir)  # a retried run starts a clean log
    logger = pl.loggers.TensorBoardLogger(os.path.dirname(log_dir), name=os.path.basename(log_dir), version="",
                                          default_hp_metric=False)
    deficits = list(member.deficits)
    run = LoggedRun([logger], deficits, member.model, steps_per_epoch, log_every_n_steps, task.epochs,
                    [member.optimizer], log_dir, member.datamodule)
    trainer: Any = run  # what the view and the deficits' hooks read as the run's Trainer
    view = views.of(trainer)
    view.hold_session(sweep=True)  # one session per run, written below with the sweep's values
    seed = os.environ.get("PL_GLOBAL_SEED")
    os.environ["PL_GLOBAL_SEED"] = str(task.run.seed)  # the schedule's seed: what seed_everything set for the run
    try:
        _fit(run, deficits, logs, logger, task.epochs * steps_per_epoch)
        view.write_session(extra=hparams(task), metrics={f"final/{k}": v for k, v in metrics.items()
                                                         if math.isfinite(v)}, sweep=True)
        logger.finalize("success")
    finally:
        if seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed
    return log_dir


def _fit(run: LoggedRun, deficits: list[Any], logs: MemberLogs, logger: Any, steps: int) -> None:
    """The deficits' hooks around the run's steps, as a fit calls them (those that act on training left out)."""
    trainer: Any = run
    module = run.lightning_module
    try:
        for deficit in deficits:
            deficit.setup(trainer, module, "fit")  # e.g. TaskSwitch finds its target here
        for hook in ("on_fit_start", "on_train_start"):
            for deficit in deficits:
                getattr(deficit, hook)(trainer, module)
        _replay(run, deficits, logs, logger, steps)
        run.at(steps)
        for deficit in deficits:
            deficit.on_train_end(trainer, module)
    finally:
        for deficit in deficits:
            deficit.teardown(trainer, module, "fit")


def _replay(run: LoggedRun, deficits: list[Any], logs: MemberLogs, logger: Any, steps: int) -> None:
    """Each step's indicators (as each deficit's ``on_train_batch_start`` logs them), then what Lightning logged
    at that step."""
    trainer: Any = run
    events = iter(logs.events)
    pending = next(events, None)
    showing = [d for d in deficits if d.shows_indicator]
    for step in range(steps):
        run.at(step)
        for deficit in showing:
            value = deficit.indicator_value(trainer)
            if value is not None:
                deficit._show(trainer, value)  # the indicator part of ScheduledIntervention.on_train_batch_start
        while pending is not None and pending[0] <= step:
            logger.log_metrics(pending[1], step=pending[0])
            pending = next(events, None)
    while pending is not None:
        logger.log_metrics(pending[1], step=pending[0])
        pending = next(events, None)
    logger.save()

"""Switch the training task at scheduled times: the ``TaskSwitch`` callback and its protocol.

A datamodule (or any object) is *task-switchable* when it has

* ``tasks``: the names of the tasks it can serve (a sequence of strings), and
* ``set_task(name)``: make ``name`` the task that the next training step uses;
* optionally ``task``: the name of the active task (recorded so that a resumed run starts
  from the same task as the uninterrupted one).

``TaskSwitch`` calls ``set_task`` in the main process *before the batch of the step it
concerns is transferred to the device*: at ``on_train_start``, ``on_train_epoch_start`` and
``on_train_batch_end`` (when ``trainer.global_step`` already counts the step just taken).
Dataloader workers (``num_workers > 0``) and Lightning's one-batch prefetch run ahead of the
main process, so a datamodule must not bake task-specific content into the samples its
workers produce; it resolves it in the main process instead, in its
``on_before_batch_transfer`` / ``on_after_batch_transfer`` hook (the bundled
:class:`~lightning_critical.data.MatrixCompletionDataModule` does this: workers yield
positions, the hook attaches the active task's targets). Then the first step at or after a
scheduled time trains on the new task whatever the number of workers.
"""

from __future__ import annotations

import bisect
from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

UNITS: tuple[str, ...] = ("epoch", "step")


@runtime_checkable
class TaskSwitchable(Protocol):
    """What :class:`TaskSwitch` drives: ``tasks`` (names) and ``set_task(name)``.

    Example::

        >>> class TwoTasks:
        ...     tasks = ("pretrain", "target")
        ...     task = "pretrain"
        ...     def set_task(self, name):
        ...         self.task = name
        >>> isinstance(TwoTasks(), TaskSwitchable)
        True
    """

    @property
    def tasks(self) -> Sequence[str]: ...

    def set_task(self, name: str) -> None: ...


def check_task_switchable(obj: Any, what: str = "target") -> None:
    """Raise ``TypeError`` naming what is missing when ``obj`` lacks the protocol."""
    missing = [n for n in ("tasks", "set_task") if not hasattr(obj, n)]
    if not missing and not callable(getattr(obj, "set_task")):
        missing = ["set_task (callable)"]
    if missing:
        raise TypeError(
            f"TaskSwitch needs a {what} implementing the TaskSwitchable protocol "
            f"(`tasks` and `set_task(name)`), but {type(obj).__name__} lacks {missing}. "
            "Pass a datamodule that implements it to trainer.fit(..., datamodule=...) or give "
            "TaskSwitch(target=...)."
        )


class TaskSwitch(pl.Callback):
    """Switch the datamodule's task at scheduled epochs or optimizer steps.

    The schedule maps a time to the task that trains from that time on: the first step at
    or after time ``t`` (``trainer.current_epoch >= t`` for ``unit="epoch"``,
    ``trainer.global_step >= t`` optimizer steps completed for ``unit="step"``) uses
    ``schedule[t]``. Before the first scheduled time the task that was active when training
    started is kept. The active task is recomputed from the trainer's counters at every
    hook, so resuming from a checkpoint needs no extra state (the initial task is saved too).

    Args:
        schedule: ``{time: task_name}``; times are non-negative integers (or digit strings,
            as JSON/YAML configs may write them).
        unit: ``"epoch"`` or ``"step"``.
        target: the object to drive; by default ``trainer.datamodule``. Anything with
            ``tasks`` and ``set_task(name)`` works (e.g. one member of an ensemble).

    Raises:
        ValueError: for an empty schedule, a negative or non-integer time, a non-string task
            name or an unknown unit (at construction), or a task name the target does not
            know (when fitting starts, before the first step).
        TypeError: when fitting starts and the target lacks the protocol.

    Example::

        >>> import pytorch_lightning as pl
        >>> import lightning_critical as lc
        >>> from lightning_critical.data import MatrixCompletionDataModule
        >>> from lightning_critical.models import DeepMatrixFactorization
        >>> dm = MatrixCompletionDataModule(size=10, n_observed=40)   # tasks: pretrain, target
        >>> trainer = pl.Trainer(max_epochs=6, callbacks=[lc.TaskSwitch({3: "target"})],
        ...                      logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False)
        >>> trainer.fit(DeepMatrixFactorization(size=10, depth=2), datamodule=dm)
        >>> dm.task
        'target'
    """

    def __init__(
        self, schedule: Mapping[int, str], unit: str = "epoch", target: Optional[Any] = None
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} is not valid; choose one of {UNITS}.")
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError(f"schedule={schedule!r} must be a non-empty mapping {{time: task_name}}.")
        clean: dict[int, str] = {}
        for time, name in schedule.items():
            if isinstance(time, str) and time.strip().isdigit():
                time = int(time)  # YAML / JSON configs may write keys as strings
            if isinstance(time, bool) or not isinstance(time, int) or time < 0:
                raise ValueError(f"schedule time {time!r} must be a non-negative integer number of {unit}s.")
            if not isinstance(name, str) or not name:
                raise ValueError(f"schedule[{time}]={name!r} must be a task name (a non-empty string).")
            clean[time] = name
        self.schedule = dict(sorted(clean.items()))
        self.unit = unit
        self.target = target
        self._times = list(self.schedule)
        self._initial_task: Optional[str] = None
        self._applied: Optional[str] = None
        self._resolved: Optional[Any] = None

    @property
    def state_key(self) -> str:
        # Several TaskSwitch callbacks (e.g. one per ensemble member) may share a trainer.
        return self._generate_state_key(
            schedule=tuple(self.schedule.items()), unit=self.unit, target=getattr(self.target, "name", None)
        )

    # -- the schedule as a pure function of time ------------------------------------------
    def task_at(self, time: int) -> Optional[str]:
        """The scheduled task for an update taken at ``time``, or ``None`` before the first entry."""
        i = bisect.bisect_right(self._times, time)
        return self.schedule[self._times[i - 1]] if i else self._initial_task

    def _now(self, trainer: "pl.Trainer") -> int:
        return trainer.current_epoch if self.unit == "epoch" else trainer.global_step

    def _sync(self, trainer: "pl.Trainer") -> None:
        name = self.task_at(self._now(trainer))
        if name is None or name == self._applied:
            return
        self._resolved.set_task(name)
        if self._applied is not None:
            rank_zero_info(f"TaskSwitch: training on task {name!r} from {self.unit} {self._now(trainer)}.")
        self._applied = name

    # -- validation before training -------------------------------------------------------
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        target = self.target if self.target is not None else trainer.datamodule
        if target is None:
            raise TypeError(
                "TaskSwitch needs a datamodule implementing the TaskSwitchable protocol "
                "(`tasks` and `set_task(name)`); trainer.fit got none. Pass datamodule=... "
                "or TaskSwitch(target=...)."
            )
        check_task_switchable(target, "datamodule" if self.target is None else "target")
        known = list(target.tasks)
        unknown = sorted({n for n in self.schedule.values() if n not in known})
        if unknown:
            raise ValueError(f"TaskSwitch schedule names unknown task(s) {unknown}; valid tasks: {known}.")
        self._resolved = target
        self._applied = None
        self._initial_task = None  # a checkpoint restores it right after setup, a new fit records it

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._initial_task is None:
            current = getattr(self._resolved, "task", None)
            self._initial_task = current if current is not None else list(self._resolved.tasks)[0]
        # A resumed run (or a schedule entry at 0) must train on the right task from its first step.
        self._sync_or_initial(trainer)

    def _sync_or_initial(self, trainer: "pl.Trainer") -> None:
        name = self.task_at(self._now(trainer))
        if name is not None and name != getattr(self._resolved, "task", object()):
            self._resolved.set_task(name)
        self._applied = name

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._sync(trainer)

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step already counts the step just taken: set the task of the *next* step
        # now, before its batch goes through the datamodule's transfer hooks.
        if self.unit == "step":
            self._sync(trainer)

    # -- checkpointing --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"initial_task": self._initial_task, "schedule": dict(self.schedule), "unit": self.unit}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial_task = state_dict.get("initial_task")

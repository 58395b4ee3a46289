"""The ``TaskSwitch`` callback: switch the training task at scheduled epochs or optimizer steps.

It drives any object with the :class:`~lightning_critical.protocols.TaskSwitchable` protocol
(``tasks`` and ``set_task(name)``; by default the datamodule), following a
:class:`~lightning_critical.schedule.Schedule` of task names.

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

import weakref
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lightning_critical import views
from lightning_critical._lightning import datamodule_of
from lightning_critical._namespace import pl, rank_zero_info, rank_zero_warn
from lightning_critical.deficits.intervention import ScheduledIntervention
from lightning_critical.protocols import check_task_switchable
from lightning_critical.schedule import Schedule, time_in

# What TaskSwitch callbacks did to each target in this process: the task it had before a
# TaskSwitch first changed it, and the task a TaskSwitch set last. A later fit that finds the
# target still on that last task knows it is a leftover of an earlier run, not a choice.
_LEFT_BY_SWITCH: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()

__all__ = ["TaskSwitch"]


def _task_name(label: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label}={value!r} must be a task name (a non-empty string).")
    return value


class TaskSwitch(ScheduledIntervention):
    """Switch the datamodule's task at scheduled epochs or optimizer steps.

    The schedule maps a time to the task that trains from that time on: the first step at
    or after time ``t`` (``trainer.current_epoch >= t`` for ``unit="epoch"``,
    ``trainer.global_step >= t`` optimizer steps completed for ``unit="step"``) uses
    ``schedule[t]``. The active task is recomputed from the trainer's counters at every
    hook (a :class:`~lightning_critical.Schedule` of task names, :meth:`task_at`), so resuming
    from a checkpoint needs no extra state (the initial task is saved too). It is a
    :class:`~lightning_critical.deficits.intervention.ScheduledIntervention` that attaches no
    hooks: it acts through the target's ``set_task``.

    Before the first scheduled time a new (not resumed) fit trains on its *initial task*,
    which ``TaskSwitch`` sets when training starts. It is, in order:

    1. ``initial``, when given;
    2. the target's ``initial_task`` attribute, when it has one;
    3. when the target is still on the task an earlier fit's ``TaskSwitch`` left it on (a
       datamodule reused from an earlier run), the task it had before that ``TaskSwitch``
       changed it, with a warning: a reused datamodule never skips the pre-switch phase;
    4. the target's active ``task`` (what it starts on, or what the user set), else
       ``tasks[0]``.

    Logging: ``task/<target>`` is the index in ``target.tasks`` of the task each step trains on
    (``<target>`` is ``datamodule``, or the target's ``name`` or class name), logged like a
    deficit's 0/1 scalar (to every logger, through :mod:`lightning_critical.views`) so that
    TensorBoard draws it as a step function, and charted beside the deficits (custom-scalars
    category ``deficits and tasks``). The run's HParams session lists the schedule
    (:meth:`hparams_for_tensorboard`); ``schedule.json`` beside the run's logs holds it too,
    with the step from which each task trained.

    Args:
        schedule: ``{time: task_name}``; times are non-negative integers (whole-number floats
            such as ``3.0`` count, as for :class:`~lightning_critical.Window`; or digit strings,
            as JSON/YAML configs may write them; ``"3"`` and ``3`` in one schedule are an error),
            or a :class:`~lightning_critical.Schedule` of task names, which brings its unit.
        unit: ``"epoch"`` or ``"step"``.
        target: the object to drive; by default ``trainer.datamodule``. Anything with
            ``tasks`` and ``set_task(name)`` works (e.g. one member of an ensemble).
        initial: the task to train on before the first scheduled time (see above).

    Raises:
        ValueError: for an empty schedule, a negative or non-integer time, two keys for one
            time, a non-string task name or an unknown unit (at construction), or a task
            name the target does not know (when fitting starts, before the first step).
        TypeError: when fitting starts and the target lacks the protocol.

    Example::

        >>> from lightning_critical._namespace import pl
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
        self,
        schedule: Mapping[int, str],
        unit: str = "epoch",
        target: Any | None = None,
        initial: str | None = None,
    ) -> None:
        super().__init__()
        self._tasks: Schedule[str] = Schedule(schedule, unit, "schedule", _task_name, value_name="task_name")
        if initial is not None and (not isinstance(initial, str) or not initial):
            raise ValueError(f"initial={initial!r} must be None or a task name (a non-empty string).")
        self.schedule: dict[int, str] = dict(self._tasks)
        self.unit = self._tasks.unit
        self.target = target
        self.initial = initial
        self._initial_task: str | None = initial
        self._applied: str | None = None
        self._resolved: Any = None  # the target, once setup() has checked it is TaskSwitchable

    @override
    def repr_settings(self) -> dict[str, str]:
        settings = {"schedule": repr(self.schedule), "unit": repr(self.unit)}
        if self.target is not None:
            settings["target"] = type(self.target).__name__
        if self.initial is not None:
            settings["initial"] = repr(self.initial)
        return settings

    @override
    def key_arguments(self) -> dict[str, Any]:
        # Several TaskSwitch callbacks (e.g. one per ensemble member) may share a trainer.
        # ``initial`` joins the key only when given, so older checkpoints keep their key.
        extra = {} if self.initial is None else {"initial": self.initial}
        return {
            "schedule": tuple(self.schedule.items()), "unit": self.unit,
            "target": getattr(self.target, "name", None), **extra,
        }

    # -- the schedule as a pure function of time ------------------------------------------
    def task_at(self, time: int) -> str | None:
        """The task for an update taken at ``time`` (before the first entry: the initial task, once known)."""
        return self._tasks.at(time, self._initial_task)

    def _now(self, trainer: pl.Trainer) -> int:
        return time_in(self._tasks.unit, trainer.current_epoch, trainer.global_step)

    def _set(self, name: str) -> None:
        target = self._resolved
        current = getattr(target, "task", None)
        if current != name:
            target.set_task(name)
        try:
            before, last = _LEFT_BY_SWITCH.get(target, (None, None))
            if last is None or current != last:  # first change, or changed by someone else since
                before = current
            if before is not None:
                _LEFT_BY_SWITCH[target] = (before, name)
        except TypeError:  # not weak-referenceable or unhashable: no leftover detection
            pass

    def _sync(self, trainer: pl.Trainer) -> None:
        name = self.task_at(self._now(trainer))
        if name is None or name == self._applied:
            return
        self._set(name)
        if self._applied is not None:
            rank_zero_info(f"TaskSwitch: training on task {name!r} from {self.unit} {self._now(trainer)}.")
        self._applied = name

    # -- what the run shows --------------------------------------------------------------
    @property
    def target_name(self) -> str:
        """The ``<target>`` of the ``task/<target>`` scalar: ``datamodule``, or the target's ``name`` or class name."""
        if self.target is None:
            return "datamodule"
        name = getattr(self.target, "name", None)
        return name if isinstance(name, str) and name else type(self.target).__name__

    @override
    def hparams_for_tensorboard(self) -> dict[str, Any]:
        """This switch's entries in the run's HParams session, keyed ``task/<target>/...``.

        Example::

            >>> switch = TaskSwitch({3: "target"}, initial="pretrain")
            >>> switch.hparams_for_tensorboard()  # doctest: +NORMALIZE_WHITESPACE
            {'task/datamodule/schedule': 'pretrain, then target from epoch 3', 'task/datamodule/first_switch': 3,
             'task/datamodule/unit': 'epoch'}
        """
        first = self._initial_task or "the target's task"
        steps = ", ".join(f"{name} from {self.unit} {time}" for time, name in self.schedule.items())
        first_switch = next(iter(self._tasks))
        schedule = steps if first_switch == 0 else f"{first}, then {steps}"
        prefix = f"task/{self.target_name}"
        return {f"{prefix}/schedule": schedule, f"{prefix}/first_switch": first_switch, f"{prefix}/unit": self.unit}

    @property
    @override
    def indicator_key(self) -> str:
        return f"task/{self.target_name}"

    @override
    def indicator_value(self, trainer: pl.Trainer) -> float | None:
        """The index in ``target.tasks`` of the task the next update trains on (``None`` while unknown)."""
        name = self.task_at(self._now(trainer))
        tasks = list(getattr(self._resolved, "tasks", ()))
        if name is None or name not in tasks:
            return None
        return float(tasks.index(name))

    @override
    def indicator_note(self) -> str:
        return ": " + ", ".join(f"{i} = {t}" for i, t in enumerate(self._resolved.tasks))

    @override
    def _write_charts(self, trainer: pl.Trainer) -> None:
        # The indicator and the schedule entry (with the initial task, chosen before this is called).
        views.of(trainer).add_tasks(self.target_name, list(self._resolved.tasks), self.schedule, self.unit,
                                    self._initial_task)

    # -- validation before training -------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        target: Any = self.target if self.target is not None else datamodule_of(trainer)  # checked below
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
        if self.initial is not None and self.initial not in known:
            raise ValueError(f"TaskSwitch initial={self.initial!r} is not a task of the target; valid tasks: {known}.")
        self._resolved = target
        self._applied = None
        # A checkpoint restores the initial task right after setup; a new fit chooses it at train start.
        self._initial_task = self.initial

    def _choose_initial(self) -> str:
        target = self._resolved
        tasks = list(target.tasks)
        own = getattr(target, "initial_task", None)
        if own is not None:
            return own
        current = getattr(target, "task", None)
        try:
            before, last = _LEFT_BY_SWITCH.get(target, (None, None))
        except TypeError:
            before = last = None
        if current is not None and current == last and before is not None and before != current:
            rank_zero_warn(
                f"TaskSwitch: the {type(target).__name__} is still on task {current!r}, where a TaskSwitch of an "
                f"earlier fit left it; this fit starts from {before!r}, the task it had before that switch. Pass "
                f"TaskSwitch(..., initial={current!r}) to start from {current!r} instead."
            )
            return before
        return current if current is not None else tasks[0]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._initial_task is None:
            self._initial_task = self._choose_initial()
        super().on_train_start(trainer, pl_module)  # the chart and schedule entry (after the initial task is known)
        # A new fit, a resumed run or a schedule entry at 0 must train on the right task from its first step.
        name = self.task_at(self._now(trainer))
        if name is not None:
            self._set(name)
        self._applied = name

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step already counts the step just taken: set the task of the *next* step
        # now, before its batch goes through the datamodule's transfer hooks.
        if self.unit == "step":
            self._sync(trainer)

    # -- checkpointing --------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"initial_task": self._initial_task, "schedule": dict(self.schedule), "unit": self.unit}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial_task = state_dict.get("initial_task") or self.initial

"""A task switch as a sweep's deficit: train on one task during the window, on another after it.

:class:`TaskWindow` is a :class:`~lightning_critical.TaskSwitch` built from a window, so a sweep
places it in each window of a grid like any deficit. In Python a function does the same
(``lambda w: lc.TaskSwitch({w.start: "pretrain", w.end: "target"})``); a YAML config cannot hold
a function, so ``lightning-critical sweep`` names this class instead::

    deficit: {class_path: lightning_critical.sweep.TaskWindow, init_args: {during: pretrain, after: target}}
"""

from __future__ import annotations

from typing import Any

from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.schedule import Window, WindowLike


class TaskWindow(TaskSwitch):
    """Train on ``during`` inside ``window`` and on ``after`` from its end (a :class:`TaskSwitch`).

    The schedule is ``{window.start: during, window.end: after}`` in the window's unit (no
    ``after`` entry for an open-ended window). Before ``window.start`` the run trains on
    ``before`` when given, else on the task :class:`TaskSwitch` picks as initial (the target's
    ``initial_task``, its active ``task`` or ``tasks[0]``).

    Args:
        window: the deficit window (a :class:`~lightning_critical.Window` or ``(start, end)``).
        during: the task trained inside the window.
        after: the task trained from the window's end on.
        before: the task trained before the window starts (``None``: :class:`TaskSwitch`'s rule).
        target: the object to drive; by default ``trainer.datamodule``.

    Example::

        >>> import functools
        >>> make = functools.partial(TaskWindow, during="pretrain", after="target")  # a sweep's deficit
        >>> make(window=(0, 40)).schedule
        {0: 'pretrain', 40: 'target'}
        >>> TaskWindow((10, 20), during="noisy", after="clean", before="clean").schedule
        {10: 'noisy', 20: 'clean'}
    """

    def __init__(
        self, window: WindowLike, during: str, after: str, before: str | None = None, target: Any | None = None
    ) -> None:
        span = Window.coerce(window)
        schedule = {span.start: during} if span.end is None else {span.start: during, span.end: after}
        super().__init__(schedule, unit=span.unit, target=target, initial=before)
        self.window, self.during, self.after, self.before = span, during, after, before

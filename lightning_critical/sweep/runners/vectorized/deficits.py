"""A run's deficits as the vectorized loop takes them: sorted by kind, checked as the run's fit checks them.

The loop maps exactly the built-in classes (:data:`MAPPED`): ``InputDeficit`` (applied to the
member's batch), ``PathwayDeficit`` (freeze: gradients or rows put back; silence, noise: hooks
of :mod:`.effects`), ``ModeDeficit`` (hooks of :mod:`.effects`) and ``TaskSwitch`` /
``lc.sweep.TaskWindow`` (the member's own datamodule switched at its times); anything else is
refused before training.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from lightning_critical.deficits._overlaps import check_overlaps
from lightning_critical.deficits.input import InputDeficit
from lightning_critical.deficits.mode import ModeDeficit
from lightning_critical.deficits.pathway import PathwayDeficit
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused
from lightning_critical.sweep.task_window import TaskWindow

__all__ = ["MAPPED", "Deficits", "check_deficits", "resolve_deficits"]


class Deficits(NamedTuple):
    """A run's deficits by what the vectorized loop does with them (:func:`check_deficits`)."""

    inputs: list[InputDeficit]
    pathways: list[PathwayDeficit]
    modes: list[ModeDeficit]
    switches: list[TaskSwitch]


MAPPED: tuple[type, ...] = (InputDeficit, PathwayDeficit, ModeDeficit, TaskSwitch, TaskWindow)
"""The deficit classes the vectorized loop maps (exactly these classes: a subclass may change what they do)."""


def check_deficits(deficits: list[Any]) -> Deficits:
    """A run's deficits sorted by kind; a callback of another class (a subclass too), or a ``TaskSwitch`` driving
    another object than the run's datamodule, refused.

    Example::

        >>> from lightning_critical import PathwayDeficit
        >>> check_deficits([PathwayDeficit("b", (0, 2), mode="noise")]).pathways[0].mode
        'noise'
    """
    other = [d for d in deficits if type(d) not in MAPPED]
    if other:
        raise VectorizedRefused(f"the deficits or callbacks {[repr(d) for d in other]} (it maps the built-in "
                                f"{', '.join(c.__name__ for c in MAPPED)}, not other classes or subclasses)")
    targeted = [d for d in deficits if isinstance(d, TaskSwitch) and d.target is not None]
    if targeted:
        raise VectorizedRefused(f"{[repr(d) for d in targeted]}: a TaskSwitch with target= (each member switches "
                                "its own datamodule; another object is shared by the runs)")
    return Deficits([d for d in deficits if isinstance(d, InputDeficit)],
                    [d for d in deficits if isinstance(d, PathwayDeficit)],
                    [d for d in deficits if isinstance(d, ModeDeficit)],
                    [d for d in deficits if isinstance(d, TaskSwitch)])


def resolve_deficits(member: Any) -> None:
    """What a run's deficits check when its fit starts, on the member's model and datamodule: their targets
    (and a ModeDeficit's task basis), two deficits on one module with overlapping windows, a TaskSwitch's tasks."""
    windowed = [d for d in member.deficits if isinstance(d, (PathwayDeficit, ModeDeficit, InputDeficit))]
    for deficit in windowed:
        deficit.resolve(member.view, member.model)  # a TrainerView: it reads trainer.datamodule only
    for deficit in windowed:
        check_overlaps(deficit, [d for d in windowed if d is not deficit], len(member.train_loader))
    for switch in member.switches:
        switch.setup(member.view, member.model, "fit")

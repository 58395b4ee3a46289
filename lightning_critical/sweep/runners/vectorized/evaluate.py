"""A member's final metrics after its job: its logged values by name, and its metric functions called.

A metric function (e.g. :func:`lightning_critical.sweep.metrics.ablation_reliance`) is called as
the default runner calls it after a run's fit (and test), ``metric(trainer, module)``, with the
member's trained module (its parameters are its row of the job's stack) and, as the trainer, a
view of the run: its datamodule (what such functions read), counters, ``log_every_n_steps`` and
logged values (``callback_metrics``); any other attribute it reads raises an ``AttributeError``
naming it. It is called under the member's random states. Its values are bitwise those of the
run trained alone whenever the member's weights are.

Example::

    >>> from types import SimpleNamespace
    >>> has_functions(SimpleNamespace(metrics=("val_acc",)))
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_critical.sweep.runners.lightning import read_metrics
from lightning_critical.sweep.runners.vectorized.members import Member, TrainerView


def has_functions(spec: Any) -> bool:
    """Whether the sweep's metrics include functions (called after the job), not only logged names."""
    return any(not isinstance(m, str) for m in spec.metrics)


def final_metrics(member: Member, produced: Mapping[str, Any], steps: int, log_every_n_steps: int) -> dict[str, float]:
    """The member's final metrics: its logged values ``produced`` by name, its metric functions' values
    (``steps``: its optimizer steps)."""
    spec = member.task.spec
    values = dict(produced)
    trainer = TrainerView(log_every_n_steps, datamodule=member.datamodule, current_epoch=member.task.epochs,
                          global_step=steps, callback_metrics=values)
    if not has_functions(spec):
        return read_metrics(spec.metrics, trainer, member.model, values)  # type: ignore[arg-type]
    with member.drawing():
        return read_metrics(spec.metrics, trainer, member.model, values)  # type: ignore[arg-type]

"""A member's final metrics after its job: ``test=True`` and metric functions, as the default runner reads them.

Evaluation changes no weight, so it is done for each member alone, by Lightning itself, on the
member's trained module (its parameters are its row of the job's stack): ``trainer.test`` on a
quiet ``Trainer`` with the sweep's ``trainer=`` arguments (its values join those the job
produced, as the default runner's do), then the metric functions, called with that trainer (or,
without ``test``, a view of the run's datamodule and counters: what a metric function reads of
a fitted trainer, e.g. :func:`lightning_critical.sweep.metrics.ablation_reliance` its
``datamodule``). Both run under the member's random states. The values are bitwise those of the
run trained alone whenever its weights are.

Example::

    >>> from types import SimpleNamespace
    >>> needs_trainer(SimpleNamespace(test=False, metrics=("val_acc",)))
    False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.lightning import QUIET_TRAINER, read_metrics
from lightning_critical.sweep.runners.vectorized.members import Member, TrainerView


def needs_trainer(spec: Any) -> bool:
    """Whether the sweep's final metrics need more than the job's logged values (a test, metric functions)."""
    return bool(spec.test) or any(not isinstance(m, str) for m in spec.metrics)


def final_metrics(member: Member, produced: Mapping[str, Any], steps: int) -> dict[str, float]:
    """The member's final metrics: the job's logged values, its test's, its metric functions' (``steps``: its
    optimizer steps)."""
    spec = member.task.spec
    values = dict(produced)
    every = spec.trainer.get("log_every_n_steps")
    trainer: Any = TrainerView(50 if every is None else int(every), datamodule=member.datamodule,
                               current_epoch=member.task.epochs, global_step=steps, callback_metrics=values)
    if needs_trainer(spec):
        with member.drawing():
            if spec.test:
                trainer = _trainer(spec.trainer)
                data = {"datamodule": member.datamodule} if member.datamodule is not None else {}
                trainer.test(member.model, **data, verbose=False)
                values.update(trainer.callback_metrics)
            return read_metrics(spec.metrics, trainer, member.model, values)
    return read_metrics(spec.metrics, trainer, member.model, values)


def _trainer(arguments: Mapping[str, Any]) -> Any:
    kwargs = {**QUIET_TRAINER, **{k: v for k, v in arguments.items() if k != "logger"}}
    kwargs.update(logger=False, enable_checkpointing=False, callbacks=[])
    return pl.Trainer(**kwargs)

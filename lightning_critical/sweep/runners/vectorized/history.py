"""Each member's logged values over its whole run, as Lightning would have kept and sent them.

A run trained alone by Lightning keeps, in ``trainer.callback_metrics``, the last value of every
name it logged, in any epoch (a value logged only in early epochs stays there), and sends its
loggers, at Lightning's cadence:

* at every ``log_every_n_steps``-th optimizer step (``(step + 1) % every == 0``, step counted
  from 0), the last value of each ``on_step`` name of the epoch so far (``<name>_step`` when
  also ``on_epoch``), with ``epoch``;
* after its epoch's last step (at that step), the validation values (``on_epoch``), with ``epoch``;
* at the same step, the training ``on_epoch`` values (``<name>_epoch`` when also ``on_step``), with ``epoch``;
* validation values logged ``on_step`` (rare) after each validation batch, at the number of validation
  batches run before it in the fit, without ``epoch``.

Names logged with ``logger=False`` reach ``callback_metrics`` only. :class:`Histories` keeps
that for every member of a vectorized job (:class:`MemberLogs`), fed by the loop with the
active rows' ``(M,)`` values; a member that forks from a shared row (shared prefixes) gets a
copy of its parent's logs with one call, :meth:`Histories.fork`. The writer
(:mod:`.writer`) turns a member's logs into its run's TensorBoard files.

Example::

    >>> import torch
    >>> from types import SimpleNamespace
    >>> a, b = SimpleNamespace(), SimpleNamespace()
    >>> logs = Histories([a, b], every=2, scalars=True)
    >>> logs.logging_step(0), logs.logging_step(1)
    (False, True)
    >>> logs.log([a, b], [0, 1], 1, 0, {"train_loss": torch.tensor([0.5, 0.25])})
    >>> logs.update([a, b], [0, 1], {"train_loss": torch.tensor([0.5, 0.25])})
    >>> logs.fork(b, c := SimpleNamespace())
    >>> logs[c].events, logs[c].callback
    ([(1, {'train_loss': 0.25, 'epoch': 0.0})], {'train_loss': 0.25})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]


class MemberLogs:
    """One member's logs: ``events`` (``(step, {tag: value})`` in the order Lightning sends them to its loggers)
    and ``callback`` (``trainer.callback_metrics`` at the end of its run: every name's last value)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, dict[str, float]]] = []
        self.callback: dict[str, float] = {}

    def copy(self) -> MemberLogs:
        """An independent copy (a forked member goes on from its parent's logs)."""
        out = MemberLogs()
        out.events = [(step, dict(values)) for step, values in self.events]
        out.callback = dict(self.callback)
        return out


class Histories:
    """Every member's :class:`MemberLogs` (see the module docstring).

    Args:
        members: the job's members (any objects; keyed by identity).
        every: the sweep's ``log_every_n_steps`` (0: no step values are sent, as under Lightning).
        scalars: keep the events (the sweep writes TensorBoard logs); else only ``callback``.
    """

    def __init__(self, members: Sequence[Any], every: int, scalars: bool) -> None:
        self.every, self.scalars = every, scalars
        self._of = {id(m): MemberLogs() for m in members}
        self.validation_batches = 0  # Lightning's count, over the fit, of the validation batches run
        self._seen: set[str] | None = None  # the training names logged so far (None: before the first step)
        self._irregular: set[str] = set()  # ... of which some step did not log

    def __getitem__(self, member: Any) -> MemberLogs:
        return self._of[id(member)]

    def fork(self, parent: Any, child: Any) -> None:
        """``child`` starts with a copy of ``parent``'s logs (called by ``Loop.on_fork`` when a shared row forks)."""
        self._of[id(child)] = self._of[id(parent)].copy()

    def logging_step(self, step: int) -> bool:
        """Whether Lightning sends the step values to its loggers after optimizer step ``step`` (from 0)."""
        return self.scalars and self.every > 0 and (step + 1) % self.every == 0

    def irregular(self, names: Sequence[str]) -> bool:
        """Whether this training step logs a name that some earlier step did not (or is the job's first step).

        Such a value may stay final until the end (e.g. logged only at ``log_every_n_steps`` steps, as
        ``MultiPathwayLinearNet`` logs): the loop replays these steps alone, so that it is exact.
        """
        now = set(names)
        if self._seen is None:
            self._seen = now
            return True
        self._irregular |= self._seen - now
        self._seen |= now
        return bool(self._irregular & now)

    def log(self, active: Sequence[Any], rows: Sequence[int], step: int, epoch: int | None, values: Tensors) -> None:
        """``values`` (``{tag: (M,)}``) of the members at ``rows`` sent at ``step``, with ``epoch`` (unless ``None``;
        no values: no event)."""
        if not self.scalars or not values:
            return
        columns = {tag: v.tolist() for tag, v in values.items()}
        for row in rows:
            event = {tag: float(column[row]) for tag, column in columns.items()}
            if epoch is not None:
                event["epoch"] = float(epoch)
            self._of[id(active[row])].events.append((step, event))

    def validation_batch(self, active: Sequence[Any], rows: Sequence[int], values: Tensors) -> None:
        """After a validation batch: its ``on_step`` values (rare) are sent at Lightning's count of validation
        batches (over the whole fit, sanity check left out), without ``epoch``."""
        self.log(active, rows, self.validation_batches, None, values)
        self.validation_batches += 1

    def update(self, active: Sequence[Any], rows: Sequence[int], values: Tensors) -> None:
        """``callback_metrics`` of the members at ``rows`` updated with ``values`` (``{name: (M,)}``)."""
        columns = {name: v.tolist() for name, v in values.items()}
        for row in rows:
            self._of[id(active[row])].callback.update({name: float(c[row]) for name, c in columns.items()})

"""The vectorized training loop: Lightning's automatic-optimization loop replayed for all members at once.

Per epoch and member, in the order a ``Trainer`` would: the member's train loader is iterated
under its own random states (:meth:`~.members.Member.drawing`), its active input deficits
applied to its batch; one vmapped step gives every member's gradients (:class:`~.stack.Stack`);
each member's own optimizer steps its row, after the gradients of its frozen parameters were
dropped (as :class:`~lightning_critical.PathwayDeficit` does); step and epoch schedulers step;
then validation (its loader's iterator is created every epoch, as Lightning does, so the
members' random streams stay those of runs trained alone; the steps run on the last validation
epoch only, whose values are the final ones). Logged values are reduced as Lightning reduces
them (the last step's value, or the batch-size-weighted mean of the epoch).

Example::

    >>> import torch
    >>> logs = EpochLogs(training=False)
    >>> logs.add({"val_loss": torch.tensor([1.0, 2.0])}, {"val_loss": (False, True, None)}, 4)
    >>> logs.add({"val_loss": torch.tensor([3.0, 4.0])}, {"val_loss": (False, True, None)}, 2)
    >>> logs.callback()["val_loss"].tolist()
    [1.6666666269302368, 2.6666667461395264]
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_critical.sweep.runners.vectorized.members import Member
from lightning_critical.sweep.runners.vectorized.stack import Stack, Tensors, batch_size_of, stacked


class EpochLogs:
    """One stage's logged values over an epoch, reduced as Lightning's ``callback_metrics`` holds them."""

    def __init__(self, training: bool) -> None:
        self.training = training
        self.last: Tensors = {}
        self.sums: Tensors = {}
        self.sizes: Tensors = {}
        self.forked: set[str] = set()

    def add(self, logs: Tensors, meta: dict[str, tuple[bool, bool, int | None]], batch_size: int) -> None:
        for name, value in logs.items():
            on_step, on_epoch, size = meta[name]
            if on_step and on_epoch:
                self.forked.add(name)
            if on_step:
                self.last[name] = value
            if on_epoch:  # Lightning: value + v * batch_size, over the cumulated batch size
                n = size if size is not None else batch_size
                self.sums[name] = self.sums.get(name, torch.tensor(0.0)) + value * n
                self.sizes[name] = self.sizes.get(name, torch.tensor(0)) + n

    def callback(self) -> Tensors:
        out: Tensors = {}
        if self.training:
            for name, value in self.last.items():
                out[f"{name}_step" if name in self.forked else name] = value
        for name, total in self.sums.items():
            out[name] = total / self.sizes[name]
            if name in self.forked:
                out[f"{name}_epoch"] = out[name]
        return out


def train(members: list[Member], stack: Stack, epochs: int, val_every: int, sanity: bool,
          exact_logs: bool = True) -> list[dict[str, float]]:
    """Train every member for ``epochs`` epochs; each member's final ``callback_metrics`` as floats.

    ``exact_logs``: the last epoch's logged values come from each member's step replayed alone
    (:meth:`~.stack.Stack.replay`), bitwise those of the run trained alone; else from ``vmap``.
    """
    lengths = {len(m.train_loader) for m in members}
    if len(lengths) != 1:
        raise ValueError(f"the members' train loaders have different lengths {sorted(lengths)}; members of one "
                         "vectorized job need as many batches per epoch")
    n_batches = lengths.pop()
    has_val = all(m.val_loader is not None for m in members)
    val_epochs = [e for e in range(epochs) if (e + 1) % val_every == 0] if has_val else []
    if sanity and has_val:
        _draw_iterators(members, "val_loader")
    step, train_logs, val_logs = 0, EpochLogs(True), EpochLogs(False)
    for epoch in range(epochs):
        train_logs = EpochLogs(True)
        iterators = _draw_iterators(members, "train_loader")
        for batch_idx in range(n_batches):
            batches = []
            for member, iterator in zip(members, iterators, strict=True):
                with member.drawing():
                    raw = next(iterator)
                batches.append(member.batch((epoch, step), raw, batch_idx))
            gates = stack.gates(members, epoch, step)
            grads, logs = stack.train_step(stacked(batches), gates, batch_idx)
            if exact_logs and epoch == epochs - 1:
                logs = stack.replay("training_step", batches, gates, batch_idx)
            train_logs.add(logs, stack.logs.meta, batch_size_of(batches[0]))
            _optimizer_steps(members, grads, epoch, step)
            step += 1
        if epoch in val_epochs:
            iterators = _draw_iterators(members, "val_loader")
            if epoch == val_epochs[-1]:
                val_logs = _validate(members, stack, iterators, exact_logs)
        for member in members:
            member.step_schedulers("epoch")
    produced = {**train_logs.callback(), **val_logs.callback()}
    return [{name: float(value[row]) for name, value in produced.items()} for row in range(len(members))]


def _optimizer_steps(members: list[Member], grads: Tensors, epoch: int, step: int) -> None:
    for row, member in enumerate(members):
        frozen = {id(p) for p in member.frozen_now(epoch, step)}
        for name, param in member.named:
            param.grad = None if id(param) in frozen else grads[name][row]
        member.optimizer.step()
        member.step_schedulers("step")
    for member in members:
        for _, param in member.named:
            param.grad = None


def _validate(members: list[Member], stack: Stack, iterators: list[Any], exact: bool) -> EpochLogs:
    logs = EpochLogs(False)
    lengths = {len(m.val_loader) for m in members}
    if len(lengths) != 1:
        raise ValueError(f"the members' validation loaders have different lengths {sorted(lengths)}")
    for batch_idx in range(lengths.pop()):
        batches = []
        for member, iterator in zip(members, iterators, strict=True):
            with member.drawing():
                batches.append(next(iterator))
        if exact:
            values = stack.replay("validation_step", batches, {}, batch_idx)
        else:
            values = stack.validation_step(stacked(batches), batch_idx)
        logs.add(values, stack.logs.meta, batch_size_of(batches[0]))
    return logs


def _draw_iterators(members: list[Member], loader: str) -> list[Any]:
    iterators = []
    for member in members:
        with member.drawing():
            iterators.append(iter(getattr(member, loader)))
    return iterators

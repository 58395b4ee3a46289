"""The vectorized training loop: Lightning's automatic-optimization loop replayed for all members at once.

Per epoch and member, in the order a ``Trainer`` would: the member's train loader is iterated
under its own random states (:meth:`~.members.Member.drawing`), its active input deficits
applied to its batch; one vmapped step gives every member's gradients (:class:`~.stack.Stack`);
each member's own optimizer steps its row, after the gradients of its frozen parameters were
dropped (as :class:`~lightning_critical.PathwayDeficit` does); step and epoch schedulers step;
then validation (its loader made where Lightning makes it, :meth:`~.members.Member.make_val_loader`,
and its iterator created every validation epoch, as Lightning does, so the members' random
streams stay those of runs trained alone; the steps run on a member's last validation epoch
only, whose values are its final ones, unless the sweep writes TensorBoard logs: then at every
validation epoch; a loader that may draw is iterated at every validation epoch all the same).
Logged values are reduced as Lightning reduces them (the last step's value, or the
batch-size-weighted mean of the epoch) and kept per member over its whole run
(:class:`~.history.Histories`: its final ``callback_metrics`` and what Lightning sends its
loggers); the steps whose values may stay final are replayed alone with ``exact_logs``
(:meth:`Loop.replayed`), from the buffers and the template's Python attributes as they were
before the step (:meth:`~.stack.Stack.snapshot`). Members leave the stack after their last epoch
(runs of a removal sweep differ in length).
Members that share a prefix (``forks``, from :func:`~.prefixes.branch_points`) train as one
row until their branch epoch, where the parent's row is forked (:meth:`Loop.reindex`,
:meth:`Loop.on_fork`).

Example::

    >>> import torch
    >>> logs = EpochLogs(training=False)
    >>> logs.add({"val_loss": torch.tensor([1.0, 2.0])}, {"val_loss": (False, True, None)}, 4)
    >>> logs.add({"val_loss": torch.tensor([3.0, 4.0])}, {"val_loss": (False, True, None)}, 2)
    >>> logs.callback()["val_loss"].tolist()
    [1.6666666269302368, 2.6666667461395264]
"""

from __future__ import annotations

import torch

from lightning_critical.sweep.runners.vectorized.device import to_device
from lightning_critical.sweep.runners.vectorized.feeds import Feeds
from lightning_critical.sweep.runners.vectorized.held_out import held_out_steps
from lightning_critical.sweep.runners.vectorized.history import Histories, MemberLogs
from lightning_critical.sweep.runners.vectorized.members import Member, draws
from lightning_critical.sweep.runners.vectorized.optim import StackedOptimizer, stackable
from lightning_critical.sweep.runners.vectorized.prefixes import fork_member
from lightning_critical.sweep.runners.vectorized.stack import Stack
from lightning_critical.sweep.runners.vectorized.tensors import Tensors, batch_size_of, stacked


class EpochLogs:
    """One stage's logged values over an epoch, reduced as Lightning's ``callback_metrics`` holds them.

    ``unlogged``: the names logged with ``logger=False`` (kept out of :meth:`step_log` / :meth:`epoch_log`).
    """

    def __init__(self, training: bool, unlogged: set[str] | None = None) -> None:
        self.training, self.unlogged = training, unlogged if unlogged is not None else set()
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

    def step_log(self) -> Tensors:
        """What Lightning sends its loggers at a logging step: each ``on_step`` name's last value of the epoch."""
        return {f"{name}_step" if name in self.forked else name: value for name, value in self.last.items()
                if name not in self.unlogged}

    def epoch_log(self) -> Tensors:
        """What Lightning sends its loggers at the end of the epoch: each ``on_epoch`` name's mean."""
        return {f"{name}_epoch" if name in self.forked else name: total / self.sizes[name]
                for name, total in self.sums.items() if name not in self.unlogged}


class Loop:
    """The members' epochs (see the module docstring); ``run()`` gives each member's logs (:class:`.MemberLogs`).

    ``scalars``: keep what Lightning sends its loggers too (the sweep writes TensorBoard logs): every member
    is then validated at every validation epoch, and (with ``exact_logs``) its logging steps replayed alone.
    """

    def __init__(self, members: list[Member], stack: Stack, val_every: int, exact_logs: bool,
                 stacked_optimizer: bool = True, clip: tuple[float, str] | None = None, scalars: bool = False,
                 forks: dict[int, tuple[int, int]] | None = None) -> None:
        lengths = {len(m.train_loader) for m in members}
        if len(lengths) != 1:
            raise ValueError(f"the members' train loaders have different lengths {sorted(lengths)}; members of one "
                             "vectorized job need as many batches per epoch")
        self.n_batches = lengths.pop()
        self.members, self.stack, self.exact = members, stack, exact_logs
        self.forks: dict[int, list[tuple[Member, Member]]] = {}  # branch epoch -> [(parent, child)]
        for child, (parent, epoch) in sorted((forks or {}).items()):
            self.forks.setdefault(epoch, []).append((members[parent], members[child]))
        children = {id(c) for pairs in self.forks.values() for _, c in pairs}
        roots = [row for row, m in enumerate(members) if id(m) not in children]
        self.active = [members[row] for row in roots]  # the members holding a row (children: from their fork)
        if len(roots) < len(members):
            stack.keep(self.active, roots)
        self.has_val = all(m.validates for m in members)
        self.val_every, self.step = val_every, 0
        self.last_val = {id(m): max((e for e in range(m.task.epochs) if (e + 1) % val_every == 0), default=-1)
                         for m in members}
        self.history = Histories(members, stack.view.log_every_n_steps, scalars)
        self.clip = clip if clip is not None and clip[0] > 0 else None
        # schedules made for runs of different lengths (configure_optimizers read it) part: one optimizer each
        stacked_optimizer &= not (any(m.length_read for m in members) and len({m.task.epochs for m in members}) > 1)
        self.optim = StackedOptimizer(members, stack.params) if stacked_optimizer and stackable(members) else None
        self.test = bool(members[0].task.spec.test)  # (the sanity check: Member, its random states isolated)

    def run(self) -> list[MemberLogs]:
        epoch = 0
        while self.active:
            self.epoch(epoch)
            epoch += 1
        return [self.history[m] for m in self.members]

    def epoch(self, epoch: int) -> None:
        active, stack = self.active, self.stack
        final = [row for row, m in enumerate(active) if m.task.epochs == epoch + 1]
        train_logs = EpochLogs(True, stack.logs.unlogged)
        feeds = Feeds(active, stack.device)
        if epoch == 0 and self.has_val and self.val_every == 1:  # Lightning's on_run_start: after iter(train loader)
            _ = [m.make_val_loader() for m in active]
        for batch_idx in range(self.n_batches):
            batch, batches = feeds.next((epoch, self.step), batch_idx)
            gates = to_device(stack.gates(active, epoch, self.step, batch_idx), stack.device)
            stack.at(epoch, self.step)
            before = stack.snapshot() if self.exact else None  # a replay starts where the step started
            grads, logs = stack.train_step(batch, gates, batch_idx)
            replayed = self.replayed(final, batch_idx, logs)
            if replayed:
                logs = _merged(logs, stack.replay("training_step", batches, gates, batch_idx, replayed, before),
                               replayed)
            train_logs.add(logs, stack.logs.meta, batch_size_of(batches[0]))
            if self.history.logging_step(self.step):
                self.history.log(active, range(len(active)), self.step, epoch, train_logs.step_log())
            if self.clip is not None:
                _clip(active, grads, epoch, self.step, *self.clip)
            if self.step == 0 and self.optim is not None and not stackable(self.members):
                self.optim = None  # the first step found rows to freeze (.reach: noise cuts them off): one per member
            if self.optim is not None:
                self.optim.step(active, stack.params, grads, _frozen_rows(active, epoch, self.step))
                for member in active:
                    member.step_schedulers("step")
            else:
                _optimizer_steps(active, grads, epoch, self.step)
            self.step += 1
        everyone = list(range(len(active)))
        self.record(train_logs.callback(), everyone)  # kept: a value logged only in earlier epochs is final too
        if self.has_val and (epoch + 1) % self.val_every == 0:
            last = [row for row, m in enumerate(active) if self.last_val[id(m)] == epoch]
            rows = everyone if self.history.scalars else last  # with TensorBoard logs, every member's validation
            stack.at(epoch, self.step)
            val_logs = self.validate(rows)
            if val_logs is not None:
                self.record(val_logs.callback(), rows)
                self.history.log(active, rows, self.step - 1, epoch, val_logs.epoch_log())
        self.history.log(active, everyone, self.step - 1, epoch, train_logs.epoch_log())
        for member in active:
            member.step_schedulers("epoch")
        forks = self.forks.pop(epoch + 1, [])
        for parent, child in forks:  # before the parent's test stage draws: the child branches from the fit's end
            self.on_fork(parent, child)
        if final and self.test:
            self.test_finished(final, epoch)
        if final or forks:
            kept = [row for row in range(len(active)) if row not in final]
            self.active = [active[row] for row in kept] + [child for _, child in forks]
            # a parent may end here: its row is forked before it leaves
            self.reindex(kept + [active.index(parent) for parent, _ in forks])

    def reindex(self, rows: list[int]) -> None:
        """The stack (and stacked optimizer) on the rows ``rows`` of the old one; a repeated row is a fork."""
        if rows:
            self.stack.fork(self.active, rows)
            if self.optim is not None:
                self.optim.fork(rows, self.stack.params)

    def on_fork(self, parent: Member, child: Member) -> None:
        """Every per-member copy at a fork: ``child`` continues from ``parent``'s state after the shared prefix.

        Its rows (parameters, buffers, stacked optimizer state) are forked by :meth:`reindex`;
        here its own optimizer, schedulers and random states (:func:`~.prefixes.fork_member`)
        and what the loop holds per member (its logs so far: :meth:`.Histories.fork`).
        """
        child.val_from(parent)
        fork_member(parent, child)
        self.history.fork(parent, child)

    def record(self, values: Tensors, rows: list[int]) -> None:
        self.history.update(self.active, rows, values)

    def test_finished(self, rows: list[int], epoch: int) -> None:
        """``trainer.test`` after each finishing member's fit (:mod:`.held_out`): test values join the final ones."""
        for row in rows:
            logs = EpochLogs(False, self.stack.logs.unlogged)
            for values, size in held_out_steps(self.stack, self.active[row]):
                logs.add(values, self.stack.logs.meta, size)
            member = self.active[row]  # values of shape (1,): the member alone
            self.history.update([member], [0], logs.callback())
            self.history.log([member], [0], self.step, epoch + 1, logs.epoch_log())  # as after fit

    def replayed(self, final: list[int], batch_idx: int, logs: Tensors) -> list[int]:
        """The rows whose training step is replayed alone (``exact_logs``): every member at a logging step when
        the loggers get the values and at a step that logs a name irregularly (:meth:`.Histories.irregular`),
        else the members ending this epoch at its last batch (at every batch when a value is averaged over
        the epoch)."""
        if not self.exact:
            return []
        if self.history.irregular(list(logs)) | self.history.logging_step(self.step):  # both: irregular() learns
            return list(range(len(self.active)))
        return final if final and (batch_idx == self.n_batches - 1 or _epoch_logged(logs, self.stack)) else []

    def validate(self, rows: list[int]) -> EpochLogs | None:
        """The validation logs of the members of ``rows``; ``None``: no row.

        Every member's loader is made where Lightning makes it (:meth:`.Member.make_val_loader`)
        and its iterator created, as at every validation epoch of a run; without a row, a loader
        that may draw (:func:`.members.draws`: shuffled, augmented) is still iterated to its end.
        """
        loaders = [m.make_val_loader() for m in self.active]
        if all(loader is None for loader in loaders):  # val_dataloader() gave nothing: Lightning skips validation
            return None
        if any(loader is None for loader in loaders):
            raise ValueError("some members' val_dataloader() gave no loader and others one; members of one "
                             "vectorized job need the same validation")
        feeds = [m.feed(loader) for m, loader in zip(self.active, loaders, strict=True)]
        lengths = {len(loader) for loader in loaders}
        if len(lengths) != 1:
            raise ValueError(f"the members' validation loaders have different lengths {sorted(lengths)}")
        if not rows:
            for feed, loader in zip(feeds, loaders, strict=True):
                for _ in range(len(loader) if draws(loader) else 0):
                    feed.next()
            return None
        logs = EpochLogs(False, self.stack.logs.unlogged)
        for batch_idx in range(lengths.pop()):
            batches = [m.transfer(f.next(), self.stack.device) for m, f in zip(self.active, feeds, strict=True)]
            if self.exact:
                values = _merged({}, self.stack.replay("validation_step", batches, {}, batch_idx, rows), rows,
                                 len(batches))
            else:
                values = self.stack.validation_step(stacked(batches), batch_idx)
            logs.add(values, self.stack.logs.meta, batch_size_of(batches[0]))
            self.history.validation_batch(self.active, rows, logs.step_log())
        return logs


def train(members: list[Member], stack: Stack, val_every: int, exact_logs: bool = True,
          stacked_optimizer: bool = True, clip: tuple[float, str] | None = None,
          scalars: bool = False, forks: dict[int, tuple[int, int]] | None = None) -> list[MemberLogs]:
    """Train every member for its run's epochs; each member's logs (its final ``callback_metrics`` as floats
    in ``callback``; with ``scalars``, what Lightning sends its loggers in ``events``).

    ``exact_logs``: a member's last-epoch logged values come from its step replayed alone
    (:meth:`~.stack.Stack.replay`), bitwise those of the run trained alone; else from ``vmap``.
    ``clip``: ``(gradient_clip_val, gradient_clip_algorithm)`` of the Trainer, applied per member.
    ``forks``: ``{child: (parent, branch epoch)}`` (indices into ``members``): shared prefixes.
    """
    return Loop(members, stack, val_every, exact_logs, stacked_optimizer, clip, scalars, forks).run()


def _merged(logs: Tensors, replayed: Tensors, rows: list[int], size: int | None = None) -> Tensors:
    """``logs`` with the rows ``rows`` replaced by the replayed values (NaN where nothing is known)."""
    out = {}
    for name, values in replayed.items():
        n = size if size is not None else len(logs[name])
        merged = logs[name].clone() if name in logs else torch.full((n,), float("nan"), dtype=values.dtype,
                                                                         device=values.device)
        merged[torch.tensor(rows)] = values
        out[name] = merged
    return out


def _clip(members: list[Member], grads: Tensors, epoch: int, step: int, value: float, algorithm: str) -> None:
    """Each member's gradient rows clipped as Lightning clips a run's: over its optimizer's parameters that have a
    gradient (after its frozen gradients were dropped; none where the step does not reach a parameter)."""
    for row, member in enumerate(members):
        frozen = {id(p) for p in member.frozen_now(epoch, step)}
        names = {id(p): name for name, p in member.named}
        held = {id(p): p for group in member.optimizer.param_groups for p in group["params"]}
        params = [p for key, p in held.items() if key not in frozen and names.get(key) in grads]
        for param in params:
            param.grad = grads[names[id(param)]][row]  # views: clipping writes the rows
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_value=value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value)
        for param in params:
            param.grad = None


def _epoch_logged(logs: Tensors, stack: Stack) -> bool:
    """Whether a training value is logged per epoch (every step's value counts, not only the last one's)."""
    return any(stack.logs.meta[name][1] for name in logs)


def _frozen_rows(members: list[Member], epoch: int, step: int) -> dict[str, list[int]]:
    """``{parameter name: rows}`` of the members whose freeze deficit holds that parameter at this step."""
    out: dict[str, list[int]] = {}
    for row, member in enumerate(members):
        frozen = {id(p) for p in member.frozen_now(epoch, step)}
        for name, param in member.named:
            if id(param) in frozen:
                out.setdefault(name, []).append(row)
    return out


def _optimizer_steps(members: list[Member], grads: Tensors, epoch: int, step: int) -> None:
    for row, member in enumerate(members):
        frozen = {id(p) for p in member.frozen_now(epoch, step)}
        for name, param in member.named:
            param.grad = None if id(param) in frozen or name not in grads else grads[name][row]
        member.optimizer.step()
        member.step_schedulers("step")
    for member in members:
        for _, param in member.named:
            param.grad = None

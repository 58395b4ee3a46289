"""One stock optimizer over the stacked ``(M, ...)`` parameters, when it equals the members' own optimizers bitwise.

The stock ``SGD``, ``Adam`` and ``AdamW`` update every element with the same arithmetic and
scalars, so one of them over the stacked rows equals one per member, bitwise, when the members'
hyperparameters agree (each step copies member 0's current ones, as its own schedulers set
them, after checking that every member's agree). A swept learning rate or weight decay
(``ROWWISE``) differs per member: the step is then :mod:`.rowwise`'s, the stock step's
arithmetic with one float32 row per member, still bitwise (the other hyperparameters must
agree; plain SGD/Adam/AdamW settings only: no amsgrad, foreach, fused, capturable or
differentiable). ``PathwayDeficit`` freeze puts the frozen members' parameter and
optimizer-state rows back after the step, and zeroes a momentum row the step created (SGD
without dampening: a zero momentum then gives the same first step as none). Adam's step
counter is one scalar per parameter, so a freeze with Adam/AdamW, or anything else, keeps one
optimizer per member (:func:`stackable`).

Example::

    >>> import torch
    >>> a = torch.optim.SGD([torch.zeros(2)], lr=0.1, momentum=0.9)
    >>> b = torch.optim.SGD([torch.zeros(2)], lr=0.1, momentum=0.9)
    >>> _hyper(a) == _hyper(b)
    True
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from lightning_critical.sweep.runners.vectorized.members import Member
from lightning_critical.sweep.runners.vectorized.rowwise import adam_rows, sgd_rows

STACKABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
ROWWISE = ("lr", "weight_decay")  # may differ per member (a swept value): the step is then row-wise
_PLAIN = {"foreach": (None, False), "fused": (None, False), "capturable": (False,), "differentiable": (False,),
          "amsgrad": (False,)}


def stackable(members: list[Member]) -> bool:
    """Whether one stock optimizer over the stack equals the members' own, bitwise (see the module docstring)."""
    first = members[0].optimizer
    if type(first) not in STACKABLE or len(first.param_groups) != 1:
        return False
    for member in members:
        opt = member.optimizer
        params = [p for _, p in member.named]
        if type(opt) is not type(first) or len(opt.param_groups) != 1 or _shared(opt) != _shared(first):
            return False
        if [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in params]:
            return False
    if any(_rowwise(m.optimizer) != _rowwise(first) for m in members) and not rowwise(first):
        return False
    if any(m.frozen or m.fixed or m.blocked for m in members):
        return isinstance(first, torch.optim.SGD) and not first.param_groups[0].get("dampening")
    return True


_schedulers = torch.optim.lr_scheduler
_LR_ONLY = (_schedulers.StepLR, _schedulers.MultiStepLR, _schedulers.ExponentialLR, _schedulers.LambdaLR,
            _schedulers.MultiplicativeLR, _schedulers.CosineAnnealingLR, _schedulers.LinearLR, _schedulers.ConstantLR,
            _schedulers.PolynomialLR)


def follows_schedulers(members: list[Member], templates: int) -> bool:
    """Whether one stacked optimizer can follow the members' schedulers step by step.

    Members of one params combination have the same schedulers, so their hyperparameters agree
    at every step. Members of several combinations may part: the stacked optimizer follows
    them when its step is row-wise and every scheduler changes only the learning rate (a
    stock scheduler of ``_LR_ONLY``; e.g. ``OneCycleLR`` also cycles the momentum).
    """
    if templates <= 1 or not any(m.schedulers for m in members):
        return True
    return rowwise(members[0].optimizer) and all(type(c.scheduler) in _LR_ONLY for m in members
                                                 for c in m.schedulers)


def rowwise(optimizer: Any) -> bool:
    """Whether :mod:`.rowwise` redoes ``optimizer``'s step (plain settings, float hyperparameters)."""
    group = optimizer.param_groups[0]
    return (all(group.get(k, values[0]) in values for k, values in _PLAIN.items())
            and all(isinstance(group.get(k, 0.0), float | int) for k in ("lr", "weight_decay", "momentum"))
            and all(isinstance(beta, float) for beta in group.get("betas", ())))


class StackedOptimizer:
    """Member 0's optimizer class over the stacked parameters; ``step`` with the members' frozen rows put back."""

    def __init__(self, members: list[Member], params: dict[str, torch.Tensor]) -> None:
        first = members[0].optimizer
        self.names = [name for name, _ in members[0].named]
        self.optimizer = _make(first, [params[n] for n in self.names])
        for member in members:  # its schedulers step its own (unused) optimizer: no "step before optimizer" warning
            member.optimizer._opt_called = True

    def step(self, members: list[Member], params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             frozen: dict[str, list[int]]) -> None:
        hyper = _hyper(members[0].optimizer)
        shared = _shared(members[0].optimizer).items()
        for member in members[1:]:
            group = member.optimizer.param_groups[0]
            if any(group.get(k, shared) != v for k, v in shared):  # not a dict per member: this runs every step
                raise RuntimeError("the members' optimizer hyperparameters diverged during training (a scheduler "
                                   "that depends on the run?); use VectorizedRunner(stacked_optimizer=False)")
        per_row = [_rowwise(m.optimizer) for m in members]
        differ = any(r != per_row[0] for r in per_row)
        if differ and not rowwise(self.optimizer):
            raise RuntimeError("the members' learning rates or weight decays diverged during training, and "
                               f"{type(self.optimizer).__name__}'s settings have no row-wise step; use "
                               "VectorizedRunner(stacked_optimizer=False)")
        self.optimizer.param_groups[0].update(hyper)
        saved = {name: self._rows(params[name], rows) for name, rows in frozen.items() if rows}
        if differ:
            self._step_rows(params, grads, per_row)
        else:
            for name in self.names:
                params[name].grad = grads.get(name)  # None: no member's step reaches it (Stack.train_step)
            self.optimizer.step()
            for name in self.names:
                params[name].grad = None
        for name, (index, param_rows, state_rows) in saved.items():
            param = params[name]
            param[index] = param_rows
            for key, value in self.optimizer.state[param].items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == param.shape[0]:
                    value[index] = state_rows[key] if key in state_rows else 0
        return None

    def _step_rows(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                   per_row: list[tuple[float, float]]) -> None:
        step = sgd_rows if isinstance(self.optimizer, torch.optim.SGD) else adam_rows
        names = [n for n in self.names if n in grads]  # as the stock step, which skips a None gradient
        stacked = [params[n] for n in names]
        group = {"decoupled_weight_decay": isinstance(self.optimizer, torch.optim.AdamW),
                 **self.optimizer.param_groups[0]}
        step(stacked, [grads[n] for n in names], [self.optimizer.state[p] for p in stacked], group,
             [lr for lr, _ in per_row], [wd for _, wd in per_row])

    def _rows(self, param: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index = torch.tensor(rows)
        state = {k: v[index].clone() for k, v in self.optimizer.state.get(param, {}).items()
                 if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == param.shape[0]}
        return index, param[index].clone(), state

    def keep(self, rows: list[int], params: dict[str, torch.Tensor]) -> None:
        """Follow :meth:`~.stack.Stack.keep`: the optimizer over the new stack, its state rows ``rows``."""
        index = torch.tensor(rows)
        old = self.optimizer
        self.optimizer = _make(old, [params[n] for n in self.names])
        for name, param in zip(self.names, old.param_groups[0]["params"], strict=True):
            state = old.state.get(param)
            if state:
                self.optimizer.state[params[name]] = {
                    k: (v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == param.shape[0]
                        else (v.clone() if isinstance(v, torch.Tensor) else v)) for k, v in state.items()}

    def fork(self, rows: list[int], params: dict[str, torch.Tensor]) -> None:
        """Follow :meth:`~.stack.Stack.fork`: the state rows ``rows``, a repeated row copied (a forked member's
        momentum or Adam moments are its own; the shared step counter is cloned)."""
        self.keep(rows, params)


def _make(optimizer: Any, params: list[torch.Tensor]) -> Any:
    """A new optimizer of ``optimizer``'s class and hyperparameters over ``params``.

    Only the constructor's arguments are passed: a group can hold more (AdamW's holds
    ``decoupled_weight_decay``, which ``AdamW()`` does not take); they are copied after.
    """
    hyper = _hyper(optimizer)
    accepted = inspect.signature(type(optimizer).__init__).parameters
    made = type(optimizer)(params, **{k: v for k, v in hyper.items() if k in accepted})
    made.param_groups[0].update(hyper)
    return made


def _hyper(optimizer: Any) -> dict[str, Any]:
    return {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "initial_lr")}


def _shared(optimizer: Any) -> dict[str, Any]:
    """The hyperparameters the members must share (all but :data:`ROWWISE`)."""
    return {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "initial_lr", *ROWWISE)}


def _rowwise(optimizer: Any) -> tuple[float, float]:
    group = optimizer.param_groups[0]
    return group["lr"], group.get("weight_decay", 0.0)

"""One stock optimizer over the stacked ``(M, ...)`` parameters, when it equals the members' own optimizers bitwise.

The stock ``SGD``, ``Adam`` and ``AdamW`` update every element with the same arithmetic and
scalars, so one of them over the stacked rows equals one per member, bitwise, when the members'
hyperparameters agree (they do when no swept value changes them; each step copies member 0's
current ones, as its own schedulers set them, after checking that every member's agree).
``PathwayDeficit`` freeze puts the frozen members' parameter and optimizer-state rows back after
the step, and zeroes a momentum row the step created (SGD without dampening: a zero momentum
then gives the same first step as none). Adam's step counter is one scalar per parameter, so a
freeze with Adam/AdamW, or anything else, keeps one optimizer per member (:func:`stackable`).

Example::

    >>> import torch
    >>> a = torch.optim.SGD([torch.zeros(2)], lr=0.1, momentum=0.9)
    >>> b = torch.optim.SGD([torch.zeros(2)], lr=0.1, momentum=0.9)
    >>> _hyper(a) == _hyper(b)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_critical.sweep.runners.vectorized.members import Member

STACKABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def stackable(members: list[Member]) -> bool:
    """Whether one stock optimizer over the stack equals the members' own, bitwise (see the module docstring)."""
    first = members[0].optimizer
    if type(first) not in STACKABLE or len(first.param_groups) != 1:
        return False
    for member in members:
        opt = member.optimizer
        params = [p for _, p in member.named]
        if type(opt) is not type(first) or len(opt.param_groups) != 1 or _hyper(opt) != _hyper(first):
            return False
        if [id(p) for p in opt.param_groups[0]["params"]] != [id(p) for p in params]:
            return False
    if any(m.frozen or m.fixed or m.blocked for m in members):
        return isinstance(first, torch.optim.SGD) and not first.param_groups[0].get("dampening")
    return True


class StackedOptimizer:
    """Member 0's optimizer class over the stacked parameters; ``step`` with the members' frozen rows put back."""

    def __init__(self, members: list[Member], params: dict[str, torch.Tensor]) -> None:
        first = members[0].optimizer
        self.names = [name for name, _ in members[0].named]
        self.optimizer = type(first)([params[n] for n in self.names], **_hyper(first))
        for member in members:  # its schedulers step its own (unused) optimizer: no "step before optimizer" warning
            member.optimizer._opt_called = True

    def step(self, members: list[Member], params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             frozen: dict[str, list[int]]) -> None:
        hyper = _hyper(members[0].optimizer)
        for member in members[1:]:
            if _hyper(member.optimizer) != hyper:
                raise RuntimeError("the members' optimizer hyperparameters diverged during training (a scheduler "
                                   "that depends on the run?); use VectorizedRunner(stacked_optimizer=False)")
        self.optimizer.param_groups[0].update(hyper)
        saved = {name: self._rows(params[name], rows) for name, rows in frozen.items() if rows}
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

    def _rows(self, param: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index = torch.tensor(rows)
        state = {k: v[index].clone() for k, v in self.optimizer.state.get(param, {}).items()
                 if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == param.shape[0]}
        return index, param[index].clone(), state

    def keep(self, rows: list[int], params: dict[str, torch.Tensor]) -> None:
        """Follow :meth:`~.stack.Stack.keep`: the optimizer over the new stack, its state rows ``rows``."""
        index = torch.tensor(rows)
        old = self.optimizer
        self.optimizer = type(old)([params[n] for n in self.names], **_hyper(old))
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


def _hyper(optimizer: Any) -> dict[str, Any]:
    return {k: v for k, v in optimizer.param_groups[0].items() if k not in ("params", "initial_lr")}

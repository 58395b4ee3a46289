"""The templates of a job: the module copies its steps are called on, one per params combination, and their state.

A job's members may come from several swept values (params combinations); each combination's
module is its own *template* (:func:`template_key`: the factory's accepted values, the seed
aside), called through :class:`Caller` under ``functional_call``; :class:`Snapshot` keeps the
templates' Python attributes (and buffers) to start a replayed step from.

Example::

    >>> from types import SimpleNamespace
    >>> spec = SimpleNamespace(model=lambda seed, act="relu": None, factory_kwargs=lambda run: run)
    >>> template_key(SimpleNamespace(spec=spec, run={"seed": 1, "act": "tanh", "lr": 0.1}))
    '{"act":"tanh"}'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_critical.sweep.params import accepted_kwargs
from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused
from lightning_critical.sweep.spec import canonical_json

Tensors = dict[str, torch.Tensor]


class Caller(nn.Module):
    """Calls a named method of the wrapped module, so ``functional_call`` reaches steps other than ``forward``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, method: str, *args: Any) -> Any:
        passed = [(name, id(b)) for name, b in self.m.named_buffers()]  # the tensors functional_call put in place
        out = getattr(self.m, method)(*args)
        now = {name: id(b) for name, b in self.m.named_buffers()}
        moved = [name for name, ident in passed if now.get(name) != ident]
        if moved:  # functional_call puts the original back: the new value would be lost silently
            raise VectorizedRefused(f"{method} reassigns the buffers {moved} (self.<buffer> = ...; only in-place "
                                    "updates such as self.<buffer>.mul_(...) reach the stacked buffers)")
        return out


def template_key(task: Any) -> str:
    """What a run's module is built from, its seed aside (the factory's accepted swept values): runs with one key
    share a template; the seed only initialises the parameters, which are stacked.

    Example::

        >>> from types import SimpleNamespace
        >>> spec = SimpleNamespace(model=lambda seed, act="relu": None, factory_kwargs=lambda run: run)
        >>> template_key(SimpleNamespace(spec=spec, run={"seed": 1, "act": "tanh", "lr": 0.1}))
        '{"act":"tanh"}'
    """
    kwargs = accepted_kwargs(task.spec.model, task.spec.factory_kwargs(task.run))
    kwargs.pop("seed", None)
    try:
        return canonical_json(kwargs)
    except (TypeError, ValueError):  # values JSON cannot write: their repr (equal reprs, one template)
        return repr(sorted(kwargs.items()))


class Snapshot:
    """Modules' Python attributes (every submodule's ``__dict__``, shallow) and given buffers, to start again from.

    Example::

        >>> net = torch.nn.Linear(1, 1)
        >>> net.seen = 0
        >>> before = Snapshot([net], {})
        >>> net.seen += 1
        >>> before.restore()
        >>> net.seen
        0
    """

    def __init__(self, modules: Sequence[nn.Module], buffers: Tensors) -> None:
        self.attributes = [(m, dict(vars(m))) for module in modules for m in module.modules()]
        self.buffers = buffers

    def restore(self) -> None:
        for module, attributes in self.attributes:
            vars(module).clear()
            vars(module).update(attributes)

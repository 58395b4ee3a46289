"""The templates of a job: the module copies its steps are called on, one per params combination, and their state.

A job's members may come from several swept values (params combinations); each combination's
module is its own *template* (:func:`template_key`: the factory's accepted values, the seed
aside; members whose modules hold other plain state, e.g. drawn per seed, get their own:
:func:`template_rows`), called through :class:`Caller` under ``functional_call``; :class:`Snapshot` keeps the
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
        held = _tensor_attributes(self.m)
        out = getattr(self.m, method)(*args)
        now = {name: id(b) for name, b in self.m.named_buffers()}
        moved = [name for name, ident in passed if now.get(name) != ident]
        if moved:  # functional_call puts the original back: the new value would be lost silently
            raise VectorizedRefused(f"{method} reassigns the buffers {moved} (self.<buffer> = ...; only in-place "
                                    "updates such as self.<buffer>.mul_(...) reach the stacked buffers)")
        assigned = sorted(k for k, ident in _tensor_attributes(self.m).items() if held.get(k) != ident)
        if assigned:  # a member's value would escape vmap as one attribute of the shared template
            raise VectorizedRefused(f"{method} assigns the tensor attributes {assigned} (self.<name> = a tensor: "
                                    "one attribute cannot hold every member's value; keep it in a buffer updated "
                                    "in place)")
        return out


def _tensor_attributes(module: nn.Module) -> dict[str, int]:
    """``{"<submodule>.<attribute>": id}`` of the plain tensor attributes (not parameters or buffers)."""
    return {f"{name}.{k}" if name else k: id(v) for name, sub in module.named_modules()
            for k, v in vars(sub).items() if isinstance(v, torch.Tensor)}


def template_rows(members: Sequence[Any]) -> tuple[list[int], list[int]]:
    """Each member's template (an index) and the member each template copies (its first member's row).

    Members share a template when they come from one params combination (:func:`template_key`)
    and their modules hold the same plain state beside parameters and buffers
    (:func:`same_state`): a value drawn in ``__init__``, set in ``setup("fit")`` from the run's
    own data split, or derived from the seed differs per run, and each run's steps must see its own.
    """
    keys = [template_key(m.task) for m in members]
    rows: list[int] = []
    firsts: list[int] = []
    for row, member in enumerate(members):
        found = next((t for t, first in enumerate(firsts)
                      if keys[first] == keys[row] and same_state(members[first].model, member.model)), None)
        if found is None:
            firsts.append(row)
            found = len(firsts) - 1
        rows.append(found)
    return rows, firsts


def same_state(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold the same plain state (every submodule's attributes) beside parameters and buffers.

    Example::

        >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> same_state(a, b)
        True
        >>> b.scale = torch.rand(3)
        >>> same_state(a, b)
        False
    """
    ours, theirs = dict(a.named_modules()), dict(b.named_modules())
    if list(ours) != list(theirs):
        return False
    for name, module in ours.items():
        x, y = _plain(module), _plain(theirs[name])
        if x.keys() != y.keys() or not all(_same(x[k], y[k]) for k in x):
            return False
    return True


_NOT_STATE = frozenset({"_parameters", "_buffers", "_modules", "training", "_trainer"})


def _plain(module: nn.Module) -> dict[str, Any]:
    """A module's own attributes that are neither parameters, buffers, submodules nor hooks; a ``seed``
    hyperparameter left out (it draws the initial weights, which are stacked)."""
    out = {k: v for k, v in vars(module).items() if k not in _NOT_STATE and "hook" not in k}
    for key in ("_hparams", "_hparams_initial"):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != "seed"}
    return out


def _same(a: Any, b: Any, depth: int = 0) -> bool:
    """Equal values (tensors elementwise, containers item by item, plain objects by their attributes)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k], depth + 1) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, depth + 1) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:  # NaN
        return b != b
    if depth < 3 and hasattr(a, "__dict__") and not callable(a):
        return _same(vars(a), vars(b), depth + 1)
    try:
        return bool(a == b)
    except Exception:  # an object whose == is not a truth value: count it as different (a template of its own)
        return False


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

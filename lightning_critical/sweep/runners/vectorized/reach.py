"""Which parameters a training step reaches: the others get a ``None`` gradient under Lightning, not a zero.

``torch.func.grad`` gives a zero gradient for a parameter the loss does not depend on; a run's
``backward()`` leaves its ``.grad`` ``None``, and every torch optimizer then skips it (no weight
decay, no momentum, no Adam step). So the stack finds, once per job, the parameters member 0's
step alone reaches with autograd (:func:`reached`): a step under ``vmap`` has no data-dependent
control flow, so every step of the job reaches the same ones. A ``PathwayDeficit(mode="noise")``
replaces a module's input by noise, which cuts what only feeds that input off the loss while its
window is open: :func:`cut_at` detaches those inputs, and :func:`block` gives each member the
parameters each set of its noise deficits cuts off (:attr:`.members.Member.blocked`), and those
its own kind of step never reaches where another member's reaches them (one template per swept
combination).

Example::

    >>> import torch
    >>> net = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})
    >>> params = {k: v.detach().requires_grad_(True) for k, v in net.state_dict().items()}
    >>> sorted(reached(lambda p: p["a.weight"].sum() + p["a.bias"].sum(), params))
    ['a.bias', 'a.weight']
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def reached(loss: Callable[[Tensors], torch.Tensor], params: Tensors) -> set[str]:
    """The names of ``params`` (leaves requiring a gradient) that ``loss(params)`` depends on."""
    with torch.enable_grad():
        value = loss(params)
        if not value.requires_grad:
            return set()
        names = list(params)
        grads = torch.autograd.grad(value, [params[n] for n in names], allow_unused=True)
    return {n for n, g in zip(names, grads, strict=True) if g is not None}


@contextmanager
def cut_at(template: nn.Module, noised: dict[str, Any]) -> Iterator[None]:
    """Inside: each module of ``noised`` (``{name: its noise deficit}``) gets its input detached, as the noise that
    replaces it under Lightning is (the input's position found as the deficit finds it)."""

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def detach(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            position = noised[name]._input_position(name, args)
            return args[:position] + (args[position].detach(),) + args[position + 1:]
        return detach

    handles = [template.get_submodule(name).register_forward_pre_hook(hook(name)) for name in noised]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def block(members: list[Any], trained: set[str], reached_under: Callable[[Any, frozenset[str]], set[str]],
          kind: Callable[[Any], Hashable] = lambda member: None) -> set[str]:
    """The names of ``trained`` some member's step reaches (their gradients are computed); each member's
    ``blocked``: ``{modules noised: its parameters of those names its step does not reach then}``, for no module
    noised and every set of its noise deficits that may be open together.

    ``reached_under(member, modules)``: the names ``member``'s step reaches with the inputs of ``modules``
    cut off (:func:`cut_at`); members of one ``kind`` (one template) reach the same ones.
    """
    found: dict[tuple[Hashable, frozenset[str]], set[str]] = {}

    def reach(member: Any, key: frozenset[str]) -> set[str]:
        if (kind(member), key) not in found:
            found[kind(member), key] = trained & reached_under(member, key)
        return found[kind(member), key]

    union = set().union(*(reach(m, frozenset()) for m in members))
    for member in members:
        deficits = [d for d in member.pathways if d.mode == "noise"]
        named = dict(member.named)
        keys = [frozenset(name for d in chosen for name in d.targets)
                for size in range(len(deficits) + 1) for chosen in itertools.combinations(deficits, size)]
        for key in keys:
            cut = union - reach(member, key)
            if cut:
                member.blocked[key] = [named[n] for n in sorted(cut)]
    return union

"""How the members' tensors are stacked along a leading member dimension, gathered and put back.

Example::

    >>> import torch
    >>> x = torch.zeros(2, 3)
    >>> batch = stacked([[x, x], [x, x]])
    >>> batch[0].shape, batch_size_of(batch)
    (torch.Size([2, 2, 3]), 2)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map, tree_structure

from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused

Tensors = dict[str, torch.Tensor]


def stack_state(models: list[nn.Module]) -> tuple[Tensors, Tensors]:
    """The models' parameters and buffers stacked ``{name: (M, ...)}`` (a tied tensor once, under its first name).

    ``torch.func.stack_module_state`` without its check that every model's ``requires_grad``
    agree: a member may freeze a parameter (``requires_grad=False``) that another one trains.

    Example::

        >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> _ = b.weight.requires_grad_(False)
        >>> params, buffers = stack_state([a, b])
        >>> params["weight"].shape, params["weight"].requires_grad, buffers
        (torch.Size([2, 1, 2]), False, {})
    """
    named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in models]
    params = {k: torch.stack([p[k].detach() for p, _ in named]) for k in named[0][0]}
    buffers = {k: torch.stack([b[k] for _, b in named]) for k in named[0][1]}
    return params, buffers


def stacked(batches: list[Any]) -> Any:
    """The members' batches as one batch with a leading member dimension (shapes must agree).

    Lists and tuples count as one container (a deficit's callable may give a tuple where the loader
    gives a list): the stacked batch has the first member's container types.

    Example::

        >>> x = torch.zeros(2, 3)
        >>> batch = stacked([[x, x], (x, x)])
        >>> type(batch).__name__, batch[0].shape
        ('list', torch.Size([2, 2, 3]))
    """
    first = tree_structure(batches[0])
    if any(tree_structure(b) != first for b in batches[1:]):
        batches = [_as_structure(b, batches[0]) for b in batches]
    try:
        return tree_map(lambda *xs: torch.stack(xs) if isinstance(xs[0], torch.Tensor) else xs[0], *batches)
    except RuntimeError as err:
        raise ValueError(f"the members' batches differ in shape ({err}); members of one vectorized job need "
                         "datamodules that give batches of one shape (same batch size and dataset size)") from err


def _as_structure(batch: Any, like: Any) -> Any:
    """``batch`` with ``like``'s list/tuple container types (any other difference: a clear error)."""
    if type(like) in (list, tuple) and type(batch) in (list, tuple) and len(like) == len(batch):
        return type(like)(_as_structure(b, lk) for b, lk in zip(batch, like, strict=True))
    if isinstance(like, dict) and isinstance(batch, dict) and list(like) == list(batch):
        return {k: _as_structure(batch[k], like[k]) for k in like}
    if tree_structure(batch) != tree_structure(like):
        raise ValueError(f"the members' batches differ in structure ({tree_structure(batch)} vs "
                         f"{tree_structure(like)}), e.g. an input deficit's callable changes the batch's "
                         "containers; members of one vectorized job need batches of one structure")
    return batch


def batch_size_of(batch: Any) -> int:
    """Lightning's inferred batch size: the first dimension of the batch's first tensor."""
    for leaf in torch.utils._pytree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor):
            return int(leaf.size(0)) if leaf.dim() else 1
    return 1


def gather_rows(batch: Any, rows: torch.Tensor) -> Any:
    """``batch``'s rows ``rows`` (copies)."""
    return tree_map(lambda t: t.index_select(0, rows) if isinstance(t, torch.Tensor) else t, batch)


def assembled(parts: list[tuple[torch.Tensor, Any]], size: int) -> Any:
    """The outputs of :meth:`Stack._per_template` (``(rows, output)``) as one output over ``size`` rows.

    Raises:
        VectorizedRefused: the templates' steps logged different names (a member has no value for a name its run
            never logs: the trial step finds it before training).
    """
    first = parts[0][1]
    if isinstance(first, dict):
        names = [sorted(part) for _, part in parts]
        if any(n != names[0] for n in names):
            raise VectorizedRefused(f"params combinations whose steps log different names ({names}) in one job")
        return {name: assembled([(rows, part[name]) for rows, part in parts], size) for name in first}
    if isinstance(first, tuple):
        return tuple(assembled([(rows, part[i]) for rows, part in parts], size) for i in range(len(first)))
    out = first.new_empty((size, *first.shape[1:]))
    for rows, part in parts:
        out[rows] = part
    return out

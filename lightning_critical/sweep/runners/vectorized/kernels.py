"""Small batched products computed with a run's own kernel, so tiny layers stay bitwise under ``vmap``.

Under ``vmap`` a member's matrix product (a ``Linear`` layer, its gradients) becomes one batched
product (``aten.bmm``) over the members. For products of fewer than 400 multiply-adds per
member (e.g. a batch of 4 through an 8 x 8 layer), PyTorch's CPU ``bmm`` sums with a plain loop,
in another order than the BLAS ``mm`` a run trained alone calls, so dense inputs round
differently (one-hot inputs hide it: their sums are exact in any order). :class:`SmallProducts`
is a dispatch mode that computes such a ``bmm`` as one ``mm`` per member: the run's own kernel
call, bitwise. Larger products already are (``bmm`` then calls ``mm`` per member itself).

A model whose own step calls batched products (``torch.bmm``, a 3-D ``matmul``, attention) is
left alone: ``vmap`` folds them into one ``bmm`` whose kernel is the run's own, and splitting it
would change them (:meth:`SmallProducts.check` turns the mode off when a step calls ``bmm``).

Example::

    >>> a, b = torch.randn(3, 4, 8), torch.randn(3, 8, 8)
    >>> with SmallProducts():
    ...     out = torch.func.vmap(torch.mm)(a, b)
    >>> torch.equal(out, torch.stack([a[i] @ b[i] for i in range(3)]))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BMM_LOOP_BELOW = 400
"""PyTorch's CPU ``bmm`` sums with a plain loop below this many multiply-adds per matrix (contraction x rows x
columns), else calls ``mm`` per matrix."""

_BMM = torch.ops.aten.bmm.default


class SmallProducts(TorchDispatchMode):
    """Computes each small ``bmm`` as one ``mm`` per matrix (see the module docstring); ``hits`` counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.enabled = True
        self._needed: dict[Any, bool] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func is _BMM and "out" not in (kwargs or {}):
            a, b = args
            if a.shape[1] * a.shape[2] * b.shape[2] < BMM_LOOP_BELOW and a.device.type == "cpu":
                self.hits += 1
                return torch.stack([torch.mm(a[i], b[i]) for i in range(a.shape[0])])
        return func(*args, **(kwargs or {}))

    def around(self, stage: str, batch: Any) -> AbstractContextManager[Any]:
        """This mode for a vmapped step of ``stage`` on ``batch``, when it is :attr:`enabled` and steps of that stage
        and batch shapes have small products (the first one is run under it to find out): else nothing, as the
        mode costs a Python call per operation."""
        if not self.enabled:
            return nullcontext()
        key = (stage, *(tuple(t.shape) for t in tree_leaves(batch) if isinstance(t, torch.Tensor)))
        if key in self._needed:
            return self if self._needed[key] else nullcontext()
        return self._finding(key)

    @contextmanager
    def _finding(self, key: Any) -> Iterator[None]:
        before = self.hits
        with self:
            yield
        self._needed[key] = self.hits > before

    def check(self, step: Callable[[], None]) -> None:
        """Turn the mode off for good when ``step`` (a member's step called alone) calls ``bmm`` itself."""
        recorder = _Calls()
        with recorder:
            step()
        if recorder.bmm:
            self.enabled = False


class _Calls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bmm = False

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        self.bmm = self.bmm or func in (_BMM, torch.ops.aten.baddbmm.default)
        return func(*args, **(kwargs or {}))

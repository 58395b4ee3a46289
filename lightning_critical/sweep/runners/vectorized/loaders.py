"""Reading one member's loader as the loader itself would: its batches, under the member's random states.

A stock loader is read by indexing its tensors with its sampler's indices (the same batches,
bitwise, without collating one sample at a time); any other loader is iterated.

Example::

    >>> import torch
    >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(5)), batch_size=2)
    >>> sampler_order(loader.sampler).tolist(), stock_tensors(loader) is not None
    ([0, 1, 2, 3, 4], True)
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np
import torch


class Drawing(Protocol):
    """What a :class:`Feed` needs of its member: context managers putting its random states in place."""

    def drawing(self) -> Any: ...

    def drawing_torch(self) -> Any: ...


class Feed:
    """One epoch of a member's loader: ``next()`` gives its batches as the loader would, under its random states.

    A stock loader (``TensorDataset``, default collate, a ``RandomSampler`` or
    ``SequentialSampler`` in a ``BatchSampler``, no workers) is read by indexing the tensors
    with the sampler's indices (:meth:`indices`): the same batches, bitwise, without collating
    one sample at a time. Its sampler draws from torch's generator only, once, when its first
    index is asked for: the whole epoch's order is then read in one go (the same draws, in the
    same order, as the batch sampler's). Any other loader is iterated.
    """

    def __init__(self, member: Drawing, loader: Any) -> None:
        self.member, self.loader, self.tensors = member, loader, stock_tensors(loader)
        self.order: torch.Tensor | None = None
        self.position = 0
        draw = member.drawing_torch if self.tensors is not None else member.drawing
        with draw():
            self.iterator = iter(loader)

    def next(self) -> Any:
        if self.tensors is None:
            with self.member.drawing():
                return next(self.iterator)
        index = self.indices()
        return [t.index_select(0, index) for t in self.tensors]

    def indices(self) -> torch.Tensor:
        """The next batch's sample indices (stock loaders only), as the loader's batch sampler gives them."""
        order = self.epoch_order()
        if self.position >= len(self.loader):
            raise StopIteration
        size = self.loader.batch_sampler.batch_size
        self.position += 1
        return order[(self.position - 1) * size:self.position * size]

    def epoch_order(self) -> torch.Tensor:
        """The epoch's sample indices in order (stock loaders only), drawn at the first call."""
        if self.order is None:  # the sampler's one draw, where the batch sampler would make it: at the first index
            with self.member.drawing_torch():
                self.order = sampler_order(self.loader.sampler)
        return self.order


def sampler_order(sampler: Any) -> torch.Tensor:
    """A stock sampler's indices for one epoch, with the draws its iterator makes (from torch's global generator).

    ``RandomSampler`` (no replacement, one pass, no generator) draws one seed and permutes with
    it: done here in one call when :func:`_checked_permutation` found this torch's sampler doing
    exactly that; any other sampler is iterated.
    """
    data = torch.utils.data
    if type(sampler) is data.SequentialSampler:
        return torch.arange(len(sampler))
    n = len(sampler.data_source) if type(sampler) is data.RandomSampler else -1
    if n == len(sampler) and not sampler.replacement and sampler.generator is None and _checked_permutation():
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.from_numpy(np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler)))


@functools.cache
def _checked_permutation() -> bool:
    """Whether this torch's ``RandomSampler`` gives (and draws) what :func:`sampler_order` computes, on a probe."""
    sampler = torch.utils.data.RandomSampler(range(37))
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(12345)
        iterated = list(sampler), torch.get_rng_state()
        torch.manual_seed(12345)
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        computed = torch.randperm(37, generator=torch.Generator().manual_seed(seed)).tolist(), torch.get_rng_state()
    finally:
        torch.set_rng_state(saved)
    return iterated[0] == computed[0] and torch.equal(iterated[1], computed[1])


def stock_tensors(loader: Any) -> tuple[torch.Tensor, ...] | None:
    """A stock loader's dataset tensors (read by indexing), else ``None`` (the loader is iterated)."""
    data = torch.utils.data
    stock = (type(loader.dataset) is data.TensorDataset and loader.num_workers == 0
             and loader.collate_fn is data.dataloader.default_collate and not loader.pin_memory
             and type(loader.batch_sampler) is data.BatchSampler
             and type(loader.sampler) in (data.RandomSampler, data.SequentialSampler)
             and getattr(loader.sampler, "generator", None) is None and loader.generator is None)
    return tuple(loader.dataset.tensors) if stock else None

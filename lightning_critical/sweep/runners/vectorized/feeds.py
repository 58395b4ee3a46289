"""Every member's training batch of one step, read in one call when the members' loaders are stock.

The members of a sweep read their datasets (each run builds its own datamodule; runs of one
seed usually build the same tensors) in their own orders. :class:`Feeds` draws each member's
order as its own :class:`~.loaders.Feed` would (under its own random states) and reads all
members' samples with one ``index_select`` per dataset tensor, straight into the stacked
``(M, B, ...)`` batch, from a table holding each distinct dataset once (bitwise-equal tensors
are one). An ``InputDeficit`` that acts on each sample alone and draws nothing (``"blur"``,
``"vflip"``: :data:`SAMPLEWISE`) gives a sample the same value whichever batch it is in
(checked bitwise by ``tests/test_sweep_vectorized_speed.py``), so it is applied once to the
whole dataset and its members read from that transformed copy. A member with any other active
input deficit has its rows transformed by :meth:`~.members.Member.batch`, as the general path
does. Members whose loaders are not stock (or of other lengths) take the general path: one
batch per member, then stacked.

Example::

    >>> import torch
    >>> rows = Rows([torch.arange(6).reshape(2, 3), torch.zeros(2, 3)])
    >>> len(rows), rows[1][0].tolist()
    (2, [3, 4, 5])
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical._namespace import pl
from lightning_critical.deficits import transforms
from lightning_critical.deficits.input import InputDeficit
from lightning_critical.sweep.runners.vectorized.loaders import Feed
from lightning_critical.sweep.runners.vectorized.members import CPU, Member
from lightning_critical.sweep.runners.vectorized.tensors import stacked

# Per-sample, deterministic, shape-keeping transforms: applying one to a whole dataset is bitwise per batch.
SAMPLEWISE = (transforms._blur, transforms._vflip)
TABLE_BYTES = 1 << 29  # the distinct datasets (and their transformed copies) read as one table up to this size

Chain = tuple[Any, ...]
Ref = weakref.ref[torch.Tensor]


class Rows(Sequence[Any]):
    """The members' batches as views of the stacked batch's rows (made when asked for: replays, batch sizes)."""

    def __init__(self, batch: list[torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return int(self.batch[0].shape[0])

    def __getitem__(self, row: Any) -> Any:
        if not isinstance(row, int):
            return [self[r] for r in range(len(self))[row]]
        return [t[row] for t in self.batch]


class Feeds:
    """One epoch of the members' training loaders; :meth:`next` gives the stacked batch and the members' batches."""

    def __init__(self, members: list[Member], device: torch.device = CPU) -> None:
        self.members, self.device = members, device
        self.feeds = [m.feed(m.train_loader) for m in members]
        # Member.batch also switches tasks and moves the batch through the datamodule's transfer hooks (to the
        # device, where Lightning applies the deficits): the one-gather path only where those do nothing.
        plain = device.type == "cpu" and not any(m.switches or _transfers(m.datamodule) for m in members)
        self.shared = _shared(self.feeds) if plain else None
        self.parts: dict[tuple[int, Chain], int] = {}  # (dataset, chain) -> its first row in the table
        self.pieces: list[tuple[torch.Tensor, ...]] = []
        self.table: tuple[torch.Tensor, ...] = ()
        self.orders: torch.Tensor | None = None
        self.offsets: dict[tuple[tuple[int, ...], ...], torch.Tensor] = {}
        self.position = 0

    def next(self, deficits_at: tuple[int, int], batch_idx: int) -> tuple[Any, Sequence[Any]]:
        """The next step's batch of every member (its active input deficits applied): stacked, and one per member."""
        if self.shared is None:
            return self._general(deficits_at, batch_idx, [f.next() for f in self.feeds])
        sources, which = self.shared
        if self.orders is None:  # each member's one draw, under its own random states, at its first batch
            self.orders = torch.stack([f.epoch_order() for f in self.feeds])
        epoch, step = deficits_at
        active = [_active(m, epoch, step) for m in self.members]
        signature = tuple(tuple(map(id, a)) for a in active)
        if signature not in self.offsets:  # the members' rows in the table, for this set of active deficits
            self.offsets[signature] = torch.tensor(
                [self._row(sources[src], src, a) for src, a in zip(which, active, strict=True)]).unsqueeze(1)
            self.table = _table(self.pieces)
        size = self.feeds[0].loader.batch_sampler.batch_size
        index = self.orders[:, self.position * size:(self.position + 1) * size]
        self.position += 1
        rows = (index + self.offsets[signature]).reshape(-1)
        flat = [t.index_select(0, rows) for t in self.table]
        size = index.shape[1]
        for row, deficits in enumerate(active):
            if deficits and _chain(deficits) is None:  # drawn transforms, callables: Member.batch on its rows
                given = [t[row * size:(row + 1) * size] for t in flat]
                out = self.members[row].batch(deficits_at, given, batch_idx, self.device)
                if not _fits(out, flat, size):  # other shapes: every member's batch alone, then stacked
                    raw = [[t.index_select(0, index[r]) for t in sources[src]] for r, src in enumerate(which)]
                    return self._general(deficits_at, batch_idx, raw)
                for t, old, new in zip(flat, given, out, strict=True):
                    if new is not old:
                        t[row * size:(row + 1) * size] = new
        batch = [t.view(len(self.members), size, *t.shape[1:]) for t in flat]
        return batch, Rows(batch)

    def _row(self, source: tuple[torch.Tensor, ...], which: int, deficits: list[InputDeficit]) -> int:
        """The first row, in the table, of dataset ``which`` read through ``deficits`` (added when new)."""
        chain = _chain(deficits) or ()  # not sample-wise: the plain dataset (Member.batch then transforms its rows)
        if (which, chain) not in self.parts:
            self.parts[(which, chain)] = sum(p[0].shape[0] for p in self.pieces)
            self.pieces.append(_transformed(source, chain, deficits) if chain else source)
        return self.parts[(which, chain)]

    def _general(self, deficits_at: tuple[int, int], batch_idx: int, raw: list[Any]) -> tuple[Any, list[Any]]:
        batches = [m.batch(deficits_at, b, batch_idx, self.device) for m, b in zip(self.members, raw, strict=True)]
        return stacked(batches), batches


def _table(pieces: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """The pieces' tensors concatenated (the last table is kept while its pieces live: epochs repeat it)."""
    if len(pieces) == 1:
        return pieces[0]
    last = _TABLE.get("last")
    if last is not None and len(last[0]) == len(pieces) and all(
            r() is t for refs, piece in zip(last[0], pieces, strict=True) for r, t in zip(refs, piece, strict=True)):
        return last[1]
    table = tuple(torch.cat(ts) for ts in zip(*pieces, strict=True))
    _TABLE["last"] = (tuple(tuple(weakref.ref(t) for t in piece) for piece in pieces), table)
    weakref.finalize(pieces[0][0], _TABLE.pop, "last", None)  # the sweep's data gone: the copy goes too
    return table


def _transfers(datamodule: Any) -> bool:
    """Whether a datamodule overrides a batch transfer hook (:meth:`~.members.Member.transfer` then calls it)."""
    base = pl.LightningDataModule
    return datamodule is not None and any(getattr(type(datamodule), hook) is not getattr(base, hook) for hook in (
        "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"))


def _active(member: Member, epoch: int, step: int) -> list[InputDeficit]:
    return [d for d in member.inputs if d.window.contains(epoch=epoch, step=step)]


def _chain(active: list[InputDeficit]) -> Chain | None:
    """What makes two chains of active input deficits act alike (``None``: not all sample-wise)."""
    if any(d.transform_spec is None or d.transform_spec.fn not in SAMPLEWISE for d in active):
        return None
    return tuple((d.transform_spec.fn, d.factor, d.spatial_dims, d.input_key, d.target_key)  # type: ignore[union-attr]
                 for d in active)


def _fits(out: Any, flat: list[torch.Tensor], size: int) -> bool:
    """Whether a member's transformed batch can be written back into its rows (same structure, shapes, dtypes)."""
    return (isinstance(out, (list, tuple)) and len(out) == len(flat)
            and all(isinstance(o, torch.Tensor) and o.dtype == t.dtype and o.shape == (size, *t.shape[1:])
                    for o, t in zip(out, flat, strict=True)))


def _shared(feeds: list[Feed]) -> tuple[list[tuple[torch.Tensor, ...]], list[int]] | None:
    """The distinct datasets the feeds read (bitwise-equal tensors are one) and which one each feed reads.

    ``None`` unless every feed is stock with the same numbers of batches, batch size and samples,
    and the distinct datasets are small enough to be read as one table (:data:`TABLE_BYTES`).
    """
    first = feeds[0]
    if first.tensors is None:
        return None
    shape = (len(first.loader), first.loader.batch_sampler.batch_size, len(first.loader.sampler))
    sources: list[tuple[torch.Tensor, ...]] = []
    which: list[int] = []
    for feed in feeds:
        if feed.tensors is None or (len(feed.loader), feed.loader.batch_sampler.batch_size,
                                    len(feed.loader.sampler)) != shape:
            return None
        tensors = tuple(_canonical(t) for t in feed.tensors)
        match = [i for i, s in enumerate(sources) if all(a is b for a, b in zip(s, tensors, strict=True))]
        if not match:
            sources.append(tensors)
        which.append(match[0] if match else len(sources) - 1)
    if sum(t.numel() * t.element_size() for s in sources for t in s) * 2 > TABLE_BYTES:
        return None
    return sources, which


# id(tensor) -> weak references to it and to its canonical tensor, and both versions (a tensor's hash is its
# id, but weak dictionaries compare keys with ==, which a tensor answers elementwise). Nothing is kept alive.
_CANONICAL: dict[int, tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor], int, int]] = {}
# (id(dataset's first tensor), chain) -> weak references to its tensors, their versions, the transformed elements
# (None where an element is the dataset's own, so that the cache keeps no dataset alive).
_TRANSFORMED: dict[tuple[int, Chain], tuple[tuple[Ref, ...], tuple[int, ...], tuple[Any, ...]]] = {}


_TABLE: dict[str, tuple[tuple[tuple[Ref, ...], ...], tuple[torch.Tensor, ...]]] = {}


def _canonical(tensor: torch.Tensor) -> torch.Tensor:
    """The first live tensor seen that is bitwise equal to ``tensor`` (remembered while both are unchanged in place)."""
    known = _CANONICAL.get(id(tensor))
    canonical = known[1]() if known is not None else None
    if known is not None and canonical is not None and known[0]() is tensor \
            and known[2:] == (tensor._version, canonical._version):
        return canonical
    for key, (ref, canon, version, _) in list(_CANONICAL.items()):
        this, canonical = ref(), canon()
        if this is None or canonical is None:
            del _CANONICAL[key]
        elif this is canonical and version == canonical._version and _same(tensor, canonical):
            _CANONICAL[id(tensor)] = (weakref.ref(tensor), canon, tensor._version, version)
            return canonical
    _CANONICAL[id(tensor)] = (weakref.ref(tensor), weakref.ref(tensor), tensor._version, tensor._version)
    return tensor


def _transformed(source: tuple[torch.Tensor, ...], chain: Chain, deficits: list[InputDeficit]) -> Any:
    """``source`` (a dataset's tensors) with the sample-wise ``deficits`` applied to every sample, cached."""
    key, versions = (id(source[0]), chain), tuple(t._version for t in source)
    known = _TRANSFORMED.get(key)
    if known is not None and all(r() is t for r, t in zip(known[0], source, strict=True)) and known[1] == versions:
        return tuple(t if new is None else new for t, new in zip(source, known[2], strict=True))
    for stale in [k for k, v in _TRANSFORMED.items() if any(r() is None for r in v[0])]:
        del _TRANSFORMED[stale]
    out: Any = list(source)
    for deficit in deficits:
        out = deficit.apply(out, 0, 0, 0)
    kept = tuple(None if new is t else new for t, new in zip(source, out, strict=True))
    _TRANSFORMED[key] = (tuple(weakref.ref(t) for t in source), versions, kept)
    weakref.finalize(source[0], _TRANSFORMED.pop, key, None)
    return tuple(out)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (``torch.equal`` calls ``-0.0`` and ``0.0`` equal, and NaN unequal)."""
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
        if bits is None or a.is_complex():
            return False
        a, b = a.contiguous().view(bits), b.contiguous().view(bits)
    return torch.equal(a, b)

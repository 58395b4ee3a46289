"""What a branch checkpoint does not carry, as digests to compare: exact or refused (see :mod:`.branch_state`).

A checkpoint holds parameters, persistent buffers and ``state_dict``\\ s; :mod:`.branch_compare`
carries public plain attributes. Everything else a run can change during its prefix is digested
here, ``"path" -> short hash``, at the branch point by the parent and after restoring (and after
its own ``on_train_start`` hooks) by the child; an entry that differs refuses the branch:

* of the LightningModule and each of its submodules: non-persistent buffers (a step counter,
  a torchmetrics state), tensor attributes of any size (a pruning mask), ``hparams`` entries,
  and plain values (numbers, strings, lists / tuples / dicts of them) under any name,
  private ``_`` names included, except the names a bare ``nn.Module`` / ``LightningModule``
  has (Lightning's own) and the private names of objects whose class is (or derives from) one of
  Lightning, torch or this package beyond those bases (a ``ModelCheckpoint`` subclass, a bundled
  datamodule: they carry what they need in ``state_dict``; their caches and timers are not state);
* the same for the datamodule and for user callbacks (callbacks of ``lightning``,
  ``pytorch_lightning`` and this package are left out: their ``state_dict`` is trusted).

Left out as well: torchmetrics metrics the run logs with ``self.log(name, metric)`` during
training (:func:`logged_metrics`): Lightning resets them at the end of each epoch, after the
branch point, so a restored run starts them as the run from scratch does.

Example::

    >>> import torch
    >>> m = torch.nn.Linear(2, 1)
    >>> m.register_buffer("seen", torch.zeros(()), persistent=False)
    >>> before = uncarried({"model": m}, "/run")
    >>> m.seen += 1
    >>> differing(before, uncarried({"model": m}, "/run"))
    ['model.seen (tensor)']
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.branching.compare import rebase

TRUSTED = ("lightning.", "pytorch_lightning.", "lightning_critical.", "lightning_fabric.", "torch.")
"""Packages whose callbacks are left out (their ``state_dict`` carries what they need)."""

_LIMIT = 4096  # elements of a list / dict beyond which a value is not digested


@functools.cache
def _bare(kind: type) -> frozenset[str]:
    # the names a bare instance has: the framework's, not the user's
    return frozenset(vars(kind()))


def _bare_of(obj: Any) -> frozenset[str]:
    for kind in (pl.LightningModule, pl.LightningDataModule, pl.Callback, torch.nn.Module):
        if isinstance(obj, kind):
            return _bare(kind)
    return frozenset()


@functools.cache
def _bases() -> frozenset[type]:
    return frozenset(k for base in (pl.LightningModule, pl.LightningDataModule, pl.Callback) for k in base.__mro__)


def _framework_class(kind: type) -> bool:
    """``kind`` is or derives from a class of Lightning, torch or this package (beyond the bare base classes)."""
    return any(k not in _bases() and k.__module__.startswith(TRUSTED) for k in kind.__mro__)


def _feed(h: Any, value: Any, budget: list[int]) -> bool:
    """Feed ``value`` into the hash ``h``; ``False`` where it is not a plain value or tensor."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
        return True
    if isinstance(value, torch.Tensor):
        if isinstance(value, torch.nn.Parameter) or value.is_sparse or value.is_quantized:
            return False
        t = value.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return True
    if isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[{len(value)}".encode())
        return all(_feed(h, v, budget) for v in value)
    if isinstance(value, dict):
        h.update(f"dict[{len(value)}".encode())
        return all(isinstance(k, str) and _feed(h, k, budget) and _feed(h, v, budget) for k, v in value.items())
    return False


def digest(value: Any) -> str | None:
    """A short hash of a plain value or tensor (``None``: neither)."""
    h = hashlib.sha1()
    try:
        return h.hexdigest()[:16] if _feed(h, value, [_LIMIT]) else None
    except (RuntimeError, TypeError, ValueError):  # a tensor subclass or layout without plain bytes: not compared
        return None


def _entries(obj: Any) -> Iterator[tuple[str, Any]]:
    """The attributes of one object that no checkpoint carries (``" (tensor)"`` marks tensors)."""
    base = _bare_of(obj) | {"_hparams", "_hparams_initial"}  # hparams: entry by entry below
    ours = _framework_class(type(obj))  # Lightning's, torch's or this package's classes carry what they need
    attrs = getattr(obj, "__dict__", {})
    for key, value in attrs.items():
        if key in base or isinstance(value, torch.nn.Parameter) or (ours and key.startswith("_")):
            continue
        yield (f"{key} (tensor)" if isinstance(value, torch.Tensor) else key), value
    if isinstance(obj, torch.nn.Module):
        for key in sorted(getattr(obj, "_non_persistent_buffers_set", ())):
            buffer = obj._buffers.get(key)
            if buffer is not None:
                yield f"{key} (tensor)", buffer
    hp = attrs.get("_hparams")
    if isinstance(hp, Mapping) and isinstance(obj, (pl.LightningModule, pl.LightningDataModule)):
        for key, value in hp.items():
            yield f"hparams.{key}", value


def _objects(name: str, part: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(part, torch.nn.Module):
        for sub, module in part.named_modules(remove_duplicate=True):
            yield (f"{name}.{sub}" if sub else name), module
    else:
        yield name, part


def trusted(part: Any) -> bool:
    """A callback of Lightning or of this package (its ``state_dict`` is trusted to carry what it needs)."""
    return type(part).__module__.startswith(TRUSTED) or type(part).__module__ in ("lightning", "pytorch_lightning")


def logged_metrics(trainer: Any, named: Mapping[str, Any]) -> list[str]:
    """Paths of the modules (torchmetrics metrics) logged as objects in training, which Lightning resets each epoch."""
    loop = trainer.fit_loop.epoch_loop
    ids = set()
    for results in (getattr(loop, "_results", None), getattr(getattr(loop, "val_loop", None), "_results", None)):
        for item in dict(results or {}).values():
            value = getattr(item, "value", None)
            if isinstance(value, torch.nn.Module):
                ids.add(id(value))
    return sorted(path for name, part in named.items() for path, obj in _objects(name, part) if id(obj) in ids)


def uncarried(named: Mapping[str, Any], run_dir: str, skip: Iterable[str] = ()) -> dict[str, str]:
    """Digests of what no checkpoint carries, ``"part.attr" -> hash`` (paths in ``run_dir`` made relative).

    ``skip``: paths of objects left out, with everything under them.
    """
    out: dict[str, str] = {}
    skipped = tuple(skip)
    for name, part in named.items():
        if name.startswith("callbacks[") and trusted(part):
            continue
        for prefix, obj in _objects(name, part):
            if prefix in skipped or prefix.startswith(tuple(f"{p}." for p in skipped)):
                continue
            for key, value in _entries(obj):
                d = digest(rebase(value, run_dir, "{run}") if not isinstance(value, torch.Tensor) else value)
                if d is not None:
                    out[f"{prefix}.{key}"] = d
    return out


def differing(parent: Mapping[str, str], child: Mapping[str, str]) -> list[str]:
    """The entries whose digests differ (or that only one side has), sorted."""
    return sorted(k for k in parent.keys() | child.keys() if parent.get(k) != child.get(k))


def reason(parent: Mapping[str, str], child: Mapping[str, str], shown: int = 3) -> str | None:
    """Why a child is refused, naming at most ``shown`` differing entries (``None``: all equal)."""
    names = differing(parent, child)
    if not names:
        return None
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (f"{', '.join(names[:shown])}{more}: not carried by the checkpoint, and differs from the parent's "
            "at the branch point (state changed during the prefix that a restored run does not have)")

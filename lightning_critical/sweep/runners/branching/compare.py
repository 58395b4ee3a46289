"""How a branched run is compared with its parent: fingerprints and plain attributes (see :mod:`.branch_state`).

A fingerprint is a flat ``{"key": canonical JSON}`` of what a run configured for itself; two
runs agree where their fingerprints are equal, and :func:`compare` names the first difference.

Example::

    >>> compare({"lr_schedulers[0].T_max": "6"}, {"lr_schedulers[0].T_max": "4"})
    'lr_schedulers[0].T_max: 6 -> 4'
    >>> reconcile({"model.epochs_seen": 0}, {"model.epochs_seen": 2}, {"model.epochs_seen": 0})
    ({'model.epochs_seen': 2}, None)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from lightning_critical import _lightning
from lightning_critical._namespace import pl
from lightning_critical.sweep.spec import canonical_json, describe

ABSENT = "<absent>"
RUN_DIR = "{run}"
TRAINER_LIMITS = ("limit_train_batches", "limit_val_batches", "accumulate_grad_batches", "gradient_clip_val",
                  "gradient_clip_algorithm", "check_val_every_n_epoch", "val_check_interval", "precision",
                  "max_steps", "min_steps", "overfit_batches", "reload_dataloaders_every_n_epochs", "world_size")
"""Trainer settings a child must share with its parent (``max_epochs`` may differ: that is what branches)."""


def _json(value: Any) -> str:
    return canonical_json(describe(value))


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(parent: Mapping[str, str], child: Mapping[str, str]) -> str | None:
    """The first difference between two fingerprints, as ``"key: parent -> child"`` (``None``: equal)."""
    # public settings first: "T_max: 6 -> 4" says more than the "_last_lr" it leads to
    for key in sorted(parent.keys() | child.keys(), key=lambda k: (k.rsplit(".", 1)[-1].startswith("_"), k)):
        a, b = parent.get(key, ABSENT), child.get(key, ABSENT)
        if a != b:
            return f"{key}: {_short(a)} -> {_short(b)}"
    return None

# -- the parts of a run ------------------------------------------------------------------------
def callbacks(trainer: pl.Trainer, exclude: set[int]) -> dict[str, Any]:
    """The run's callbacks by stable name ``callbacks[i:Class]`` (the sweep's own and its deficits left out)."""
    kept = [cb for cb in _lightning.callbacks_of(trainer) if id(cb) not in exclude]
    return {f"callbacks[{i}:{type(cb).__name__}]": cb for i, cb in enumerate(kept)}


def parts(trainer: pl.Trainer, exclude: set[int]) -> dict[str, Any]:
    """Model, datamodule and callbacks by name."""
    out: dict[str, Any] = {"model": trainer.lightning_module}
    dm = _lightning.datamodule_of(trainer)
    if dm is not None:
        out["datamodule"] = dm
    out.update(callbacks(trainer, exclude))
    return out

def dataloaders(obj: Any) -> Iterator[Any]:
    """The ``DataLoader`` objects in a loader collection."""
    if isinstance(obj, torch.utils.data.DataLoader):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from dataloaders(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from dataloaders(value)

# -- plain attributes --------------------------------------------------------------------------
@functools.cache
def _base_keys() -> frozenset[str]:
    # attributes Lightning's own base classes set: theirs, not the user's
    return frozenset(vars(pl.LightningModule())) | frozenset(vars(pl.LightningDataModule()))


def _is_plain(value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, torch.Tensor):
        return not isinstance(value, torch.nn.Parameter) and value.numel() <= 1024
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, budget) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, budget) for k, v in value.items())
    return False


def rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` moved under ``new`` (dict keys included)."""
    if isinstance(value, str):
        if old and (value == old or value.startswith(old + os.sep) or value.startswith(old + "/")):
            return new + value[len(old):]
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {rebase(k, old, new): rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(rebase(v, old, new) for v in value)
    return value


def plain_state(named: Mapping[str, Any], run_dir: str) -> dict[str, Any]:
    """Public plain attributes of each part, ``"part.name" -> value`` (paths in ``run_dir`` as ``{run}/...``)."""
    out: dict[str, Any] = {}
    base = _base_keys()
    for name, obj in named.items():
        attrs = getattr(obj, "__dict__", {})
        for key, value in attrs.items():
            if key.startswith("_") or key in base or not _is_plain(value, [2048]):
                continue
            out[f"{name}.{key}"] = rebase(value, run_dir, RUN_DIR)
    return out


def reconcile(fresh: Mapping[str, Any], branch: Mapping[str, Any],
              child: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """What to set in the child, or why it is refused.

    ``fresh``: the parent's attributes when it started training, ``branch``: at the branch point,
    ``child``: the child's now (after the checkpoint was restored).
    """
    updates: dict[str, Any] = {}
    for key in sorted(fresh.keys() | branch.keys() | child.keys()):
        f, b, c = (_json(d[key]) if key in d else ABSENT for d in (fresh, branch, child))
        if c == b:
            continue
        if f != b and c == f:  # state the parent built up during the prefix, not restored by the checkpoint
            if key not in branch:
                return {}, f"{key}: the parent dropped this attribute during the prefix"
            updates[key] = branch[key]
            continue
        if f == b:
            return {}, f"{key}: {_short(f)} -> {_short(c)} (this run is configured differently)"
        return {}, f"{key}: {_short(b)} at the branch point, {_short(c)} in this run after restoring"
    return updates, None


def apply(named: Mapping[str, Any], updates: Mapping[str, Any], run_dir: str) -> None:
    """Set ``updates`` (from :func:`reconcile`) on the parts."""
    for key, value in updates.items():
        part, attr = key.rsplit(".", 1)
        obj = named[part]
        value = rebase(value, RUN_DIR, run_dir)
        old = getattr(obj, attr, None)
        if isinstance(value, torch.Tensor) and isinstance(old, torch.Tensor):
            value = value.to(old.device)
        setattr(obj, attr, value)


def _digest(value: Any) -> str | None:
    if isinstance(value, torch.nn.Module):
        return _json({k: v for k, v in value.state_dict().items()})
    if isinstance(value, torch.Tensor):
        return _json(value)
    return None


def hidden_state(named: Mapping[str, Any]) -> dict[str, str]:
    """Digests of the modules and tensors callbacks without a ``state_dict`` hold (checkpoints do not save them)."""
    out: dict[str, str] = {}
    for name, obj in named.items():
        if not name.startswith("callbacks[") or type(obj).state_dict is not pl.Callback.state_dict:
            continue
        for key, value in vars(obj).items():
            digest = _digest(value)
            if digest is not None:
                out[f"{name}.{key}"] = digest
    return out


def hidden_reason(fresh: Mapping[str, str], branch: Mapping[str, str]) -> str | None:
    for key in sorted(branch):
        if fresh.get(key) != branch[key]:
            return (f"{key}: changed during the prefix, and the callback has no state_dict to carry it through a "
                    "checkpoint")
    return None


# -- fingerprints ------------------------------------------------------------------------------
def setup_fingerprint(trainer: pl.Trainer, exclude: set[int]) -> dict[str, str]:
    """Trainer limits and the parts' plain attributes, before anything is restored."""
    run_dir = str(trainer.default_root_dir)
    out = {f"trainer.{name}": _json(getattr(trainer, name, None)) for name in TRAINER_LIMITS}
    out["trainer.min_epochs"] = _json(trainer.fit_loop.min_epochs)
    named = parts(trainer, exclude)
    out.update({f"{name}.class": _json(type(obj)) for name, obj in named.items()})
    out.update({k: _json(v) for k, v in plain_state(named, run_dir).items()})
    return out


def _config(value: Any, depth: int = 0) -> Any:
    """A description of a scheduler's setting (optimizers and parameters by kind only: their values are state)."""
    if isinstance(value, torch.optim.Optimizer):
        return f"<{type(value).__name__}>"
    if isinstance(value, torch.Tensor):
        return {"tensor": list(value.shape)} if isinstance(value, torch.nn.Parameter) or value.numel() > 64 \
            else describe(value)
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler) and depth < 4:
        return {"class": describe(type(value)), **_config(vars(value), depth + 1)}
    if isinstance(value, Mapping):
        return {str(k): _config(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_config(v, depth + 1) for v in value]
    return describe(value)


def optim_fingerprint(trainer: pl.Trainer) -> dict[str, str]:
    """Optimizers and LR schedulers as configured (call before their states are restored)."""
    out: dict[str, str] = {}
    for i, opt in enumerate(trainer.optimizers):
        out[f"optimizers[{i}].class"] = _json(type(opt))
        for g, group in enumerate(opt.param_groups):
            for key, value in group.items():
                if key != "params":
                    out[f"optimizers[{i}].param_groups[{g}].{key}"] = canonical_json(_config(value))
            out[f"optimizers[{i}].param_groups[{g}].params"] = _json([list(p.shape) for p in group["params"]])
    for i, config in enumerate(trainer.lr_scheduler_configs):
        sched = config.scheduler
        out[f"lr_schedulers[{i}].class"] = _json(type(sched))
        for key in ("interval", "frequency", "monitor", "strict"):
            out[f"lr_schedulers[{i}].{key}"] = _json(getattr(config, key, None))
        for key, value in vars(sched).items():
            if key != "optimizer":
                out[f"lr_schedulers[{i}].{key}"] = canonical_json(_config(value))
    return out


def loader_fingerprint(trainer: pl.Trainer) -> dict[str, str]:
    """The train and val loaders' settings."""
    out: dict[str, str] = {}
    for name, loaders in (("train_dataloader", trainer.train_dataloader), ("val_dataloader", trainer.val_dataloaders)):
        for i, dl in enumerate(dataloaders(loaders)):
            key = f"{name}[{i}]"
            dataset = dl.dataset
            settings = {
                "batch_size": dl.batch_size, "drop_last": dl.drop_last, "num_workers": dl.num_workers,
                "persistent_workers": dl.persistent_workers, "sampler": type(dl.sampler),
                "batch_sampler": type(dl.batch_sampler), "dataset": type(dataset),
                "len": len(dataset) if hasattr(dataset, "__len__") else None,
            }
            out.update({f"{key}.{k}": _json(v) for k, v in settings.items()})
    return out

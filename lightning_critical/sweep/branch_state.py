"""What a branched run inherits from its parent, and the check that it may: exact or refused.

A child run resumes from its parent's branch checkpoint. Lightning restores the weights,
optimizers, schedulers, loop counters and every callback's ``state_dict``; this module carries
the rest and refuses (:class:`BranchRefused`) where the child would not end as the same run
trained from scratch:

* **Random generator objects** (:mod:`~lightning_critical.sweep.branch_rngs`) held by the
  model, datamodule, callbacks and the train / val loaders (their generator, sampler, dataset)
  are saved by path at the branch point and restored in the child before their first draw:
  those of the model, datamodule and callbacks while Lightning restores the checkpoint, those
  of a loader the moment ``train_dataloader()`` / ``val_dataloader()`` returns it (before its
  iterator draws its base seed). A path the parent had and the child lacks (or the reverse),
  a generator replaced or drawn from before training starts, a loader rebuilt every epoch
  (``reload_dataloaders_every_n_epochs``) that holds one, and loader workers that persist
  across epochs (their random states live in other processes) are refused.
* **Plain attributes** (numbers, strings, small tensors, lists and dicts of them) of the
  model, datamodule and callbacks: one the parent changed during the prefix (an epoch
  counter) is set in the child to the parent's value unless the checkpoint already restored
  it; one the parent did not change must equal the child's own (else the two are configured
  differently).
* **Fingerprints** of what each run configures for itself: trainer limits and the plain
  attributes of model, datamodule and callbacks before any restore (``setup``), optimizers and
  LR schedulers as ``configure_optimizers`` built them (``on_fit_start``, which Lightning calls
  after building them and before restoring their states), loader settings (``on_train_start``).
  A child whose fingerprint differs from its parent's is refused before its first step, e.g.
  ``lr_schedulers[0].T_max: 6 -> 4`` (a schedule built from ``max_epochs``).
* **ModelCheckpoint files**: the files a user ``ModelCheckpoint`` tracks (best k, last) travel
  inside the branch checkpoint and are written into the child's own ``dirpath``, whose state
  then points at them, so the child ends with the best model of its whole run.

Paths under a run's own directory (``trainer.default_root_dir``) are compared relative to it.
The sweep's deficit callbacks are left out: they differ by window by design, and the plan
shares a prefix only where their schedules agree.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_critical import _lightning
from lightning_critical._namespace import pl
from lightning_critical.sweep import branch_rngs
from lightning_critical.sweep.spec import canonical_json, describe

ABSENT = "<absent>"
RUN_DIR = "{run}"
TRAINER_LIMITS = ("limit_train_batches", "limit_val_batches", "accumulate_grad_batches", "gradient_clip_val",
                  "gradient_clip_algorithm", "check_val_every_n_epoch", "val_check_interval", "precision",
                  "max_steps", "min_steps", "overfit_batches", "reload_dataloaders_every_n_epochs", "world_size")
"""Trainer settings a child must share with its parent (``max_epochs`` may differ: that is what branches)."""


class BranchRefused(RuntimeError):
    """A branched run cannot end exactly as the same run trained from scratch; ``reason`` says why.

    Example::

        >>> err = BranchRefused("lr_schedulers[0].T_max: 6 -> 4")
        >>> err.reason
        'lr_schedulers[0].T_max: 6 -> 4'
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"branch refused: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return type(self), (self.reason,)


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


def rng_roots(trainer: pl.Trainer, exclude: set[int], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where generators are looked for, in a fixed order: the parts, then the train and val loaders."""
    roots = parts(trainer, exclude)
    loaders = {"train_dataloader": trainer.train_dataloader, "val_dataloader": trainer.val_dataloaders}
    loaders.update(extra or {})
    roots.update({k: v for k, v in loaders.items() if v is not None})
    return roots


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


def _rebase(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` moved under ``new`` (dict keys included)."""
    if isinstance(value, str):
        if old and (value == old or value.startswith(old + os.sep) or value.startswith(old + "/")):
            return new + value[len(old):]
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {_rebase(k, old, new): _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rebase(v, old, new) for v in value)
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
            out[f"{name}.{key}"] = _rebase(value, run_dir, RUN_DIR)
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
        value = _rebase(value, RUN_DIR, run_dir)
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


def _hidden_reason(fresh: Mapping[str, str], branch: Mapping[str, str]) -> str | None:
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


# -- ModelCheckpoint files ---------------------------------------------------------------------
def _tracked_files(cb: Any) -> set[str]:
    paths = {cb.best_model_path, cb.kth_best_model_path, cb.last_model_path, *cb.best_k_models}
    return {p for p in paths if p and cb.dirpath and os.path.dirname(p) == os.path.normpath(cb.dirpath)
            and os.path.isfile(p)}


def carry_checkpoint_files(trainer: pl.Trainer) -> list[dict[str, Any]]:
    """The files each ``ModelCheckpoint`` tracks, as bytes, to travel inside a branch checkpoint."""
    out = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, pl.callbacks.ModelCheckpoint) or not cb.dirpath:
            continue
        files = {}
        for path in sorted(_tracked_files(cb)):
            with open(path, "rb") as fh:
                files[os.path.basename(path)] = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
        out.append({"state_key": cb.state_key, "dirpath": str(cb.dirpath), "files": files})
    return out


def place_checkpoint_files(trainer: pl.Trainer, carried: list[dict[str, Any]], checkpoint: dict[str, Any]) -> None:
    """Write carried files into the child's ``ModelCheckpoint`` dirpaths and point its restored state at them."""
    states = checkpoint.get("callbacks") or {}
    mine = {cb.state_key: cb for cb in trainer.checkpoint_callbacks if isinstance(cb, pl.callbacks.ModelCheckpoint)}
    for entry in carried:
        cb, state = mine.get(entry["state_key"]), states.get(entry["state_key"])
        if cb is None or state is None or not cb.dirpath:
            continue
        os.makedirs(cb.dirpath, exist_ok=True)
        for name, data in entry["files"].items():
            target = os.path.join(cb.dirpath, name)
            with open(target + ".tmp", "wb") as fh:
                fh.write(data.numpy().tobytes())
            os.replace(target + ".tmp", target)
        states[entry["state_key"]] = _rebase(state, os.path.normpath(entry["dirpath"]), os.path.normpath(cb.dirpath))


# -- the run's lineage -------------------------------------------------------------------------
def wrap_hook(obj: Any, name: str, after: Callable[[Any], None]) -> None:
    """Make ``obj.name()`` call ``after(result)`` on its first call, then remove the wrapper."""
    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        unwrap(obj, name)
        after(result)
        return result

    object.__setattr__(obj, name, wrapper)


def unwrap(obj: Any, name: str) -> None:
    if name in getattr(obj, "__dict__", {}) and hasattr(obj.__dict__[name], "__wrapped__"):
        delattr(obj, name)


def loader_source(trainer: pl.Trainer, name: str) -> Any:
    """The object whose ``name`` hook (``train_dataloader`` / ``val_dataloader``) Lightning calls."""
    dm = _lightning.datamodule_of(trainer)
    if dm is not None and getattr(type(dm), name, None) is not getattr(pl.LightningDataModule, name):
        return dm
    module = trainer.lightning_module
    if getattr(type(module), name, None) is not getattr(pl.LightningModule, name):
        return module
    return None


@dataclass
class Lineage:
    """What one run records for its children and checks against its parent.

    ``exclude``: ids of callbacks left out (the sweep's own and its deficits).
    """

    exclude: set[int]
    fingerprint: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, Any] | None = None
    hidden_fresh: dict[str, str] | None = None
    parent: dict[str, Any] | None = None
    pending: dict[str, Any] = field(default_factory=dict)
    restored: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    def setup(self, trainer: pl.Trainer) -> None:
        self.fingerprint.update(setup_fingerprint(trainer, self.exclude))

    def capture(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The branch state at this point: fingerprint, generators, plain attributes, ModelCheckpoint files."""
        found = branch_rngs.find(rng_roots(trainer, self.exclude))
        return {
            "fingerprint": dict(self.fingerprint),
            "rngs": {path: branch_rngs.state(gen) for path, gen in found.items()},
            "fresh": dict(self.fresh or {}),
            "plain": plain_state(parts(trainer, self.exclude), str(trainer.default_root_dir)),
            "hidden_fresh": dict(self.hidden_fresh or {}),
            "hidden": hidden_state(parts(trainer, self.exclude)),
            "model_checkpoints": carry_checkpoint_files(trainer),
        }

    def load(self, trainer: pl.Trainer, state: dict[str, Any]) -> None:
        """Start a child: restore what exists now, and each loader's generators when it is made."""
        self.parent = state
        self.pending = dict(state.get("rngs", {}))
        self._restore(rng_roots(trainer, self.exclude))
        for name in ("train_dataloader", "val_dataloader"):
            source = loader_source(trainer, name)
            if source is not None:
                wrap_hook(source, name, functools.partial(self._loader_made, trainer, name))

    def _loader_made(self, trainer: pl.Trainer, name: str, loader: Any) -> None:
        self._restore(rng_roots(trainer, self.exclude, {name: loader}))

    def _restore(self, roots: Mapping[str, Any]) -> None:
        for path, gen in branch_rngs.find(roots).items():
            saved = self.pending.pop(path, None)
            if saved is None:
                continue
            try:
                branch_rngs.set_state(gen, saved)
            except TypeError as err:
                raise BranchRefused(f"{path}: {err}") from err
            self.restored[path] = (gen, saved)

    def fit_start(self, trainer: pl.Trainer) -> None:
        """Fingerprint the optimizers and schedulers as configured; a child compares what it has so far."""
        self.fingerprint.update(optim_fingerprint(trainer))
        if self.parent is not None:
            loaders = ("train_dataloader", "val_dataloader")
            theirs = {k: v for k, v in self.parent["fingerprint"].items() if not k.startswith(loaders)}
            reason = compare(theirs, self.fingerprint)
            if reason:
                raise BranchRefused(reason)

    def train_start(self, trainer: pl.Trainer) -> None:
        """Fingerprint the loaders; a child checks them, its generators and its plain attributes."""
        self.fingerprint.update(loader_fingerprint(trainer))
        named = parts(trainer, self.exclude)
        run_dir = str(trainer.default_root_dir)
        if self.parent is None:
            self.fresh = plain_state(named, run_dir)
            self.hidden_fresh = hidden_state(named)
            return
        for dl in ("train_dataloader", "val_dataloader"):
            mine = {k: v for k, v in self.fingerprint.items() if k.startswith(dl)}
            theirs = {k: v for k, v in self.parent["fingerprint"].items() if k.startswith(dl)}
            reason = compare(theirs, mine)
            if reason:
                raise BranchRefused(reason)
        reason = unsupported(trainer)
        if reason:
            raise BranchRefused(reason)
        self._check_rngs(trainer)
        self.hidden_fresh = dict(self.parent.get("hidden_fresh", {}))
        reason = _hidden_reason(self.hidden_fresh, self.parent.get("hidden", {}))
        if reason:
            raise BranchRefused(reason)
        self.fresh = dict(self.parent.get("fresh", {}))
        updates, reason = reconcile(self.fresh, self.parent.get("plain", {}), plain_state(named, run_dir))
        if reason:
            raise BranchRefused(reason)
        apply(named, updates, run_dir)

    def _check_rngs(self, trainer: pl.Trainer) -> None:
        found = branch_rngs.find(rng_roots(trainer, self.exclude))
        if self.pending:
            path = sorted(self.pending)[0]
            raise BranchRefused(f"{path}: the parent held a random generator here at the branch point, "
                                "this run does not")
        extra = sorted(set(found) - set(self.parent["rngs"] if self.parent else {}))
        if extra:
            raise BranchRefused(f"{extra[0]}: this run holds a random generator the parent did not have "
                                "at the branch point")
        drawn_by_iter = {id(dl.generator) for root in (trainer.train_dataloader, trainer.val_dataloaders)
                         for dl in dataloaders(root) if dl.generator is not None}
        for path, (gen, saved) in self.restored.items():
            if found.get(path) is not gen:
                raise BranchRefused(f"{path}: replaced after the branch state was restored (made in on_fit_start?)")
            if id(gen) not in drawn_by_iter and not branch_rngs.same_state(branch_rngs.state(gen), saved):
                raise BranchRefused(f"{path}: drawn from before the first training step (in on_fit_start or "
                                    "on_train_start?); the parent made these draws once, before its prefix")


def unsupported(trainer: pl.Trainer) -> str | None:
    """Why this run's loaders cannot be branched exactly (``None``: they can)."""
    reload = getattr(trainer, "reload_dataloaders_every_n_epochs", 0)
    for name, root in (("train_dataloader", trainer.train_dataloader), ("val_dataloader", trainer.val_dataloaders)):
        for dl in dataloaders(root):
            if dl.num_workers > 0 and dl.persistent_workers:
                return (f"{name}: persistent_workers=True with num_workers={dl.num_workers}: the worker processes keep "
                        "random states across epochs that no checkpoint can carry")
        if reload and root is not None and branch_rngs.find({name: root}):
            path = sorted(branch_rngs.find({name: root}))[0]
            return (f"{path}: a loader rebuilt every {reload} epoch(s) "
                    "(reload_dataloaders_every_n_epochs) holds a random generator: its state at the branch point is "
                    "not the state a rebuilt loader starts from")
    return None

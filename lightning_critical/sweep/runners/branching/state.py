"""What a branched run inherits from its parent, and the check that it may: exact or refused.

A child run resumes from its parent's branch checkpoint. Lightning restores the weights,
optimizers, schedulers, loop counters and every callback's ``state_dict``; this module carries
the rest and refuses (:class:`BranchRefused`) where the child would not end as the same run
trained from scratch:

* **Random generator objects** (:mod:`~lightning_critical.sweep.runners.branching.rngs`) held by the
  model, datamodule, callbacks, deficits and the train / val loaders (generator, sampler, dataset)
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
  differently). A callback without ``state_dict`` whose tensors or modules changed during the
  prefix (a hand-written weight average) is refused: no checkpoint holds them.
* **Fingerprints** of what each run configures for itself: trainer limits and the plain
  attributes of model, datamodule and callbacks before any restore (``setup``), optimizers and
  LR schedulers as ``configure_optimizers`` built them (``on_fit_start``, which Lightning calls
  after building them and before restoring their states), loader settings (``on_train_start``).
  A child whose fingerprint differs from its parent's is refused before its first step, e.g.
  ``lr_schedulers[0].T_max: 6 -> 4`` (a schedule built from ``max_epochs``).
* **State no checkpoint carries** (:mod:`~lightning_critical.sweep.runners.branching.digest`): digested
  by the parent at the branch point and by the child after its module's ``on_train_start``;
  an entry that differs refuses the child (``model._epochs_done``, ``model.mask (tensor)``).
* **Length**: a parent whose prefix read ``trainer.max_epochs`` in user code
  (:mod:`~lightning_critical.sweep.runners.branching.length`), or changed its own ``fit_loop.max_epochs``,
  refuses children of another length.
* **Decisions**: a run about to stop writes no branch checkpoint (see ``Branching``); a child
  skips Lightning's sanity check, which its parent ran before the prefix.
* **ModelCheckpoint files**: the files a user ``ModelCheckpoint`` tracks (best k, last) travel
  inside the branch checkpoint and are written into the child's own ``dirpath``, whose state
  then points at them, so the child ends with the best model of its whole run (the branch
  checkpoint grows by their size).

Paths under a run's own directory (``trainer.default_root_dir``) are compared relative to it.
The sweep's deficit callbacks are left out: they differ by window by design, and the plan
shares a prefix only where their schedules agree (their generators are carried all the same).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_critical import _lightning
from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.base import BranchRefused
from lightning_critical.sweep.runners.branching import digest, length, rngs
from lightning_critical.sweep.runners.branching.compare import apply as apply_updates
from lightning_critical.sweep.runners.branching.compare import (
    compare,
    dataloaders,
    hidden_reason,
    hidden_state,
    loader_fingerprint,
    optim_fingerprint,
    parts,
    plain_state,
    rebase,
    reconcile,
    setup_fingerprint,
)


def rng_roots(trainer: pl.Trainer, exclude: set[int], deficits: Sequence[int] = (),
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where generators are looked for, in a fixed order: the parts, the deficits, the train and val loaders."""
    roots = parts(trainer, exclude)
    by_id = {id(cb): cb for cb in _lightning.callbacks_of(trainer)}
    found = [by_id[i] for i in deficits if i in by_id]
    roots.update({f"deficits[{i}:{type(cb).__name__}]": cb for i, cb in enumerate(found)})
    loaders = {"train_dataloader": trainer.train_dataloader, "val_dataloader": trainer.val_dataloaders}
    loaders.update(extra or {})
    roots.update({k: v for k, v in loaders.items() if v is not None})
    return roots


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
        states[entry["state_key"]] = rebase(state, os.path.normpath(entry["dirpath"]), os.path.normpath(cb.dirpath))


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
    """The object whose ``name`` hook (``train_dataloader`` / ``val_dataloader``) Lightning calls, if it has one.

    Lightning asks the datamodule whenever the fit was given one, else the model.
    """
    dm = _lightning.datamodule_of(trainer)
    source = dm if dm is not None else trainer.lightning_module
    base = pl.LightningDataModule if dm is not None else pl.LightningModule
    return source if getattr(type(source), name, None) is not getattr(base, name) else None


@dataclass
class Lineage:
    """What one run records for its children and checks against its parent.

    ``exclude``: ids of callbacks left out of fingerprints and plain state (the sweep's own and
    its deficits); ``deficits``: ids of the deficits, whose generators are carried like any other.
    """

    exclude: set[int]
    deficits: tuple[int, ...] = ()
    fingerprint: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, Any] | None = None
    hidden_fresh: dict[str, str] | None = None
    parent: dict[str, Any] | None = None
    pending: dict[str, Any] = field(default_factory=dict)
    restored: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    max_epochs: int | None = None  # as configured, before any callback changes it

    def setup(self, trainer: pl.Trainer) -> None:
        self.fingerprint.update(setup_fingerprint(trainer, self.exclude))
        if self.max_epochs is None:
            self.max_epochs = trainer.fit_loop.max_epochs

    def _length(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The run's length, who read it so far (its ancestors' prefixes included), and whether it changed it."""
        inherited = (self.parent or {}).get("length", {})
        now = trainer.fit_loop.max_epochs
        changed = inherited.get("changed") or (f"{self.max_epochs} -> {now}" if now != self.max_epochs else None)
        return {"max_epochs": self.max_epochs, "reads": {**length.reads(trainer), **inherited.get("reads", {})},
                "changed": changed}

    def capture(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The branch state at this point: fingerprint, generators, plain attributes, ModelCheckpoint files."""
        found = rngs.find(rng_roots(trainer, self.exclude, self.deficits))
        return {
            "fingerprint": dict(self.fingerprint),
            "rngs": {path: rngs.state(gen) for path, gen in found.items()},
            "fresh": dict(self.fresh or {}),
            "plain": plain_state(parts(trainer, self.exclude), str(trainer.default_root_dir)),
            "hidden_fresh": dict(self.hidden_fresh or {}),
            "hidden": hidden_state(parts(trainer, self.exclude)),
            "model_checkpoints": carry_checkpoint_files(trainer),
            **self._uncarried(trainer),
            "length": self._length(trainer),
        }

    def load(self, trainer: pl.Trainer, state: dict[str, Any]) -> None:
        """Start a child: restore what exists now, and each loader's generators when it is made."""
        self.parent = state
        # the parent ran its sanity check before the prefix; a run from scratch would not run one at the branch
        # epoch (Lightning runs it on resume: its validation would draw from the val loader's generator)
        trainer.num_sanity_val_steps = 0
        self.pending = dict(state.get("rngs", {}))
        self._restore(rng_roots(trainer, self.exclude, self.deficits))
        for name in ("train_dataloader", "val_dataloader"):
            source = loader_source(trainer, name)
            if source is not None:
                wrap_hook(source, name, functools.partial(self._loader_made, trainer, name))

    def _loader_made(self, trainer: pl.Trainer, name: str, loader: Any) -> None:
        self._restore(rng_roots(trainer, self.exclude, self.deficits, {name: loader}))

    def _restore(self, roots: Mapping[str, Any]) -> None:
        for path, gen in rngs.find(roots).items():
            saved = self.pending.pop(path, None)
            if saved is None:
                continue
            try:
                rngs.set_state(gen, saved)
            except TypeError as err:
                raise BranchRefused(f"{path}: {err}") from err
            self.restored[path] = (gen, saved)

    def fit_start(self, trainer: pl.Trainer) -> None:
        """Fingerprint the optimizers and schedulers as configured; a child compares what it has so far.

        (Strategies that restore after ``on_fit_start`` leave the whole comparison to :meth:`train_start`.)
        """
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
        reason = compare(*_built_loaders(self.parent["fingerprint"], self.fingerprint))  # with the loaders this time
        if reason:
            raise BranchRefused(reason)
        reason = length_reason(self.parent.get("length", {}), trainer.fit_loop.max_epochs)
        if reason:
            raise BranchRefused(reason)
        reason = unsupported(trainer)
        if reason:
            raise BranchRefused(reason)
        self._check_rngs(trainer)
        self.hidden_fresh = dict(self.parent.get("hidden_fresh", {}))
        reason = hidden_reason(self.hidden_fresh, self.parent.get("hidden", {}))
        if reason:
            raise BranchRefused(reason)
        self.fresh = dict(self.parent.get("fresh", {}))
        updates, reason = reconcile(self.fresh, self.parent.get("plain", {}), plain_state(named, run_dir))
        if reason:
            raise BranchRefused(reason)
        apply_updates(named, updates, run_dir)
        # the rest is compared once the module's own on_train_start (which Lightning calls after the callbacks') ran
        wrap_hook(trainer.lightning_module, "on_train_start", lambda _: self._check_uncarried(trainer))

    def _uncarried(self, trainer: pl.Trainer, skip: Sequence[str] = ()) -> dict[str, Any]:
        named = parts(trainer, self.exclude)
        skip = sorted({*skip, *digest.logged_metrics(trainer, named)})
        digests = digest.uncarried(named, str(trainer.default_root_dir), skip)
        return {"uncarried": digests, "uncarried_skip": skip}

    def _check_uncarried(self, trainer: pl.Trainer) -> None:
        assert self.parent is not None
        if "uncarried" not in self.parent:
            raise BranchRefused("the checkpoint carries no digests of uncarried state (written by an older version)")
        mine = self._uncarried(trainer, self.parent.get("uncarried_skip", ()))["uncarried"]
        reason = digest.reason(self.parent["uncarried"], mine)
        if reason:
            raise BranchRefused(reason)

    def teardown(self, trainer: pl.Trainer) -> None:
        """Remove the hooks that were not called."""
        for name in ("train_dataloader", "val_dataloader"):
            for obj in (_lightning.datamodule_of(trainer), trainer.lightning_module):
                if obj is not None:
                    unwrap(obj, name)
        if trainer.lightning_module is not None:
            unwrap(trainer.lightning_module, "on_train_start")

    def _check_rngs(self, trainer: pl.Trainer) -> None:
        found = rngs.find(rng_roots(trainer, self.exclude, self.deficits))
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
            if id(gen) not in drawn_by_iter and not rngs.same_state(rngs.state(gen), saved):
                raise BranchRefused(f"{path}: drawn from before the first training step (in on_fit_start or "
                                    "on_train_start?); the parent made these draws once, before its prefix")


def _built_loaders(parent: Mapping[str, str], child: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Both fingerprints, without the val loader where one run had not built it yet (``check_val_every_n_epoch``)."""
    def has(fp: Mapping[str, str]) -> bool:
        return any(k.startswith("val_dataloader[") for k in fp)

    if has(parent) and has(child):
        return dict(parent), dict(child)
    def without(fp: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in fp.items() if not k.startswith("val_dataloader[")}

    return without(parent), without(child)


def length_reason(parent: Mapping[str, Any], max_epochs: int | None) -> str | None:
    """Why a child of this length cannot share its parent's prefix (``None``: it can).

    Example::

        >>> length_reason({"max_epochs": 6, "reads": {"trainer.max_epochs": "Anneal.loss"}}, 5)
        "Anneal.loss reads trainer.max_epochs (6 -> 5): the prefix was computed for the parent's length"
    """
    if parent.get("changed"):
        return (f"trainer.fit_loop.max_epochs: changed during the parent's prefix ({parent['changed']}); "
                "a run that sets its own length cannot hand its prefix to another")
    reads = parent.get("reads") or {}
    if reads and parent.get("max_epochs") != max_epochs:
        key = sorted(reads)[0]
        return (f"{reads[key]} reads {key} ({parent.get('max_epochs')} -> {max_epochs}): the prefix was computed "
                "for the parent's length")
    return None


def unsupported(trainer: pl.Trainer) -> str | None:
    """Why this run cannot be branched exactly whatever its parent (``None``: it can)."""
    for i, config in enumerate(trainer.lr_scheduler_configs):
        if config.reduce_on_plateau:
            return (f"lr_schedulers[{i}]: ReduceLROnPlateau is stepped after the end-of-epoch checkpoint, with "
                    "metrics no checkpoint holds")
    reload = getattr(trainer, "reload_dataloaders_every_n_epochs", 0)
    for name, root in (("train_dataloader", trainer.train_dataloader), ("val_dataloader", trainer.val_dataloaders)):
        for dl in dataloaders(root):
            if dl.num_workers > 0 and dl.persistent_workers:
                return (f"{name}: persistent_workers=True with num_workers={dl.num_workers}: the worker processes keep "
                        "random states across epochs that no checkpoint can carry")
        if reload and root is not None and rngs.find({name: root}):
            path = sorted(rngs.find({name: root}))[0]
            return (f"{path}: a loader rebuilt every {reload} epoch(s) "
                    "(reload_dataloaders_every_n_epochs) holds a random generator: its state at the branch point is "
                    "not the state a rebuilt loader starts from")
    return None

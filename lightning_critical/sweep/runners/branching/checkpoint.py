"""The branch checkpoints of a run: :class:`Branching` saves them and carries every random state through them.

Why a Lightning ``Checkpoint`` callback: Lightning runs it after every other callback and after
the LightningModule's ``on_train_epoch_end`` (like ``ModelCheckpoint``), so the checkpoint it
writes in ``on_train_epoch_end`` of the epoch before the branch holds that epoch's validation
too, and Lightning resumes it at the start of the next epoch. The design is in
:mod:`lightning_critical.sweep.runners.branching`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from typing_extensions import override

from lightning_critical import _lightning
from lightning_critical._namespace import pl
from lightning_critical.sweep.runners import rng
from lightning_critical.sweep.runners.base import BranchRefused
from lightning_critical.sweep.runners.branching.state import Lineage, place_checkpoint_files
from lightning_critical.sweep.spec import canonical_json


class Branching(pl.callbacks.Checkpoint):
    """Saves the branch checkpoints of a run and carries every random state and decision through them.

    Args:
        save_paths: ``{epochs_done: path}``: after that many epochs, write a checkpoint to ``path``.
        info: extra fields for the ``<path>.json`` written next to each checkpoint.
        steps_per_epoch: the epoch length the plan assumed (step windows), checked at train start.
        deficits: the sweep's deficit callbacks of this run (left out of the branch comparison:
            they differ by window by design).

    A run resumed from a branch checkpoint raises :class:`BranchRefused` before its first step
    when it would not end as the same run trained from scratch (see
    :mod:`lightning_critical.sweep.runners.branching.state`).
    """

    def __init__(self, save_paths: Mapping[int, str] | None = None, info: dict[str, Any] | None = None,
                 steps_per_epoch: int | None = None, deficits: Sequence[Any] = ()) -> None:
        self.save_paths = dict(save_paths or {})
        self.info = dict(info or {})
        self.steps_per_epoch = steps_per_epoch
        self.restored = False
        self.stepped = False  # a training step started (before it, any failure of a branched run is a refusal)
        self.lineage = Lineage({id(self), *(id(d) for d in deficits)}, deficits=tuple(id(d) for d in deficits))
        self._trainer: Any = None
        self._saving = False

    @property
    @override
    def state_key(self) -> str:
        return "lightning_critical.sweep.Branching"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # Lightning calls every callback's setup before it restores a checkpoint
        self.lineage.setup(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng.capture()}
        if self._saving:
            state["branch"] = self.lineage.capture(self._trainer)
        return state

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # before any callback's load_state_dict: a ModelCheckpoint then restores a state pointing at its own files
        branch = ((checkpoint.get("callbacks") or {}).get(self.state_key) or {}).get("branch")
        if branch:
            place_checkpoint_files(trainer, branch.get("model_checkpoints", []), checkpoint)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            rng.restore(state_dict["rng"])
            self.restored = True
        if "branch" not in state_dict:
            raise BranchRefused("the checkpoint carries no branch state (written by an older version of this package)")
        self.lineage.load(self._trainer, state_dict["branch"])

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # optimizers and schedulers exist as configured; Lightning restores their states after this hook
        self.lineage.fit_start(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.save_paths or self.restored) and self.steps_per_epoch is not None:
            actual = _lightning.steps_per_epoch(trainer)
            if actual != self.steps_per_epoch:
                raise ValueError(
                    f"steps_per_epoch={self.steps_per_epoch} was given to lc.sweep.run but this run takes {actual} "
                    "optimizer steps per epoch; give the right value "
                    "(or None: step windows then do not share prefixes)."
                )
        self.lineage.train_start(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.stepped = True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        path = self.save_paths.get(done)
        if path is None or trainer.sanity_checking or trainer.should_stop:
            return  # a run about to stop hands out no branch: its children would train on where it stops
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        self._saving = True
        try:
            trainer.save_checkpoint(tmp)  # every rank calls it; the strategy writes once
        finally:
            self._saving = False
        if not trainer.is_global_zero:
            return
        info = {**self.info, "epoch": done, "step": int(trainer.global_step)}
        sidecar = path[: -len(".ckpt")] + ".json"
        with open(sidecar + ".tmp", "w") as fh:
            fh.write(canonical_json(info))
        os.replace(sidecar + ".tmp", sidecar)
        os.replace(tmp, path)  # the sidecar first: a checkpoint that exists is complete and described

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.lineage.teardown(trainer)

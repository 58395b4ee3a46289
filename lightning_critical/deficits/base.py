"""Shared machinery of every deficit callback: the window, hook hygiene, the 0/1 scalar."""

from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.hooks import RemovableHandle

from lightning_critical._lightning import log_scalars, steps_per_epoch
from lightning_critical.schedule import Window, WindowLike


class WindowedDeficit(Callback):
    """Base class of callbacks that change training during a :class:`~lightning_critical.Window`.

    Whether the deficit is active is recomputed before every training batch from
    ``(trainer.current_epoch, trainer.global_step)`` alone, so resuming from a checkpoint
    taken inside the window re-applies it exactly and no state needs saving. Deficits act
    on training batches only: hooks are detached before validation and re-attached at the
    next training batch. Everything attached is removed at the window's end, at the end of
    ``fit``, on an exception and at teardown.

    Each deficit logs ``deficit/<name>`` (1 inside the window, 0 outside) at step 0, at
    every change (with the previous value one step earlier, for a sharp edge) and at the end.

    Subclasses implement :meth:`_resolve` (validate against the model, before training),
    :meth:`_attach` (return the hook handles to install) and optionally
    :meth:`on_before_optimizer_step`; they report what they act on via :attr:`targets`.

    Example (a user-defined deficit that scales one submodule's output by 0.5)::

        >>> import torch
        >>> from lightning_critical.protocols import resolve_modules
        >>> class HalfGain(WindowedDeficit):
        ...     def __init__(self, pathway, window):
        ...         super().__init__(window)
        ...         self.pathway = pathway
        ...     def _resolve(self, trainer, pl_module):
        ...         self.targets = resolve_modules(pl_module, self.pathway)
        ...     def _attach(self, trainer, pl_module):
        ...         return [m.register_forward_hook(lambda mod, args, out: out * 0.5)
        ...                 for m in self.targets.values()]
        >>> HalfGain("encoder", (0, 10)).name
        'HalfGain'
    """

    def __init__(self, window: WindowLike, unit: str = "epoch", name: Optional[str] = None) -> None:
        self.window = Window.coerce(window, unit)
        self._name = name
        self._handles: list[RemovableHandle] = []
        self._last_logged: Optional[int] = None
        self.targets: dict[str, Any] = {}

    # -- what subclasses provide -------------------------------------------------------
    def _resolve(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Find and validate what the deficit acts on; raise ``ValueError`` on bad input."""

    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[RemovableHandle]:
        """Install the deficit's hooks; return their handles."""
        return []

    def _default_name(self) -> str:
        return type(self).__name__

    # -- shared behaviour ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """The key suffix of the ``deficit/<name>`` scalar."""
        return self._name or self._default_name()

    @property
    def attached(self) -> bool:
        """Whether the deficit's hooks are attached right now."""
        return bool(self._handles)

    def is_active(self, trainer: "pl.Trainer") -> bool:
        """Whether the next update lies inside the window."""
        return self.window.contains(epoch=trainer.current_epoch, step=trainer.global_step)

    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.name}, {self.window}]"

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._resolve(trainer, pl_module)
        self._last_logged = None

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        per_epoch = steps_per_epoch(trainer)
        self._check_overlaps(trainer, per_epoch)
        self._warn_if_unreachable(trainer, per_epoch)

    def _check_overlaps(self, trainer: "pl.Trainer", per_epoch: Optional[int]) -> None:
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is self or not isinstance(other, WindowedDeficit):
                continue
            if not self.window.overlaps(other.window, per_epoch):
                continue
            for mine in self.targets:
                for theirs in other.targets:
                    related = mine == theirs or mine.startswith(theirs + ".") or theirs.startswith(mine + ".")
                    if related and mine and theirs:
                        raise ValueError(
                            f"{self.state_key()} and {other.state_key()} both act on {mine!r}/{theirs!r} "
                            "with overlapping windows; give one pathway at most one deficit at a time."
                        )

    def _warn_if_unreachable(self, trainer: "pl.Trainer", per_epoch: Optional[int]) -> None:
        w = self.window
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        limit_steps = max_steps if max_steps is not None and max_steps >= 0 else None
        if limit_steps is None and max_epochs is not None and max_epochs >= 0 and per_epoch is not None:
            limit_steps = max_epochs * per_epoch
        if w.unit == "epoch" and max_epochs is not None and max_epochs >= 0:
            limit, what = max_epochs, f"max_epochs={max_epochs}"
        elif limit_steps is not None:
            limit = limit_steps if w.unit == "step" else limit_steps / max(per_epoch or 1, 1)
            what = f"the run's {limit_steps} optimizer steps"
        else:
            return
        if w.start >= limit:
            rank_zero_warn(f"{self.state_key()} starts at or after {what}: it will never be active.")
        elif w.end is not None and w.end > limit:
            rank_zero_warn(f"{self.state_key()} ends after {what}: it will be cut short.")

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        active = self.is_active(trainer)
        if active and not self.attached:
            self._handles = list(self._attach(trainer, pl_module))
        elif not active and self.attached:
            self._detach()
        self._log_state(trainer, active)

    def _log_state(self, trainer: "pl.Trainer", active: bool) -> None:
        step = trainer.global_step
        value = int(active)
        if self._last_logged == value:
            return
        metrics = {f"deficit/{self.name}": float(value)}
        if self._last_logged is not None and step > 0:
            log_scalars(trainer, {f"deficit/{self.name}": float(self._last_logged)}, step - 1)
        log_scalars(trainer, metrics, step)
        self._last_logged = value

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._detach()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._last_logged is not None:
            log_scalars(trainer, {f"deficit/{self.name}": float(self._last_logged)}, trainer.global_step)
        self._detach()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._detach()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

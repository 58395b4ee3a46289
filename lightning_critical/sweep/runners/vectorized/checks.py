"""What the vectorized runner cannot map, found before training: by inspection and by a trial step.

Every refusal is a :class:`VectorizedRefused` naming the construct and the remedy
(``runner=None``, the default runner, trains any model). The list is in
:data:`REFUSALS` (shown in the docs).

Example::

    >>> err = VectorizedRefused("manual optimization (automatic_optimization=False)")
    >>> str(err).startswith("the vectorized runner cannot train this sweep: manual optimization")
    True
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_critical._namespace import pl

REFUSALS: tuple[str, ...] = (
    "manual optimization (automatic_optimization=False)",
    "more than one optimizer, LBFGS (its step re-evaluates the closure), ReduceLROnPlateau, a scheduler whose "
    "frequency is not 1",
    "dropout modules (unless VectorizedRunner(allow_dropout=True), which gives up exactness)",
    "stateful torchmetrics held by the module",
    "overridden per-step/per-epoch hooks of the module (on_train_batch_start, on_before_optimizer_step, "
    "optimizer_step, backward, on_train_epoch_end, ...)",
    "data-dependent control flow, .item(), random draws, a None loss or reading self.trainer in "
    "training_step/validation_step, e.g. self.trainer.max_epochs (found by a trial step per job, on a member of each "
    "params combination; a None loss at a later batch when that batch trains); configure_optimizers may read "
    "self.trainer.max_epochs and estimated_stepping_batches; params combinations of one job whose steps log "
    "different names",
    "a buffer reassigned in a step (self.<buffer> = ...; in-place updates such as self.<buffer>.mul_(...) are "
    "mapped)",
    "val_dataloader() returning several loaders (a list or dict of more than one)",
    "deficit classes other than the built-in InputDeficit, PathwayDeficit, ModeDeficit, TaskSwitch and "
    "lc.sweep.TaskWindow (a user's class, or a subclass of these); a TaskSwitch with target=; in one job, noise "
    "deficits on one module with different input_index, or ModeDeficits lesioning different numbers of modes of "
    "one pathway; extra callbacks",
    "Trainer arguments other than max_epochs, check_val_every_n_epoch, limit_val_batches=0, gradient clipping and "
    "the quiet/logging defaults",
    "an accelerator other than 'cpu', 'gpu' / 'cuda' or 'auto', one that disagrees with VectorizedRunner(device=...), "
    "devices other than 1, CUDA where there is none (device.job_device)",
)
"""What the vectorized runner refuses, each with the default runner as the remedy."""

HOOKS: tuple[str, ...] = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "optimizer_step", "optimizer_zero_grad", "backward",
    "on_train_epoch_start", "on_train_epoch_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end", "on_before_batch_transfer", "on_after_batch_transfer",
    "transfer_batch_to_device", "configure_gradient_clipping", "lr_scheduler_step", "configure_callbacks",
    "on_fit_start", "on_train_start", "on_train_end", "on_fit_end", "training_step_end", "configure_model",
    "on_validation_start", "on_validation_end", "on_validation_model_eval", "on_validation_model_train",
)
"""Module hooks Lightning calls around steps that the vectorized loop does not call (refused when overridden)."""

TRAINER_KEYS: frozenset[str] = frozenset({
    "max_epochs", "check_val_every_n_epoch", "enable_progress_bar", "enable_model_summary", "num_sanity_val_steps",
    "logger", "enable_checkpointing", "deterministic", "accelerator", "devices", "log_every_n_steps",
    "gradient_clip_val", "gradient_clip_algorithm", "limit_val_batches",
})
"""``trainer=`` arguments the vectorized loop honours or that do not change training on one CPU device."""

REMEDY = "Use the default runner (runner=None), which trains any LightningModule."


class VectorizedRefused(ValueError):
    """The sweep uses a construct the vectorized runner cannot map exactly; the message names it and the remedy."""

    def __init__(self, construct: str) -> None:
        super().__init__(f"the vectorized runner cannot train this sweep: {construct}. {REMEDY}")
        self.construct = construct


def check_spec(spec: Any) -> None:
    """Refuse what the sweep's spec asks for that the vectorized loop does not do (before building anything)."""
    bad = sorted(k for k in spec.trainer if k not in TRAINER_KEYS)
    if bad:
        raise VectorizedRefused(f"trainer arguments {bad} (it honours {sorted(TRAINER_KEYS)})")
    trainer = spec.trainer
    if trainer.get("devices", 1) not in (1, "auto"):  # the accelerator: device.job_device
        raise VectorizedRefused(f"devices={trainer['devices']!r} (a job trains on one device: "
                                "VectorizedRunner(device=...))")
    if trainer.get("limit_val_batches") not in (None, 0, 0.0, 1.0):  # all batches or none (no validation)
        raise VectorizedRefused(f"limit_val_batches={trainer['limit_val_batches']!r} (it honours 0 and 1.0)")
    if trainer.get("gradient_clip_algorithm", "norm") not in ("norm", "value", None):
        raise VectorizedRefused(f"gradient_clip_algorithm={trainer['gradient_clip_algorithm']!r}")


def check_module(model: Any, allow_dropout: bool) -> None:
    """Refuse a module the loop cannot map: manual optimization, overridden hooks, dropout, torchmetrics."""
    if not model.automatic_optimization:
        raise VectorizedRefused(f"manual optimization in {type(model).__name__} (automatic_optimization=False)")
    base = pl.LightningModule
    hooks = [h for h in HOOKS if hasattr(base, h) and getattr(type(model), h) is not getattr(base, h)]
    if hooks:
        raise VectorizedRefused(f"{type(model).__name__} overrides the hooks {hooks}, which run per step")
    for name, sub in model.named_modules():
        if isinstance(sub, torch.nn.modules.dropout._DropoutNd) and not allow_dropout:
            raise VectorizedRefused(f"dropout module {name!r} ({type(sub).__name__}): members would draw other masks "
                                    "than runs trained alone (VectorizedRunner(allow_dropout=True) accepts that)")
        if any(c.__module__.startswith("torchmetrics") for c in type(sub).__mro__):
            raise VectorizedRefused(f"stateful torchmetrics {type(sub).__name__} at {name!r}")


def check_optimization(optimizers: list[Any], schedulers: list[Any]) -> None:
    """Refuse what per-member optimizers cannot replay: several optimizers, LBFGS, plateau schedulers."""
    if len(optimizers) != 1:
        raise VectorizedRefused(f"{len(optimizers)} optimizers from configure_optimizers (one is supported)")
    if isinstance(optimizers[0], torch.optim.LBFGS):
        raise VectorizedRefused("the LBFGS optimizer (its step re-evaluates the closure)")
    for config in schedulers:
        if isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or config.reduce_on_plateau:
            raise VectorizedRefused("ReduceLROnPlateau (it reads a monitored metric every epoch)")
        if config.frequency != 1 or config.interval not in ("epoch", "step"):
            raise VectorizedRefused(f"a scheduler with interval={config.interval!r}, frequency={config.frequency}")


def trial_refusal(err: Exception) -> VectorizedRefused:
    """The refusal for an error raised by the trial step under vmap (its first line kept)."""
    first = " ".join(str(err).split())[:300]
    if "without a Trainer" in first:  # members.TrainerView's error
        causes = "the step reads self.trainer beyond the loop's counters and log_every_n_steps"
    else:
        causes = "typical causes: .item(), data-dependent control flow, random draws, a None loss"
    return VectorizedRefused(f"the trial step on two members failed under torch.func.vmap ({type(err).__name__}: "
                             f"{first}); {causes}")


def unexpected_refusal(err: Exception) -> VectorizedRefused:
    """The refusal for any other error met while checking a sweep (named, so that the default runner is the remedy)."""
    first = " ".join(str(err).split())[:300]
    return VectorizedRefused(f"checking the sweep raised {type(err).__name__}: {first}")

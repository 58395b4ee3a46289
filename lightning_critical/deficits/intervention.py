"""``ScheduledIntervention``: the base of callbacks that change training on a schedule of (epoch, step).

What every deficit (:class:`~lightning_critical.deficits.base.WindowedDeficit`) and
:class:`~lightning_critical.TaskSwitch` share lives here, once:

* **the schedule is a pure function of time**: :meth:`~ScheduledIntervention.is_active` and
  :meth:`~ScheduledIntervention.indicator_value` are recomputed from ``(trainer.current_epoch,
  trainer.global_step)`` at every training batch, never stored, so a fit resumed from a
  checkpoint taken mid-window re-applies the intervention exactly (``state_dict`` is empty
  unless a subclass has something that cannot be recomputed);
* **a state key from the constructor's arguments**: :attr:`~ScheduledIntervention.state_key`
  is built from :meth:`~ScheduledIntervention.key_arguments`, so several instances of one
  class share a Trainer and each finds its own checkpoint state;
* **hook hygiene**: the handles :meth:`~ScheduledIntervention.attach` returns are kept and
  removed when the schedule says so, before validation, at the end of training, on an
  exception and at teardown (:meth:`~ScheduledIntervention.detach`); the hook helpers make
  hooks that copies of the model never inherit and that evaluation passes and monitors skip;
* **the on/off indicator** (``deficit/<name>``, ``task/<target>``): logged to every logger
  through the run's view (:mod:`lightning_critical.views`) so it draws as a step function,
  charted beside the others, its last value logged when training ends, and the
  intervention's description (:meth:`~ScheduledIntervention.hparams_for_tensorboard`) in the
  run's one HParams session.

Extension points (public names; override them, never an underscore method):
:meth:`~ScheduledIntervention.resolve`, :meth:`~ScheduledIntervention.is_active`,
:meth:`~ScheduledIntervention.attach`, :attr:`~ScheduledIntervention.indicator_key`,
:meth:`~ScheduledIntervention.indicator_value`, :meth:`~ScheduledIntervention.indicator_note`,
:attr:`~ScheduledIntervention.shows_indicator`, :meth:`~ScheduledIntervention.key_arguments`,
:meth:`~ScheduledIntervention.repr_settings`, :meth:`~ScheduledIntervention.hparams_for_tensorboard`,
and any Lightning hook (call ``super()`` in those this class implements).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_critical import views
from lightning_critical._distributed import destroy_process_group_at_exit
from lightning_critical._namespace import pl
from lightning_critical.deficits import _hooks
from lightning_critical.probing import is_probing

__all__ = ["ScheduledIntervention", "check_text"]


def check_text(name: str, value: Any, meaning: str, allow_none: bool = False) -> str | None:
    """``value`` when it is a non-empty string (or ``None`` where allowed); else a ``ValueError`` naming ``name``.

    Example::

        >>> check_text("initial", "pretrain", "a task name", allow_none=True)
        'pretrain'
        >>> check_text("name", "", "the deficit/<name> scalar")
        Traceback (most recent call last):
        ...
        ValueError: name='' is not valid: it must be a non-empty string (the deficit/<name> scalar).
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value:
        either = "None or " if allow_none else ""
        raise ValueError(f"{name}={value!r} is not valid: it must be {either}a non-empty string ({meaning}).")
    return value


class ScheduledIntervention(pl.Callback):
    """Base class of callbacks that change training on a schedule of epochs or optimizer steps.

    Before every training batch the base asks :meth:`is_active` (a pure function of the
    trainer's counters): when it turns true the handles of :meth:`attach` are kept, when it
    turns false they are removed (:meth:`detach`); then :meth:`indicator_value` is logged
    under :attr:`indicator_key`. Everything attached is also removed before validation, at
    the end of training, on an exception and at teardown. See the module docstring for what
    each extension point does; docs/callbacks.md shows how to write your own.

    Example (a user-written intervention: scale a submodule's output during steps [2, 5))::

        >>> from torch import nn
        >>> class Attenuate(ScheduledIntervention):
        ...     def __init__(self, module: nn.Module, start: int, end: int) -> None:
        ...         super().__init__()
        ...         self.module, self.start, self.end = module, start, end
        ...     def key_arguments(self):
        ...         return {"start": self.start, "end": self.end}
        ...     def is_active(self, trainer):
        ...         return self.start <= trainer.global_step < self.end
        ...     def attach(self, trainer, pl_module):
        ...         return [self.register_forward_hook([self.module], lambda m, args, out: out * 0.5)]
        ...     @property
        ...     def indicator_key(self):
        ...         return "deficit/attenuate"
        >>> Attenuate(nn.Linear(2, 2), 2, 5).state_key
        "Attenuate{'start': 2, 'end': 5}"
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []

    # -- extension points ------------------------------------------------------------------
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find and validate what the intervention acts on when fit starts; raise ``ValueError`` on bad input."""

    def is_active(self, trainer: pl.Trainer) -> bool:
        """Whether the hooks of :meth:`attach` belong on the model for the next update (default: never).

        Must depend on ``trainer.current_epoch`` and ``trainer.global_step`` only (resumable).
        """
        return False

    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """Install the hooks when :meth:`is_active` turns true; return their handles (objects with ``remove()``)."""
        return []

    @property
    def indicator_key(self) -> str | None:
        """The key of the logged indicator (e.g. ``deficit/<name>``); ``None``: none is logged."""
        return None

    def indicator_value(self, trainer: pl.Trainer) -> float | None:
        """The indicator's value for the next update (default: 1.0 while :meth:`is_active`, else 0.0)."""
        return float(self.is_active(trainer))

    def indicator_note(self) -> str:
        """Text added to the indicator's chart title (e.g. what the task indices mean)."""
        return ""

    @property
    def shows_indicator(self) -> bool:
        """Whether this instance logs the indicator (instances sharing one key elect one; default: yes)."""
        return self.indicator_key is not None

    def key_arguments(self) -> dict[str, Any]:
        """The constructor arguments that tell two instances apart, for :attr:`state_key` (default: none)."""
        return {}

    def repr_settings(self) -> dict[str, str]:
        """The key settings :func:`repr` shows, formatted, in order (default: none)."""
        return {}

    def hparams_for_tensorboard(self) -> dict[str, Any]:
        """This intervention's entries in the run's HParams session (default: none)."""
        return {}

    # -- helpers for subclasses --------------------------------------------------------------
    @staticmethod
    def acts_on(module: nn.Module) -> bool:
        """Whether a hook should change this forward pass of ``module``: a training-mode pass outside ``probing()``."""
        return module.training and not is_probing()

    @staticmethod
    def register_forward_pre_hook(modules: _hooks.Modules, hook: _hooks.PreHook) -> RemovableHandle:
        """Call ``hook(module, args)`` before each training-mode forward of ``modules``.

        The hook returns new ``args``, or ``None`` to keep them.

        Unlike ``module.register_forward_pre_hook`` nothing is stored on the module, so
        copies of the model never carry the hook (see :mod:`lightning_critical.deficits._hooks`);
        positional arguments only. Evaluation-mode passes and passes inside ``probing()`` skip it.
        """
        return _hooks.forward_pre_hook(modules, hook)

    @staticmethod
    def register_forward_hook(modules: _hooks.Modules, hook: _hooks.PostHook) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after each training-mode forward of ``modules`` (new output or ``None``).

        Copy-safe and inert outside training like :meth:`register_forward_pre_hook`.
        """
        return _hooks.forward_hook(modules, hook)

    @property
    def attached(self) -> bool:
        """Whether the intervention's hooks are attached right now."""
        return bool(self._handles)

    def detach(self) -> None:
        """Remove everything :meth:`attach` installed (safe to call at any time)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        settings = self.repr_settings()
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self.key_arguments())

    # -- what the run shows: every logger call of the interventions is in these five methods -------
    # They go through the run's view (lightning_critical.views), which owns the indicators'
    # step functions, the schedule file and the one HParams session.
    def _start_views(self, trainer: pl.Trainer) -> None:
        views.of(trainer).start(self)  # before Lightning's hparams autolog: the view writes the one session

    def _write_charts(self, trainer: pl.Trainer) -> None:
        # A user's intervention: its indicator's chart; deficits and task switches also declare their schedule.
        views.of(trainer).add_indicator(str(self.indicator_key), self.indicator_note())

    def _show(self, trainer: pl.Trainer, value: float) -> None:
        views.of(trainer).indicator(str(self.indicator_key), value)

    def _show_end(self, trainer: pl.Trainer) -> None:
        views.of(trainer).end(self)  # the last callback to end closes the run: last points, schedule, session

    def _release_views(self, trainer: pl.Trainer) -> None:
        views.of(trainer).release()

    # -- Lightning hooks -----------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        destroy_process_group_at_exit()  # CPU DDP: gloo groups must not outlive Python (see _distributed)
        self.resolve(trainer, pl_module)
        self._start_views(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.shows_indicator:
            self._write_charts(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        active = self.is_active(trainer)
        if active and not self.attached:
            self._handles = list(self.attach(trainer, pl_module))
        elif not active and self.attached:
            self.detach()
        if self.shows_indicator:
            value = self.indicator_value(trainer)
            if value is not None:
                self._show(trainer, value)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()
        self._show_end(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.detach()
        self._release_views(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach()
        self._release_views(trainer)

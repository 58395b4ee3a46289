"""Shared machinery of every deficit callback: the window, hook hygiene, the 0/1 scalar."""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_critical import views
from lightning_critical._distributed import destroy_process_group_at_exit
from lightning_critical._lightning import callbacks_of, steps_per_epoch
from lightning_critical._namespace import pl
from lightning_critical._warnings import warn_once
from lightning_critical.deficits import _hooks
from lightning_critical.deficits._arguments import bound_call, rebuild, recording_arguments
from lightning_critical.probing import is_probing
from lightning_critical.schedule import Window, WindowLike

_Deficit = TypeVar("_Deficit", bound="WindowedDeficit")

# Extension points and the underscore names they had before they became public. Both names
# stay bound to the same function on every class (see ``__init_subclass__``), so old
# subclasses that override ``_attach`` or call ``super()._resolve(...)`` keep working.
_RENAMED: dict[str, str] = {
    "resolve": "_resolve",
    "attach": "_attach",
    "default_name": "_default_name",
    "detach": "_detach",
    "describe_target": "_describe_target",
}


class WindowedDeficit(pl.Callback):
    """Base class of callbacks that change training during a :class:`~lightning_critical.Window`.

    Whether the deficit is active is recomputed before every training batch from
    ``(trainer.current_epoch, trainer.global_step)`` alone, so resuming from a checkpoint
    taken inside the window re-applies it exactly and no state needs saving. Deficits act
    on training batches only: hooks are detached before validation and re-attached at the
    next training batch. Everything attached is removed at the window's end, at the end of
    ``fit``, on an exception and at teardown.

    Each deficit logs ``deficit/<name>`` (1 inside the window, 0 outside) to every logger, through
    the run's view (:mod:`lightning_critical.views`), so that TensorBoard draws it as a step
    function whatever the smoothing (see :mod:`lightning_critical._tensorboard`):
    at step 0, at every change (with the previous value one step earlier, for a vertical edge),
    at every step for ``EDGE_STEPS`` steps after a change, at every ``log_every_n_steps`` step
    and at the end. Deficits that share a name (e.g. two windows of one ``PathwayDeficit`` kind
    on one pathway) share that scalar: it reads 1 while any of them is active, logged once per
    step by the first of them in the callback list. With TensorBoard, the scalar is charted in
    the custom-scalars category ``deficits and tasks``, and the run's HParams session lists
    every deficit (:meth:`hparams_for_tensorboard`) with the final metrics. The windows (kind,
    target, seed) are written to ``schedule.json`` beside the run's logs, whatever the logger.

    Extension points (override them in a subclass):

    * :meth:`resolve` -- find and validate what the deficit acts on, before training; set
      :attr:`targets` (``{name: module}``) so overlapping deficits on one module are refused.
    * :meth:`attach` -- install the deficit when its window opens; return the handles
      (anything with ``remove()``). :meth:`register_forward_hook` and
      :meth:`register_forward_pre_hook` make hooks that copies of the model (``deepcopy`` by
      an EMA callback, pickling) never inherit, and that stay inert for evaluation passes.
    * :meth:`default_name` -- the ``<name>`` of the scalar when none is given.
    * :meth:`repr_settings` -- the settings :func:`repr` shows.
    * :meth:`describe_target` -- what the HParams ``target`` entry says before :meth:`resolve`
      has found :attr:`targets`.
    * optionally any Lightning hook, e.g. ``on_before_optimizer_step`` (call ``super()`` in
      the hooks this class implements: ``on_fit_start``, ``on_train_start``,
      ``on_train_batch_start``, ``on_validation_start``, ``on_train_end``, ``on_exception``,
      ``teardown``).

    A subclass calls :meth:`is_active`, :attr:`attached`, :meth:`detach`, :meth:`acts_on`,
    :attr:`name` and :attr:`label`; everything with a leading underscore is internal. The
    underscore names the extension points had before (``_resolve``, ``_attach``,
    ``_default_name``, ``_detach``, ``_describe_target``) still work and are deprecated.

    Monitors run the model inside :func:`lightning_critical.probing.probing` to measure it;
    a deficit must not act then (it would consume its random draws or distort what is
    measured). The hook helpers above check it; a hand-written hook should begin with
    ``if not self.acts_on(module): return None`` (or check
    :func:`~lightning_critical.probing.is_probing` itself).

    Example (a user-defined deficit that scales one submodule's output by 0.5)::

        >>> import torch
        >>> from lightning_critical.protocols import resolve_modules
        >>> class HalfGain(WindowedDeficit):
        ...     def __init__(self, pathway, window):
        ...         super().__init__(window)
        ...         self.pathway = pathway
        ...     def resolve(self, trainer, pl_module):
        ...         self.targets = resolve_modules(pl_module, self.pathway)
        ...     def attach(self, trainer, pl_module):
        ...         return [self.register_forward_hook(self.targets.values(), lambda mod, args, out: out * 0.5)]
        >>> HalfGain("encoder", (0, 10)).name
        'HalfGain'
    """

    def __init__(self, window: WindowLike, unit: str = "epoch", name: str | None = None) -> None:
        self.window = Window.coerce(window, unit)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(
                f"name={name!r} is not valid: it must be None or a non-empty string (the deficit/<name> scalar)."
            )
        self._name = name
        self._handles: list[Any] = []
        self._scalar_group: list[WindowedDeficit] = [self]
        self._unsure_overlaps: list[tuple[WindowedDeficit, str]] = []
        self.targets: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_init = cls.__dict__.get("__init__")
        if own_init is not None and not getattr(own_init, "_records_arguments", False):
            cls.__init__ = recording_arguments(own_init)  # type: ignore[method-assign]
        for public, old in _RENAMED.items():
            own = cls.__dict__
            if old in own and public not in own:
                if not cls.__module__.startswith("lightning_critical."):
                    warnings.warn(
                        f"{cls.__qualname__}.{old} is deprecated: override {public} instead.",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                setattr(cls, public, own[old])
            elif public in own and old not in own:
                setattr(cls, old, own[public])

    # -- what subclasses provide -------------------------------------------------------
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find and validate what the deficit acts on (set :attr:`targets`); raise ``ValueError`` on bad input."""

    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """Install the deficit's hooks when the window opens; return their handles (objects with ``remove()``)."""
        return []

    def default_name(self) -> str:
        """The scalar's ``<name>`` when the constructor got none."""
        return type(self).__name__

    # -- helpers for subclasses ------------------------------------------------------------
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

    def repr_settings(self) -> dict[str, str]:
        """The key settings :func:`repr` shows, formatted, in order (here ``{"window": "[0, 10) epochs"}``).

        Subclasses override it to add theirs, e.g. ``{"pathways": "'a'", **super().repr_settings()}``;
        a ``name`` given to the constructor is appended by ``__repr__``.
        """
        return {"window": str(self.window)}

    def __repr__(self) -> str:
        settings = dict(self.repr_settings())
        if self._name is not None:
            settings["name"] = repr(self._name)
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"

    # -- the same deficit for another window ------------------------------------------------
    @property
    def init_arguments(self) -> dict[str, Any]:
        """The arguments the constructor was called with, by parameter name, as given (defaults left out).

        Recorded by every subclass's ``__init__`` (the outermost one, for a subclass that calls
        ``super().__init__``), so :meth:`with_window` can build the same deficit again and a
        sweep can tell a ``seed`` given explicitly from a default.

        Example::

            >>> from lightning_critical import InputDeficit
            >>> InputDeficit("noise", (0, 5), seed=3).init_arguments
            {'transform': 'noise', 'window': (0, 5), 'seed': 3}

        Raises:
            TypeError: the arguments were not recorded (the instance was not built by calling its
                class, e.g. ``__init__`` replaced after the class was created).
        """
        return dict(bound_call(self).arguments)

    def with_window(self: _Deficit, window: WindowLike, **overrides: Any) -> _Deficit:
        """A new deficit of the same kind and settings for ``window``, built through the constructor.

        The recorded constructor arguments (:attr:`init_arguments`, deep-copied) are passed again
        with ``window`` and ``overrides`` replacing theirs, so whatever ``__init__`` checks and
        derives is checked and derived again (a ``unit`` given to the original follows the new
        ``Window``'s unit). Works for every subclass whose constructor has a ``window``
        parameter. Sweeps use it to place a template deficit in each run's windows.

        Args:
            window: the new window (``lc.Window`` or ``(start, end)``, as the constructor takes it).
            overrides: other constructor arguments to change, e.g. ``seed=1``.

        Raises:
            TypeError: the constructor has no ``window`` parameter (or takes it through
                ``*args``), an override names no parameter, or the arguments were not recorded.
            ValueError: a public attribute was changed after construction (the rebuilt deficit
                would silently lack that change; set it through the constructor instead).

        Example::

            >>> from lightning_critical import InputDeficit
            >>> blur = InputDeficit("blur", window=(0, 5), factor=2)
            >>> later = blur.with_window((5, 10))
            >>> later.window, later.factor
            (Window(start=5, end=10, unit='epoch'), 2)
            >>> blur.with_window((0, 5), factor=4).factor
            4
        """
        return rebuild(self, window, overrides)

    # -- shared behaviour ----------------------------------------------------------------
    @property
    def name(self) -> str:
        """The key suffix of the ``deficit/<name>`` scalar."""
        return self._name or self.default_name()

    @property
    def label(self) -> str:
        """A readable description for messages, e.g. ``PathwayDeficit[freeze/b, [0, 150) epochs]``."""
        return f"{type(self).__name__}[{self.name}, {self.window}]"

    @property
    @override
    def state_key(self) -> str:
        # Unique per (class, name, window), so several deficits of one class share a Trainer.
        return self._generate_state_key(name=self.name, window=str(self.window))

    @property
    def attached(self) -> bool:
        """Whether the deficit's hooks are attached right now."""
        return bool(self._handles)

    def is_active(self, trainer: pl.Trainer) -> bool:
        """Whether the next update lies inside the window."""
        return self.window.contains(epoch=trainer.current_epoch, step=trainer.global_step)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        destroy_process_group_at_exit()  # CPU DDP: gloo groups must not outlive Python (see _distributed)
        self.resolve(trainer, pl_module)
        self._scalar_group, self._unsure_overlaps = [self], []
        views.of(trainer).start(self)  # before Lightning's hparams autolog: the view writes the one session

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = steps_per_epoch(trainer)
        self._check_overlaps(trainer, per_epoch)
        self._warn_if_unreachable(trainer, per_epoch)
        self._scalar_group = [
            cb for cb in callbacks_of(trainer) if isinstance(cb, WindowedDeficit) and cb.name == self.name
        ]
        if self._scalar_group[0] is self:
            windows = [d.window for d in self._scalar_group]
            seed = getattr(self, "seed", None)
            views.of(trainer).add_deficit(self.name, windows, self.hparams_for_tensorboard(), seed)

    def _check_overlaps(self, trainer: pl.Trainer, per_epoch: int | None) -> None:
        for other in callbacks_of(trainer):
            if other is self or not isinstance(other, WindowedDeficit):
                continue
            if self.window.comparable(other.window, per_epoch):
                if not self.window.overlaps(other.window, per_epoch):
                    continue
                what = shared_target(self.targets, other.targets)
                if what:
                    raise ValueError(
                        f"{self.label} and {other.label} both act on {what} with overlapping windows; "
                        "give one pathway at most one deficit at a time."
                    )
                continue
            what = shared_target(self.targets, other.targets)
            if what and not any(o is self for o, _ in other._unsure_overlaps):
                # Epoch and step windows cannot be compared without the epoch's length.
                warn_once(
                    f"{self.label} and {other.label} both act on {what} and their windows may overlap: one is in "
                    "epochs, the other in steps, and the number of optimizer steps per epoch is unknown (the "
                    "train dataloader has no length). Training stops with an error at the first step where both "
                    "are active; give both windows in one unit to have this checked before training."
                )
                self._unsure_overlaps.append((other, what))

    def _warn_if_unreachable(self, trainer: pl.Trainer, per_epoch: int | None) -> None:
        w = self.window
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        limit_steps = max_steps if max_steps is not None and max_steps >= 0 else None
        if limit_steps is None and max_epochs is not None and max_epochs >= 0 and per_epoch is not None:
            limit_steps = max_epochs * per_epoch
        limit: float
        if w.unit == "epoch" and max_epochs is not None and max_epochs >= 0:
            limit, what = max_epochs, f"max_epochs={max_epochs}"
        elif limit_steps is not None:
            limit = limit_steps if w.unit == "step" else limit_steps / max(per_epoch or 1, 1)
            what = f"the run's {limit_steps} optimizer steps"
        else:
            return
        # Once per distinct message and process: a sweep repeats the same window in many fits.
        if w.start >= limit:
            warn_once(f"{self.label} starts at or after {what}: it will never be active.")
        elif w.end is not None and w.end > limit:
            warn_once(f"{self.label} ends after {what}: it will be cut short.")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        active = self.is_active(trainer)
        if active:
            for other, what in self._unsure_overlaps:
                if other.is_active(trainer):
                    raise ValueError(
                        f"{self.label} and {other.label} both act on {what} at epoch {trainer.current_epoch}, step "
                        f"{trainer.global_step}: their windows overlap; give one pathway at most one deficit at a time."
                    )
        if active and not self.attached:
            self._handles = list(self.attach(trainer, pl_module))
        elif not active and self.attached:
            self.detach()
        self._log_state(trainer)

    def _log_state(self, trainer: pl.Trainer) -> None:
        # Deficits sharing a name share the scalar; the first of them logs "any is active",
        # so the curve never gets two values at one step.
        if self._scalar_group[0] is not self:
            return
        value = float(any(d.is_active(trainer) for d in self._scalar_group))
        views.of(trainer).indicator(f"deficit/{self.name}", value)

    # -- what TensorBoard's HParams shows ----------------------------------------------------
    def hparams_for_tensorboard(self) -> dict[str, Any]:
        """This deficit's entries in the run's HParams session, keyed ``deficit/<name>/...``.

        ``kind`` (class, and mode where there is one), ``target`` (what it acts on), ``window``
        (e.g. ``[0, 150) epochs``; windows of deficits sharing the name are joined by ``+``),
        ``window_start``, ``window_end`` (``-1``: the end of training) and ``unit``. The first
        deficit of a shared name speaks for all of them.

        Example::

            >>> from lightning_critical import PathwayDeficit
            >>> PathwayDeficit("b", (0, 150)).hparams_for_tensorboard()  # doctest: +NORMALIZE_WHITESPACE
            {'deficit/freeze/b/kind': 'PathwayDeficit/freeze', 'deficit/freeze/b/target': 'b',
             'deficit/freeze/b/window': '[0, 150) epochs', 'deficit/freeze/b/window_start': 0,
             'deficit/freeze/b/window_end': 150, 'deficit/freeze/b/unit': 'epoch'}
        """
        group = self._scalar_group
        if group[0] is not self:
            return {}
        mode = getattr(self, "mode", None)
        kind = type(self).__name__ + (f"/{mode}" if isinstance(mode, str) else "")
        targets = list(self.targets) or [self.describe_target()]
        windows = sorted((d.window for d in group), key=lambda w: w.start)  # callback order is not time order
        ends = [w.end for w in windows]
        end = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
        prefix = f"deficit/{self.name}"
        return {
            f"{prefix}/kind": kind,
            f"{prefix}/target": ", ".join(str(t) for t in targets),
            f"{prefix}/window": " + ".join(str(w) for w in windows),
            f"{prefix}/window_start": min(w.start for w in windows),
            f"{prefix}/window_end": -1 if end is None else end,
            f"{prefix}/unit": windows[0].unit,
        }

    def describe_target(self) -> str:
        """What the deficit acts on, in words, before :meth:`resolve` has set :attr:`targets`.

        By default the ``pathways``, ``pathway`` or ``transform`` attribute (names joined by
        ``", "``, a function by its name), else :attr:`name`.
        """
        for attr in ("pathways", "pathway", "transform"):
            value = getattr(self, attr, None)
            if value is not None:
                if isinstance(value, (list, tuple)):
                    return ", ".join(map(str, value))
                return value if isinstance(value, str) else getattr(value, "__name__", type(value).__name__)
        return self.name

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()
        views.of(trainer).end(self)  # the last callback to end closes the run: last points, schedule, session

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.detach()
        views.of(trainer).release()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach()
        views.of(trainer).release()

    def detach(self) -> None:
        """Remove everything :meth:`attach` installed (safe to call at any time)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


WindowedDeficit.__init__ = recording_arguments(WindowedDeficit.__init__)  # type: ignore[method-assign]

# The deprecated names (_RENAMED) are bound outside the class body so that type checkers and
# the API docs see only the public ones; hence the ignores.
WindowedDeficit._resolve = WindowedDeficit.resolve  # type: ignore[attr-defined]
WindowedDeficit._attach = WindowedDeficit.attach  # type: ignore[attr-defined]
WindowedDeficit._default_name = WindowedDeficit.default_name  # type: ignore[attr-defined]
WindowedDeficit._detach = WindowedDeficit.detach  # type: ignore[attr-defined]
WindowedDeficit._describe_target = WindowedDeficit.describe_target  # type: ignore[attr-defined]


def shared_target(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """What two deficits' targets have in common, described for a message ('' if nothing).

    Modules are compared as objects: the same module (under any name), one inside the
    other, or two modules sharing a parameter (tied weights). Other targets compare by name
    (equal, or one a dotted prefix of the other).

    Example::

        >>> from torch import nn
        >>> left, right = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> right.weight = left.weight
        >>> shared_target({"left": left}, {"right": right})
        "'left' and 'right', which share parameter 'weight'"
        >>> shared_target({"left": left}, {"head": nn.Linear(2, 2)})
        ''
    """
    for a_name, a in mine.items():
        for b_name, b in theirs.items():
            if isinstance(a, nn.Module) and isinstance(b, nn.Module):
                what = _module_relation(a_name, a, b_name, b)
            elif (
                a_name
                and b_name
                and (a_name == b_name or a_name.startswith(b_name + ".") or b_name.startswith(a_name + "."))
            ):
                what = f"{a_name!r}/{b_name!r}"
            else:
                what = ""
            if what:
                return what
    return ""


def _module_relation(a_name: str, a: nn.Module, b_name: str, b: nn.Module) -> str:
    if a is b:
        return f"{a_name!r}" if a_name == b_name else f"{a_name!r} and {b_name!r} (the same module)"
    if any(m is b for m in a.modules()):
        return f"{b_name!r}, which is inside {a_name!r}"
    if any(m is a for m in b.modules()):
        return f"{a_name!r}, which is inside {b_name!r}"
    theirs = {id(p) for p in b.parameters()}
    shared = [n for n, p in a.named_parameters() if id(p) in theirs]
    if shared:
        return f"{a_name!r} and {b_name!r}, which share parameter {shared[0]!r}"
    return ""

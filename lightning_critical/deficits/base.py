"""``WindowedDeficit``: the base of deficits, interventions active inside one window of training.

What any scheduled intervention needs (the schedule recomputed from the trainer's counters, hook
hygiene, the on/off indicator, the HParams session) is in
:mod:`lightning_critical.deficits.intervention`; this class adds the window, the deficit's name,
overlap checks between deficits and rebuilding one for another window (:meth:`~WindowedDeficit.with_window`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from typing_extensions import override

from lightning_critical import views
from lightning_critical._lightning import callbacks_of, steps_per_epoch
from lightning_critical._namespace import pl
from lightning_critical.deficits._arguments import bound_call, rebuild, recording_arguments
from lightning_critical.deficits._deprecated import bind_base, bind_renamed
from lightning_critical.deficits._overlaps import check_overlaps, shared_target, warn_if_unreachable
from lightning_critical.deficits.intervention import ScheduledIntervention, check_text
from lightning_critical.schedule import Window, WindowLike

__all__ = ["WindowedDeficit", "shared_target"]

_Deficit = TypeVar("_Deficit", bound="WindowedDeficit")


class WindowedDeficit(ScheduledIntervention):
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

    It is a :class:`~lightning_critical.deficits.intervention.ScheduledIntervention` whose
    schedule is one :class:`~lightning_critical.Window`. Extension points (override them in a
    subclass):

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
        super().__init__()
        self.window = Window.coerce(window, unit)
        self._name = check_text("name", name, "the deficit/<name> scalar", allow_none=True)
        self._scalar_group: list[WindowedDeficit] = [self]
        self.unsure_overlaps: list[tuple[WindowedDeficit, str]] = []
        """Deficits on a shared target whose windows could not be compared before training (checked each step)."""
        self.targets: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_init = cls.__dict__.get("__init__")
        if own_init is not None and not getattr(own_init, "_records_arguments", False):
            cls.__init__ = recording_arguments(own_init)  # type: ignore[method-assign]
        bind_renamed(cls)

    # -- what subclasses provide -------------------------------------------------------
    def default_name(self) -> str:
        """The scalar's ``<name>`` when the constructor got none."""
        return type(self).__name__

    @override
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

    @override
    def key_arguments(self) -> dict[str, Any]:
        # Unique per (class, name, window), so several deficits of one class share a Trainer.
        return {"name": self.name, "window": str(self.window)}

    @override
    def is_active(self, trainer: pl.Trainer) -> bool:
        """Whether the next update lies inside the window."""
        return self.window.contains(epoch=trainer.current_epoch, step=trainer.global_step)

    @property
    @override
    def indicator_key(self) -> str:
        return f"deficit/{self.name}"

    @override
    def indicator_value(self, trainer: pl.Trainer) -> float:
        # Deficits sharing a name share the scalar: it reads 1 while any of them is active.
        return float(any(d.is_active(trainer) for d in self._scalar_group))

    @property
    @override
    def shows_indicator(self) -> bool:
        # The first of the deficits sharing a name logs for all, so the curve never gets two values at one step.
        return self._scalar_group[0] is self

    @override
    def _write_charts(self, trainer: pl.Trainer) -> None:
        # The indicator and the schedule entry (the windows of every deficit sharing the name; kind, target, seed).
        windows = [d.window for d in self._scalar_group]
        views.of(trainer).add_deficit(self.name, windows, self.hparams_for_tensorboard(), getattr(self, "seed", None))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scalar_group, self.unsure_overlaps = [self], []
        super().on_fit_start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = steps_per_epoch(trainer)
        deficits = [cb for cb in callbacks_of(trainer) if isinstance(cb, WindowedDeficit)]
        check_overlaps(self, [d for d in deficits if d is not self], per_epoch)
        warn_if_unreachable(self, trainer, per_epoch)
        self._scalar_group = [d for d in deficits if d.name == self.name]
        super().on_train_start(trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.is_active(trainer):
            for other, what in self.unsure_overlaps:
                if other.is_active(trainer):
                    raise ValueError(
                        f"{self.label} and {other.label} both act on {what} at epoch {trainer.current_epoch}, step "
                        f"{trainer.global_step}: their windows overlap; give one pathway at most one deficit at a time."
                    )
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    # -- what TensorBoard's HParams shows ----------------------------------------------------
    @override
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


WindowedDeficit.__init__ = recording_arguments(WindowedDeficit.__init__)  # type: ignore[method-assign]
bind_base(WindowedDeficit)  # the deprecated underscore names of the extension points

"""Pre-flight: what a sweep would otherwise find only after training, checked before any run trains.

:func:`preflight` runs after the argument checks of :func:`lightning_critical.sweep.run` and
before the first run, and refuses the sweep (nothing trained, nothing written) when:

* ``test=True`` and the model has no ``test_step``, or neither the datamodule nor the model
  has a ``test_dataloader`` (the message names the classes);
* a deficit ignores its window: each deficit (template or factory) is built for two of the
  sweep's windows and every ``WindowedDeficit`` it returns must carry the window it was given;
  a ``TaskSwitch`` must schedule a switch at the window's start or end and its schedule must
  change with the window (other callback types are not checked);
* a metric name cannot be produced: a **trial fit** of one run (the first run with a deficit,
  else the first run) on freshly built objects, for one training batch and one validation
  batch (``max_epochs=1``, ``limit_train_batches=1``, ``limit_val_batches=1``,
  ``log_every_n_steps=1`` for models that log only on logging steps, then one test batch with
  ``test=True``), must put every metric name of ``metrics=`` into
  ``trainer.callback_metrics``; the message lists what it produced. An exception of the
  trial fit itself (a wrong pathway name, a shape error) is raised too, naming the run.
  When the shortest run takes fewer optimizer steps than the sweep's ``log_every_n_steps``
  (Lightning's default 50), a second one-batch trial with that value must produce them too: a
  model that logs only on logging steps would otherwise never log them (the message says so).

The trial cannot change any run's numbers: it builds its own model, datamodule and callbacks
through the factories (after ``pl.seed_everything`` of that run's seed, like a run), writes
only to a temporary directory, and runs under :func:`~lightning_critical.sweep.runners.isolation.isolated`,
which gives back the global random states, the thread counts and ``PL_GLOBAL_SEED``; the
package's once-per-process warnings are restored too, so the real runs still give them. When the
model or datamodule factory returns the same object on every call (an object the runs share),
the trial is skipped with a warning, since training it would touch what the runs use; a shared
object that holds random generators is refused (the runs would draw from them in turn, so each
run's numbers would depend on the runs trained before it). The trial is
also skipped when every run has finished already (resume), for custom runners (unless their
``lightning_trial`` is true: the vectorized runner trains the same module's steps), and when all
metrics are functions. Its cost is one short fit (about a second for a small model on CPU).

The trial's model and datamodule are the ones the session built for the sweep's identity
(:func:`build_seeded`, passed as ``first=``), so the start-up builds the first run's objects once,
plus once more per factory to see whether it returns a shared object; a factory that is a plain
class (or a ``functools.partial`` of one) always makes a new object and is not built again.

A metric logged only later in training (say, every 5 epochs from epoch 4) is refused by the
trial: pass ``preflight=False`` to :func:`lightning_critical.sweep.run` to skip every check here
(a wrong name is then found when the first run finishes).
"""

from __future__ import annotations

import functools
import inspect
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from lightning_critical import _warnings, views
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.schedule import Window
from lightning_critical.sweep.build import (
    build_callbacks,
    build_datamodule,
    build_deficits,
    build_model,
    deficit_makers,
    make_deficit,
)
from lightning_critical.sweep.runners.base import MetricNotFound
from lightning_critical.sweep.runners.branching import rngs as branch_rngs
from lightning_critical.sweep.runners.isolation import isolated, quiet
from lightning_critical.sweep.runners.lightning import QUIET_TRAINER
from lightning_critical.sweep.spec import RunSpec, SweepSpec

__all__ = ["PreflightError", "build_seeded", "check_deficit_windows", "check_test_setup", "preflight", "trial_metrics",
           "trial_run"]

# Trainer arguments a one-batch trial must not inherit: they would stop it early or skip its validation.
_TRIAL_DROPS = ("min_epochs", "min_steps", "overfit_batches", "max_steps", "max_time")


class PreflightError(RuntimeError):
    """The trial fit of a sweep's pre-flight raised (its exception is the ``__cause__``)."""


def preflight(spec: SweepSpec, runs: Sequence[RunSpec], *, trial: bool = True,
              first: tuple[Any, Any] | None = None) -> None:
    """Refuse, before training, a sweep that could only fail or mislead after training (see the module).

    Args:
        spec: what trains a run.
        runs: the sweep's runs, in grid order.
        trial: run the trial fit for metric names (``False`` when every run has finished).
        first: the model and datamodule of :func:`trial_run` already built by :func:`build_seeded`
            (the session builds them once for the sweep's identity); ``None``: build them here.

    Raises:
        ValueError: ``test=True`` without a ``test_step`` / test dataloader; a deficit that ignores
            its window; a model or datamodule shared by every run that holds random generators; a
            metric name the trial fit did not produce
            (:class:`~lightning_critical.sweep.runners.base.MetricNotFound`).
        PreflightError: the trial fit raised.
    """
    if not runs:
        return
    check_deficit_windows(spec, runs)
    if spec.runner is not None and not getattr(spec.runner, "lightning_trial", False):
        return  # a custom runner trains its own way: no Lightning fit to try (unless it says one applies)
    run = trial_run(runs)
    names = [m for m in spec.metrics if isinstance(m, str)]
    with isolated(spec.threads_per_run), quiet():
        model, datamodule = first if first is not None else build_seeded(spec, run)
        if spec.test:
            check_test_setup(model, datamodule)
        shared = _shared_objects(spec, run, model, datamodule) if trial else ""
        if shared:
            _refuse_shared_generators(shared, model if shared == "model" else datamodule)
        if not (trial and names):
            return
        if shared:
            warnings.warn(f"sweep pre-flight: no trial fit, the {shared} factory returns the same object on every "
                          "call (the runs share it; a trial would train it). Metric names are checked when the "
                          "first run finishes.", stacklevel=3)
            return
        produced, batches = _trial(spec, run, model, datamodule)
        if all(n in produced for n in names):
            _check_logged_in_time(spec, runs, names, batches, lambda every: _trial(spec, run, model, datamodule, every))
    missing = [n for n in names if n not in produced]
    if missing:
        test = ", then 1 test batch" if spec.test else ""
        raise MetricNotFound(
            f"metrics: {missing} not in trainer.callback_metrics after a trial fit of run {run.label()} "
            f"(1 training batch, 1 validation batch{test}); it produced {sorted(produced)}. Use one of those names, "
            "or a function (trainer, module) -> dict of numbers; for a metric logged only later in training, "
            "pass preflight=False."
        )


def trial_run(runs: Sequence[RunSpec]) -> RunSpec:
    """The run the trial fit trains: the first with a deficit, else the first."""
    return next((r for r in runs if r.windows), runs[0])


def build_seeded(spec: SweepSpec, run: RunSpec) -> tuple[Any, Any]:
    """``run``'s model and datamodule, built after ``pl.seed_everything(run.seed)`` like a run (call it isolated)."""
    pl.seed_everything(run.seed, verbose=False)
    return build_model(spec, run), build_datamodule(spec, run)


def check_deficit_windows(spec: SweepSpec, runs: Sequence[RunSpec]) -> None:
    """Build each deficit for two of the sweep's windows; refuse one whose callbacks do not carry them."""
    windows: list[Window] = []
    for r in runs:
        windows += [w for w in r.windows if w not in windows]
    if not windows:
        return
    windows = windows[:2]
    run = next(r for r in runs if r.windows)
    makers = deficit_makers(spec, run)
    with isolated(spec.threads_per_run), quiet():
        for maker in makers:
            schedules = []
            for window in windows:
                made = make_deficit(maker, window, spec.factory_kwargs(run))
                items = list(made) if isinstance(made, (list, tuple)) else [made]
                for item in items:
                    _check_carries(maker, window, item)
                schedules.append([(item.schedule, item.unit) for item in items if isinstance(item, TaskSwitch)])
            if len(windows) == 2 and schedules[0] and schedules[0] == schedules[1]:
                raise ValueError(
                    f"deficit {_name(maker)} ignores its window: for windows {windows[0]} and {windows[1]} it returned "
                    f"TaskSwitch callbacks with the same schedule {schedules[0][0][0]}; it must switch tasks at the "
                    "window it is given, or every run would train the same way."
                )


def _check_carries(maker: Any, window: Window, item: Any) -> None:
    if isinstance(item, WindowedDeficit):
        if item.window != window:
            raise ValueError(
                f"deficit {_name(maker)} ignores its window: given window {window} it returned {item!r}, whose window "
                f"is {item.window}. A deficit factory must build its callbacks for the window it is given "
                "(window -> Callback); the table would show windows the runs did not train with."
            )
    elif isinstance(item, TaskSwitch) and item.unit == window.unit:
        bounds = {window.start} | ({window.end} if window.end is not None else set())
        if not bounds & set(item.schedule):
            raise ValueError(
                f"deficit {_name(maker)} ignores its window: given window {window} it returned {item!r}, which "
                f"switches at {sorted(item.schedule)}, neither the window's start nor its end."
            )


def check_test_setup(model: Any, datamodule: Any) -> None:
    """Refuse ``test=True`` for a model without ``test_step`` or with no test dataloader anywhere."""
    if not _overridden(model, "test_step", pl.LightningModule):
        raise ValueError(
            f"test=True but model {type(model).__qualname__} has no test_step: every run would train, then fail "
            "in trainer.test. Give the model a test_step, or pass test=False (and read validation metrics)."
        )
    in_data = datamodule is not None and _overridden(datamodule, "test_dataloader", pl.LightningDataModule)
    if not in_data and not _overridden(model, "test_dataloader", pl.LightningModule):
        where = f"datamodule {type(datamodule).__qualname__}" if datamodule is not None else "no datamodule"
        raise ValueError(
            f"test=True but neither {where} nor model {type(model).__qualname__} defines test_dataloader: "
            "every run would train, then fail in trainer.test. Add a test_dataloader, or pass test=False."
        )


def trial_metrics(spec: SweepSpec, run: RunSpec, model: Any, datamodule: Any) -> dict[str, Any]:
    """``trainer.callback_metrics`` after one training and one validation batch of ``run`` (and one test batch)."""
    return _trial(spec, run, model, datamodule)[0]


def _trial(spec: SweepSpec, run: RunSpec, model: Any, datamodule: Any,
           log_every_n_steps: int = 1) -> tuple[dict[str, Any], int | None]:
    """:func:`trial_metrics`, and the training batches of a full epoch (``None``: the loader has no length)."""
    callbacks = build_deficits(spec, run) + build_callbacks(spec, run)
    root = tempfile.mkdtemp(prefix="lc-preflight-")
    given = set(_warnings._GIVEN)  # the real runs still warn once
    try:
        logger: Any = False
        if spec.tensorboard and spec.trainer.get("logger", True) is not False:
            logger = pl.loggers.TensorBoardLogger(root, name="trial", version="", default_hp_metric=False)
        kwargs = {**QUIET_TRAINER, **{k: v for k, v in spec.trainer.items() if k not in _TRIAL_DROPS + ("logger",)}}
        # one batch of each loop, unless the sweep turned a loop off (then the runs produce nothing there either)
        limits = {k: 0 if spec.trainer.get(k) == 0 else 1 for k in ("limit_val_batches", "limit_test_batches")}
        kwargs.update(
            max_epochs=1, limit_train_batches=1, **limits, val_check_interval=1.0,
            check_val_every_n_epoch=1, log_every_n_steps=log_every_n_steps, num_sanity_val_steps=0,
            callbacks=callbacks, logger=logger,
            enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
            enable_autolog_hparams=False, default_root_dir=root,
        )
        data_kwargs: dict[str, Any] = {"datamodule": datamodule} if datamodule is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one-batch artefacts ("few batches", "window never active")
            try:
                trainer = pl.Trainer(**kwargs)
                views.of(trainer).hold_session()  # a trial: no session to write
                trainer.fit(model, **data_kwargs)
                produced = dict(trainer.callback_metrics)
                batches = _length(trainer.train_dataloader)
                if spec.test:
                    trainer.test(model, **data_kwargs, verbose=False)
                    produced.update(trainer.callback_metrics)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:
                raise PreflightError(
                    f"sweep pre-flight: a trial fit of run {run.label()} (1 training batch, 1 validation batch) raised "
                    f"{type(err).__name__}: {err}. Every run would fail the same way; fix it, or pass preflight=False "
                    "if it only fails in the trial."
                ) from err
        return produced, batches
    finally:
        _warnings._GIVEN.clear()
        _warnings._GIVEN.update(given)
        shutil.rmtree(root, ignore_errors=True)


def _check_logged_in_time(spec: SweepSpec, runs: Sequence[RunSpec], names: list[str], batches: int | None,
                          trial: Callable[[int], tuple[dict[str, Any], int | None]]) -> None:
    """Refuse a metric logged only on logging steps when the shortest run takes fewer than ``log_every_n_steps``.

    The trial logs on every step; a model may call ``self.log`` only every ``log_every_n_steps``
    steps (as :class:`~lightning_critical.models.MultiPathwayLinearNet` does). When the runs are
    shorter than that, a second one-batch trial with the sweep's own value shows what they produce.
    """
    every = int(spec.trainer.get("log_every_n_steps") or 50)  # Lightning's default
    if every <= 1 or batches is None:
        return
    limit = spec.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    per_epoch = -(-batches // int(spec.trainer.get("accumulate_grad_batches") or 1))
    epochs = min(r.max_epochs or spec.max_epochs for r in runs)
    if per_epoch * epochs >= every:
        return
    late = [n for n in names if n not in trial(every)[0]]
    if late:
        raise MetricNotFound(
            f"metrics: {late} would never be logged: the model logs them only every log_every_n_steps={every} "
            f"optimizer steps, and the shortest run takes {per_epoch * epochs} ({epochs} epochs x {per_epoch} steps). "
            f"Pass trainer={{'log_every_n_steps': 1}} (or any value up to {per_epoch * epochs}), or use a metric "
            "logged per epoch."
        )


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _shared_objects(spec: SweepSpec, run: RunSpec, model: Any, datamodule: Any) -> str:
    """``"model"`` / ``"datamodule"`` when that factory returned ``model`` / ``datamodule`` again.

    A factory that is a plain class (or a ``functools.partial`` of one) makes a new object on every
    call and is not built again.
    """
    if not _fresh_every_call(spec.model) and build_model(spec, run) is model:
        return "model"
    if datamodule is not None and not _fresh_every_call(spec.datamodule) and build_datamodule(spec, run) is datamodule:
        return "datamodule"
    return ""


def _fresh_every_call(factory: Any) -> bool:
    """A class whose calls go through ``type.__call__`` and ``object.__new__`` (no caching possible), maybe partial."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return (inspect.isclass(factory) and type(factory).__call__ is type.__call__
            and factory.__new__ is object.__new__)


def _refuse_shared_generators(kind: str, obj: Any) -> None:
    """Refuse one object shared by every run when it holds random generators (its draws would follow run order)."""
    generators = sorted(branch_rngs.find({kind: obj}))
    if generators:
        raise ValueError(
            f"the {kind} factory returns the same object on every call, and that object holds random generators "
            f"({', '.join(generators[:3])}): the runs would draw from them in turn, so each run's numbers would "
            "depend on which runs trained before it (and on the backend). Return a fresh object from every call "
            "(pass the class, or a function that builds one)."
        )


def _overridden(obj: Any, name: str, base: type) -> bool:
    # An instance attribute counts too (LightningDataModule.from_datasets sets the loaders on the instance).
    return name in vars(obj) or getattr(type(obj), name, None) is not getattr(base, name, None)


def _name(maker: Any) -> str:
    if isinstance(maker, WindowedDeficit):
        return f"template {maker!r}"
    func = getattr(maker, "func", maker)
    return f"factory {getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"

"""What a run shows, whatever the logger: indicators, schedules, series and the one HParams session.

One :class:`RunView` per trainer (:func:`of`) knows everything the package's callbacks show of a
run, so no callback talks to a logger on its own and none decides for the others:

* **indicators**: ``deficit/<name>`` (1 while a deficit is active, 0 outside) and
  ``task/<target>`` (the index of the task that trains), logged as step functions
  (:class:`~lightning_critical._tensorboard.StepSeries`);
* **schedules**: every deficit's windows (kind, target, seed) and every task switch, written at
  the end of ``fit`` as ``schedule.json`` beside the run's logs (:mod:`lightning_critical.schedule_file`),
  which :mod:`lightning_critical.plots` and ``lightning-critical plot`` read;
* **series**: the monitors' scalars, at the optimizer step of each record;
* **the HParams session**: one per run, written by the view when the last callback using it
  finishes ``fit`` (or by a driver that holds it: :meth:`RunView.hold_session`), with the
  module's hyperparameters, every callback's ``hparams_for_tensorboard()`` and ``final/<name>``
  metrics.

What each logger shows. Every logger (TensorBoard, CSV, W&B, MLflow, any ``Logger``): the
indicators and the monitors' scalars through ``logger.log_metrics`` at explicit steps (every rank
calls it with the same keys; loggers write on rank zero), the callbacks' hparams through
``logger.log_hyperparams`` at the end of ``fit``, and the schedule file in its log directory.
TensorBoard also gets what only it can draw (:mod:`lightning_critical._tensorboard`): the
custom-scalars layout (indicators unsmoothed, mode strengths overlaid), one run per series,
histograms of the singular values and the HParams session with final metrics; rank zero only,
and nothing there calls a collective.

The view lives as long as its trainer (a ``WeakKeyDictionary`` keyed by the trainer) and starts
afresh with each ``fit``: a callback calls :meth:`RunView.start` before Lightning logs its
hyperparameters (``setup`` or ``on_fit_start``), :meth:`RunView.end` at ``on_train_end`` and
:meth:`RunView.release` at ``teardown`` (or ``on_exception``).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Collection, Mapping, Sequence
from numbers import Number
from typing import Any

from torch import Tensor

from lightning_critical import schedule_file
from lightning_critical._lightning import (
    PlaceholderHpMetric,
    callbacks_of,
    log_dirs,
    log_every_n_steps,
    log_scalars,
    steps_per_epoch,
)
from lightning_critical._namespace import instance_of, pl
from lightning_critical._tensorboard import StepSeries, TensorBoardView, write_sweep_view
from lightning_critical.schedule import Window

__all__ = ["RunView", "callback_hparams", "final_metrics", "finish_sweep", "hparam_value", "model_hparams", "of"]

_VIEWS: weakref.WeakKeyDictionary[Any, RunView] = weakref.WeakKeyDictionary()


def of(trainer: pl.Trainer) -> RunView:
    """The view of ``trainer``'s run (made on first use, kept as long as the trainer lives).

    Example::

        >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> of(trainer) is of(trainer), of(trainer).schedule()["deficits"]
        (True, [])
    """
    view = _VIEWS.get(trainer)
    if view is None:
        view = _VIEWS[trainer] = RunView(trainer)
    return view


def hparam_value(value: Any) -> Any:
    """A value every logger's hparams accept (bool, number or string).

    Example::

        >>> hparam_value((0, 150)), hparam_value(None), hparam_value(3)
        ('(0, 150)', 'none', 3)
    """
    if isinstance(value, (bool, str)) or (isinstance(value, Number) and not isinstance(value, complex)):
        return value
    return "none" if value is None else str(value)


def callback_hparams(trainer: pl.Trainer) -> dict[str, Any]:
    """What the trainer's callbacks add to the session (``hparams_for_tensorboard()``), in callback order."""
    out: dict[str, Any] = {}
    for callback in callbacks_of(trainer):
        method = getattr(callback, "hparams_for_tensorboard", None)
        if callable(method):
            out.update({k: hparam_value(v) for k, v in method().items()})
    return out


def model_hparams(module: Any, prefix: str = "model/") -> dict[str, Any]:
    """``module.hparams`` (what ``save_hyperparameters()`` stored), flattened, as ``<prefix><name>`` hparams.

    Example::

        >>> from lightning_critical.models import DeepMatrixFactorization
        >>> model_hparams(DeepMatrixFactorization(size=4, depth=2))["model/depth"]
        2
    """
    out: dict[str, Any] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                add(f"{name}/{k}", v)
        elif not name.rsplit("/", 1)[-1].startswith("_"):  # jsonargparse's _class_path, _instantiator
            out[prefix + name] = hparam_value(value)

    for key, value in dict(getattr(module, "hparams", None) or {}).items():
        add(str(key), value)
    return out


def finish_sweep(root: str, lead: Sequence[str], last: Sequence[str]) -> str | None:
    """Give the sweep whose runs logged under ``root`` (``<out>/tensorboard``) one view (TensorBoard's).

    Every run's HParams session gets every column (``"none"`` where a run lacks one: the baseline's
    deficits), in one order: ``lead`` (the sweep's axes, shown by default), the deficits' and tasks'
    descriptions, ``model/<name>``, ``last``; the Custom Scalars tab opens on deficits, tasks and
    reliance, the spectral categories closed. Writes one file at ``root`` and returns its path
    (``None``: no run wrote a session or layout). See :mod:`lightning_critical._tensorboard_hparams`.
    """
    return write_sweep_view(root, lead, last)


def final_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """``final/<name>``: the last value of every finite scalar in ``trainer.callback_metrics``."""
    out = {}
    for name, value in trainer.callback_metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):  # a tensor with several elements
            continue
        if math.isfinite(number) and not name.startswith("final/"):
            out[f"final/{name}"] = number
    return out


class RunView:
    """What one run shows: its indicators, schedule, series and HParams session (see the module docstring).

    Get it with :func:`of`; do not build one. Callbacks call :meth:`start`, :meth:`end` and
    :meth:`release` around ``fit``, declare what they schedule (:meth:`add_deficit`,
    :meth:`add_tasks`; :meth:`add_indicator` for an indicator without a schedule) and log
    through :meth:`indicator`, :meth:`series` and :meth:`histograms`.
    A driver that writes the session itself (a sweep, with the run's window and seed) calls
    :meth:`hold_session` before ``fit`` and :meth:`write_session` after it.

    Example (what a deficit declares, before any step: its window has not run yet)::

        >>> trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
        >>> view = of(trainer)
        >>> view.add_deficit("freeze/b", [Window(0, 5, "step")], {"deficit/freeze/b/kind": "PathwayDeficit/freeze"})
        >>> entry = view.schedule()["deficits"][0]
        >>> entry["kind"], entry["windows"], entry["steps"]
        ('PathwayDeficit/freeze', [{'start': 0, 'end': 5, 'unit': 'step'}], [])
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = weakref.ref(trainer)  # the view must not keep its trainer (the dictionary's key) alive
        self.tensorboard = TensorBoardView()
        self._placeholder = PlaceholderHpMetric()
        self._held = False
        self._users: list[Any] = []
        self._open = False
        self._new_fit()

    def _new_fit(self) -> None:
        self._indicators: dict[str, StepSeries] = {}
        self._changes: dict[str, list[tuple[int, float]]] = {}  # each indicator's value at every change
        self._deficits: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}
        self._run: dict[str, Any] = {}

    @property
    def trainer(self) -> pl.Trainer:
        trainer = self._trainer()
        if trainer is None:
            raise RuntimeError("the trainer of this view is gone; get the view of a live trainer with views.of().")
        return trainer

    # -- the lifecycle of a fit ------------------------------------------------------------
    def start(self, user: Any) -> None:
        """``user`` (a callback) shows something of this fit; call before Lightning's hparams autolog.

        The first call of a fit starts the view afresh and keeps Lightning's placeholder session
        (``hp_metric = -1``) out: the view writes the run's one session at the end.
        """
        if not self._open:
            self._new_fit()
            self._open = True
            self._placeholder.skip(self.trainer)
        if not any(u is user for u in self._users):
            self._users.append(user)

    def end(self, user: Any) -> None:
        """``user`` is done with this fit (``on_train_end``); after the last one the view closes the run:
        the indicators' last points, the schedule file, the session (unless held), the series runs."""
        self._users = [u for u in self._users if u is not user]
        if self._open and not self._users:
            trainer = self.trainer
            for key, series in self._indicators.items():
                if series.value is not None:
                    log_scalars(trainer, {key: series.value}, trainer.global_step)
            self.write_schedule()
            if not self._held:
                self._write_session({}, None)
            self.release()

    def release(self) -> None:
        """Close what is open (series runs) and leave the loggers as they were; safe to call at any time."""
        self.tensorboard.close_series()
        self._placeholder.restore()
        self._users, self._open = [], False

    def hold_session(self, sweep: bool = False) -> None:
        """Leave the HParams session to the caller, who writes it with :meth:`write_session` after ``fit``.

        ``sweep``: the run is one of a sweep (call before ``fit``): its charts are those whose lines
        are runs (one per target and leading singular value, not a target's top values together).
        """
        self._held = True
        self.tensorboard.one_of_many = sweep

    def write_session(self, extra: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
                      sweep: bool = False) -> None:
        """Write the run's one HParams session now, with ``extra`` hparams (also recorded as the schedule's ``run``).

        Hparams: the module's (on TensorBoard, what Lightning stored on the logger), every callback's
        :func:`callback_hparams`, then ``extra``. Metrics: ``metrics``, else :func:`final_metrics`.
        ``sweep``: the run is one of a sweep, which gives all its runs one view afterwards
        (:func:`finish_sweep`): the module's hyperparameters come as ``model/<name>``
        (:func:`model_hparams`) and TensorBoard gets the session alone, without its own columns.
        """
        self._run = {k: hparam_value(v) for k, v in (extra or {}).items()}
        self._write_session(self._run, metrics, sweep)
        self.write_schedule()

    def _write_session(self, extra: Mapping[str, Any], metrics: Mapping[str, float] | None,
                       sweep: bool = False) -> None:
        trainer = self.trainer
        model = model_hparams(trainer.lightning_module) if sweep else {}
        params = {**model, **callback_hparams(trainer), **extra}
        metrics = dict(final_metrics(trainer) if metrics is None else metrics)
        # TensorBoard shows no session without a metric: a module that logs nothing keeps Lightning's placeholder.
        self.tensorboard.write_session(trainer, params, metrics or {"hp_metric": -1.0}, sweep)
        if params and trainer.is_global_zero:
            for logger in trainer.loggers:
                if not instance_of(logger, "loggers.TensorBoardLogger"):
                    logger.log_hyperparams(params)

    # -- what callbacks schedule -------------------------------------------------------------
    def add_deficit(
        self, name: str, windows: Sequence[Window], hparams: Mapping[str, Any] | None = None, seed: Any = None
    ) -> None:
        """Show the deficits named ``name`` (active in ``windows``): the ``deficit/<name>`` indicator, a schedule entry.

        ``hparams``: the deficit's ``hparams_for_tensorboard()``, whose ``kind`` and ``target`` the
        schedule keeps; ``seed``: what its random draws use, if anything.
        """
        about = {k.rsplit("/", 1)[-1]: v for k, v in (hparams or {}).items() if k.startswith(f"deficit/{name}/")}
        entry: dict[str, Any] = {"name": name, "kind": about.get("kind"), "target": about.get("target")}
        entry["windows"] = [{"start": w.start, "end": w.end, "unit": w.unit} for w in sorted(windows, key=_start)]
        if isinstance(seed, int) and not isinstance(seed, bool):
            entry["seed"] = seed
        self._deficits[name] = entry
        self.tensorboard.add_indicator_charts(self.trainer, f"deficit/{name}")

    def add_tasks(
        self, target: str, tasks: Sequence[str], schedule: Mapping[int, str], unit: str, initial: str | None
    ) -> None:
        """Show a task schedule of ``target``: the ``task/<target>`` indicator (the task's index), a schedule entry."""
        self._tasks[target] = {
            "target": target, "tasks": list(tasks), "unit": unit, "initial": initial,
            "schedule": [{"at": int(t), "task": name} for t, name in sorted(schedule.items())],
        }
        note = ": " + ", ".join(f"{i} = {t}" for i, t in enumerate(tasks))
        self.tensorboard.add_indicator_charts(self.trainer, f"task/{target}", note)

    def add_indicator(self, key: str, note: str = "") -> None:
        """Show an indicator ``key`` without a schedule entry (a user's own intervention): its chart, with ``note``."""
        self.tensorboard.add_indicator_charts(self.trainer, key, note)

    # -- what callbacks log ----------------------------------------------------------------
    def indicator(self, key: str, value: float) -> None:
        """The value of the indicator ``key`` for the step about to be taken; logged as a step function."""
        trainer = self.trainer
        step = int(trainer.global_step)
        series = self._indicators.setdefault(key, StepSeries())
        changes = self._changes.setdefault(key, [])
        if not changes or changes[-1][1] != value:
            changes.append((step, float(value)))
        for at, logged in series.points(step, float(value), log_every_n_steps(trainer)):
            log_scalars(trainer, {key: logged}, at)

    def series(self, scalars: Mapping[str, float], step: int) -> None:
        """A monitor's scalars at optimizer step ``step``: to every logger; TensorBoard also overlays
        mode strengths as one run per series."""
        trainer = self.trainer
        log_scalars(trainer, scalars, step)
        self.tensorboard.log_series(trainer, scalars, step)

    def histograms(self, values: Mapping[str, Tensor], step: int) -> None:
        """``{tag: values}`` as histograms at ``step`` (TensorBoard only: other loggers have no histograms)."""
        self.tensorboard.add_histograms(self.trainer, values, step)

    def chart_spectra(
        self, maps: Sequence[str], targets: Sequence[str], modes: int, singular_values: int,
        theory: Mapping[str, Collection[str]],
    ) -> None:
        """Lay out the spectral monitor's charts (TensorBoard only; see ``TensorBoardView.add_spectral_charts``)."""
        self.tensorboard.add_spectral_charts(self.trainer, maps, targets, modes, singular_values, theory)

    # -- the schedule file -----------------------------------------------------------------
    def schedule(self) -> dict[str, Any]:
        """What the run's schedule file holds now (see :mod:`lightning_critical.schedule_file`)."""
        trainer = self.trainer
        last, per_epoch = int(trainer.global_step), _steps_per_epoch(trainer)
        deficits = []
        for name, entry in self._deficits.items():
            if per_epoch is None and any(w["unit"] == "epoch" for w in entry["windows"]):
                spans = _observed_spans(self._changes.get(f"deficit/{name}", []), last)  # epochs of unknown length
            else:
                found = (schedule_file.window_steps(w["start"], w["end"], w["unit"], per_epoch, last)
                         for w in entry["windows"])
                spans = [s for s in found if s is not None]
            deficits.append({**entry, "steps": [list(s) for s in spans]})
        tasks = []
        for target, entry in self._tasks.items():
            at = {e["at"]: e["task"] for e in entry["schedule"]}
            steps = schedule_file.switch_steps(at, entry["unit"], entry["initial"], per_epoch, last)
            if steps is None:  # epochs of unknown length: what the indicator saw
                names = entry["tasks"]
                steps = [(s, names[int(v)]) for s, v in self._changes.get(f"task/{target}", [])]
            tasks.append({**entry, "steps": [list(s) for s in steps]})
        seed = os.environ.get("PL_GLOBAL_SEED")
        out: dict[str, Any] = {
            "global_step": last, "epochs": int(trainer.current_epoch), "steps_per_epoch": per_epoch,
            "seed": int(seed) if seed and seed.lstrip("-").isdigit() else None, "deficits": deficits, "tasks": tasks,
        }
        if self._run:
            out["run"] = dict(self._run)
        return out

    def write_schedule(self) -> list[str]:
        """Write ``schedule.json`` into every logger's directory (rank zero; none without a logger); return paths."""
        trainer = self.trainer
        if not trainer.is_global_zero:
            return []
        schedule = self.schedule()
        return [schedule_file.write_schedule(d, schedule) for d in log_dirs(trainer)]


def _start(window: Window) -> int:
    return window.start


def _steps_per_epoch(trainer: pl.Trainer) -> int | None:
    try:
        return steps_per_epoch(trainer)
    except (AttributeError, TypeError):  # a trainer that never fitted
        return None


def _observed_spans(changes: Sequence[tuple[int, float]], last: int) -> list[tuple[int, int]]:
    """Half-open spans where an indicator read 1, from its value at every change (one still on closes at ``last``)."""
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    for step, value in changes:
        if value > 0.5 and opened is None:
            opened = step
        elif value <= 0.5 and opened is not None:
            spans.append((opened, step))
            opened = None
    if opened is not None and last > opened:
        spans.append((opened, last))
    return spans

"""How the package's records read in TensorBoard: step-function scalars, charts, per-series runs, histograms, HParams.

Everything TensorBoard-specific that the callbacks write goes through here (supporting another
logger touches this module only). Five views, each a small piece of this module:

* **0/1 indicators** (``deficit/<name>``, ``task/<target>``): TensorBoard smooths a scalar by
  an exponential moving average over its *logged points*, whatever their spacing. A curve with
  a handful of points (step 0, the edges, the end) is blurred across whole phases: at smoothing
  0.6 a deficit that ended reads 0.26 hundreds of steps later. :class:`StepSeries` logs a point
  at every step for :data:`EDGE_STEPS` steps after each change (and the step before it), and at
  every ``log_every_n_steps`` step otherwise, so the smoothed curve settles within about
  ``1 / (1 - smoothing)`` steps of each edge: a sharp step at smoothing 0.6 or 0.9 on runs of
  a few hundred steps and more (no spacing of points can beat an EMA at 0.99). The
  custom-scalars category ``deficits and tasks`` also draws every indicator as a *margin* chart
  whose value and bounds are the indicator itself (:func:`indicator_chart`): TensorBoard never
  smooths margin charts, so that one is exact at any smoothing.
* **Custom-scalars layout**: TensorBoard shows one layout per run directory (the last one
  written), so every callback adds its charts through :func:`add_charts`, which keeps the
  run's whole layout and rewrites it.
* **Series runs**: TensorBoard colours lines by *run*, so overlaying pathway a, pathway b and
  their theory in one chart needs one run per series. :func:`log_series` writes
  ``mode_strength/mode_<a>`` into sub-runs ``modes/<map>`` and ``modes/<map>_theory`` of the
  run directory (what ``SummaryWriter.add_scalars`` does); each mode gets one chart whose lines
  are told apart by colour and by name (``early/modes/a``, ``early/modes/b_theory``, ...).
* **Histograms**: the singular values of every target at every record (:func:`add_histograms`).
* **HParams**: one session per run, written when fit ends (:func:`write_session`), holding the
  module's hyperparameters, what every callback adds (``hparams_for_tensorboard()``: each
  deficit's kind, target and window, the task schedule) and the final value of every scalar
  metric as ``final/<name>`` hparam metrics. Lightning's start-of-fit placeholder session
  (``hp_metric = -1``) is not written. A driver that writes the session itself (the sweep) calls
  :func:`defer_session` before fit.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Collection, Mapping, Sequence
from numbers import Number
from typing import Any

from torch import Tensor

from lightning_critical._lightning import callbacks_of, tensorboard_loggers, tensorboard_writers
from lightning_critical._namespace import pl

EDGE_STEPS = 100
"""Points logged at every step after a change of an indicator: the smoothed curve settles within
``EDGE_STEPS`` points for smoothing up to about 0.95 (0.95 ** 100 < 0.01)."""

DEFICITS_CATEGORY = "deficits and tasks"
DEFICITS_CHART = "deficit active (1) or not (0); task index"

Chart = list[Any]  # ["Multiline", [tag regexes]] or ["Margin", [[value, lower, upper], ...]]
Layout = dict[str, dict[str, Chart]]

_LAYOUTS: weakref.WeakKeyDictionary[Any, Layout] = weakref.WeakKeyDictionary()
_SERIES: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_DEFERRED: weakref.WeakSet[Any] = weakref.WeakSet()
_MODE_KEY = re.compile(r"^(theory/)?mode_strength/(.+)/(\d+)$")


class StepSeries:
    """Which points of a piecewise-constant series to log so that it draws as a step function.

    :meth:`points` is called once per training step with the series' value at that step and
    returns the ``(step, value)`` pairs to log now: the first step of a fit, every step for
    ``edge_steps`` steps after a change (with the old value at the step before it, so the edge
    is vertical), and every ``every`` steps otherwise.

    Example::

        >>> series = StepSeries(edge_steps=2)
        >>> [series.points(s, float(3 <= s < 5), every=4) for s in range(8)]  # doctest: +NORMALIZE_WHITESPACE
        [[(0, 0.0)], [(1, 0.0)], [], [(2, 0.0), (3, 1.0)], [(4, 1.0)], [(5, 0.0)], [(6, 0.0)], []]
    """

    def __init__(self, edge_steps: int = EDGE_STEPS) -> None:
        self.edge_steps = edge_steps
        self.reset()

    def reset(self) -> None:
        """Forget the last fit (a resumed fit does not know when the value last changed)."""
        self.value: float | None = None
        self._changed_at: int | None = None
        self._last_step: int | None = None

    def points(self, step: int, value: float, every: int) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        if self.value is None:
            # The first step of every fit, resumed or branched ones included: the value may have
            # changed while the run was away, and the plot must not carry the old one forward.
            due, self._changed_at = True, step
        elif value != self.value:
            if step > 0 and self._last_step != step - 1:
                out.append((step - 1, self.value))
            self._changed_at, due = step, True
        else:
            near = self._changed_at is not None and step - self._changed_at < self.edge_steps
            due = near or step % max(every, 1) == 0
        self.value = value
        if due and self._last_step != step:
            out.append((step, value))
        if out:
            self._last_step = out[-1][0]
        return out


# -- custom-scalars layout -------------------------------------------------------------------
def add_charts(trainer: pl.Trainer, layout: Layout) -> None:
    """Merge ``layout`` ({category: {title: chart}}) into the run's custom-scalars layout and write it.

    Rank zero, TensorBoard loggers only; a no-op when nothing changes.
    """
    for writer in tensorboard_writers(trainer):
        merged = _LAYOUTS.setdefault(writer, {})
        changed = False
        for category, charts in layout.items():
            known = merged.setdefault(category, {})
            for title, chart in charts.items():
                if known.get(title) != chart:
                    known[title] = chart
                    changed = True
        if changed:
            writer.add_custom_scalars({c: dict(charts) for c, charts in merged.items() if charts})


def add_spectral_charts(
    trainer: pl.Trainer, maps: Sequence[str], targets: Sequence[str], modes: int, singular_values: int,
    theory: Mapping[str, Collection[str]],
) -> None:
    """The spectral monitor's charts: one per mode overlaying every map's ``K`` (and its theory) as
    separate runs (see :func:`log_series`), one per target overlaying its top ``singular_values``
    (and theory).

    ``modes``: how many modes are recorded (0: none); ``singular_values``: how many leading values
    are logged (0: none); ``theory``: ``{metric: targets with a theory}``.
    """
    layout: Layout = {}
    theory_k = theory.get("mode_strength", ())
    if modes and maps:
        series = ", ".join([*maps, *[f"{m}_theory" for m in maps if m in theory_k]])
        layout["mode strength"] = {
            f"mode {a}: {series}": ["Multiline", [exact(f"mode_strength/mode_{a}")]] for a in range(modes)
        }
    theory_s = theory.get("singular_values", ())
    if singular_values:
        charts = {}
        for m in [*maps, *[t for t in targets if t not in maps]]:
            tags = [f"^singular_values/{re.escape(m)}/\\d+$"]
            if m in theory_s:
                tags.append(f"^theory/singular_values/{re.escape(m)}/\\d+$")
            charts[f"{m} (top {singular_values})"] = ["Multiline", tags]
        layout["singular values"] = charts
    add_charts(trainer, layout)


def indicator_chart(tag: str, note: str = "") -> dict[str, Chart]:
    """A custom-scalars chart that draws ``tag`` unsmoothed: a margin chart whose value, lower and
    upper bounds are all ``tag`` (TensorBoard smooths multiline charts, never margin charts).

    Example::

        >>> indicator_chart("deficit/freeze/b")  # doctest: +NORMALIZE_WHITESPACE
        {'deficit/freeze/b (exact at any smoothing)':
         ['Margin', ['deficit/freeze/b', 'deficit/freeze/b', 'deficit/freeze/b']]}
    """
    return {f"{tag}{note} (exact at any smoothing)": ["Margin", [tag, tag, tag]]}


def exact(tag: str) -> str:
    """A custom-scalars tag regex that matches ``tag`` only (``.`` in parameter names is literal).

    Example::

        >>> exact("singular_values/net.0.weight/1")
        '^singular_values/net\\\\.0\\\\.weight/1$'
    """
    return f"^{re.escape(tag)}$"


# -- one run per series ----------------------------------------------------------------------
def series_run(name: str) -> str:
    """The sub-run directory of a mode-strength series: ``modes/<map>`` or ``modes/<map>_theory``."""
    return "modes/" + re.sub(r"[^A-Za-z0-9_.\-]+", "_", name)


def log_series(trainer: pl.Trainer, scalars: Mapping[str, float], step: int) -> None:
    """Copy ``mode_strength/<map>/<a>`` and ``theory/mode_strength/<map>/<a>`` into per-series runs.

    Each becomes ``mode_strength/mode_<a>`` in the sub-run :func:`series_run` of ``<map>`` (or
    ``<map>_theory``) of every TensorBoard logger's run, so one chart per mode overlays every
    map and its theory in distinct colours. Rank zero only.
    """
    by_run: dict[str, dict[str, float]] = {}
    for key, value in scalars.items():
        match = _MODE_KEY.match(key)
        if match:
            theory, name, mode = match.groups()
            run = series_run(name + ("_theory" if theory else ""))
            by_run.setdefault(run, {})[f"mode_strength/mode_{mode}"] = value
    if not by_run:
        return
    for writer in tensorboard_writers(trainer):
        subs = _SERIES.setdefault(writer, {})
        for run, values in by_run.items():
            if run not in subs:
                subs[run] = type(writer)(os.path.join(writer.log_dir, run))
            for tag, value in values.items():
                subs[run].add_scalar(tag, value, step)


def close_series(trainer: pl.Trainer) -> None:
    """Flush and close the per-series runs of the trainer's TensorBoard loggers (safe to call at any time)."""
    for writer in tensorboard_writers(trainer):
        for sub in _SERIES.pop(writer, {}).values():
            sub.close()


# -- histograms ------------------------------------------------------------------------------
def add_histograms(trainer: pl.Trainer, values: Mapping[str, Tensor], step: int) -> None:
    """Write ``{tag: values}`` as histograms at ``step`` to every TensorBoard logger (rank zero)."""
    for writer in tensorboard_writers(trainer):
        for tag, v in values.items():
            writer.add_histogram(tag, v.float().cpu(), step)


# -- HParams -----------------------------------------------------------------------------------
def defer_session(logger: Any) -> None:
    """Leave ``logger``'s HParams session to the caller, who writes it with :func:`write_session` after fit."""
    _DEFERRED.add(logger)


def hparam_value(value: Any) -> Any:
    """A value TensorBoard's HParams accepts (bool, number or string).

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


def write_session(
    trainer: pl.Trainer, extra: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None
) -> None:
    """Write the run's one HParams session to every TensorBoard logger (rank zero).

    Hparams: the module's (what Lightning's autolog stored on the logger), then every callback's
    :func:`callback_hparams`, then ``extra``. Metrics: ``metrics`` or :func:`final_metrics`,
    also logged as scalars at the last step.
    """
    metrics = dict(final_metrics(trainer) if metrics is None else metrics)
    if not metrics:
        # TensorBoard shows no session without a metric: a module that logs nothing still gets its
        # row, with Lightning's placeholder.
        metrics = {"hp_metric": -1.0}
    for logger in tensorboard_loggers(trainer):
        own = {k: v for k, v in dict(getattr(logger, "hparams", {}) or {}).items() if k != "_class_path"}
        params = {**own, **callback_hparams(trainer), **{k: hparam_value(v) for k, v in (extra or {}).items()}}
        logger.log_hyperparams(params, metrics=metrics, step=int(trainer.global_step))
        logger.save()


def writes_session(trainer: pl.Trainer, callback: pl.Callback) -> bool:
    """Whether ``callback`` writes the session at the end of this fit: the first contributing callback,
    unless a driver deferred the session."""
    contributors = [cb for cb in callbacks_of(trainer) if callable(getattr(cb, "hparams_for_tensorboard", None))]
    if not contributors or contributors[0] is not callback:
        return False
    return not any(logger in _DEFERRED for logger in tensorboard_loggers(trainer))

"""The TensorBoard implementation of a run's view: step-function scalars, charts, per-series runs, histograms, HParams.

:mod:`lightning_critical.views` decides what a run shows, for every logger; this module says how
it reads in TensorBoard, and is used only when the trainer has a ``TensorBoardLogger`` (rank zero
only). One :class:`TensorBoardView` per run (the run's :class:`~lightning_critical.views.RunView`
holds it) keeps the state TensorBoard needs between calls:

* **0/1 indicators** (``deficit/<name>``, ``task/<target>``): TensorBoard smooths a scalar by
  an exponential moving average over its *logged points*, whatever their spacing. A curve with
  a handful of points (step 0, the edges, the end) is blurred across whole phases: at smoothing
  0.6 a deficit that ended reads 0.26 hundreds of steps later. :class:`StepSeries` picks the
  points to log (every logger gets them): a point at every step for :data:`EDGE_STEPS` steps
  after each change (and the step before it), and at every ``log_every_n_steps`` step
  otherwise, so the smoothed curve settles within about ``1 / (1 - smoothing)`` steps of each
  edge: a sharp step at smoothing 0.6 or 0.9 on runs of a few hundred steps and more (no
  spacing of points can beat an EMA at 0.99). The custom-scalars category ``deficits and
  tasks`` also draws every indicator as a *margin* chart whose value and bounds are the
  indicator itself (:func:`indicator_chart`): TensorBoard never smooths margin charts, so that
  one is exact at any smoothing.
* **Custom-scalars layout**: TensorBoard shows one layout per run directory (the last one
  written), so :meth:`TensorBoardView.add_charts` keeps the run's whole layout and rewrites it,
  categories in reading order (deficits and tasks, reliance, ..., the spectral ones closed:
  :mod:`lightning_critical._tensorboard_layout`). Reliance series (``reliance/...``) get one
  chart each (a line per run in a sweep); a sweep's runs chart each leading singular value alone.
* **Series runs**: TensorBoard colours lines by *run*, so overlaying pathway a, pathway b and
  their theory in one chart needs one run per series. :meth:`TensorBoardView.log_series` writes
  ``mode_strength/mode_<a>`` into sub-runs ``modes/<map>`` and ``modes/<map>_theory`` of the
  run directory (what ``SummaryWriter.add_scalars`` does); each mode gets one chart whose lines
  are told apart by colour and by name (``early/modes/a``, ``early/modes/b_theory``, ...).
* **Histograms**: the singular values of every target at every record.
* **HParams**: the run's one session (:meth:`TensorBoardView.write_session`), whose content the
  view decides (the module's hyperparameters, what every callback adds, ``final/<name>``
  metrics). A sweep's runs write theirs alone, and :func:`write_sweep_view` gives the sweep one
  experiment and one layout at its root (:mod:`lightning_critical._tensorboard_hparams`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_critical import _tensorboard_hparams as hparams_files
from lightning_critical._lightning import tensorboard_loggers, tensorboard_writers
from lightning_critical._namespace import pl
from lightning_critical._tensorboard_layout import (
    DEFICITS_CATEGORY,
    MODES_CATEGORY,
    RELIANCE_CATEGORY,
    SINGULAR_VALUES_CATEGORY,
    Chart,
    Layout,
    layout_summary,
    proto_summary,
    sweep_layout,
)

EDGE_STEPS = 100
"""Points logged at every step after a change of an indicator: the smoothed curve settles within
``EDGE_STEPS`` points for smoothing up to about 0.95 (0.95 ** 100 < 0.01)."""

DEFICITS_CHART = "deficit active (1) or not (0); task index"
INDICATORS_CHART: list[Any] = ["Multiline", [r"^deficit/.*$", r"^task/.*$"]]

_MODE_KEY = re.compile(r"^(theory/)?mode_strength/(.+)/(\d+)$")
_RELIANCE_KEY = re.compile(r"^reliance/.+$")


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


def series_run(name: str) -> str:
    """The sub-run directory of a mode-strength series: ``modes/<map>`` or ``modes/<map>_theory``."""
    return "modes/" + re.sub(r"[^A-Za-z0-9_.\-]+", "_", name)


class TensorBoardView:
    """What one run writes to its TensorBoard loggers besides scalars; a no-op without one, and off rank zero.

    Keeps, per ``SummaryWriter``, the run's whole custom-scalars layout and its per-series sub-runs,
    so several callbacks add to one layout and one set of sub-runs. Its
    :class:`~lightning_critical.views.RunView` holds it; callbacks go through the view.

    Example::

        >>> view = TensorBoardView()
        >>> view.layout(None) == {}, view.series_runs(None)
        (True, [])
    """

    def __init__(self) -> None:
        self._layouts: dict[Any, Layout] = {}  # writer -> the layout of its run directory
        self._series: dict[Any, dict[str, Any]] = {}  # writer -> {sub-run: its SummaryWriter}
        self.one_of_many = False  # a sweep's run: charts whose lines are runs (set by the sweep, before fit)

    def layout(self, writer: Any) -> Layout:
        """The layout written so far to ``writer``'s run directory."""
        return self._layouts.get(writer, {})

    def series_runs(self, writer: Any) -> list[str]:
        """The sub-runs open under ``writer``'s run directory."""
        return sorted(self._series.get(writer, {}))

    # -- custom-scalars layout -----------------------------------------------------------
    def add_charts(self, trainer: pl.Trainer, layout: Layout) -> None:
        """Merge ``layout`` ({category: {title: chart}}) into the run's layout and write it (only when it changes)."""
        for writer in tensorboard_writers(trainer):
            merged = self._layouts.setdefault(writer, {})
            changed = False
            for category, charts in layout.items():
                known = merged.setdefault(category, {})
                for title, chart in charts.items():
                    if known.get(title) != chart:
                        known[title] = chart
                        changed = True
            if changed:  # ordered, the spectral categories closed (_tensorboard_layout)
                writer._get_file_writer().add_summary(layout_summary(merged))

    def add_indicator_charts(self, trainer: pl.Trainer, tag: str, note: str = "") -> None:
        """Chart the indicator ``tag`` in the category ``deficits and tasks``: beside the others, and unsmoothed."""
        self.add_charts(trainer, {DEFICITS_CATEGORY: {DEFICITS_CHART: INDICATORS_CHART, **indicator_chart(tag, note)}})

    def add_spectral_charts(
        self, trainer: pl.Trainer, maps: Sequence[str], targets: Sequence[str], modes: int, singular_values: int,
        theory: Mapping[str, Collection[str]],
    ) -> None:
        """The spectral monitor's charts, in closed categories: one per mode overlaying every map's ``K``
        (and its theory) as separate runs (see :meth:`log_series`), one per target overlaying its top
        ``singular_values`` (and theory); in a sweep's run (:attr:`one_of_many`) one per target and
        leading value instead: a line per run, so a sweep's chart stays readable.

        ``modes``: how many modes are recorded (0: none); ``singular_values``: how many leading values
        are logged (0: none); ``theory``: ``{metric: targets with a theory}``.
        """
        layout: Layout = {}
        theory_k = theory.get("mode_strength", ())
        if modes and maps:
            series = ", ".join([*maps, *[f"{m}_theory" for m in maps if m in theory_k]])
            layout[MODES_CATEGORY] = {
                f"mode {a}: {series}": ["Multiline", [exact(f"mode_strength/mode_{a}")]] for a in range(modes)
            }
        theory_s = theory.get("singular_values", ())
        if singular_values:
            charts = {}
            for m in [*maps, *[t for t in targets if t not in maps]]:
                if not self.one_of_many:
                    tags = [f"^singular_values/{re.escape(m)}/\\d+$"]
                    if m in theory_s:
                        tags.append(f"^theory/singular_values/{re.escape(m)}/\\d+$")
                    charts[f"{m} (top {singular_values})"] = ["Multiline", tags]
                    continue
                for i in range(singular_values):
                    tags = [exact(f"singular_values/{m}/{i}")]
                    if m in theory_s:
                        tags.append(exact(f"theory/singular_values/{m}/{i}"))
                    charts[f"{m}: singular value {i + 1}" + (" (and theory)" if m in theory_s else "")] = [
                        "Multiline", tags]
            layout[SINGULAR_VALUES_CATEGORY] = charts
        self.add_charts(trainer, layout)

    # -- one run per series --------------------------------------------------------------
    def log_series(self, trainer: pl.Trainer, scalars: Mapping[str, float], step: int) -> None:
        """Copy ``mode_strength/<map>/<a>`` and ``theory/mode_strength/<map>/<a>`` into per-series runs.

        Each becomes ``mode_strength/mode_<a>`` in the sub-run :func:`series_run` of ``<map>`` (or
        ``<map>_theory``) of every TensorBoard logger's run, so one chart per mode overlays every
        map and its theory in distinct colours.
        """
        reliance = {key: ["Multiline", [exact(key)]] for key in scalars if _RELIANCE_KEY.match(key)}
        if reliance:  # one chart per measure and source: a line per run
            self.add_charts(trainer, {RELIANCE_CATEGORY: reliance})
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
            subs = self._series.setdefault(writer, {})
            for run, values in by_run.items():
                if run not in subs:
                    subs[run] = type(writer)(os.path.join(writer.log_dir, run))
                for tag, value in values.items():
                    subs[run].add_scalar(tag, value, step)

    def close_series(self) -> None:
        """Flush and close every per-series run (safe to call at any time; a later record opens them again)."""
        for subs in self._series.values():
            for sub in subs.values():
                sub.close()
        self._series = {}

    # -- histograms and the HParams session ----------------------------------------------
    @staticmethod
    def add_histograms(trainer: pl.Trainer, values: Mapping[str, Tensor], step: int) -> None:
        """Write ``{tag: values}`` as histograms at ``step``."""
        for writer in tensorboard_writers(trainer):
            for tag, v in values.items():
                writer.add_histogram(tag, v.float().cpu(), step)

    def write_session(self, trainer: pl.Trainer, params: Mapping[str, Any], metrics: Mapping[str, float],
                      sweep: bool = False) -> None:
        """Write the run's HParams session: the logger's own hparams (the module's), then ``params``; ``metrics``
        are its hparam metrics (also logged as scalars at the last step). TensorBoard shows no session
        without a metric: give Lightning's placeholder ``{"hp_metric": -1}`` then.

        ``sweep``: the run is one of a sweep, whose experiment (its columns) is written once at its
        root (:func:`~lightning_critical._tensorboard_hparams.complete_sweep`): the session goes alone
        into the run's :data:`~lightning_critical._tensorboard_hparams.SESSION_FILE`, with the run's layout.
        """
        step = int(trainer.global_step)
        for logger in tensorboard_loggers(trainer):
            own = {k: v for k, v in dict(getattr(logger, "hparams", {}) or {}).items() if k != "_class_path"}
            if sweep:
                logger.log_hyperparams({**own, **params}, metrics={})  # hparams.yaml; no summary without metrics
                layout = self._layouts.get(logger.experiment)
                hparams_files.write_run_session(str(logger.log_dir), {**own, **params}, metrics, step,
                                                layout=layout_summary(layout) if layout else None)
            else:
                logger.log_hyperparams({**own, **params}, metrics=dict(metrics), step=step)
            logger.save()

    @staticmethod
    def present(trainer: pl.Trainer) -> bool:
        """Whether ``trainer`` has a TensorBoard logger on this rank."""
        return bool(tensorboard_loggers(trainer))


def write_sweep_view(root: str, lead: Sequence[str], last: Sequence[str]) -> str | None:
    """The one view of a sweep whose runs log under ``root`` (``<out>/tensorboard``), written at ``root``:
    the HParams experiment (every run given every column, ``lead`` first and shown, ``last`` last:
    :func:`~lightning_critical._tensorboard_hparams.complete_sweep`) and the runs' custom-scalars
    layouts merged, in reading order (:func:`~lightning_critical._tensorboard_layout.sweep_layout`).
    Returns the file written (``None``: no run to show)."""
    summaries = []
    experiment = hparams_files.complete_sweep(root, lead, last)
    if experiment is not None:
        summaries.append(experiment)
    layout = sweep_layout(root, hparams_files.SESSION_FILE)  # the runs' layouts, kept in their session files
    if layout is not None:
        summaries.append(proto_summary(layout))
    return hparams_files.write_sweep_file(root, summaries)

"""Figures of a user's own run: any monitor metric per layer over steps, the Fisher trace over epochs, spectra.

Every function takes a monitor history table (``monitor.to_frame()``,
:func:`~lightning_critical.history.read_history`, or a table of
:func:`~lightning_critical.plots.run_files.load_run`) or a run directory, and returns a matplotlib
``Figure``. Deficit windows are shaded: given as ``windows={name: [(start, end), ...]}`` in
optimizer steps, or, for a run directory, read from its ``schedule.json`` (any logger; the
``deficit/<name>`` scalars of its event file for older runs; see
:mod:`lightning_critical.plots.run_files`), where task switches are also marked (dotted lines).
:func:`plot_run` writes every figure of a run as PNG files (``lightning-critical plot RUN_DIR``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, TypeAlias

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightning_critical._checks import check_choice
from lightning_critical._output import DPI, write_outputs
from lightning_critical.history import COLUMNS
from lightning_critical.plots._figure import root_figure, subplots
from lightning_critical.plots.run_files import FISHER_METRIC, Run, Windows, load_run
from lightning_critical.spectral import name_matches

HistoryLike: TypeAlias = "pd.DataFrame | Run | str | os.PathLike[str]"
WINDOW_COLORS: tuple[str, ...] = ("tab:orange", "tab:purple", "tab:green", "tab:red", "tab:brown", "tab:pink")
MAX_LEGEND = 20


Switches = dict[str, list[tuple[int, str]]]


def _resolve(
    history: HistoryLike, windows: Windows | None, part: str
) -> tuple[pd.DataFrame, Windows, float | None, Switches]:
    """The table, the windows (explicit ones win), steps per epoch and the task switches of ``history``."""
    if isinstance(history, (str, os.PathLike)):
        history = load_run(history)
    if isinstance(history, Run):
        table = history.fisher if part == "fisher" else history.spectral
        return table, history.windows if windows is None else windows, history.steps_per_epoch, history.switches
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history={type(history).__name__} is not valid: give a monitor history DataFrame "
                        "(monitor.to_frame()), a Run (load_run) or a run directory.")
    missing = [c for c in COLUMNS if c not in history.columns]
    if missing:
        raise ValueError(f"history lacks the columns {missing} of a monitor history (has {list(history.columns)}).")
    return history, windows or {}, None, {}


def _select(table: pd.DataFrame, metric: str, targets: str | Sequence[str] | None, what: str) -> pd.DataFrame:
    check_choice("metric", metric, sorted(table["metric"].unique()), extra=f" (the metrics of the {what} history)")
    rows = table[table["metric"] == metric]
    if targets is not None:
        names = list(dict.fromkeys(rows["target"]))
        rows = rows[[name_matches(t, targets) for t in rows["target"]]]
        if rows.empty:
            raise ValueError(f"targets={targets!r} matches no target of {metric!r}; targets: {names[:40]}.")
    return rows


def _colors(n: int) -> list[Any]:
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    return list(matplotlib.colormaps["viridis"](np.linspace(0, 0.95, n)))


def shade_windows(ax: Axes, windows: Windows, scale: float = 1.0) -> list[Any]:
    """Shade every deficit window on ``ax`` (x in steps, or steps divided by ``scale``); one colour per deficit.

    Returns the patches drawn, each labelled ``deficit <name>`` (the first of each name) for the legend.

    Example::

        >>> from lightning_critical.plots._figure import subplots
        >>> fig, ax = subplots()
        >>> [p.get_label() for p in shade_windows(ax, {"freeze/b": [(8, 16), (30, 40)]})]
        ['deficit freeze/b', '_nolegend_']
    """
    patches = []
    for i, (name, spans) in enumerate(windows.items()):
        color = WINDOW_COLORS[i % len(WINDOW_COLORS)]
        for j, (start, end) in enumerate(spans):
            patches.append(ax.axvspan(start / scale, end / scale, color=color, alpha=0.15, lw=0, zorder=0,
                                      label=f"deficit {name}" if j == 0 else "_nolegend_"))
    return patches


def mark_switches(ax: Axes, switches: Switches, scale: float = 1.0) -> None:
    """A dotted line where each task starts training (after step 0), its name at the top of the axes.

    Example::

        >>> from lightning_critical.plots._figure import subplots
        >>> fig, ax = subplots()
        >>> mark_switches(ax, {"datamodule": [(0, "pretrain"), (12, "target")]})
        >>> [line.get_xdata()[0] for line in ax.lines], ax.texts[0].get_text()
        ([12.0], ' task target')
    """
    for steps in switches.values():
        for step, task in steps:
            if step > 0:
                ax.axvline(step / scale, color="0.35", ls=":", lw=1.0, zorder=0.5, label="_nolegend_")
                ax.text(step / scale, 0.98, f" task {task}", transform=ax.get_xaxis_transform(), fontsize=7,
                        color="0.3", va="top", ha="left")


def _legend(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if 0 < len(handles) <= MAX_LEGEND:
        ax.legend(handles, labels, frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    elif handles:  # a legend of a hundred layers hides the plot; say how to pick a few instead
        ax.text(1.01, 0.5, f"{len(handles)} targets:\nno legend;\npick some\nwith targets=", transform=ax.transAxes,
                fontsize=7, va="center")


def metric_over_steps(
    history: HistoryLike,
    metric: str,
    windows: Windows | None = None,
    targets: str | Sequence[str] | None = None,
    index: int | None = None,
    logy: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """One line per target (layer) of a monitor metric over optimizer steps, deficit windows shaded.

    Args:
        history: a monitor history table (``SpectralMonitor.to_frame()``), a
            :class:`~lightning_critical.plots.run_files.Run` or a run directory.
        metric: e.g. ``"effective_rank"``, ``"stable_rank"``, ``"spectral_norm"``, any metric the history holds.
            For metrics with an index (``singular_values``, ``mode_strength``) every index is drawn in its
            target's colour, unless ``index`` picks one.
        windows: ``{deficit name: [(start, end), ...]}`` in optimizer steps (default: the run directory's).
        targets: names or globs of the targets to draw (default: all).
        index: draw only this singular-value / mode index.
        logy: logarithmic y axis.
        ax: draw into this axes instead of a new figure.
        title: the axes title (default: the metric's name).

    Raises:
        ValueError: the metric or the targets are not in the history (the message lists what is).

    Example::

        >>> h = pd.DataFrame({"step": [0, 0, 10, 10, 20, 20], "epoch": 0, "target": ["a", "b"] * 3,
        ...                   "metric": "effective_rank", "index": -1, "value": [4.0, 4.0, 3.5, 3.9, 2.1, 3.8]})
        >>> fig = metric_over_steps(h, "effective_rank", windows={"freeze/b": [(5, 15)]})
        >>> ax = fig.axes[0]
        >>> len(ax.lines), ax.get_title(), ax.get_xlabel()
        (2, 'effective_rank', 'optimizer step')
    """
    table, windows, _, switches = _resolve(history, windows, "spectral")
    rows = _select(table, metric, targets, "spectral")
    if index is not None:
        rows = rows[rows["index"] == index]
        if rows.empty:
            raise ValueError(f"index={index!r} is not recorded for {metric!r}.")
    own = ax is None
    fig, ax = subplots(figsize=(6.4, 3.6)) if ax is None else (root_figure(ax), ax)
    names = list(dict.fromkeys(rows["target"]))
    for color, name in zip(_colors(len(names)), names, strict=True):
        part = rows[rows["target"] == name]
        for j, (i, line) in enumerate(part.groupby("index", sort=True)):
            line = line.sort_values("step")
            label = name if i < 0 or index is not None or j == 0 else "_nolegend_"
            ax.plot(line["step"], line["value"], color=color, lw=1.2, marker="." if len(line) < 30 else None,
                    label=label)
    shade_windows(ax, windows)
    mark_switches(ax, switches)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric if index is None else f"{metric}[{index}]")
    ax.set_title(title or (metric if index is None else f"{metric}, index {index}"), fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    _legend(ax)
    if own:
        fig.tight_layout()
    return fig


def fisher_over_epochs(
    history: HistoryLike,
    windows: Windows | None = None,
    steps_per_epoch: float | None = None,
    targets: str | Sequence[str] | None = None,
    total: bool = True,
    logy: bool | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The Fisher trace of each layer over epochs (:class:`~lightning_critical.FisherMonitor`), deficit windows shaded.

    Args:
        history: the Fisher monitor's history table, a :class:`~lightning_critical.plots.run_files.Run` or a
            run directory.
        windows: ``{deficit name: [(start, end), ...]}`` in optimizer steps; drawn at ``step /
            steps_per_epoch`` epochs (default: the run directory's, none for a table).
        steps_per_epoch: to place step windows on the epoch axis (default: inferred from the
            records, whose steps at consecutive epochs differ by one epoch's steps).
        targets: names or globs of the layers to draw (default: every layer).
        total: also draw the sum over layers (target ``"total"``), dashed black.
        logy: logarithmic y axis (default: when every value is positive and they span more than 10x).
        ax: draw into this axes instead of a new figure.
        title: the axes title.

    Raises:
        ValueError: no ``fisher_trace`` in the history, ``targets`` matching nothing, or
            windows that cannot be placed (a single recorded epoch and no ``steps_per_epoch``).

    Example::

        >>> h = pd.DataFrame({"step": [0, 0, 0, 4, 4, 4], "epoch": [0, 0, 0, 1, 1, 1],
        ...                   "target": ["l1", "l2", "total"] * 2, "metric": "fisher_trace", "index": -1,
        ...                   "value": [1.0, 2.0, 3.0, 0.5, 1.5, 2.0]})
        >>> fig = fisher_over_epochs(h, windows={"blur": [(0, 4)]})
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['l1', 'l2', 'total']
    """
    table, windows, inferred, switches = _resolve(history, windows, "fisher")
    if table.empty or FISHER_METRIC not in set(table["metric"]):
        raise ValueError("the history holds no fisher_trace records (a FisherMonitor writes them, into "
                         "fisher_history.csv of the run directory).")
    rows = _select(table, FISHER_METRIC, targets, "Fisher")
    if steps_per_epoch is None:
        steps_per_epoch = inferred
        if steps_per_epoch is None:
            firsts = table.groupby("epoch")["step"].min().sort_index()
            if len(firsts) >= 2:
                steps_per_epoch = float(np.median(np.diff(firsts.to_numpy(float)) / np.diff(firsts.index.to_numpy())))
    if windows and not steps_per_epoch:
        raise ValueError("windows are in optimizer steps, and the history has a single recorded epoch: "
                         "give steps_per_epoch to place them on the epoch axis.")
    own = ax is None
    fig, ax = subplots(figsize=(6.4, 3.6)) if ax is None else (root_figure(ax), ax)
    layers = [t for t in dict.fromkeys(rows["target"]) if t != "total"]
    for color, name in zip(_colors(len(layers)), layers, strict=True):
        line = rows[rows["target"] == name].sort_values("epoch")
        ax.plot(line["epoch"], line["value"], color=color, lw=1.2, marker="o", markersize=3, label=name)
    if total:
        line = table[(table["metric"] == FISHER_METRIC) & (table["target"] == "total")].sort_values("epoch")
        if len(line):
            ax.plot(line["epoch"], line["value"], color="k", lw=1.2, ls="--", label="total")
    if windows:
        shade_windows(ax, windows, scale=float(steps_per_epoch or 1.0))
    if steps_per_epoch:
        mark_switches(ax, switches, scale=float(steps_per_epoch))
    values = rows["value"].to_numpy(float)
    values = values[np.isfinite(values)]
    if logy is None:
        logy = bool(len(values)) and values.min() > 0 and values.max() > 10 * values.min()
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("trace of the Fisher information")
    ax.set_title(title or "Fisher trace per layer", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    _legend(ax)
    if own:
        fig.tight_layout()
    return fig


def _in_window(step: float, windows: Windows) -> list[str]:
    return [name for name, spans in windows.items() if any(a <= step < b for a, b in spans)]


def spectra_at_steps(
    history: HistoryLike,
    steps: Sequence[int] | None = None,
    targets: str | Sequence[str] | None = None,
    windows: Windows | None = None,
    max_targets: int = 12,
    ncols: int = 3,
) -> Figure:
    """Singular values (largest first) of each target at chosen steps, one panel per target.

    The spectra come from the ``singular_values`` rows of a :class:`~lightning_critical.SpectralMonitor`
    history (recorded by default). A step that was not recorded is replaced by the nearest recorded one;
    legend entries say which steps fall inside a deficit window.

    Args:
        history: a spectral history table, a :class:`~lightning_critical.plots.run_files.Run` or a run directory.
        steps: optimizer steps to draw (default: four recorded steps, evenly spread from the first to the last).
        targets: names or globs of the targets (default: all, up to ``max_targets``).
        windows: ``{deficit name: [(start, end), ...]}`` in optimizer steps, to mark steps inside them.
        max_targets: at most this many panels (the title says when targets were left out).
        ncols: panels per row.

    Raises:
        ValueError: no ``singular_values`` in the history, or ``targets`` matching nothing.

    Example::

        >>> h = pd.DataFrame({"step": [0, 0, 50, 50], "epoch": 0, "target": "w", "metric": "singular_values",
        ...                   "index": [0, 1, 0, 1], "value": [1.0, 0.5, 3.0, 0.1]})
        >>> fig = spectra_at_steps(h)
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['step 0', 'step 50']
    """
    table, windows, _, _ = _resolve(history, windows, "spectral")
    if "singular_values" not in set(table["metric"]):
        raise ValueError("the history holds no singular_values records: keep 'singular_values' in the "
                         "SpectralMonitor's metrics (it is among the defaults).")
    rows = _select(table, "singular_values", targets, "spectral")
    recorded = np.array(sorted(rows["step"].unique()))
    if steps is None:
        picks = np.unique(np.linspace(0, len(recorded) - 1, min(4, len(recorded))).round().astype(int))
        chosen = [int(recorded[i]) for i in picks]
    else:
        chosen = list(dict.fromkeys(int(recorded[np.abs(recorded - s).argmin()]) for s in steps))
    names = list(dict.fromkeys(rows["target"]))
    shown = names[:max_targets]
    ncols = max(1, min(ncols, len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    fig, axes = subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(chosen)))
    for ax, name in zip(axes.flat, shown, strict=False):
        part = rows[rows["target"] == name]
        for color, step in zip(colors, chosen, strict=True):
            s = part[part["step"] == step].sort_values("index")
            inside = _in_window(step, windows)
            label = f"step {step}" + (f" (deficit {', '.join(inside)})" if inside else "")
            ax.plot(s["index"] + 1, s["value"], color=color, marker="o", markersize=2.5, lw=1, label=label)
        values = part["value"].to_numpy(float)
        if len(values) and np.nanmin(values) > 0:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("index (largest first)", fontsize=7)
        ax.set_ylabel("singular value", fontsize=7)
        ax.tick_params(which="both", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(chosen), 4), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    left_out = f" (first {len(shown)} of {len(names)} targets)" if len(shown) < len(names) else ""
    fig.suptitle(f"Singular values at chosen steps{left_out}", fontsize=9, y=1.06 if nrows == 1 else 1.02)
    fig.tight_layout()
    return fig


def plot_run(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    windows: Windows | None = None,
    dpi: int = DPI,
) -> dict[str, str]:
    """Write every figure of a run directory as PNG files; return ``{figure name: path}``.

    One ``<metric>.png`` per spectral metric of the history (:func:`metric_over_steps`),
    ``fisher_trace.png`` with a Fisher history (:func:`fisher_over_epochs`), ``spectra.png``
    with singular values (:func:`spectra_at_steps`). This is ``lightning-critical plot RUN_DIR``.

    Args:
        run_dir: the run's log directory (see :func:`~lightning_critical.plots.run_files.load_run`).
        out: where the PNGs go (default: ``<run_dir>/figures``).
        metrics: the spectral metrics to draw (default: every one in the history).
        steps: the steps of ``spectra.png``.
        windows: deficit windows in optimizer steps (default: read from ``schedule.json``, else the event file).
        dpi: resolution of the PNGs.

    Raises:
        ValueError: ``run_dir`` holds no monitor history, or a metric in ``metrics`` is not in it.
    """
    run = load_run(run_dir)
    if windows is not None:
        run.windows = {k: list(v) for k, v in windows.items()}
    directory = os.fspath(out) if out is not None else os.path.join(run.directory, "figures")
    figures: dict[str, Figure] = {}
    available = list(dict.fromkeys(run.spectral["metric"]))
    for metric in available if metrics is None else metrics:
        if metric == FISHER_METRIC:
            continue
        figures[metric] = metric_over_steps(run, metric)
    if not run.fisher.empty:
        figures[FISHER_METRIC] = fisher_over_epochs(run)
    if "singular_values" in available:
        figures["spectra"] = spectra_at_steps(run, steps=steps)
    return write_outputs(directory, figures={name: (f"{name}.png", fig) for name, fig in figures.items()}, dpi=dpi)

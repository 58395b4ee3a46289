"""The curve of a sweep: final metric against the window (its end or onset), mean ± s.e. over seeds.

It states what the data show and claims nothing more: the title says what the metric is drawn
against (what ``T`` / ``k`` means for this protocol: a deficit or a task switch, removal or
sliding) and over how many seeds; one seed draws no error band and says so; the baseline is a
band (mean ± s.e.); failed or NaN runs are marked; and the y axis spans at least
:data:`MIN_SPAN` of the baseline's magnitude, so a difference of a fraction of a percent is
not drawn as a dramatic dip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightning_critical._checks import check_choice
from lightning_critical.curve import X_CHOICES, CurveText, curve_text, json_key, summarize
from lightning_critical.plots._figure import root_figure, subplots

MIN_SPAN = 0.1
"""The y axis spans at least this fraction of the baseline's magnitude (of the largest mean without one)."""

def _groups(summary: pd.DataFrame, keys: list[str]) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """The summary's lines, in its order: one per combination of ``keys``' values (lists and dicts too)."""
    if not keys:
        return [((), summary)]
    hashed = summary[keys].apply(lambda row: tuple(json_key(v) for v in row), axis=1) if len(summary) else []
    parts: dict[Any, list[int]] = {}
    for i, key in enumerate(hashed):
        parts.setdefault(key, []).append(i)
    return [(tuple(summary[k].iloc[rows[0]] for k in keys), summary.iloc[rows]) for rows in parts.values()]


def _shown(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mark_failures(ax: Axes, summary: pd.DataFrame, x: str) -> bool:
    """Mark windows with failed or non-finite runs (at their mean, or on the axis when none is left) and count them."""
    bad = summary["n_failed"] + summary["n_nonfinite"] if "n_failed" in summary else pd.Series(0, summary.index)
    flagged = summary[bad > 0]
    if flagged.empty:
        return False
    total = int(bad.sum())
    windows = flagged[~flagged["baseline"]]
    in_base = int(bad[summary["baseline"]].sum())
    where = f" ({in_base} in the baseline)" if in_base else ""
    label = f"{total} run{'s' if total != 1 else ''} failed or NaN{where}: not in the means"
    style: dict[str, Any] = {"marker": "X", "s": 60, "color": "crimson", "zorder": 5, "linewidths": 0.5,
                             "edgecolors": "white"}
    xs = windows[x].to_numpy(float)
    means = windows["mean"].to_numpy(float)
    finite = np.isfinite(means)
    ax.scatter(xs[finite], means[finite], label=label, **style)
    if (~finite).any():  # every run of the window failed: mark it on the x axis
        ax.scatter(xs[~finite], np.full((~finite).sum(), 0.02), transform=ax.get_xaxis_transform(),
                   clip_on=False, label=None if finite.any() else label, **style)
    for xv, yv, k in zip(xs, means, bad[flagged.index][~flagged["baseline"]], strict=True):
        y, transform = (yv, ax.transData) if np.isfinite(yv) else (0.02, ax.get_xaxis_transform())
        ax.annotate(f"{int(k)}", (xv, y), xycoords=transform, textcoords="offset points", xytext=(5, 4),
                    fontsize=7, color="crimson")
    if in_base and windows.empty:
        ax.scatter([], [], label=label, **style)
    return True


def plot_critical_period_curve(
    table: pd.DataFrame,
    metric: str | None = None,
    x: str | None = None,
    by: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Mean final ``metric`` against the window's end (removal) or start (sliding), ± one standard error over seeds.

    The words follow the protocol (``table.attrs``: the grid's ``kind`` and what the windows
    hold, ``intervention``, both written by :func:`lightning_critical.sweep.run`): "deficit
    removed at epoch T", "task switched at epoch T", "deficit onset k (epoch; window length 5)".
    The title names the metric, the x axis and the seeds per point ("n = 5 seeds per point";
    one seed: "no error bars", and none are drawn). The no-deficit baseline is a dashed line in
    a band (mean ± s.e.). With swept values (``by``, default the table's swept parameters), one
    line per combination. Windows with failed runs or a NaN / infinite metric are marked (a red
    cross with the count, on the x axis when no run of the window is left) and the legend says
    how many runs are missing from the means.

    The y axis shows the curves, their bands and the baseline band, and spans at least
    :data:`MIN_SPAN` (10 %) of the baseline's magnitude: a 0.5 % wobble of an accuracy near 0.98
    fills a twentieth of the axis, not all of it, while the 5-20 % effects of the bundled
    critical-period experiments still fill most of it.

    Args:
        table: a sweep table (:func:`lightning_critical.sweep.run` or ``load``); the means are over
            runs with ``status == "ok"`` and a finite metric, the others are marked.
        metric: the metric column (default: the table's first metric).
        x: ``"window_end"`` (removal curves: when the deficit is removed) or ``"window_start"``
            (sliding curves: the deficit's onset); default from the grid's kind.
        by: columns that split lines (default: the swept parameters).
        ax: draw into this axes instead of a new figure.
        title: the axes title (default: what is drawn against what, over how many seeds).

    Returns:
        The matplotlib ``Figure`` (save it with ``fig.savefig``).

    Example::

        >>> t = pd.DataFrame({"window": ["none"] * 2 + ["[0, 5) epochs"] * 2 + ["[0, 10) epochs"] * 2,
        ...                   "window_start": [np.nan, np.nan, 0, 0, 0, 0],
        ...                   "window_end": [np.nan, np.nan, 5, 5, 10, 10],
        ...                   "baseline": [True, True, False, False, False, False], "seed": [0, 1] * 3,
        ...                   "val_acc": [0.9, 0.92, 0.85, 0.83, 0.6, 0.62], "status": ["ok"] * 6})
        >>> t.attrs.update(kind="removal", intervention="deficit")
        >>> ax = plot_critical_period_curve(t, "val_acc").axes[0]
        >>> [ax.get_xlabel()] + ax.get_title().splitlines()
        ['deficit removed at epoch T', 'Final val_acc vs deficit end T (removal)', 'mean ± s.e., n = 2 seeds per point']
    """
    summary = summarize(table, metric, by=by)
    x = summary.attrs["x"] if x is None else x
    check_choice("x", x, X_CHOICES)
    text = curve_text(summary, x)
    keys = list(table.attrs.get("params", []) if by is None else by)
    fig, ax = (subplots(figsize=(5.0, 3.6)) if ax is None else (root_figure(ax), ax))
    groups = _groups(summary, keys)
    colors = matplotlib.colormaps["viridis"](np.linspace(0.05, 0.8, max(len(groups), 1)))
    # one spare color when there are no groups, hence not strict
    shared = summary.attrs.get("deficit_params", [])  # missing in the one baseline that serves all their values
    for color, (key, part) in zip(colors, groups, strict=False):
        name = ", ".join(f"{k}={_shown(v)}" for k, v in zip(keys, key, strict=True)
                         if not (k in shared and part["baseline"].astype(bool).all()))
        if shared and set(keys) <= set(shared) and len(part) and part["baseline"].astype(bool).all():
            color = "0.35"  # the one baseline of several curves (swept deficit values): neutral
        _draw_group(ax, part, x, color, text, f" ({name})" if name else "")
    flagged = _mark_failures(ax, summary, x)
    _keep_span(ax, summary)
    ax.set_xlabel(text.axis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_ylabel(f"final {summary.attrs['metric']}")
    ax.set_title(title or f"Final {summary.attrs['metric']} vs {text.versus}\n{seeds_text(summary)}", fontsize=9)
    if flagged:  # below the axes: the marks sit anywhere, the x axis included
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    else:
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _draw_group(ax: Axes, part: pd.DataFrame, x: str, color: Any, text: CurveText, name: str) -> None:
    """One line of the curve with its ± s.e. band (none for one seed), and its baseline: a dashed line in a band."""
    baseline = part["baseline"].astype(bool)  # an empty summary's column is of objects: ~ would not be a mask
    curve = part[~baseline].sort_values(x)
    curve = curve[np.isfinite(curve["mean"].to_numpy(float))]  # windows left without a value are marked apart
    xs, mean, sem = curve[x].to_numpy(float), curve["mean"].to_numpy(float), curve["sem"].to_numpy(float)
    if (~baseline).any() or not len(part):  # a baseline-only group (shared by swept deficit values): no curve
        ax.plot(xs, mean, marker="o", markersize=4, color=color, label=f"{text.curve}{name}")
    if np.isfinite(sem).any():  # one seed has no standard error: no band rather than a band of width 0
        ax.fill_between(xs, mean - np.nan_to_num(sem), mean + np.nan_to_num(sem), color=color, alpha=0.25, lw=0)
    base = part[baseline]
    if len(base) and np.isfinite(float(base["mean"].iloc[0])):
        b_mean, b_sem = float(base["mean"].iloc[0]), float(base["sem"].iloc[0])
        ax.axhline(b_mean, color=color, ls="--", lw=1, label=f"{text.baseline}{name}")
        if np.isfinite(b_sem):
            ax.axhspan(b_mean - b_sem, b_mean + b_sem, color=color, alpha=0.15, lw=0)


def seeds_text(summary: pd.DataFrame) -> str:
    """How many seeds each point averages: ``mean ± s.e., n = 5 seeds per point`` (``n = 3-5`` when they differ;
    ``one seed per point: no error bars``).

    Example::

        >>> seeds_text(pd.DataFrame({"n_seeds": [1, 1]})), seeds_text(pd.DataFrame({"n_seeds": [2, 5, 0]}))
        ('n = 1 seed per point: no error bars', 'mean ± s.e., n = 2-5 seeds per point')
    """
    counts = summary["n_seeds"][summary["n_seeds"] > 0]
    if counts.empty:
        return "no finished run with a finite value"
    fewest, most = int(counts.min()), int(counts.max())
    if most == 1:
        return "n = 1 seed per point: no error bars"
    seeds = f"{fewest}-{most} seeds" if fewest != most else f"{most} seeds"
    return f"mean ± s.e., n = {seeds} per point{' (one seed: no error bar)' if fewest == 1 else ''}"


def _keep_span(ax: Axes, summary: pd.DataFrame) -> None:
    """Widen the y axis, about its centre, to :data:`MIN_SPAN` of the baseline's magnitude when it spans less."""
    means = summary["mean"].to_numpy(float)
    base = summary.loc[summary["baseline"], "mean"].to_numpy(float)
    scale = np.abs(base[np.isfinite(base)]) if np.isfinite(base).any() else np.abs(means[np.isfinite(means)])
    if not len(scale) or not np.isfinite(ax.dataLim.y0):
        return
    low, high = ax.get_ylim()
    wanted = MIN_SPAN * float(scale.max())
    if high - low < wanted:
        centre = (low + high) / 2
        ax.set_ylim(centre - wanted / 2, centre + wanted / 2)

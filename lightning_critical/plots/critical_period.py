"""The critical-period curve of a sweep: final metric against the deficit window, with seed bands."""

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
from lightning_critical.curve import json_key, summarize
from lightning_critical.plots._figure import root_figure, subplots

X_CHOICES: tuple[str, ...] = ("window_end", "window_start")


def _default_x(table: pd.DataFrame) -> str:
    kind = table.attrs.get("kind")
    if kind == "removal":
        return "window_end"
    if kind == "sliding":
        return "window_start"
    starts = pd.to_numeric(table.loc[~table["baseline"].astype(bool), "window_start"], errors="coerce").dropna()
    return "window_end" if len(starts) and (starts == 0).all() else "window_start"


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


def _curve_label(summary: pd.DataFrame, x: str) -> str:
    """``deficit in [0, T)`` (removal), ``deficit in [T, T + 5)`` (sliding) or ``deficit`` (anything else)."""
    windows = summary[~summary["baseline"]]
    if x == "window_end" and (windows["window_start"] == 0).all():
        return "deficit in [0, T)"
    lengths = (windows["window_end"] - windows["window_start"]).unique()
    if x == "window_start" and len(lengths) == 1:
        return f"deficit in [T, T + {lengths[0]:g})"
    return "deficit"


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

    The no-deficit baseline is drawn as a horizontal line with its own band. With swept
    values (``by``, default the table's swept parameters), one line per combination. Windows
    with failed runs or a NaN / infinite metric are marked (a red cross with the count, on the
    x axis when no run of the window is left) and the legend says how many runs are missing
    from the means.

    Args:
        table: a sweep table (:func:`lightning_critical.sweep.run` or ``load``); the means are over
            runs with ``status == "ok"`` and a finite metric, the others are marked.
        metric: the metric column (default: the table's first metric).
        x: ``"window_end"`` (removal curves: when the deficit is removed) or ``"window_start"``
            (sliding curves: the deficit's onset); default from the grid's kind.
        by: columns that split lines (default: the swept parameters).
        ax: draw into this axes instead of a new figure.
        title: the axes title.

    Returns:
        The matplotlib ``Figure`` (save it with ``fig.savefig``).

    Example::

        >>> t = pd.DataFrame({"window": ["none"] * 2 + ["[0, 5) epochs"] * 2 + ["[0, 10) epochs"] * 2,
        ...                   "window_start": [np.nan, np.nan, 0, 0, 0, 0],
        ...                   "window_end": [np.nan, np.nan, 5, 5, 10, 10],
        ...                   "baseline": [True, True, False, False, False, False], "seed": [0, 1] * 3,
        ...                   "val_acc": [0.9, 0.92, 0.85, 0.83, 0.6, 0.62], "status": ["ok"] * 6})
        >>> fig = plot_critical_period_curve(t, "val_acc")
        >>> fig.axes[0].get_xlabel()
        'deficit removed at (epoch)'
    """
    summary = summarize(table, metric, by=by)
    metric = summary.attrs["metric"]
    if x is None:
        x = _default_x(table)
    check_choice("x", x, X_CHOICES)
    keys = list(table.attrs.get("params", []) if by is None else by)
    fig, ax = (subplots(figsize=(5.0, 3.6)) if ax is None else (root_figure(ax), ax))
    groups = _groups(summary, keys)
    colors = matplotlib.colormaps["viridis"](np.linspace(0.05, 0.8, max(len(groups), 1)))
    units = table.loc[~table["baseline"].astype(bool), "unit"] if "unit" in table.columns else pd.Series(dtype=object)
    unit = units.iloc[0] if len(units) else "epoch"
    what = _curve_label(summary, x)
    # one spare color when there are no groups, hence not strict
    shared = summary.attrs.get("deficit_params", [])  # missing in the one baseline that serves all their values
    for color, (key, part) in zip(colors, groups, strict=False):
        name = ", ".join(f"{k}={_shown(v)}" for k, v in zip(keys, key, strict=True)
                         if not (k in shared and part["baseline"].all()))
        if part["baseline"].all() and shared and set(keys) <= set(shared):
            color = "0.35"  # the baseline of several curves: neutral, and no empty curve in the legend
        curve = part[~part["baseline"]].sort_values(x)
        curve = curve[np.isfinite(curve["mean"].to_numpy(float))]  # windows left without a value are marked below
        xs, mean = curve[x].to_numpy(float), curve["mean"].to_numpy(float)
        sem = np.nan_to_num(curve["sem"].to_numpy(float))
        if len(part) > int(part["baseline"].sum()):
            ax.plot(xs, mean, marker="o", markersize=4, color=color, label=f"{what}{' (' + name + ')' if name else ''}")
            ax.fill_between(xs, mean - sem, mean + sem, color=color, alpha=0.25, lw=0)
        base = part[part["baseline"]]
        if len(base):
            b_mean, b_sem = float(base["mean"].iloc[0]), float(np.nan_to_num(base["sem"].iloc[0]))
            ax.axhline(b_mean, color=color, ls="--", lw=1, label=f"no deficit{' (' + name + ')' if name else ''}")
            ax.axhspan(b_mean - b_sem, b_mean + b_sem, color=color, alpha=0.12, lw=0)
    flagged = _mark_failures(ax, summary, x)
    n_seeds = int(summary["n_seeds"].max()) if len(summary) else 0
    fewest = int(summary["n_seeds"][summary["n_seeds"] > 0].min()) if (summary["n_seeds"] > 0).any() else 0
    seeds = f"{fewest}-{n_seeds} seeds" if fewest != n_seeds else f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    ax.set_xlabel(f"{'deficit removed at' if x == 'window_end' else 'deficit onset'} ({unit})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_ylabel(f"final {metric}")
    ax.set_title(title or f"Critical period: mean ± s.e. over {seeds}", fontsize=9)
    if flagged:  # below the axes: the marks sit anywhere, the x axis included
        ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    else:
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig

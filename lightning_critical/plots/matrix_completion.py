"""Figures of the matrix-completion experiments. Every function takes a results table; none trains."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lightning_critical.plots._figure import root_figure, subplots


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; the table lacks {missing} (has {list(df.columns)}).")


def plot_critical_period(results: pd.DataFrame, hue: str = "depth", ax: Axes | None = None) -> Figure:
    """Final test loss against switch epoch, one line per value of ``hue`` (default: depth).

    Draws into ``ax`` when given (its figure's layout is left to the caller) and returns the
    top-level figure that holds it; otherwise into a new, tightly laid-out figure.

    ``results``: the table of :func:`~lightning_critical.experiments.matrix_completion_sweep`
    (columns ``switch_epoch``, ``test_loss`` and ``hue``).

    Example::

        >>> df = pd.DataFrame({"depth": [1, 1, 3, 3], "switch_epoch": [0, 10, 0, 10],
        ...                    "test_loss": [0.6, 0.6, 0.0, 1.1]})
        >>> fig = plot_critical_period(df)
        >>> len(fig.axes[0].lines)
        2
    """
    _require(results, ["switch_epoch", "test_loss", hue], "plot_critical_period")
    own_figure = ax is None
    fig, ax = subplots(figsize=(4.2, 3.2)) if ax is None else (root_figure(ax), ax)
    values = sorted(results[hue].unique())
    colors = matplotlib.colormaps["viridis"](np.linspace(0.1, 0.85, len(values)))
    for color, value in zip(colors, values, strict=True):
        part = results[results[hue] == value].sort_values("switch_epoch")
        ax.plot(part["switch_epoch"], part["test_loss"], marker="o", markersize=3.5, color=color,
                label=f"{hue} {value}")
    ax.set_xlabel("switch epoch (pre-training length)")
    ax.set_ylabel("final test loss on target task")
    ax.set_ylim(0, max(1e-3, float(results["test_loss"].max())) * 1.1)
    if values:
        ax.legend(frameon=False, fontsize=8)
    ax.set_title("Matrix completion: transfer critical period", fontsize=9)
    if own_figure:  # a caller's figure may use another layout engine (constrained) or hold subfigures
        fig.tight_layout()
    return fig


def _wide(table: pd.DataFrame, metric: str, max_values: int | None = None) -> pd.DataFrame:
    """One ``metric`` of a long table as ``(switch_epoch, step) x index`` (a column per index)."""
    rows = table[table["metric"] == metric]
    if max_values is not None:
        rows = rows[rows["index"] < max_values]
    return rows.pivot_table(index=["switch_epoch", "step"], columns="index", values="value")


def plot_singular_value_trajectories(
    history: pd.DataFrame, theory: pd.DataFrame | None = None, max_values: int = 10
) -> Figure:
    """Top singular values of ``W`` (and test loss) over training, one panel per switch epoch.

    ``history``: the long table of :func:`~lightning_critical.experiments.matrix_completion_trajectories`
    (``switch_epoch, step, metric, index, value`` with metrics ``singular_values`` and
    ``test_loss``). ``theory``: optional table in the same format (``singular_values`` rows, e.g.
    the ``singular_values`` of :func:`lightning_critical.theory.switch_theory`'s flow, one row per
    step and index), drawn dashed on top.

    Example::

        >>> rows = [(0, step, metric, i, 1.0 + step) for step in (0, 10)
        ...         for metric, i in (("test_loss", -1), ("singular_values", 0), ("singular_values", 1))]
        >>> history = pd.DataFrame(rows, columns=["switch_epoch", "step", "metric", "index", "value"])
        >>> len(plot_singular_value_trajectories(history).axes[0].lines)
        3
    """
    _require(history, ["switch_epoch", "step", "metric", "index", "value"], "plot_singular_value_trajectories")
    values = _wide(history, "singular_values", max_values)
    loss = _wide(history, "test_loss")
    if values.empty or loss.empty:
        raise ValueError("plot_singular_value_trajectories needs 'singular_values' and 'test_loss' records; the "
                         f"table has metrics {sorted(set(history['metric']))}.")
    expected = _wide(theory, "singular_values", max_values) if theory is not None else None
    switches = sorted(history["switch_epoch"].unique())
    fig, axes = subplots(2, len(switches), figsize=(3.4 * len(switches), 4.8), squeeze=False, sharex="col")
    colors = matplotlib.colormaps["summer"](np.linspace(0, 0.9, len(values.columns)))
    for col, switch in enumerate(switches):
        part = values.loc[switch]
        top, bottom = axes[0, col], axes[1, col]
        for color, index in zip(colors, values.columns, strict=True):
            top.plot(part.index, part[index], color=color, lw=1.2)
        if expected is not None and switch in expected.index.get_level_values(0):
            th = expected.loc[switch]
            for index in th.columns:
                top.plot(th.index, th[index], color="k", ls="--", lw=0.8)
        part_loss = loss.loc[switch]
        bottom.plot(part_loss.index, part_loss[-1], color="tab:red")
        for a in (top, bottom):
            a.axvline(switch, ls="--", color="gray", lw=0.8)
        top.set_title(f"switch at epoch {switch}", fontsize=9)
        top.set_ylabel("singular values of W" if col == 0 else "")
        bottom.set_ylabel("test loss (active task)" if col == 0 else "")
        bottom.set_xlabel("epoch")
        bottom.set_yscale("log")
    if theory is not None:
        axes[0, 0].plot([], [], "k--", lw=0.8, label="gradient-flow theory")
        axes[0, 0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig

"""Figures without pyplot: no global figure registry, no backend switching for the caller."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure


def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any) -> tuple[Figure, Any]:
    """Like ``plt.subplots`` but returns a bare ``Figure`` (save it with ``fig.savefig``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def root_figure(ax: Axes) -> Figure:
    """The top-level ``Figure`` that holds ``ax``, also when ``ax`` sits in a ``SubFigure``."""
    fig = ax.figure
    return fig if isinstance(fig, Figure) else fig.figure

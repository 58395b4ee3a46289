"""Figures without pyplot: no global figure registry, no backend switching for the caller."""

from __future__ import annotations

from typing import Any, Optional

from matplotlib.figure import Figure


def subplots(*args: Any, figsize: Optional[tuple[float, float]] = None, **kwargs: Any) -> tuple[Figure, Any]:
    """Like ``plt.subplots`` but returns a bare ``Figure`` (save it with ``fig.savefig``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)

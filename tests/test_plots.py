"""Figures drawn from small hand-made tables (the experiments' own tables are tested elsewhere)."""

import warnings

import pandas as pd
from matplotlib.figure import Figure

from lightning_critical.plots import plot_critical_period, plot_deficit_trajectories

CRITICAL = pd.DataFrame({"depth": [1, 1, 3, 3], "switch_epoch": [0, 10, 0, 10], "test_loss": [0.6, 0.6, 0.0, 1.1]})


def test_deficit_trajectories_draws_every_pathway():
    """Markers were zipped with four symbols, so a fifth pathway vanished from plot and legend."""
    pathways = ["a", "b", "c", "d", "e"]
    rows = [
        {"label": "early", "onset": 0, "length": 5, "deficit": "freeze", "step": step, "pathway": p, "mode": 0,
         "singular_value": 2.0, "measured": 0.1 * step, "theory": 0.1 * step}
        for p in pathways for step in range(0, 20, 10)
    ]
    fig = plot_deficit_trajectories(pd.DataFrame(rows), marker_every=10)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [t for t in legend if t.startswith("SGD")] == [f"SGD $K_{{{p}}}$" for p in pathways]
    assert len(fig.axes[0].collections) == len(pathways)  # one scatter per (mode, pathway)


def test_critical_period_into_a_subfigure_returns_the_figure():
    """``ax.figure`` of a SubFigure's axes is the SubFigure, which has no ``tight_layout``."""
    fig = Figure()
    left = fig.add_subfigure(fig.add_gridspec(1, 2)[0])
    ax = left.subplots()
    assert plot_critical_period(CRITICAL, ax=ax) is fig
    assert len(ax.lines) == 2


def test_critical_period_keeps_the_callers_layout():
    fig = Figure(layout="constrained")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switching the caller's layout engine warns
        plot_critical_period(CRITICAL, ax=fig.subplots())
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"


def test_critical_period_of_an_empty_table():
    """One colour used to be drawn for zero lines; ``zip(strict=True)`` now pins the counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_critical_period(CRITICAL.iloc[:0])
    assert len(fig.axes[0].lines) == 0 and fig.axes[0].get_legend() is None

"""Figures: each function takes a results table and returns a matplotlib Figure."""

from lightning_critical.plots.critical_period import plot_critical_period_curve
from lightning_critical.plots.matrix_completion import plot_critical_period, plot_singular_value_trajectories
from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits

__all__ = [
    "plot_critical_period",
    "plot_critical_period_curve",
    "plot_deficit_trajectories",
    "plot_deprived_share",
    "plot_phase_portraits",
    "plot_singular_value_trajectories",
]

"""Figures: each function takes a results table and returns a matplotlib Figure."""

from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits
from lightning_critical.plots.matrix_completion import plot_critical_period, plot_singular_value_trajectories
from lightning_critical.plots.critical_period import plot_critical_period_curve

"""Figures: each function takes a results table (or a run directory) and returns a matplotlib Figure.

The bundled experiments' figures (``plot_critical_period``, ``plot_deficit_trajectories``, ...)
take those experiments' tables; those of :mod:`lightning_critical.plots.runs` (``metric_over_steps``,
``fisher_over_epochs``, ``spectra_at_steps``, ``plot_run``) draw any user run from its monitors' histories.
"""

from lightning_critical.plots.critical_period import plot_critical_period_curve
from lightning_critical.plots.matrix_completion import plot_critical_period, plot_singular_value_trajectories
from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits
from lightning_critical.plots.run_files import Run, load_run, read_deficit_windows
from lightning_critical.plots.runs import fisher_over_epochs, metric_over_steps, plot_run, spectra_at_steps

__all__ = [
    "Run",
    "fisher_over_epochs",
    "load_run",
    "metric_over_steps",
    "plot_critical_period",
    "plot_critical_period_curve",
    "plot_deficit_trajectories",
    "plot_deprived_share",
    "plot_phase_portraits",
    "plot_run",
    "plot_singular_value_trajectories",
    "read_deficit_windows",
    "spectra_at_steps",
]

"""One call per published experiment, built only on the public API."""

from lightning_critical.experiments.matrix_completion import (
    matrix_completion_parameter_sweep,
    matrix_completion_sweep,
    matrix_completion_table,
    matrix_completion_trajectories,
)
from lightning_critical.experiments.pathways import (
    deficit_onset_sweep,
    early_middle_late,
    pathway_deficit_run,
    phase_trajectories,
)

__all__ = [
    "deficit_onset_sweep",
    "early_middle_late",
    "matrix_completion_parameter_sweep",
    "matrix_completion_sweep",
    "matrix_completion_table",
    "matrix_completion_trajectories",
    "pathway_deficit_run",
    "phase_trajectories",
]

"""The published experiments, each a :class:`~lightning_critical.sweep.Study` and a function of its table.

One call per experiment (``early_middle_late``, ``deficit_onset_sweep``,
``matrix_completion_parameter_sweep``, ...) builds its study (``pathway_deficit_study``,
``deficit_onset_study``, ``switch_sweep_study``), runs it with
:func:`lightning_critical.sweep.run_study` and reads the table back; all on the public API.
"""

from lightning_critical.experiments.matrix_completion import (
    matrix_completion_parameter_sweep,
    matrix_completion_sweep,
    matrix_completion_table,
    matrix_completion_trajectories,
)
from lightning_critical.experiments.matrix_completion_study import switch_sweep_execution, switch_sweep_study
from lightning_critical.experiments.pathway_study import deficit_onset_study, pathway_deficit_study
from lightning_critical.experiments.pathways import (
    deficit_onset_sweep,
    early_middle_late,
    pathway_deficit_run,
    phase_trajectories,
)

__all__ = [
    "deficit_onset_study",
    "deficit_onset_sweep",
    "early_middle_late",
    "matrix_completion_parameter_sweep",
    "matrix_completion_sweep",
    "matrix_completion_table",
    "matrix_completion_trajectories",
    "pathway_deficit_run",
    "pathway_deficit_study",
    "phase_trajectories",
    "switch_sweep_execution",
    "switch_sweep_study",
]

"""One call per published experiment, built only on the public API."""

from lightning_critical.experiments.pathways import (
    deficit_onset_sweep,
    early_middle_late,
    pathway_deficit_run,
    phase_trajectories,
)

"""Theory for the bundled settings: exact dynamics and closed forms (numpy/scipy, no Lightning)."""

from lightning_critical.theory.factorization import integrate_factorization, switch_theory
from lightning_critical.theory.pathways import (
    deprived_share,
    depth2_mode_strength,
    pathway_dynamics,
    pathway_flow,
    pathway_ode,
)

__all__ = [
    "deprived_share",
    "depth2_mode_strength",
    "integrate_factorization",
    "pathway_dynamics",
    "pathway_flow",
    "pathway_ode",
    "switch_theory",
]

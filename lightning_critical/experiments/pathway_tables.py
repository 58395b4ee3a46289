"""The multi-pathway experiments' results, as functions of a sweep's table (and the pathway theory).

:mod:`lightning_critical.experiments.pathway_study` says what trains; these functions read
what the engine wrote: the final mode strengths in the table's metric columns, the
trajectories in the monitor's history file in each run's ``log_dir``. The theory is joined
here, once, from :class:`~lightning_critical.experiments.pathway_study.PathwayTheory`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical.experiments.pathway_study import (
    HISTORY_FILE,
    PathwayTheory,
    build_pathway_model,
    hierarchical_data,
    initial_mode_strengths,
)
from lightning_critical.history import read_history
from lightning_critical.schedule import Window
from lightning_critical.spectral import join_theory
from lightning_critical.theory import deprived_share, pathway_dynamics

PHASE_WINDOWS: dict[str, tuple[int, int]] = {"early": (0, 150), "late": (750, 900)}
"""The deficit windows of the phase portraits (:func:`phase_trajectories`), in epochs."""


def row_window(row: Mapping[str, Any]) -> Window | None:
    """The deficit window of one table row of a one-window grid (``None`` for the baseline)."""
    return None if row["baseline"] else Window(int(row["window_start"]), int(row["window_end"]))


def rows_by_window(table: pd.DataFrame) -> dict[Window | None, Mapping[str, Any]]:
    """The table's rows keyed by their window, ``None`` for the baseline (one seed, no swept values)."""
    return {row_window(row): row for _, row in table.iterrows()}


def trajectory_frame(log_dir: str, theory: PathwayTheory | None, windows: Sequence[Window]) -> pd.DataFrame:
    """One run's mode strengths over training beside the theory of its windows.

    Columns: step, pathway, mode, measured, singular_value, theory (NaN without a theory).
    """
    records = read_history(os.path.join(log_dir, HISTORY_FILE))
    by_pathway = theory.by_pathway(windows) if theory is not None else {}
    k = join_theory(records[records.metric == "mode_strength"], {"mode_strength": by_pathway})
    k = k.rename(columns={"target": "pathway", "index": "mode", "value": "measured"})
    k = k[["step", "pathway", "mode", "measured", "theory"]].reset_index(drop=True)
    k.insert(4, "singular_value", task_singular_values(theory)[k["mode"].to_numpy()])
    return k


def task_singular_values(theory: PathwayTheory | None = None) -> np.ndarray:
    """The singular values of the default hierarchical task (from the theory when there is one)."""
    return theory.singular_values if theory is not None else hierarchical_data().task_basis()[1].numpy()


def onset_theory(depth: int, onsets: Sequence[int], length: int, max_epochs: int, deprived: str, mode: str,
                 seed: int = 0, **model_kwargs: Any) -> pd.DataFrame:
    """The theory's final share of every mode held by the deprived pathway, per deficit onset (one depth).

    Columns: depth, onset, mode, singular_value, share, source (``"theory"``).
    """
    dm, model = build_pathway_model(depth=depth, seed=seed, **model_kwargs)
    index = list(model.pathways).index(deprived)
    k0 = initial_mode_strengths(model, dm)
    s = dm.task_basis()[1].numpy()
    rows: list[dict[str, Any]] = []
    for onset in onsets:
        traj = pathway_dynamics(s, depth, k0, model_kwargs.get("lr", 0.01), max_epochs,
                                deficits={index: [(onset, onset + length)]}, mode=mode)
        share = deprived_share(traj[-1], index)
        rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a], source="theory")
                    for a in range(len(s)))
    return pd.DataFrame(rows)


def measured_shares(metrics: Mapping[str, float], deprived: str) -> np.ndarray:
    """The deprived pathway's share of each mode, from the metrics ``K/<pathway>/<mode>`` of one run."""
    k = pd.DataFrame([{"pathway": key.split("/")[1], "mode": int(key.split("/")[2]), "measured": value}
                      for key, value in metrics.items()]).pivot_table(index="pathway", columns="mode",
                                                                      values="measured")
    return (k.loc[deprived] / k.sum(axis=0)).to_numpy()


def onset_measured(table: pd.DataFrame, onsets: Sequence[int], length: int, max_epochs: int,
                   deprived: str) -> pd.DataFrame:
    """The trained nets' final share per depth and onset, from the onset study's table (its baseline row is
    the run of an onset past the end of training; otherwise it is not shown).

    Columns: depth, onset, mode, singular_value, share, source (``"measured"``).
    """
    s = task_singular_values()
    metrics = table.attrs["metrics"]
    by_run = {(int(row["depth"]), row_window(row)): row for _, row in table.iterrows()}
    rows: list[dict[str, Any]] = []
    for depth in dict.fromkeys(int(d) for d in table["depth"]):
        for onset in onsets:
            window = onset_window(onset, length, max_epochs)
            share = measured_shares({k: by_run[(depth, window)][k] for k in metrics}, deprived)
            rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a], source="measured")
                        for a in range(len(s)))
    return pd.DataFrame(rows)


def onset_window(onset: int, length: int, max_epochs: int) -> Window | None:
    """The deficit window of an onset as the study trains it (``None`` at or past the end of training)."""
    return Window(onset, min(onset + length, max_epochs)) if onset < max_epochs else None


def phase_trajectories(
    depths: Sequence[int] = (1, 2, 4),
    windows: Mapping[str, tuple[int, int]] | None = None,
    mode: int = 0,
    max_epochs: int = 1000,
    lr: float = 0.01,
    init_scale: float = 0.01,
    **model_kwargs: Any,
) -> pd.DataFrame:
    """Theory trajectories of ``(K_a, K_b)`` on one mode, for phase portraits.

    Each depth starts from the ``K(0)`` of the bundled net built with ``init_scale`` and
    ``model_kwargs`` (init_noise, init_noise_draw, independent_noise, width, seed), i.e. where
    the SGD runs of :func:`~lightning_critical.experiments.early_middle_late` start. Columns:
    depth, label, step, k_a, k_b, mode, singular_value, deprived (whether the update at that
    step is inside the window). ``windows``: label -> ``(start, end)`` deficit of pathway ``b``
    (default :data:`PHASE_WINDOWS`).
    """
    if windows is None:
        windows = PHASE_WINDOWS
    s = task_singular_values()
    rows = []
    for depth in depths:
        dm, model = build_pathway_model(depth=depth, lr=lr, init_scale=init_scale, **model_kwargs)
        k0 = initial_mode_strengths(model, dm)
        for label, (start, end) in windows.items():
            traj = pathway_dynamics(s, depth, k0, lr, max_epochs, deficits={1: [(start, end)]})
            steps = np.arange(max_epochs + 1)
            rows.append(pd.DataFrame(dict(
                depth=depth, label=label, step=steps, k_a=traj[:, 0, mode], k_b=traj[:, 1, mode],
                mode=mode, singular_value=s[mode], deprived=(steps >= start) & (steps < end),
            )))
    return pd.concat(rows, ignore_index=True)

"""The bundled experiments run on lc.sweep and still give the numbers they gave before it, exactly.

``tests/data/experiments_before_engine.json`` holds the outputs of the experiments' own loops
and process pool (commit 3b9532c), recorded at small settings: the pathway trajectories of
early / middle / late runs, the onset sweep's theory and SGD shares (one onset whose window
runs past the end of training), the matrix-completion parameter sweep's rows (float32 and
float64). Floats are stored with ``repr``, so the comparison is exact.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd
import pytest
import torch

from lightning_critical.experiments import deficit_onset_sweep, early_middle_late, matrix_completion_parameter_sweep

with open(os.path.join(os.path.dirname(__file__), "data", "experiments_before_engine.json")) as fh:
    BEFORE: dict[str, Any] = json.load(fh)

MC: dict[str, Any] = dict(continue_epochs=200, size=12, n_observed=60, pretrain_rank=3, target_rank=1, lr=0.5)
CASES = {
    "early_middle_late_small": lambda: early_middle_late(
        {"early": 0, "middle": 20, "late": 40}, length=10, depth=3, width=16, max_epochs=60, every_n_steps=10),
    "onset_small": lambda: deficit_onset_sweep(
        depths=(2, 3), onsets=(0, 20, 40), sgd_onsets=(0, 20, 40), length=10, max_epochs=60, width=16),
    "onset_overflow": lambda: deficit_onset_sweep(  # [50, 70) runs past the 60 epochs
        depths=(2,), onsets=(0, 50), sgd_onsets=(0, 50), length=20, max_epochs=60, width=16, seed=1),
    "mc_depth_small": lambda: matrix_completion_parameter_sweep("depth", [1, 2, 3], switch_epochs=[0, 200], **MC),
    "mc_seed_f64": lambda: matrix_completion_parameter_sweep(
        "seed", [0, 1], depth=2, switch_epochs=[0, 100, 300], dtype=torch.float64, **{**MC, "continue_epochs": 200}),
}


def _renamed(before: pd.DataFrame) -> pd.DataFrame:
    """The recording under today's names (the numbers are untouched): the measured column and source
    were called ``sgd``, the matrix-completion singular values ``sv_<i>``."""
    before = before.rename(columns=lambda c: f"singular_values/{c[3:]}" if c.startswith("sv_") else c)
    before = before.rename(columns={"sgd": "measured"})
    if "source" in before:
        before["source"] = before["source"].replace({"sgd": "measured"})
    return before


@pytest.mark.parametrize("name", sorted(CASES))
def test_experiment_output_is_what_it_was_before_the_engine(name):
    table = CASES[name]()
    if "seconds" in table.columns:
        assert (table["seconds"] > 0).all()
        table = table.drop(columns="seconds")
    before = _renamed(pd.DataFrame(BEFORE[name]))
    # exact values; the dtypes of the recording are JSON's (float32 singular values were stored as float64)
    pd.testing.assert_frame_equal(table, before, check_exact=True, check_dtype=False)
    assert list(table.dtypes.index) == list(before.columns)

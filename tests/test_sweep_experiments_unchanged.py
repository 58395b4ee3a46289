"""The bundled experiments run on lc.sweep and still give the numbers they gave before it.

``tests/data/experiments_before_engine.json`` holds the outputs of the experiments' own loops
and process pool (commit 3b9532c), recorded at small settings: the pathway trajectories of
early / middle / late runs, the onset sweep's theory and SGD shares (one onset whose window
runs past the end of training), the matrix-completion parameter sweep's rows (float32 and
float64). Floats are stored with ``repr`` (no rounding in the file).

What is exact and what has a tolerance: the recording was made under other versions of torch,
numpy and scipy, whose kernels (BLAS, LAPACK's SVD and QR, reductions) may round the last bit
of a result differently; training then carries those differences along. So every column that
a run *configures* or *counts* (steps, modes, labels, onsets, depths, seeds, lr, ...) must match
exactly, and every column a run *computes* in floating point (``COMPUTED``) must match within
``RTOL`` of its precision:

* float32 runs: ``1e-6``, about 8 float32 ulps (eps = 1.19e-7). Measured drift between the
  recording and torch 2.13 (with numpy 2.4.6 / scipy 1.17.1, and the same with the oldest
  numpy 1.24 / scipy 1.10 that pyproject.toml allows): at most 4.2e-7, about 3.5 ulps.
* float64 runs: ``1e-12``, about 4500 float64 ulps (eps = 2.2e-16): each of a few hundred SGD
  epochs adds its rounding differences, and a loss near its minimum is a sum of small
  differences. Measured drift: at most 2.1e-15, so the bound has a factor 500 of room.

A real change of the computation moves these numbers far more: the lr changed by 1e-4 of itself
(test below) moves the pathway trajectories by up to 3e-4 (median 3e-5). Singular
values are compared relative to the largest one of their row, not each to itself: a backward
stable SVD of ``A`` is exact for some ``A + E`` with ``|E| ~ eps |A|``, so every computed
``s_i`` may move by ``eps * s_1`` (Weyl), which is a large relative change of a small ``s_i``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_critical.experiments import deficit_onset_sweep, early_middle_late, matrix_completion_parameter_sweep

with open(os.path.join(os.path.dirname(__file__), "data", "experiments_before_engine.json")) as fh:
    BEFORE: dict[str, Any] = json.load(fh)

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}
# Columns computed by library numerics (everything else is configured or counted: exact).
COMPUTED = ("measured", "theory", "singular_value", "share", "test_loss", "train_loss")
SINGULAR_VALUES = "singular_values/"  # wide columns, one per index: compared relative to the row's s_1

MC: dict[str, Any] = dict(continue_epochs=200, size=12, n_observed=60, pretrain_rank=3, target_rank=1, lr=0.5)
# name: (the run, the dtype it computes in)
CASES = {
    "early_middle_late_small": (lambda: early_middle_late(
        {"early": 0, "middle": 20, "late": 40}, length=10, depth=3, width=16, max_epochs=60, every_n_steps=10),
        torch.float32),
    "onset_small": (lambda: deficit_onset_sweep(
        depths=(2, 3), onsets=(0, 20, 40), sgd_onsets=(0, 20, 40), length=10, max_epochs=60, width=16),
        torch.float32),
    "onset_overflow": (lambda: deficit_onset_sweep(  # [50, 70) runs past the 60 epochs
        depths=(2,), onsets=(0, 50), sgd_onsets=(0, 50), length=20, max_epochs=60, width=16, seed=1),
        torch.float32),
    "mc_depth_small": (lambda: matrix_completion_parameter_sweep("depth", [1, 2, 3], switch_epochs=[0, 200], **MC),
                       torch.float32),
    "mc_seed_f64": (lambda: matrix_completion_parameter_sweep(
        "seed", [0, 1], depth=2, switch_epochs=[0, 100, 300], dtype=torch.float64, **{**MC, "continue_epochs": 200}),
        torch.float64),
}


def _renamed(before: pd.DataFrame) -> pd.DataFrame:
    """The recording under today's names (the numbers are untouched): the measured column and source
    were called ``sgd``, the matrix-completion singular values ``sv_<i>``."""
    before = before.rename(columns=lambda c: f"singular_values/{c[3:]}" if c.startswith("sv_") else c)
    before = before.rename(columns={"sgd": "measured"})
    if "source" in before:
        before["source"] = before["source"].replace({"sgd": "measured"})
    return before


def assert_matches_recording(table: pd.DataFrame, before: pd.DataFrame, rtol: float) -> None:
    """Columns in the same order; configured/counted columns exact; computed ones within ``rtol``
    (of each value, or of the row's largest singular value); NaN only where the recording has NaN."""
    assert list(table.columns) == list(before.columns)
    assert len(table) == len(before)
    sv_columns = [c for c in before.columns if c.startswith(SINGULAR_VALUES)]
    row_s1 = before[sv_columns].abs().max(axis=1).to_numpy() if sv_columns else np.zeros(len(before))
    for column in before.columns:
        if column not in COMPUTED and not column.startswith(SINGULAR_VALUES):
            # exact, values and kind (the recording's float32 columns were stored as float64: dtype not checked)
            pd.testing.assert_series_equal(table[column], before[column], check_exact=True, check_dtype=False,
                                           obj=f"column {column!r}")
            continue
        got, want = table[column].to_numpy(np.float64), before[column].to_numpy(np.float64)
        scale = row_s1 if column.startswith(SINGULAR_VALUES) else np.abs(want)
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{column}: NaN in other rows than recorded"
        err = np.where(np.isnan(want), 0.0, np.abs(got - want))
        worst = int(np.argmax(err - rtol * scale))
        assert err[worst] <= rtol * scale[worst], (
            f"{column}, row {worst}: {got[worst]!r} vs recorded {want[worst]!r}: off by {err[worst]:.3g}, "
            f"more than rtol {rtol:g} of {scale[worst]:.6g}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_experiment_output_is_what_it_was_before_the_engine(name):
    run, dtype = CASES[name]
    table = run()
    if "seconds" in table.columns:
        assert (table["seconds"] > 0).all()
        table = table.drop(columns="seconds")
    assert_matches_recording(table, _renamed(pd.DataFrame(BEFORE[name])), RTOL[dtype])


def test_the_tolerance_sees_a_small_real_change():
    """The float32 bound is not vacuous: the lr changed by 1e-4 of itself moves the trajectories past it,
    and so does one recorded value nudged by 10 float32 ulps; a changed count is caught exactly."""
    before = _renamed(pd.DataFrame(BEFORE["early_middle_late_small"]))
    nudged_lr = early_middle_late({"early": 0, "middle": 20, "late": 40}, length=10, depth=3, width=16,
                                  max_epochs=60, every_n_steps=10, lr=0.01 * (1 + 1e-4))
    with pytest.raises(AssertionError, match="measured"):
        assert_matches_recording(nudged_lr, before, RTOL[torch.float32])
    nudged = before.copy()
    nudged.loc[7, "theory"] *= 1 + 10 * np.finfo(np.float32).eps
    with pytest.raises(AssertionError, match="theory, row 7"):
        assert_matches_recording(before, nudged, RTOL[torch.float32])
    recount = before.copy()
    recount.loc[3, "step"] += 1
    with pytest.raises(AssertionError, match="step"):
        assert_matches_recording(before, recount, RTOL[torch.float32])
    assert_matches_recording(before, before.copy(), 0.0)  # and the recording matches itself at rtol 0

"""Each bundled experiment is an ordinary Study, run by run_study, and a function of its table.

Running the experiment's Study yourself (``lc.sweep.run_study`` on a changed copy, e.g.
``dataclasses.replace(study, seeds=[0])``) and reading the table with the experiment's table
functions gives exactly the rows of the experiment's own function.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pandas as pd

import lightning_critical as lc
from lightning_critical.experiments import (
    deficit_onset_study,
    deficit_onset_sweep,
    early_middle_late,
    matrix_completion_parameter_sweep,
    matrix_completion_sweep,
    pathway_deficit_study,
    switch_sweep_execution,
    switch_sweep_study,
)
from lightning_critical.experiments.matrix_completion import switch_table
from lightning_critical.experiments.pathway_study import pathway_theory
from lightning_critical.experiments.pathway_tables import onset_measured, rows_by_window, trajectory_frame
from lightning_critical.schedule import Window

NET: dict[str, Any] = dict(depth=2, width=8)
SERIAL = lc.sweep.Execution(backend="serial", progress=False)
MC: dict[str, Any] = dict(switch_epochs=[100, 0], continue_epochs=100, size=8, n_observed=30, pretrain_rank=3,
                          target_rank=1, lr=0.5)


def test_pathway_study_is_an_ordinary_study_whose_table_gives_the_trajectories(tmp_path):
    study = pathway_deficit_study([(0, 10), (20, 40)], max_epochs=30, every_n_steps=10, **NET)
    assert isinstance(study, lc.sweep.Study)
    assert [e.label() for e in study.windows] == ["baseline", "w0-10", "w20-30"]  # the engine's grid, cut at 30
    table = lc.sweep.run_study(dataclasses.replace(study, seeds=[0]), SERIAL, lc.sweep.Output(out=tmp_path, plot=False))
    assert (table.status == "ok").all() and len(table) == 3
    theory = pathway_theory(30, "freeze", "b", **NET)
    rows = rows_by_window(table)
    mine = {w: trajectory_frame(rows[w]["log_dir"], theory, (w,)) for w in (Window(0, 10), Window(20, 30))}
    theirs = early_middle_late({"early": 0, "late": 20}, length=10, max_epochs=30, every_n_steps=10, **NET)
    for label, w in (("early", Window(0, 10)), ("late", Window(20, 30))):
        part = theirs[theirs.label == label].drop(columns=["label", "onset", "length", "depth", "deficit"])
        pd.testing.assert_frame_equal(part.reset_index(drop=True), mine[w], check_exact=True)


def test_early_middle_late_logs_where_the_engine_writes_them(tmp_path):
    early_middle_late({"early": 0}, length=10, max_epochs=20, every_n_steps=10, save_dir=str(tmp_path), **NET)
    table = lc.sweep.load(tmp_path)  # save_dir is the sweep's own directory: nothing is copied out of it
    assert list(table.label) == ["baseline_seed0", "w0-10_seed0"]
    for log_dir in table.log_dir:
        assert os.path.dirname(log_dir) == os.path.join(str(tmp_path), "tensorboard")
        assert os.path.isfile(os.path.join(log_dir, "spectral_history.csv"))


def test_onset_study_is_an_ordinary_study_whose_table_gives_the_shares(tmp_path):
    study = deficit_onset_study([2, 3], [0, 15, 30], length=10, max_epochs=30, width=8)
    assert study.params == {"depth": [2, 3]} and [e.label() for e in study.windows] == ["baseline", "w0-10", "w15-25"]
    table = lc.sweep.run_study(study, SERIAL, lc.sweep.Output(out=tmp_path, tensorboard=False, plot=False))
    mine = onset_measured(table, [0, 15, 30], 10, 30, "b")  # onset 30 is past the end: the baseline row
    theirs = deficit_onset_sweep(depths=(2, 3), onsets=(0,), sgd_onsets=(0, 15, 30), length=10, max_epochs=30,
                                 width=8)
    theirs = theirs[theirs.source == "measured"].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)


def test_switch_study_is_an_ordinary_study_whose_table_gives_the_sweep(tmp_path):
    study = switch_sweep_study("depth", [1, 2], **MC)
    assert [e.label() for e in study.windows] == ["baseline", "w0-100"] and study.params == {"depth": [1, 2]}
    execution = switch_sweep_execution(values=2)
    assert isinstance(execution.runner, lc.sweep.FactorizationEnsembleRunner)
    table = lc.sweep.run_study(study, execution, lc.sweep.Output(out=tmp_path, tensorboard=False, plot=False))
    jobs = [{**MC, "depth": d, "seed": 0, "pretrain_observed": None, "init_scale": 1e-3, "init": "gaussian"}
            for d in (1, 2)]
    mine = switch_table(table, "depth", jobs).drop(columns="seconds")
    theirs = matrix_completion_parameter_sweep("depth", [1, 2], **MC).drop(columns="seconds")
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    assert list(mine.switch_epoch) == [100, 0, 100, 0]  # the order asked for, not the grid's
    one = matrix_completion_sweep(depth=2, **MC)  # one value: the same study, the same numbers
    pd.testing.assert_frame_equal(one, theirs[theirs.depth == 2].reset_index(drop=True), check_exact=True)


def test_a_switch_grid_without_zero_drops_the_baseline_row():
    table = matrix_completion_sweep(depth=1, **{**MC, "switch_epochs": [200, 100]})
    assert list(table.switch_epoch) == [200, 100] and list(table.sgd_steps) == [300, 200]


def test_an_experiment_run_again_in_its_directory_reuses_or_replaces_its_runs(tmp_path):
    args: dict[str, Any] = dict(length=10, max_epochs=20, every_n_steps=10, save_dir=str(tmp_path), **NET)
    first = early_middle_late({"early": 0}, **args)
    results = (tmp_path / "results.jsonl").read_text()
    pd.testing.assert_frame_equal(early_middle_late({"early": 0}, **args), first, check_exact=True)
    assert (tmp_path / "results.jsonl").read_text() == results  # the second call trained nothing
    changed = early_middle_late({"early": 0}, **{**args, "lr": 0.02})  # other settings: trained again, not refused
    assert not changed.measured.equals(first.measured)
    assert os.listdir(tmp_path / "replaced")  # the earlier results are set aside

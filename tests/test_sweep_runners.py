"""Runners plug into lc.sweep.run: the same grid, store, resume and table whatever trains the runs."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np
import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.experiments.matrix_completion import (
    build_switch_ensemble,
    completion_data,
    pretrain_until,
)
from lightning_critical.sweep.runners import record

SIZE: dict[str, Any] = dict(size=8, n_observed=30)
DATA = functools.partial(completion_data, pretrain_rank=3, target_rank=1, **SIZE)
MODEL = functools.partial(lc.models.DeepMatrixFactorization, depth=2, init_scale=0.1, lr=2.0, size=8)
QUIET: dict[str, Any] = dict(backend="serial", tensorboard=False, plot=False, progress=False)


class CountingRunner:
    """A test runner: 'trains' nothing, reports seed + window end, and logs every batch it was given."""

    name = "counting"
    shares_prefixes = False

    def __init__(self, log: str) -> None:
        self.log = log

    def batches(self, tasks):
        by_seed: dict[int, list] = {}
        for task in tasks:
            by_seed.setdefault(task.run.seed, []).append(task)
        return list(by_seed.values())

    def run(self, tasks):
        with open(self.log, "a") as fh:
            fh.write(json.dumps([t.label for t in tasks]) + "\n")
        out = []
        for task in tasks:
            end = task.run.windows[0].end if task.run.windows else 0
            if end == 3 and task.run.seed == 1:
                out.append(record(task, "failed", error="ValueError: end 3 of seed 1 fails",
                                  exception=ValueError("end 3 of seed 1 fails")))
            else:
                out.append(record(task, metrics={"value": 10.0 * task.run.seed + end}, seconds=0.0))
        return out


def test_a_custom_runner_gets_batches_and_fills_the_same_table_store_and_resume(tmp_path):
    log = str(tmp_path / "batches.jsonl")
    kwargs: dict[str, Any] = dict(deficit=pretrain_until, windows=lc.sweep.removal([2, 3]), metrics="value",
                                  trainer={"max_epochs": 4}, seeds=[0, 1], out=str(tmp_path / "sweep"), **QUIET)
    table = lc.sweep.run(MODEL, DATA, runner=CountingRunner(log), **kwargs)
    batches = [json.loads(line) for line in open(log)]
    # one batch per seed, in grid order (windows, then seeds)
    assert batches == [["baseline_seed0", "w0-2_seed0", "w0-3_seed0"], ["baseline_seed1", "w0-2_seed1", "w0-3_seed1"]]
    assert table["status"].tolist() == ["ok", "ok", "ok", "ok", "ok", "failed"]
    assert table["value"].tolist()[:5] == [0.0, 10.0, 2.0, 12.0, 3.0]
    assert "end 3 of seed 1 fails" in table["error"].iloc[5]
    summary = lc.sweep.summarize(table, "value")
    assert summary["n_seeds"].tolist() == [2, 2, 1]
    # the store resumes: only the failed run is given to the runner again
    again = lc.sweep.run(MODEL, DATA, runner=CountingRunner(log), **kwargs)
    assert [json.loads(line) for line in open(log)][2:] == [["w0-3_seed1"]]
    assert again["run_id"].tolist() == table["run_id"].tolist()
    # a sweep of another runner is another sweep: its directory is refused
    with pytest.raises(lc.sweep.SweepDirectoryError):
        lc.sweep.run(MODEL, DATA, runner=lc.sweep.FactorizationEnsembleRunner(), **kwargs)


def test_errors_raise_reraises_the_failed_runs_exception(tmp_path):
    with pytest.raises(ValueError, match="end 3 of seed 1 fails"):
        lc.sweep.run(MODEL, DATA, runner=CountingRunner(str(tmp_path / "log")), deficit=pretrain_until,
                     windows=lc.sweep.removal([3]), metrics="value", trainer={"max_epochs": 4}, seeds=[1],
                     out=str(tmp_path / "sweep"), errors="raise", **QUIET)
    assert lc.sweep.load(str(tmp_path / "sweep"))["status"].tolist().count("ok") == 1  # what finished is saved


@pytest.mark.parametrize("runner, message", [
    (object(), r"runner=.* lacks \['name', 'shares_prefixes', 'batches', 'run'\]"),
    ("fast", r"runner='fast' is not valid"),
])
def test_a_bad_runner_is_refused_before_training(tmp_path, runner, message):
    with pytest.raises(TypeError, match=message):
        lc.sweep.run(MODEL, DATA, runner=runner, deficit=pretrain_until, windows=[(0, 2)], metrics="value",
                     trainer={"max_epochs": 4}, out=str(tmp_path), **QUIET)
    with pytest.raises(ValueError, match=r"errors='loud' is not valid"):
        lc.sweep.run(MODEL, DATA, deficit=pretrain_until, windows=[(0, 2)], metrics="value", errors="loud",
                     trainer={"max_epochs": 4}, out=str(tmp_path), **QUIET)


def _test_loss(trainer, module):
    truth = trainer.datamodule.ground_truth("target")
    return {"test_loss": float(((module.end_to_end().detach() - truth) ** 2).mean())}


def test_ensemble_runner_rows_equal_one_lightning_fit_per_run(tmp_path):
    """The same sweep, trained by the vectorized ensemble and by one Trainer per run (branching shared prefixes)."""
    common: dict[str, Any] = dict(deficit=pretrain_until, windows=lc.sweep.removal([20, 40], epochs_after=40),
                                  trainer={"accelerator": "cpu"}, seeds=[3], **QUIET)
    fast = lc.sweep.run(MODEL, DATA, metrics=["test_loss", "sgd_steps"], runner=lc.sweep.FactorizationEnsembleRunner(),
                        out=str(tmp_path / "ensemble"), **common)
    slow = lc.sweep.run(MODEL, DATA, metrics=_test_loss, out=str(tmp_path / "lightning"), **common)
    assert (fast["status"] == "ok").all() and (slow["status"] == "ok").all()
    assert fast["label"].tolist() == slow["label"].tolist()
    assert fast["sgd_steps"].tolist() == [40.0, 60.0, 80.0] == slow["epochs"].astype(float).tolist()
    assert slow.attrs["epochs_trained"] < slow.attrs["epochs_independent"]  # the Lightning runs branched
    loss_fast, loss_slow = fast["test_loss"].to_numpy(), slow["test_loss"].to_numpy()
    assert np.ptp(loss_fast) > 1e-2  # the switch epoch matters: a real comparison
    np.testing.assert_allclose(loss_fast, loss_slow, rtol=2e-4)


def test_ensemble_runner_equals_the_ensemble_built_by_hand(tmp_path):
    table = lc.sweep.run(MODEL, DATA, deficit=pretrain_until, windows=lc.sweep.removal([20, 40], epochs_after=40),
                         metrics=["test_loss", "train_loss"], trainer={},
                         runner=lc.sweep.FactorizationEnsembleRunner(initial_task="pretrain", dtype=torch.float64),
                         out=str(tmp_path), **QUIET)
    ens, dm, switches = build_switch_ensemble(2, [0, 20, 40], 40, pretrain_rank=3, target_rank=1, init_scale=0.1,
                                              lr=2.0, dtype=torch.float64, **SIZE)
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list(switches), logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(ens, datamodule=dm)
    expected = ens.final_metrics()
    assert table["test_loss"].tolist() == expected["test_loss"].tolist()
    assert table["train_loss"].tolist() == expected["train_loss"].tolist()


def test_ensemble_runner_names_what_it_cannot_train(tmp_path):
    table = lc.sweep.run(MODEL, DATA, deficit=lc.InputDeficit("noise", window=(0, 1)), windows=[(0, 2)],
                         metrics="test_loss", trainer={"max_epochs": 4}, runner=lc.sweep.FactorizationEnsembleRunner(),
                         out=str(tmp_path / "a"), **QUIET)
    assert (table["status"] == "failed").all()
    assert "deficit InputDeficit is not valid for FactorizationEnsembleRunner" in table["error"].iloc[0]
    with pytest.raises(ValueError, match=r"metrics: \['val_acc'\] are not results of the factorization ensemble; "
                                         r"it produced \[.*'test_loss'"):
        lc.sweep.run(MODEL, DATA, deficit=pretrain_until, windows=[(0, 2)], metrics="val_acc",
                     trainer={"max_epochs": 4}, runner=lc.sweep.FactorizationEnsembleRunner(),
                     out=str(tmp_path / "b"), **QUIET)
    with pytest.raises(ValueError, match=r"sgd_steps_per_epoch=0 must be an integer >= 1"):
        lc.sweep.FactorizationEnsembleRunner(sgd_steps_per_epoch=0)
    assert os.path.isdir(tmp_path / "a")


@pytest.mark.parametrize("option", [{"callbacks": lambda: []}, {"test": True}, {"save_model": True}])
def test_ensemble_runner_refuses_what_it_would_ignore(tmp_path, option):
    with pytest.raises(ValueError, match=f"does not support \\['{next(iter(option))}'\\]"):
        lc.sweep.run(MODEL, DATA, deficit=pretrain_until, windows=[(0, 1)], seeds=[0], metrics="test_loss",
                     trainer={"max_epochs": 2}, out=str(tmp_path), runner=lc.sweep.FactorizationEnsembleRunner(),
                     backend="serial", plot=False, **option)
    assert not os.listdir(tmp_path)  # refused before anything ran


@pytest.mark.parametrize("tensorboard", [None, False])
def test_ensemble_runner_writes_each_runs_history_and_tensorboard_logs(tmp_path, tensorboard):
    from conftest import read_tensorboard

    from lightning_critical.history import read_history
    from lightning_critical.sweep.runners.ensemble import HISTORY_FILE

    table = lc.sweep.run(MODEL, DATA, deficit=pretrain_until, windows=lc.sweep.removal([20], epochs_after=20),
                         metrics=["test_loss", "sgd_steps"], trainer={}, out=str(tmp_path), backend="serial",
                         plot=False, tensorboard=tensorboard,
                         runner=lc.sweep.FactorizationEnsembleRunner(sgd_steps_per_epoch=10))
    where = "tensorboard" if tensorboard is None else "runs"  # None: on, the runner supports it
    assert table["log_dir"].tolist() == [str(tmp_path / where / label) for label in table["label"]]
    for row in table.itertuples():
        hist = read_history(os.path.join(row.log_dir, HISTORY_FILE))
        losses = hist[hist.metric == "test_loss"]
        assert losses["step"].tolist() == list(range(0, int(row.sgd_steps) + 1, 10))
        assert losses["value"].iloc[-1] == row.test_loss  # the table's final metric is the history's last record
        run = lc.plots.load_run(row.log_dir)  # what `lightning-critical plot` reads
        assert run.spectral["metric"].nunique() == 4
        switches = [(0, "target")] if row.baseline else [(0, "pretrain"), (int(row.window_end), "target")]
        assert run.switches == {"datamodule": switches}
        if tensorboard is None:
            events = read_tensorboard(row.log_dir)
            assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")  # the run's session
            scalars = events.Scalars("test_loss")
            assert [e.step for e in scalars] == losses["step"].tolist()
            np.testing.assert_allclose([e.value for e in scalars], losses["value"], rtol=1e-6)
        else:
            assert not any(name.startswith("events") for name in os.listdir(row.log_dir))

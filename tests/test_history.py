"""One fit, one history: reuse, shared log directories, crash and resume, foreign files, no logger.

Read back from real files written by real Trainers: a history must never mix two runs, never
duplicate records after a resume, and never write where it does not belong.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl

TensorBoardLogger = pl.loggers.TensorBoardLogger
ModelCheckpoint = pl.callbacks.ModelCheckpoint

METRICS = ("singular_values", "mode_strength", "stable_rank", "subspace_drift")


def small_net() -> tuple[Any, lc.models.MultiPathwayLinearNet]:
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=3, width=12, lr=0.05, init_scale=0.05, task_basis=dm.task_basis())
    return dm, net


def monitor(**kw: Any) -> lc.SpectralMonitor:
    kw.setdefault("every_n_steps", 3)
    kw.setdefault("metrics", METRICS)
    return lc.SpectralMonitor(**kw)


def logger_at(root: Any) -> TensorBoardLogger:
    return TensorBoardLogger(str(root), name="run", version="fixed")


def fit(
    callbacks: list, epochs: int, ckpt_path: Any = None, weights_only: Any = None, net: Any = None, **trainer_kw: Any
) -> tuple[lc.models.MultiPathwayLinearNet, pl.Trainer]:
    pl.seed_everything(0)
    dm, fresh = small_net()
    net = fresh if net is None else net
    trainer = make_trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kw)
    fit_kw = {} if weights_only is None else {"weights_only": weights_only}
    trainer.fit(net, dm, ckpt_path=None if ckpt_path is None else str(ckpt_path), **fit_kw)
    return net, trainer


def csv_text(logger: TensorBoardLogger, name: str = "spectral_history.csv") -> str:
    with open(os.path.join(logger.log_dir, name)) as fh:
        return fh.read()


def keys(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["step", "target", "metric", "index"]]


def test_a_reused_monitor_keeps_nothing_of_its_first_fit_and_no_drift_at_step_zero():
    reused = monitor(history_file=None)
    fit([reused], epochs=6)
    with pytest.warns(UserWarning, match=r"a new fit replaces the \d+ records of an earlier run"):
        fit([reused], epochs=8)
    fresh = monitor(history_file=None)
    fit([fresh], epochs=8)
    frame = reused.to_frame()
    assert not keys(frame).duplicated().any()
    assert sorted(frame.step.unique()) == [0, 3, 6, 8]  # step 6 is recorded again, although the first fit ended there
    assert frame[(frame.step == 0) & (frame.metric == "subspace_drift")].empty
    pd.testing.assert_frame_equal(frame, fresh.to_frame())


def test_two_runs_into_one_log_directory_leave_only_the_second(tmp_path):
    first = monitor()
    fit([first], epochs=9, logger=logger_at(tmp_path))
    assert len(lc.monitors.read_history(os.path.join(logger_at(tmp_path).log_dir, "spectral_history.csv"))) > 0
    second = monitor()  # a new process: nothing in memory, the first run's file on disk
    with pytest.warns(UserWarning, match=r"replaces the \d+ records of an earlier run in '.*spectral_history.csv'"):
        fit([second], epochs=4, logger=logger_at(tmp_path))
    on_disk = lc.monitors.read_history(os.path.join(logger_at(tmp_path).log_dir, "spectral_history.csv"))
    assert sorted(on_disk.step.unique()) == [0, 3, 4]
    pd.testing.assert_frame_equal(on_disk, second.to_frame())


class Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_gives_the_uninterrupted_history(tmp_path):
    epochs = 30
    whole = monitor()
    whole_net, _ = fit([whole], epochs, logger=logger_at(tmp_path / "whole"))

    ckpt_dir = tmp_path / "ckpt"
    checkpoints = ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=10, save_top_k=-1)
    crashed = monitor()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit([crashed, Crash(at_step=25), checkpoints], epochs, logger=logger_at(tmp_path / "resumed"),
            enable_checkpointing=True)
    written = lc.monitors.read_history(os.path.join(logger_at(tmp_path / "resumed").log_dir, "spectral_history.csv"))
    assert written.step.max() == 24  # the crashed run recorded past the checkpoint it will resume from

    ckpt = ckpt_dir / "step=20.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"][crashed.state_key]
    assert state["vectors_step"] == 18 and set(state["vectors"]) >= {"a", "b"}  # plain tensors: weights_only works

    resumed = monitor()  # a new process running the same script, less the crash
    checkpoints = ModelCheckpoint(dirpath=str(ckpt_dir), filename="{step}", every_n_train_steps=10, save_top_k=-1)
    net, _ = fit([resumed, checkpoints], epochs, ckpt_path=ckpt, logger=logger_at(tmp_path / "resumed"),
                 enable_checkpointing=True, weights_only=True)
    for (name, a), (_, b) in zip(whole_net.state_dict().items(), net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # The file holds exactly the rows of the uninterrupted run: none twice, subspace_drift
    # continuing across the resume (at step 21 it compares with step 18, from the checkpoint).
    assert csv_text(logger_at(tmp_path / "resumed")) == csv_text(logger_at(tmp_path / "whole"))
    frame = resumed.to_frame()  # read back from disk, so the whole run is there
    pd.testing.assert_frame_equal(frame, whole.to_frame())
    drift = frame[frame.metric == "subspace_drift"]
    assert sorted(drift.step.unique()) == list(range(3, 30, 3)) + [30]


def test_resume_from_a_checkpoint_saved_after_fit_continues_like_a_longer_run(tmp_path):
    whole = monitor()
    fit([whole], 20, logger=logger_at(tmp_path / "whole"))
    first = monitor()
    _, trainer = fit([first], 10, logger=logger_at(tmp_path / "resumed"))
    trainer.save_checkpoint(tmp_path / "after.ckpt")  # after the closing record at step 10
    resumed = monitor()
    fit([resumed], 20, ckpt_path=tmp_path / "after.ckpt", logger=logger_at(tmp_path / "resumed"))
    # the closing record at step 10 (not a multiple of 3) is not part of the longer run
    assert csv_text(logger_at(tmp_path / "resumed")) == csv_text(logger_at(tmp_path / "whole"))


def test_a_foreign_file_or_directory_is_refused_before_training(tmp_path):
    log_dir = logger_at(tmp_path).log_dir
    os.makedirs(log_dir)
    foreign = os.path.join(log_dir, "results.csv")
    with open(foreign, "w") as fh:
        fh.write("seed,accuracy\n0,0.93\n")
    _, net = small_net()
    before = net.get_parameter("pathways.a.0.weight").detach().clone()
    with pytest.raises(
        ValueError, match=r"results.csv' exists and is not a monitor history.*choose another history_file"
    ):
        fit([monitor(history_file="results.csv")], 5, logger=logger_at(tmp_path), net=net)
    with open(foreign) as fh:
        assert fh.read() == "seed,accuracy\n0,0.93\n"  # untouched
    os.makedirs(os.path.join(log_dir, "sub.csv"))
    with pytest.raises(ValueError, match="is a directory"):
        fit([monitor(history_file="sub.csv")], 5, logger=logger_at(tmp_path), net=net)
    assert torch.equal(net.get_parameter("pathways.a.0.weight"), before)


def test_a_history_cut_short_by_a_crash_is_read_back_without_its_last_line(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("step,epoch,target,metric,index,value\n0,0,nan,stable_rank,-1,1.5\n3,3,0,stable_rank,-1,nan\n6,6,a,stab")
    frame = lc.monitors.read_history(str(path))
    assert frame.step.tolist() == [0, 3] and frame.target.tolist() == ["nan", "0"]  # names stay strings
    assert frame.value.isna().tolist() == [False, True]


def test_without_a_logger_neither_monitor_writes_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spectral = lc.SpectralMonitor(every_n_steps=2)
    fisher = lc.FisherMonitor(every_n_epochs=1, num_batches=1)
    pl.seed_everything(0)
    dm = lc.data.DigitsDataModule(batch_size=32, subset=64, val_fraction=0.25)
    model = lc.models.SmallCNN(channels=(2, 4), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[spectral, fisher]).fit(model, dm)
    assert not spectral.to_frame().empty and not fisher.to_frame().empty  # kept in memory
    assert spectral.history_path is None and fisher.history.path is None
    written = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert written == []


def test_two_monitors_side_by_side_each_with_its_own_state_and_file(tmp_path):
    def pair():
        return (
            lc.SpectralMonitor(targets="maps", every_n_steps=2, metrics=METRICS, history_file="maps.csv"),
            lc.SpectralMonitor(targets="pathways.*", every_n_steps=5, metrics=("spectral_norm", "subspace_drift"),
                               history_file="weights/history.csv"),
        )

    maps, weights = pair()
    assert maps.state_key != weights.state_key
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="last", every_n_train_steps=11)
    fit([maps, weights, checkpoints], 12, logger=logger_at(tmp_path / "both"), enable_checkpointing=True)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert set(saved[maps.state_key]["vectors"]) == {"a", "b"}
    assert set(saved[weights.state_key]["vectors"]) == {f"pathways.{p}.{i}.weight" for p in "ab" for i in range(3)}

    log_dir = logger_at(tmp_path / "both").log_dir
    for mon, name in ((maps, "maps.csv"), (weights, "weights/history.csv")):
        on_disk = lc.monitors.read_history(os.path.join(log_dir, name))
        pd.testing.assert_frame_equal(on_disk, mon.to_frame())
    assert sorted(maps.to_frame().step.unique()) == [0, 2, 4, 6, 8, 10, 12]
    assert sorted(weights.to_frame().step.unique()) == [0, 5, 10, 12]
    # side by side they record exactly what each records alone
    for alone in pair():
        fit([alone], 12)
        twin = maps if alone.history_file == "maps.csv" else weights
        pd.testing.assert_frame_equal(alone.to_frame(), twin.to_frame())


def test_two_monitors_writing_one_history_file_are_refused_before_training(tmp_path):
    first, second = monitor(every_n_steps=2), monitor(every_n_steps=5)
    _, net = small_net()
    before = net.get_parameter("pathways.a.0.weight").detach().clone()
    with pytest.raises(
        ValueError, match=r"history_file='spectral_history.csv' is used by two monitors.*its own history_file"
    ):
        fit([first, second], 5, logger=logger_at(tmp_path), net=net)
    assert torch.equal(net.get_parameter("pathways.a.0.weight"), before)
    assert not os.path.exists(os.path.join(logger_at(tmp_path).log_dir, "spectral_history.csv"))
    # without a logger nothing is written, so the two may share the (unused) name
    fit([monitor(every_n_steps=2), monitor(every_n_steps=5)], 5)

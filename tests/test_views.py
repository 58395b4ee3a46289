"""What a run shows with any logger (lightning_critical.views): indicators and monitor scalars in
CSV, schedule.json beside the logs, plots from it, one HParams session per run in TensorBoard."""

from __future__ import annotations

import gc
import glob
import json
import os
import warnings
import weakref
from typing import Any

import matplotlib.image
import pandas as pd
import pytest
import torch
import yaml
from conftest import TwoBranchNet, make_trainer, read_tensorboard
from test_tensorboard_views import LoggingNet, hparams_sessions

import lightning_critical as lc
from lightning_critical import views
from lightning_critical._namespace import pl
from lightning_critical.cli import main
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.schedule_file import deficit_windows

CSVLogger = pl.loggers.CSVLogger
TensorBoardLogger = pl.loggers.TensorBoardLogger


def _span(patch: Any) -> tuple[float, float]:
    xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
    return float(xs.min()), float(xs.max())


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """6 epochs of 4 steps with CSVLogger only: the right branch frozen in epochs [2, 4) = steps [8, 16)."""
    pl.seed_everything(3, verbose=False)
    logger = CSVLogger(str(tmp_path_factory.mktemp("csv")), name="run")
    callbacks = [lc.PathwayDeficit("right", (2, 4)), lc.SpectralMonitor(every_n_steps=2, metrics=("stable_rank",))]
    make_trainer(max_epochs=6, logger=logger, log_every_n_steps=1, callbacks=callbacks).fit(LoggingNet())
    return str(logger.log_dir)


def test_csv_logger_gets_the_indicator_and_the_monitor_scalars(csv_run):
    metrics = pd.read_csv(os.path.join(csv_run, "metrics.csv"))
    indicator = metrics.dropna(subset=["deficit/freeze/right"]).groupby("step")["deficit/freeze/right"].last()
    assert indicator.index.min() == 0 and indicator.index.max() == 24
    assert all(value == float(8 <= step < 16) for step, value in indicator.items() if step < 24)
    assert {7, 8, 15, 16} <= set(indicator.index)  # both edges, with the old value one step before
    rank = metrics.dropna(subset=["stable_rank/right.0.weight"])
    assert sorted(rank.step.unique()) == list(range(0, 25, 2))
    hparams = yaml.safe_load(open(os.path.join(csv_run, "hparams.yaml")))
    assert hparams["deficit/freeze/right/window"] == "[2, 4) epochs" and hparams["width_note"] == 8
    assert not glob.glob(os.path.join(csv_run, "events.out.tfevents.*"))


def test_schedule_file_holds_windows_in_steps_kind_target_and_seed(csv_run):
    with open(os.path.join(csv_run, "schedule.json")) as fh:
        schedule = json.load(fh)
    assert schedule["format"] == 1 and schedule["seed"] == 3
    assert (schedule["global_step"], schedule["epochs"], schedule["steps_per_epoch"]) == (24, 6, 4)
    assert schedule["deficits"] == [{
        "name": "freeze/right", "kind": "PathwayDeficit/freeze", "target": "right",
        "windows": [{"start": 2, "end": 4, "unit": "epoch"}], "seed": 0, "steps": [[8, 16]],
    }]
    assert schedule["tasks"] == []


def test_plots_and_the_plot_command_shade_the_window_from_the_schedule_file(csv_run, tmp_path):
    run = lc.plots.load_run(csv_run)
    assert run.windows == {"freeze/right": [(8, 16)]} and run.steps_per_epoch == 4
    ax = lc.plots.metric_over_steps(csv_run, "stable_rank").axes[0]
    assert [_span(p) for p in ax.patches] == [(8.0, 16.0)]
    assert main(["plot", csv_run, "--out", str(tmp_path)]) == 0
    image = matplotlib.image.imread(str(tmp_path / "stable_rank.png"))
    shaded = (abs(image[..., 0] - image[..., 2]) > 0.1).mean(axis=0)  # the orange band, column by column
    assert 0.05 < (shaded > 0.3).mean() < 0.6  # a band, not the whole plot, not nothing


def test_one_hparams_session_whatever_the_callbacks(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    dm = MatrixCompletionDataModule(size=10, n_observed=40)
    callbacks = [
        lc.SpectralMonitor(every_n_steps=2), lc.TaskSwitch({2: "target"}), lc.PathwayDeficit("factors", (0, 1)),
        lc.SpectralMonitor(every_n_steps=3, metrics=("stable_rank",), history_file="second.csv"),
        lc.PathwayDeficit("factors", (3, 4), mode="silence"),
        lc.TaskSwitch({1: "pretrain"}, target=dm, initial="target"),
    ]
    trainer = make_trainer(max_epochs=4, logger=logger, callbacks=callbacks)
    trainer.fit(DeepMatrixFactorization(size=10, depth=2), datamodule=dm)
    ((hp, metrics),) = hparams_sessions(logger.log_dir)
    assert hp["deficit/freeze/factors/window"] == "[0, 1) epochs"
    assert hp["deficit/silence/factors/window"] == "[3, 4) epochs"
    assert hp["task/datamodule/first_switch"] == 2 and hp["task/MatrixCompletionDataModule/first_switch"] == 1
    assert "final/train_loss" in metrics and "hp_metric" not in read_tensorboard(logger.log_dir).Tags()["scalars"]
    schedule = json.load(open(os.path.join(logger.log_dir, "schedule.json")))
    per_epoch = trainer.global_step // 4
    assert [(d["name"], d["steps"]) for d in schedule["deficits"]] == [
        ("freeze/factors", [[0, per_epoch]]), ("silence/factors", [[3 * per_epoch, 4 * per_epoch]])]
    switches = {t["target"]: t["steps"] for t in schedule["tasks"]}
    assert switches["datamodule"] == [[0, "pretrain"], [2 * per_epoch, "target"]]
    assert switches["MatrixCompletionDataModule"] == [[0, "target"], [per_epoch, "pretrain"]]
    assert lc.plots.load_run(logger.log_dir).switches == {k: [tuple(s) for s in v] for k, v in switches.items()}
    ax = lc.plots.metric_over_steps(logger.log_dir, "stable_rank").axes[0]
    marks = sorted((text.get_position()[0], text.get_text()) for text in ax.texts)
    assert marks == [(per_epoch, " task pretrain"), (2 * per_epoch, " task target")]


def test_monitors_alone_get_the_views_session_with_final_metrics(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    monitors = [lc.FisherMonitor(num_batches=1), lc.SpectralMonitor(every_n_steps=2)]
    make_trainer(max_epochs=1, logger=logger, callbacks=monitors).fit(LoggingNet())
    ((hp, metrics),) = hparams_sessions(logger.log_dir)
    assert hp["width_note"] == 8 and metrics == ["final/train_loss"]
    assert json.load(open(os.path.join(logger.log_dir, "schedule.json")))["deficits"] == []


def test_two_loggers_at_once_each_get_the_indicator_and_the_schedule(tmp_path):
    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    csv = CSVLogger(str(tmp_path), name="csv", version="")
    deficit = lc.PathwayDeficit("left", lc.Window(2, 5, "step"))
    make_trainer(max_epochs=2, logger=[tb, csv], log_every_n_steps=1, callbacks=[deficit]).fit(LoggingNet())
    on = {e.step: e.value for e in read_tensorboard(tb.log_dir).Scalars("deficit/freeze/left")}
    metrics = pd.read_csv(os.path.join(csv.log_dir, "metrics.csv")).dropna(subset=["deficit/freeze/left"])
    assert on == dict(zip(metrics.step, metrics["deficit/freeze/left"], strict=True))
    assert on[2] == on[4] == 1.0 and on[1] == on[5] == 0.0
    for directory in (tb.log_dir, csv.log_dir):
        schedule = json.load(open(os.path.join(directory, "schedule.json")))
        assert schedule["deficits"][0]["steps"] == [[2, 5]]
    assert len(hparams_sessions(tb.log_dir)) == 1
    assert yaml.safe_load(open(os.path.join(csv.log_dir, "hparams.yaml")))["deficit/freeze/left/unit"] == "step"


def test_a_run_without_logger_writes_no_file_and_the_view_goes_with_its_trainer(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[lc.PathwayDeficit("left", (0, 1))])
    trainer.fit(TwoBranchNet())
    assert views.of(trainer).schedule()["deficits"][0]["steps"] == [[0, 4]]
    assert not glob.glob(str(tmp_path / "**" / "schedule.json"), recursive=True)
    view = weakref.ref(views.of(trainer))
    del trainer
    gc.collect()
    assert view() is None  # the view does not keep its trainer alive, nor outlive it


def test_a_step_window_past_the_end_is_cut_and_a_later_one_left_out(tmp_path):
    logger = CSVLogger(str(tmp_path), name="", version="")
    deficits = [lc.PathwayDeficit("left", lc.Window(6, 100, "step")),
                lc.PathwayDeficit("right", lc.Window(50, 60, "step"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cut short", "never active": said once per process
        make_trainer(max_epochs=2, logger=logger, callbacks=deficits).fit(TwoBranchNet())
    schedule = json.load(open(os.path.join(logger.log_dir, "schedule.json")))
    assert {d["name"]: d["steps"] for d in schedule["deficits"]} == {"freeze/left": [[6, 8]], "freeze/right": []}
    assert deficit_windows(schedule) == {"freeze/left": [(6, 8)]}  # a deficit that never ran shades nothing


def test_hold_session_leaves_it_to_the_driver_whose_values_join_the_schedule(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False)
    trainer = make_trainer(max_epochs=1, logger=logger, callbacks=[lc.PathwayDeficit("right", (0, 1))])
    view = views.of(trainer)
    view.hold_session()
    trainer.fit(LoggingNet())
    assert hparams_sessions(logger.log_dir) == []
    view.write_session(extra={"seed": 7}, metrics={"final/x": torch.tensor(2.0).item()})
    ((hp, metrics),) = hparams_sessions(logger.log_dir)
    assert hp["seed"] == 7 and metrics == ["final/x"]
    assert json.load(open(os.path.join(logger.log_dir, "schedule.json")))["run"] == {"seed": 7}


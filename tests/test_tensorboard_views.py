"""What TensorBoard shows, read back from the event files: step-function indicators, task
switches, the custom-scalars layout, singular values of a user model, the HParams session."""

from __future__ import annotations

import glob
import os
import re
from typing import Any

import pytest
import torch
from conftest import TwoBranchNet, make_trainer, read_tensorboard
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical import _tensorboard, views
from lightning_critical._namespace import pl
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.models import DeepMatrixFactorization

TensorBoardLogger = pl.loggers.TensorBoardLogger


class LoggingNet(TwoBranchNet):
    """TwoBranchNet that logs its loss and saves one hyperparameter, as user models do."""

    def __init__(self, width_note: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss


class MLP(pl.LightningModule):
    """A user's plain ``nn.Sequential`` MLP: no protocol, no end-to-end maps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(1)
        return DataLoader(TensorDataset(torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)),
                          batch_size=8)


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's scalar smoothing (a debiased EMA over the logged points; constant series untouched)."""
    if all(v == values[0] for v in values):
        return list(values)
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def curve(acc: Any, tag: str) -> dict[int, float]:
    points: dict[int, set[float]] = {}
    for event in acc.Scalars(tag):
        points.setdefault(event.step, set()).add(event.value)
    assert all(len(v) == 1 for v in points.values()), (tag, points)  # never two values at one step
    return {step: v.pop() for step, v in sorted(points.items())}


def layout_of(acc: Any) -> dict[str, dict[str, list[Any]]]:
    from tensorboard.plugins.custom_scalar import layout_pb2

    raw = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]  # TensorBoard shows the last
    def content(chart: Any) -> list[Any]:
        if chart.HasField("margin"):
            return [(s.value, s.lower, s.upper) for s in chart.margin.series]
        return list(chart.multiline.tag)

    return {cat.title: {c.title: content(c) for c in cat.chart} for cat in layout_pb2.Layout.FromString(raw).category}


def closed_categories(acc: Any) -> set[str]:
    from tensorboard.plugins.custom_scalar import layout_pb2

    raw = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]
    return {cat.title for cat in layout_pb2.Layout.FromString(raw).category if cat.closed}


def hparams_sessions(log_dir: str) -> list[tuple[dict[str, Any], list[str]]]:
    """Every HParams session start in ``log_dir`` (its hparams), with the experiment's metric names."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions, metrics = [], []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    hp = data.session_start_info.hparams
                    sessions.append({k: getattr(v, v.WhichOneof("kind")) for k, v in hp.items()})
                if data.HasField("experiment"):
                    metrics.append([m.name.tag for m in data.experiment.metric_infos])
    return [(s, m) for s, m in zip(sessions, metrics, strict=True)]


def test_deficit_indicator_draws_as_a_step_function_when_smoothed(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    deficit = lc.PathwayDeficit("right", lc.Window(120, 160, "step"))
    make_trainer(max_steps=400, logger=logger, log_every_n_steps=50, callbacks=[deficit]).fit(TwoBranchNet())
    points = curve(read_tensorboard(logger.log_dir), "deficit/freeze/right")
    assert all(value == float(120 <= step < 160) for step, value in points.items() if step < 400)
    # Vertical edges: the old value one step before each change; every step near an edge.
    assert {0, 119, 120, 159, 160, 400} <= set(points)
    assert set(range(120, 260)) <= set(points) and set(range(0, 100)) <= set(points)
    assert {300, 350} <= set(points) and not {299, 301} & set(points)  # sparse far from the edges
    steps, values = list(points), list(points.values())
    for weight in (0.6, 0.9):
        settle = int(5 / (1 - weight))  # about 1/(1 - smoothing) points
        for (step, raw), smooth in zip(points.items(), smoothed(values, weight), strict=True):
            if all(abs(step - edge) >= settle for edge in (120, 160)):
                assert abs(smooth - raw) < 0.01, (weight, step, smooth)
    assert steps[-1] == 400


def test_task_switch_logs_the_task_index_beside_the_deficits(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    dm = MatrixCompletionDataModule(size=10, n_observed=40)
    switch = lc.TaskSwitch({3: "target"})
    trainer = make_trainer(max_epochs=6, logger=logger, log_every_n_steps=1,
                           callbacks=[switch, lc.PathwayDeficit("factors", (1, 2))])
    trainer.fit(DeepMatrixFactorization(size=10, depth=2), datamodule=dm)
    per_epoch = trainer.global_step // 6
    acc = read_tensorboard(logger.log_dir)
    task = curve(acc, "task/datamodule")
    assert list(dm.tasks) == ["pretrain", "target"]
    assert all(value == float(step >= 3 * per_epoch) for step, value in task.items())
    assert {0, 3 * per_epoch - 1, 3 * per_epoch, 6 * per_epoch} <= set(task)
    charts = layout_of(acc)[_tensorboard.DEFICITS_CATEGORY]
    assert charts[_tensorboard.DEFICITS_CHART] == [r"^deficit/.*$", r"^task/.*$"]
    # margin charts, which TensorBoard never smooths, with the indicator as value and both bounds
    assert charts["task/datamodule: 0 = pretrain, 1 = target (exact at any smoothing)"] == [("task/datamodule",) * 3]
    assert charts["deficit/freeze/factors (exact at any smoothing)"] == [("deficit/freeze/factors",) * 3]
    ((hp, _),) = hparams_sessions(logger.log_dir)
    assert hp["task/datamodule/schedule"] == "pretrain, then target from epoch 3"
    assert hp["task/datamodule/first_switch"] == 3 and hp["task/datamodule/unit"] == "epoch"
    assert hp["deficit/freeze/factors/window"] == "[1, 2) epochs"


def test_user_mlp_gets_filled_singular_value_charts_and_histograms(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    monitor = lc.SpectralMonitor(every_n_steps=2, log_top_k=3)
    make_trainer(max_epochs=2, logger=logger, callbacks=[monitor]).fit(MLP())
    acc = read_tensorboard(logger.log_dir)
    weights = ["net.0.weight", "net.2.weight", "net.4.weight"]
    assert {f"singular_values/{w}" for w in weights} <= set(acc.Tags()["histograms"])
    charts = layout_of(acc)["singular values"]
    assert sorted(charts) == sorted(f"{w} (top 3)" for w in weights)
    scalars = acc.Tags()["scalars"]
    for w in weights:
        (regex,) = charts[f"{w} (top 3)"]
        matched = sorted(t for t in scalars if re.search(regex, t))
        assert matched == [f"singular_values/{w}/{i}" for i in range(3)], (regex, matched)
    assert "mode strength" not in layout_of(acc)  # no task basis: no empty mode charts
    assert closed_categories(acc) == {"singular values"}  # collapsed until clicked


def test_mode_strength_charts_overlay_each_map_and_theory_as_separate_runs(tmp_path):
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=8, lr=0.05, init_scale=0.05)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    basis = dm.task_basis()
    theory = {"mode_strength": {"b": torch.zeros(11, basis[0].shape[1]).numpy()}}
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=5, theory=theory)
    make_trainer(max_epochs=10, logger=logger, callbacks=[monitor]).fit(net, dm)
    acc = read_tensorboard(logger.log_dir)
    charts = layout_of(acc)["mode strength"]
    assert charts["mode 2: a, b, b_theory"] == ["^mode_strength/mode_2$"]
    runs = sorted(os.path.relpath(os.path.dirname(p), logger.log_dir)
                  for p in glob.glob(f"{logger.log_dir}/modes/*/events.out.tfevents.*"))
    assert runs == ["modes/a", "modes/b", "modes/b_theory"]
    for name in ("a", "b"):
        run = read_tensorboard(f"{logger.log_dir}/modes/{name}")
        mine = [(e.step, e.value) for e in run.Scalars("mode_strength/mode_2")]
        assert mine == [(e.step, e.value) for e in acc.Scalars(f"mode_strength/{name}/2")] and len(mine) == 3
    theory_run = read_tensorboard(f"{logger.log_dir}/modes/b_theory")
    assert [e.value for e in theory_run.Scalars("mode_strength/mode_0")] == [0.0, 0.0, 0.0]


def test_one_hparams_session_with_deficits_and_final_metrics(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="")  # default_hp_metric=True, as users have it
    deficits = [lc.PathwayDeficit("right", lc.Window(a, b, "step")) for a, b in ((0, 2), (4, 6))]
    deficits.append(lc.PathwayDeficit("left", (1, 2), mode="silence"))
    make_trainer(max_epochs=3, logger=logger, log_every_n_steps=1, callbacks=deficits).fit(LoggingNet())
    ((hp, metrics),) = hparams_sessions(logger.log_dir)  # one session, not Lightning's placeholder too
    assert hp["width_note"] == 8  # the module's own hyperparameters stay
    assert hp["deficit/freeze/right/window"] == "[0, 2) steps + [4, 6) steps"
    assert (hp["deficit/freeze/right/window_start"], hp["deficit/freeze/right/window_end"]) == (0, 6)
    assert hp["deficit/freeze/right/kind"] == "PathwayDeficit/freeze" and hp["deficit/freeze/right/target"] == "right"
    assert hp["deficit/silence/left/window"] == "[1, 2) epochs" and hp["deficit/silence/left/unit"] == "epoch"
    assert metrics == ["final/train_loss"]
    acc = read_tensorboard(logger.log_dir)
    assert "hp_metric" not in acc.Tags()["scalars"]
    assert acc.Scalars("final/train_loss")[-1].value == pytest.approx(acc.Scalars("train_loss")[-1].value)


def test_a_driver_that_defers_the_session_writes_the_only_one(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False)
    trainer = make_trainer(max_epochs=1, logger=logger, callbacks=[lc.PathwayDeficit("right", (0, 1))])
    views.of(trainer).hold_session()
    trainer.fit(LoggingNet())
    assert hparams_sessions(logger.log_dir) == []  # the callbacks left it to the driver
    views.of(trainer).write_session(extra={"seed": 3, "window": (0, 1)}, metrics={"final/x": 1.5})
    ((hp, metrics),) = hparams_sessions(logger.log_dir)
    assert hp["seed"] == 3 and hp["window"] == "(0, 1)" and hp["deficit/freeze/right/window_end"] == 1
    assert metrics == ["final/x"]


def test_lightning_still_has_the_placeholder_flag_we_turn_off(tmp_path):
    # _lightning.PlaceholderHpMetric relies on this private attribute: fail loudly if it goes.
    logger = TensorBoardLogger(str(tmp_path))
    assert logger._default_hp_metric is True


def test_the_first_step_of_a_resumed_fit_is_always_logged():
    # A branched or resumed fit starts mid-run: without a point at its first step, the plot
    # carried the parent's value (deficit on) forward to the next logging interval.
    series = _tensorboard.StepSeries(edge_steps=2)
    assert series.points(12, 0.0, every=50) == [(12, 0.0)]
    assert series.points(13, 0.0, every=50) == [(13, 0.0)]  # dense just after it
    assert series.points(14, 0.0, every=50) == []


class _SweepNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.b(self.a(x)) - y) ** 2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)


def _sweep_net(seed: int) -> _SweepNet:
    return _SweepNet()


def test_branched_sweep_runs_show_their_own_window(tmp_path):
    from lightning_critical.plots.run_files import read_deficit_windows
    from lightning_critical.schedule_file import deficit_windows, read_schedule

    table = lc.sweep.run(_sweep_net, None, deficit=lc.PathwayDeficit("a", window=(0, 1)), windows=[(0, 3), (0, 5)],
                         seeds=[0], metrics="loss", trainer={"max_epochs": 6, "log_every_n_steps": 50},
                         out=str(tmp_path), backend="serial", plot=False, progress=False)
    assert table.set_index("label").loc["w0-3_seed0", "branch_epoch"] == 3  # branched from the longer run
    labels = ("w0-3_seed0", "w0-5_seed0")
    windows = {label: read_deficit_windows(str(tmp_path / "tensorboard" / label)) for label in labels}
    assert windows == {"w0-3_seed0": {"freeze/a": [(0, 12)]}, "w0-5_seed0": {"freeze/a": [(0, 20)]}}
    # the schedule file of the branched run says the same, with the sweep's values
    schedule = read_schedule(str(tmp_path / "tensorboard" / "w0-3_seed0"))
    assert schedule is not None and deficit_windows(schedule) == {"freeze/a": [(0, 12)]}
    assert schedule["run"]["window"] == "[0, 3) epochs" and schedule["run"]["seed"] == 0


def test_a_run_that_logs_no_metric_keeps_its_hparams_session_and_the_logger_is_left_as_it_was(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="run", version="")
    first = lc.PathwayDeficit("left", window=(3, 4))
    second = lc.PathwayDeficit("left", window=(0, 1))  # same name, earlier window, later in the list
    make_trainer(max_epochs=5, logger=logger, callbacks=[first, second]).fit(TwoBranchNet())
    assert logger._default_hp_metric is True  # what the user configured, restored after fit
    ((hp, metrics),) = hparams_sessions(logger.log_dir)  # one session although the module logs no metric
    assert hp["deficit/freeze/left/window_start"] == 0 and hp["deficit/freeze/left/window_end"] == 4
    params = first.hparams_for_tensorboard()
    assert params["deficit/freeze/left/window_start"] == 0 and params["deficit/freeze/left/window_end"] == 4
    assert params["deficit/freeze/left/window"] == "[0, 1) epochs + [3, 4) epochs"

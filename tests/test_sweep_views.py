"""A sweep's one TensorBoard view, read back through TensorBoard's own backends (no browser): the
HParams columns in order (axes first and shown, bookkeeping last), every run with every column
(the baseline's deficits "none"), the model's hyperparameters, and the Custom Scalars tab opening
on deficits and reliance with the spectral categories closed."""

from __future__ import annotations

import glob
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, cast

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical import _tensorboard_hparams, views
from lightning_critical._namespace import pl
from lightning_critical.monitors.base import Monitor
from lightning_critical.sweep.runners.lightning import SWEEP_BOOKKEEPING


class HpNet(pl.LightningModule):
    """Two layers, a saved learning rate and width (``model/lr``, ``model/width``)."""

    def __init__(self, lr: float = 0.05, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = ((self.b(self.a(x)) - y) ** 2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)), batch_size=4)


class FakeReliance(Monitor):
    """A monitor whose series are ``reliance/ablation/<layer>`` (the keys of lc.RelianceMonitor), cheaply."""

    metric = "reliance"

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Mapping[str, float]:
        a, b = cast(torch.nn.Linear, pl_module.a), cast(torch.nn.Linear, pl_module.b)
        return {"ablation/a": float(a.weight.norm()), "ablation/b": float(b.weight.norm())}


def _model(seed: int, lr: float) -> HpNet:
    return HpNet(lr=lr)


def _monitors() -> list[Any]:
    return [lc.SpectralMonitor(every_n_steps=4, metrics=("singular_values",), log_top_k=2), FakeReliance(4)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    """A removal sweep of 2 ends x 2 learning rates (and the baselines): 6 runs of 3 epochs."""
    out = tmp_path_factory.mktemp("sweep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lc.sweep.CleanEpochsWarning)  # 1 and 2 clean epochs: not the point here
        table = lc.sweep.run(_model, None, deficit=lc.PathwayDeficit("a", window=(0, 1)),
                             windows=lc.sweep.removal([1, 2]), seeds=[0], params={"lr": [0.05, 0.1]}, metrics="loss",
                             callbacks=_monitors, trainer={"max_epochs": 3, "log_every_n_steps": 50}, out=str(out),
                             backend="serial", plot=False, progress=False)
    assert (table["status"] == "ok").all() and len(table) == 6
    return str(out / "tensorboard"), table


@pytest.fixture
def sweep_root(sweep: tuple[str, pd.DataFrame]) -> str:
    return sweep[0]


def _tensorboard_context(root: str) -> tuple[Any, Any]:
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(root)
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, root)
    return base_plugin.TBContext(logdir=root, multiplexer=mux, data_provider=provider), context.RequestContext()


def shown_experiment(root: str) -> Any:
    """The experiment TensorBoard's HParams dashboard gets (its backend's choice and order of the columns)."""
    from tensorboard.plugins.hparams import backend_context

    tb, request = _tensorboard_context(root)
    hp = backend_context.Context(tb)
    return hp.experiment_from_metadata(request, "", True, hp.hparams_metadata(request, ""),
                                       hp.hparams_from_data_provider(request, "", 1000), 1000)


def sessions(root: str) -> dict[str, dict[str, Any]]:
    """Every run's session hparams, by run name and column key."""
    out = {}
    for path in glob.glob(os.path.join(root, "*", _tensorboard_hparams.SESSION_FILE)):
        found = _tensorboard_hparams.read_run_session(os.path.dirname(path))
        assert found is not None
        out[os.path.basename(os.path.dirname(path))] = found[0]
    return out


def test_hparams_lead_with_the_axes_then_descriptions_model_and_bookkeeping(sweep_root):
    experiment = shown_experiment(sweep_root)
    columns = [info.display_name for info in experiment.hparam_infos]  # in the order the dashboard shows
    # The dashboard shows the columns marked `differs` first and the first five by default.
    assert [info.display_name for info in experiment.hparam_infos if info.differs] == [
        "window_start", "window_end", "seed", "lr"]
    assert columns[:4] == ["window_start", "window_end", "seed", "lr"]
    assert columns[-len(SWEEP_BOOKKEEPING):] == list(SWEEP_BOOKKEEPING)  # run_id, branch_epoch, ... last
    deficit = [i for i, c in enumerate(columns) if c.startswith("deficit/freeze/a/")]
    model = [i for i, c in enumerate(columns) if c.startswith("model/")]
    assert [columns[i] for i in model] == ["model/lr", "model/width"]
    assert 4 <= min(deficit) and max(deficit) < min(model) and max(model) < len(columns) - len(SWEEP_BOOKKEEPING)
    assert [m.name.tag for m in experiment.metric_infos] == ["final/loss"]


def test_every_run_describes_its_deficit_the_baseline_too_and_logs_the_model(sweep_root):
    by_run = sessions(sweep_root)
    assert len(by_run) == 6 and len({frozenset(hp) for hp in by_run.values()}) == 1  # the same columns in every run
    baseline = by_run["baseline_seed0_lr=0.1"]
    assert baseline["deficit/freeze/a/kind"] == "none" and baseline["deficit/freeze/a/window"] == "none"
    assert baseline["deficit/freeze/a/window_end"] == -1 and baseline["window_end"] == -1
    windowed = by_run["w0-2_seed0_lr=0.05"]
    assert windowed["deficit/freeze/a/kind"] == "PathwayDeficit/freeze" and windowed["window_end"] == 2
    assert [hp["model/lr"] for hp in (baseline, windowed)] == [0.1, 0.05] and windowed["model/width"] == 4


def test_the_dashboard_lists_every_run_with_its_final_metric(sweep):
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    sweep_root, table = sweep
    tb, request = _tensorboard_context(sweep_root)
    hp = backend_context.Context(tb)
    experiments = [run for run, tags in hp.hparams_metadata(request, "").items() if "_hparams_/experiment" in tags]
    assert experiments == ["."]  # one experiment, the sweep's: no run's own columns compete with it
    query = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, aggregation_type=api_pb2.AGGREGATION_AVG,
                                             allowed_statuses=[api_pb2.STATUS_SUCCESS])
    groups = list_session_groups.Handler(request, hp, "", query).run().session_groups
    loss = {g.name: g.metric_values[0].value for g in groups}
    assert loss == pytest.approx(dict(zip(table["label"], table["loss"], strict=True)))  # the table's numbers


def test_custom_scalars_open_on_deficits_and_reliance_with_spectra_closed(sweep_root):
    from tensorboard.plugins.custom_scalar import custom_scalars_plugin

    runs = sessions(sweep_root)
    assert all(_tensorboard_hparams.session_layout(os.path.join(sweep_root, run)) for run in runs)  # read at the end
    tb, request = _tensorboard_context(sweep_root)
    layout = json.loads(custom_scalars_plugin.CustomScalarsPlugin(tb).layout_impl(request, ""))  # what the tab draws
    titles = [(c["title"], bool(c.get("closed"))) for c in layout["category"]]
    assert titles == [("deficits and tasks", False), ("reliance", False), ("singular values", True)]
    reliance = {c["title"]: c["multiline"]["tag"] for c in layout["category"][1]["chart"]}
    assert reliance == {f"reliance/ablation/{x}": [f"^reliance/ablation/{x}$"] for x in "ab"}  # a line per run
    singular = [c["title"] for c in layout["category"][2]["chart"]]  # a line per run (a single run: top 2 together)
    assert singular == ["a.weight: singular value 1", "a.weight: singular value 2",
                        "b.weight: singular value 1", "b.weight: singular value 2"]


def test_finishing_again_changes_nothing(sweep_root, tmp_path):
    import shutil

    root = shutil.copytree(sweep_root, str(tmp_path / "copy"))
    before = shown_experiment(root)
    lead, last = ["window_start", "window_end", "seed", "lr"], list(SWEEP_BOOKKEEPING)
    assert views.finish_sweep(root, lead, last) == os.path.join(root, _tensorboard_hparams.SWEEP_FILE)
    after = shown_experiment(root)
    assert [i.name for i in after.hparam_infos] == [i.name for i in before.hparam_infos]
    assert sessions(root) == sessions(sweep_root)

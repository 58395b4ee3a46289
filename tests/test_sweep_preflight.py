"""The sweep's pre-flight: what would fail or mislead only after training is refused before it."""

from __future__ import annotations

import glob
import os
import tempfile
import time
import warnings
from typing import Any

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.cli import main
from lightning_critical.sweep.preflight import PreflightError, check_deficit_windows
from lightning_critical.sweep.runners import MetricNotFound
from lightning_critical.sweep.spec import RunSpec, SweepSpec


def pathway_model(seed):
    return lc.models.MultiPathwayLinearNet(depth=2, width=12, lr=0.05, seed=seed)


def freeze_b(window):
    return lc.PathwayDeficit("b", window, mode="freeze")


GOOD: dict[str, Any] = dict(
    model=pathway_model, datamodule=lc.data.HierarchicalDataModule, deficit=freeze_b,
    windows=lc.sweep.removal([1, 2]), metrics="train_loss", seeds=[0, 1],
    trainer={"max_epochs": 3, "log_every_n_steps": 1, "accelerator": "cpu"}, backend="serial", tensorboard=False,
    plot=False, progress=False)


def _refused(tmp_path, error: type[Exception], match: str, **change: Any) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        lc.sweep.run(**{**GOOD, "out": str(out), **change})
    assert not (out / "results.jsonl").exists() and not (out / "sweep.json").exists()  # nothing trained


class NoTestStep(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)


class NoTestLoader(NoTestStep):
    def test_step(self, batch, batch_idx):
        self.log("test_loss", self.layer(batch[0]).pow(2).mean())


def _pathway_b(window):
    return lc.PathwayDeficit("b", window)


def test_test_true_without_test_step_is_refused_naming_the_model(tmp_path):
    _refused(tmp_path, ValueError, "test=True but model NoTestStep has no test_step", model=NoTestStep,
             datamodule=None, deficit=lambda window: lc.InputDeficit("noise", window), test=True)


def test_test_true_without_a_test_dataloader_is_refused(tmp_path):
    _refused(tmp_path, ValueError, "neither no datamodule nor model NoTestLoader defines test_dataloader",
             model=NoTestLoader, datamodule=None, deficit=lambda window: lc.InputDeficit("noise", window), test=True)


@pytest.mark.parametrize("deficit, match", [
    (lambda window: lc.PathwayDeficit("b", (0, 2)), r"ignores its window: given window \[0, 1\) epochs"),
    (lambda window: lc.PathwayDeficit("b", (window.start, window.end), unit="step"),
     r"whose window is \[0, 1\) steps"),
    (lambda window: lc.TaskSwitch({0: "a", 5: "b"}), "same schedule"),
], ids=["fixed_window", "lost_unit", "task_switch_fixed"])
def test_a_deficit_that_ignores_its_window_is_refused(tmp_path, deficit, match):
    _refused(tmp_path, ValueError, match, deficit=deficit)


def test_a_task_switch_that_follows_its_window_passes_the_window_check():
    def pretrain_until(window):
        return lc.TaskSwitch({window.start: "pretrain", window.end: "target"})

    spec = SweepSpec(model=pathway_model, deficit=pretrain_until, trainer={"max_epochs": 4})
    runs = [RunSpec((lc.Window(0, k),), seed=0) for k in (1, 2)]
    check_deficit_windows(spec, runs)  # no error
    with pytest.raises(ValueError, match=r"switches at \[3\], neither the window's start nor its end"):
        check_deficit_windows(SweepSpec(model=pathway_model, deficit=lambda w: lc.TaskSwitch({3: "target"}),
                                        trainer={"max_epochs": 4}), runs)


def test_a_test_metric_is_checked_after_a_trial_test(tmp_path):
    small: dict[str, Any] = dict(model=lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
                 datamodule=lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
                 deficit=lc.InputDeficit("blur", (0, 1)), seeds=[0], trainer={"max_epochs": 2, "accelerator": "cpu"})
    _refused(tmp_path, ValueError, r"\['test_accuracy'\] not in .*then 1 test batch.*'test_acc'",
             metrics=["test_accuracy"], test=True, **small)
    table = lc.sweep.run(**{**GOOD, **small, "metrics": ["test_acc", "val_acc"], "test": True,
                            "out": str(tmp_path / "ok")})
    assert (table.status == "ok").all()


def test_the_trial_keeps_a_loop_the_sweep_turned_off(tmp_path):
    # limit_val_batches=0: no run logs val_acc, so the trial (which would otherwise validate one batch) must not
    small: dict[str, Any] = dict(model=lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
                                 datamodule=lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
                                 deficit=lc.InputDeficit("blur", (0, 1)), seeds=[0])
    _refused(tmp_path, ValueError, r"\['val_acc'\] not in .*it produced \['train_acc', 'train_loss'\]",
             metrics=["val_acc"], trainer={"max_epochs": 2, "accelerator": "cpu", "limit_val_batches": 0}, **small)


def test_a_trial_that_raises_names_the_run_before_training(tmp_path):
    _refused(tmp_path, PreflightError, r"trial fit of run w0-1_seed0 .* raised ValueError: .*'nope'",
             deficit=lambda window: lc.PathwayDeficit("nope", window))


class LateMetric(lc.models.MultiPathwayLinearNet):
    def on_train_epoch_end(self) -> None:
        if self.current_epoch >= 1:  # a metric only logged later in training
            self.log("late", float(self.current_epoch))


def test_preflight_false_allows_a_late_metric_and_a_finished_sweep_needs_no_trial(tmp_path):
    late: dict[str, Any] = dict(model=lambda seed: LateMetric(depth=2, width=12, seed=seed), metrics=["late"])
    _refused(tmp_path, ValueError, r"\['late'\] not in trainer.callback_metrics.*pass preflight=False", **late)
    out = str(tmp_path / "late")
    first = lc.sweep.run(**{**GOOD, **late, "out": out, "preflight": False})
    assert (first.status == "ok").all() and (first.late == 2.0).all()
    again = lc.sweep.run(**{**GOOD, **late, "out": out})  # every run finished: no trial, nothing refused
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))


class NoisyData(lc.data.HierarchicalDataModule):
    """Draws from its own generator per batch (augmentation): shared, a trial would shift every later run."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = torch.Generator().manual_seed(0)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x + 0.1 * torch.randn(x.shape, generator=self.rng), y


SHARED: list[NoisyData] = []


def shared_data() -> NoisyData:
    # module-level, so the sweep's identity (and its run order, which a shared generator makes matter) is stable
    return SHARED[0]


def _table(tmp_path, name: str, **change: Any) -> pd.DataFrame:
    table = lc.sweep.run(**{**GOOD, "out": str(tmp_path / name), **change})
    return table.drop(columns=["seconds", "log_dir"]).reset_index(drop=True)


class PlainData(lc.data.HierarchicalDataModule):
    """No generator of its own: sharing it between runs changes nothing."""


PLAIN: list[PlainData] = []


def plain_data() -> PlainData:
    return PLAIN[0]


def test_preflight_changes_no_run_numbers(tmp_path):
    PLAIN[:] = [PlainData()]
    cases: dict[str, dict[str, Any]] = {
        "fresh": {}, "pathway_noise": {"deficit": lc.PathwayDeficit("b", (0, 1), mode="noise")},
        "shared_datamodule": {"datamodule": plain_data}}
    for name, change in cases.items():
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            on = _table(tmp_path, f"{name}_on", **change)
        seconds_on = time.perf_counter() - start
        if name == "shared_datamodule":
            assert any("no trial fit, the datamodule factory returns the same object" in str(w.message)
                       for w in caught)
        start = time.perf_counter()
        off = _table(tmp_path, f"{name}_off", preflight=False, **change)
        print(f"{name}: preflight on {seconds_on:.2f} s, off {time.perf_counter() - start:.2f} s")
        if name == "shared_datamodule":  # the shared object is part of the identity, and the first call used it
            on, off = on.drop(columns=["run_id", "parent"]), off.drop(columns=["run_id", "parent"])
        pd.testing.assert_frame_equal(on, off, check_exact=True)  # bitwise: metrics, seeds, every column


def test_a_shared_object_holding_generators_is_refused_before_training(tmp_path):
    # One datamodule for every run, drawing augmentation noise from its own generator: each run's
    # numbers would depend on the runs trained before it, so two calls (or two backends) would differ.
    SHARED[:] = [NoisyData()]
    with pytest.raises(ValueError, match=r"the datamodule factory returns the same object on every call, and that "
                                         r"object holds random generators \(datamodule\.rng\)"):
        lc.sweep.run(**{**GOOD, "out": str(tmp_path / "s"), "datamodule": shared_data})
    assert not (tmp_path / "s" / "results.jsonl").exists()


def _files(root) -> list[str]:
    names = (os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)
    return sorted(n.split("events.out.tfevents")[0] for n in names)  # event files are named by time and pid


def test_preflight_writes_nothing_but_the_sweep(tmp_path):
    trials = len(glob.glob(os.path.join(tempfile.gettempdir(), "lc-preflight-*")))
    for flag in (True, False):
        lc.sweep.run(**{**GOOD, "tensorboard": True, "out": str(tmp_path / str(flag)), "preflight": flag})
    assert _files(tmp_path / "True") == _files(tmp_path / "False")
    assert len(glob.glob(os.path.join(tempfile.gettempdir(), "lc-preflight-*"))) == trials  # its own folder is gone


def test_the_cli_config_can_turn_preflight_off(tmp_path, capsys):
    config = tmp_path / "late.yaml"
    config.write_text(
        "study:\n"
        "  model: {class_path: tests.test_sweep_preflight.LateMetric, init_args: {depth: 2, width: 12}}\n"
        "  datamodule: {class_path: lightning_critical.data.HierarchicalDataModule}\n"
        "  deficit: {class_path: lightning_critical.PathwayDeficit, init_args: {pathways: b}}\n"
        "  windows: [[0, 1]]\n  seeds: [0]\n  metrics: [late]\n  trainer: {max_epochs: 2, accelerator: cpu}\n"
        "execution: {backend: serial}\noutput: {tensorboard: false, plot: false}\n")
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "on")]) == 2  # refused before training
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass preflight=False" in err, err
    off = ["--out", str(tmp_path / "off"), "--execution.preflight", "false"]
    assert main(["sweep", "--config", str(config), *off]) == 0


BUILDS: list[str] = []


class CountedNet(lc.models.MultiPathwayLinearNet):
    def __init__(self, seed: int = 0) -> None:
        BUILDS.append("model")
        super().__init__(depth=2, width=12, lr=0.05, seed=seed)


def counted_model(seed):
    return CountedNet(seed=seed)


def counted_data():
    BUILDS.append("datamodule")
    return lc.data.HierarchicalDataModule()


@pytest.mark.parametrize(("model", "model_builds"), [(CountedNet, 1), (counted_model, 2)])
def test_the_start_up_builds_the_first_run_once_more_only_to_see_a_shared_object(tmp_path, model, model_builds):
    # The identity's build is the trial's: a class is not built again, a function once (is its object shared?).
    BUILDS.clear()
    table = lc.sweep.run(**{**GOOD, "model": model, "datamodule": counted_data, "seeds": [0],
                            "out": str(tmp_path), "share_prefixes": False, "verify": False})
    runs = len(table)
    assert (table.status == "ok").all() and runs == 3
    assert (BUILDS.count("model") - runs, BUILDS.count("datamodule") - runs) == (model_builds, 2)


def test_a_step_metric_the_short_runs_would_never_log_is_refused_naming_log_every_n_steps(tmp_path):
    # MultiPathwayLinearNet logs train_loss only every log_every_n_steps (default 50); full batch, 3 epochs: 3 steps
    _refused(tmp_path, MetricNotFound,
             r"\['train_loss'\] would never be logged: the model logs them only every log_every_n_steps=50 optimizer "
             r"steps, and the shortest run takes 3 \(3 epochs x 1 steps\)\. Pass trainer=\{'log_every_n_steps': 1\}",
             trainer={"max_epochs": 3, "accelerator": "cpu"})


def test_without_preflight_the_missing_step_metric_names_log_every_n_steps(tmp_path):
    with pytest.raises(MetricNotFound, match=r"The run took 3 optimizer steps, fewer than log_every_n_steps=50"):
        lc.sweep.run(**{**GOOD, "out": str(tmp_path), "trainer": {"max_epochs": 3, "accelerator": "cpu"},
                        "preflight": False, "seeds": [0]})


def test_a_metric_logged_on_every_step_passes_however_short_the_runs(tmp_path):
    table = lc.sweep.run(**{**GOOD, "out": str(tmp_path), "model": lambda seed: NoTestStep(), "datamodule": None,
                            "deficit": lambda window: pl.Callback(), "windows": [(0, 1)], "seeds": [0],
                            "trainer": {"max_epochs": 2, "accelerator": "cpu"}})  # 4 steps < 50, logged every step
    assert (table.status == "ok").all() and table.train_loss.notna().all()

"""Every built-in deficit per member in the vectorized runner: bitwise the default runner's runs, or refused first."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vectorized_nets import DigitsMLP

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep import VectorizedRefused


def run(tmp_path: Any, runner: Any, model: Any, data: Any, deficit: Any, metrics: list[Any], **kw: Any) -> Any:
    kw.setdefault("windows", lc.sweep.removal([1, 2], epochs_after=1))
    metrics = [m for m in metrics if not m.startswith("reliance/")] + kw.pop("metric_functions", [])  # theirs
    return lc.sweep.run(model, data, deficit=deficit, seeds=[0, 1], metrics=metrics, trainer=kw.pop("trainer", {}),
                        runner=runner, out=str(tmp_path / str(runner)), backend="serial", tensorboard=False,
                        plot=False, save_model=True, **kw)


def assert_bitwise(tmp_path: Any, default: Any, vectorized: Any, metrics: list[str]) -> None:
    assert (vectorized["status"] == "ok").all(), vectorized["error"].tolist()
    assert default["label"].tolist() == vectorized["label"].tolist()
    assert np.array_equal(default[metrics].values, vectorized[metrics].values, equal_nan=True)
    for label in default["label"]:
        a, b = (torch.load(os.path.join(tmp_path, r, "models", f"{label}.pt")) for r in ("None", "vectorized"))
        assert all(torch.equal(a[k], b[k]) for k in a), label


def both(tmp_path: Any, model: Any, data: Any, deficit: Any, metrics: list[str], **kw: Any) -> tuple[Any, Any]:
    default = run(tmp_path, None, model, data, deficit, metrics, **kw)
    vectorized = run(tmp_path, "vectorized", model, data, deficit, metrics, **kw)
    assert_bitwise(tmp_path, default, vectorized, metrics)
    return default, vectorized


TWO_VIEW = functools.partial(lc.models.TwoViewNet, hidden=8, lr=0.1, lr_decay=0.75)
TWO_VIEW_DATA = functools.partial(lc.data.TwoViewDigits, batch_size=32, subset=64)


def test_noise_on_a_view_is_the_default_runners_noise_bitwise(tmp_path: Any) -> None:
    # The multisensory study (examples/multisensory.py): view b's input replaced by seeded Gaussian noise, per
    # member and window; a test, reliance metric functions, no validation.
    noise = lc.PathwayDeficit("b", window=(0, 1), mode="noise", noise_std=0.3)
    metrics = ["train_loss", "test_acc", "reliance/ablation/b", "reliance/rsv/mean"]
    functions = [lc.sweep.metrics.ablation_reliance(dataloader="test", max_examples=64),
                 lc.sweep.metrics.relative_source_variance(layer="fusion", dataloader="test", max_examples=64)]
    default, _ = both(tmp_path, TWO_VIEW, TWO_VIEW_DATA, noise, metrics, metric_functions=functions, test=True,
                      trainer={"limit_val_batches": 0})
    frozen = run(tmp_path / "frozen", None, TWO_VIEW, TWO_VIEW_DATA, lc.PathwayDeficit("b", (0, 1)), ["train_loss"])
    windowed = default["window_end"].notna()
    assert (default[windowed]["train_loss"] != frozen[windowed]["train_loss"]).all()  # the noise acts


def test_noise_on_a_hidden_pathway_with_a_swept_std(tmp_path: Any) -> None:
    # A pathway whose input is computed (its gradient stops at the noise), two calls' shapes found once.
    noise = lc.PathwayDeficit("fusion", window=(0, 1), mode="noise")
    both(tmp_path, TWO_VIEW, TWO_VIEW_DATA, noise, ["train_loss", "val_acc"], params={"deficit.noise_std": [0.5, 2.0]})


# width 8: the projected inputs are dense, and the products small (vectorized/kernels.py keeps them bitwise)
def test_noise_in_steps_with_a_fixed_seed(tmp_path: Any) -> None:
    noise = lc.PathwayDeficit("a", window=(0, 1), mode="noise", unit="step", seed=5)  # every member: seed 5
    both(tmp_path, TWO_VIEW, TWO_VIEW_DATA, noise, ["train_loss", "val_acc"],
         windows=lc.sweep.removal([1, 3], unit="step"), trainer={"max_epochs": 2})


class SharedEncoder(pl.LightningModule):
    """One encoder called on both views of a batch: a noise deficit on it draws one noise per call."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.head = nn.Linear(32, 16), nn.Linear(32, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        a, b, y = batch
        codes = torch.cat([F.relu(self.enc(a.flatten(1))), F.relu(self.enc(b.flatten(1)))], dim=1)
        loss = F.cross_entropy(self.head(codes), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_noise_on_a_module_called_twice_per_step(tmp_path: Any) -> None:
    noise = lc.PathwayDeficit("enc", window=(0, 1), mode="noise")
    both(tmp_path, SharedEncoder, TWO_VIEW_DATA, noise, ["train_loss"])


LINEAR = functools.partial(lc.models.MultiPathwayLinearNet, depth=2, width=8)
HIERARCHY = functools.partial(lc.data.HierarchicalDataModule, batch_size=4)


@pytest.mark.parametrize("modes", [[0], [1, 2]])
def test_mode_deficit_per_member_is_bitwise(tmp_path: Any, modes: list[int]) -> None:
    lesion = lc.ModeDeficit("a", modes=modes, window=(0, 1))
    default, _ = both(tmp_path, LINEAR, HIERARCHY, lesion, ["train_loss"], trainer={"log_every_n_steps": 1})
    assert default["train_loss"].nunique() > 2  # windows and seeds differ


class TaskDigits(lc.data.DigitsDataModule):
    """The digits with two tasks: their labels, or the labels shifted by one (resolved in the transfer hook)."""

    tasks = ("digits", "shifted")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = "digits"

    def set_task(self, name: str) -> None:
        self.task = name

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        return [x, (y + 1) % 10 if self.task == "shifted" else y]


class MLP(DigitsMLP):
    """The digits MLP (SGD with momentum)."""


TASKS = functools.partial(TaskDigits, subset=96, batch_size=32)


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_each_member_switches_its_own_task_at_its_times(tmp_path: Any, unit: str) -> None:
    switch = functools.partial(lc.sweep.TaskWindow, during="shifted", after="digits")
    windows = lc.sweep.removal([1, 2], epochs_after=1) if unit == "epoch" else lc.sweep.removal([2, 4], unit="step")
    trainer = {} if unit == "epoch" else {"max_epochs": 3}
    default, _ = both(tmp_path, MLP, TASKS, switch, ["train_loss", "val_acc"], windows=windows, trainer=trainer)
    assert default["val_acc"].nunique() > 1


class Tiny(MLP):
    """A 64-3-10 MLP: with batches of 2, its products have fewer than 400 multiply-adds."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, 3), nn.Linear(3, 10)


def test_tiny_layers_on_dense_inputs_are_bitwise(tmp_path: Any, monkeypatch: Any) -> None:
    data = functools.partial(lc.data.DigitsDataModule, subset=16, batch_size=2)
    blur = lc.InputDeficit("blur", (0, 1))
    default, _ = both(tmp_path, Tiny, data, blur, ["train_loss", "val_acc"])
    from lightning_critical.sweep.runners.vectorized.kernels import SmallProducts
    monkeypatch.setattr(SmallProducts, "around", lambda self, stage, batch: contextlib.nullcontext())  # vmap bmm
    plain = run(tmp_path / "plain", "vectorized", Tiny, data, blur, ["train_loss", "val_acc"])
    assert (plain["train_loss"].values != default["train_loss"].values).any()


class Halved(lc.PathwayDeficit):
    """A subclass: it may change what the deficit does, so the vectorized runner does not map it."""


def test_other_deficits_are_refused_before_training(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match="Halved"):
        run(tmp_path, "vectorized", MLP, TASKS, Halved("l1", (0, 1)), ["val_acc"])
    with pytest.raises(VectorizedRefused, match="target="):
        other = TaskDigits()
        run(tmp_path, "vectorized", MLP, TASKS, lambda window: lc.TaskSwitch({window.end: "shifted"}, target=other),
            ["val_acc"])
    assert not os.path.exists(tmp_path / "vectorized" / "results.jsonl")

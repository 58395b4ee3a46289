"""The vectorized runner's jobs and templates: every params combination trains its own module, bitwise the default
runner's runs; jobs grouped by parameter and batch shapes; every combination checked before training."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep import VectorizedRefused


class Net(pl.LightningModule):
    """A 64-h-10 MLP; ``act``, ``l2`` and ``gamma`` change the computation, not the shapes; ``extra`` logs a name."""

    def __init__(self, act: str = "relu", hidden: int = 8, l2: float = 0.0, gamma: float = 1.0, p: float = 0.0,
                 extra: bool = False) -> None:
        super().__init__()
        self.act, self.l2c, self.gamma, self.extra = act, l2, gamma, extra
        self.l1, self.l2 = nn.Linear(64, hidden), nn.Linear(hidden, 10)
        self.drop = nn.Dropout(p) if p else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x.flatten(1))
        return self.l2(self.drop(torch.tanh(h) if self.act == "tanh" else F.relu(h)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y) + self.l2c * self.l1.weight.pow(2).sum()
        self.log("train_loss", loss)
        if self.extra:
            self.log("extra", loss * 2)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        if self.gamma == 1.0:
            return opt
        return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, self.gamma)]


def digits(batch_size: int = 32, subset: int = 96) -> Any:
    return lc.data.DigitsDataModule(subset=subset, batch_size=batch_size)


def sweep(tmp_path: Any, runner: Any, params: dict[str, list[Any]], datamodule: Any = digits,
          seeds: tuple[int, ...] = (0,)) -> Any:
    return lc.sweep.run(Net, datamodule, deficit=lc.InputDeficit("blur", (0, 1)),
                        windows=lc.sweep.removal([1], epochs_after=1), seeds=list(seeds),
                        metrics=["val_loss", "train_loss"], trainer={}, runner=runner,
                        out=os.path.join(tmp_path, str(runner)), backend="serial", tensorboard=False, plot=False,
                        save_model=True, params=params)


def assert_bitwise(tmp_path: Any, params: dict[str, list[Any]], capsys: Any, jobs: int,
                   datamodule: Any = digits) -> None:
    """The sweep under ``runner="auto"`` (which must pick the vectorized runner, in ``jobs`` jobs) equals the default
    runner's, metrics and saved weights, bitwise."""
    default = sweep(tmp_path, None, params, datamodule)
    capsys.readouterr()
    vectorized = sweep(tmp_path, "auto", params, datamodule)
    assert f"the vectorized runner ({len(default)} runs in {jobs} job(s))" in capsys.readouterr().out
    assert (vectorized["status"] == "ok").all()
    for column in ("val_loss", "train_loss"):
        assert default[column].tolist() == vectorized[column].tolist(), column
    for label in default["label"]:
        a, b = (torch.load(os.path.join(tmp_path, r, "models", f"{label}.pt")) for r in ("None", "auto"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), label


@pytest.mark.parametrize("params", [{"act": ["relu", "tanh"]}, {"l2": [0.0, 0.1]}])
def test_a_swept_value_that_changes_the_computation_is_trained_by_its_own_module(
        tmp_path: Any, capsys: Any, params: dict[str, list[Any]]) -> None:
    assert_bitwise(tmp_path, params, capsys, jobs=1)


def test_a_swept_scheduler_value_trains_exactly(tmp_path: Any, capsys: Any) -> None:
    assert_bitwise(tmp_path, {"gamma": [0.5, 0.9]}, capsys, jobs=1)


def test_a_shape_sweep_trains_one_job_per_shapes(tmp_path: Any, capsys: Any) -> None:
    assert_bitwise(tmp_path, {"hidden": [8, 12], "act": ["relu", "tanh"]}, capsys, jobs=2)


@pytest.mark.parametrize("params", [{"batch_size": [32, 48]}, {"subset": [96, 90]}])
def test_a_datamodule_sweep_that_changes_the_batches_trains_one_job_per_batch_shapes(
        tmp_path: Any, capsys: Any, params: dict[str, list[Any]]) -> None:
    assert_bitwise(tmp_path, params, capsys, jobs=2, datamodule=digits)


def test_every_combination_is_checked_before_training(tmp_path: Any, capsys: Any) -> None:
    # dropout only in the second combination: a trial of the first one's members would pass
    with pytest.raises(VectorizedRefused, match="dropout module 'drop'"):
        sweep(tmp_path, "vectorized", {"p": [0.0, 0.5]}, seeds=(0, 1, 2))
    assert not os.path.exists(os.path.join(tmp_path, "vectorized", "models"))
    table = sweep(tmp_path, "auto", {"p": [0.0, 0.5]}, seeds=(0, 1, 2))
    assert "the default runner (one fit per run): dropout module 'drop'" in capsys.readouterr().out
    assert (table["status"] == "ok").all()


def test_combinations_logging_different_names_are_refused(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match="log different names"):
        sweep(tmp_path, "vectorized", {"extra": [False, True]})


def test_combinations_of_one_shape_stay_one_job(capsys: Any, tmp_path: Any) -> None:
    # three combinations of one shape and batches: one job, three templates
    sweep(tmp_path, "auto", {"act": ["relu", "tanh", "relu6"]})
    assert "(6 runs in 1 job(s))" in capsys.readouterr().out



def test_members_forked_from_a_shared_prefix_keep_their_module(tmp_path: Any) -> None:
    # w0-1 and w0-2 share their first epoch, per seed and activation: the forked rows keep their template
    def run(runner: Any) -> Any:
        return lc.sweep.run(Net, digits, deficit=lc.PathwayDeficit("l1", (0, 1), mode="silence"),
                            windows=lc.sweep.removal([1, 2], epochs_after=1), seeds=[0, 1],
                            metrics=["val_loss", "train_loss"], trainer={}, runner=runner,
                            out=os.path.join(tmp_path, str(runner)), backend="serial", tensorboard=False, plot=False,
                            params={"act": ["relu", "tanh"]})
    default, vectorized = run(None), run("vectorized")
    assert vectorized["parent"].notna().any()
    for column in ("val_loss", "train_loss"):
        assert default[column].tolist() == vectorized[column].tolist(), column

"""A run's own module state beside its weights: per-seed attributes, ``setup("test")`` attributes, tensor attributes."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep import VectorizedRefused


class Masked(pl.LightningModule):
    """An MLP whose hidden units are masked by a mask drawn in ``__init__`` (so: per seed); ``setup("test")``
    sets the temperature of the test loss; ``ema=True`` keeps a tensor attribute updated in the step."""

    def __init__(self, ema: bool = False) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, 16), nn.Linear(16, 10)
        self.mask = (torch.rand(16) > 0.5).float()  # a plain attribute: not a parameter, not a buffer
        self.temperature, self.ema = 1.0, torch.zeros(()) if ema else None

    def setup(self, stage: str) -> None:
        if stage == "test":
            self.temperature = 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(x.flatten(1))) * self.mask)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.ema is not None:
            self.ema = 0.9 * self.ema + 0.1 * loss.detach()
        self.log("train_loss", loss)
        self.log("mask_sum", self.mask.sum() + 0 * loss.detach())
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x) / self.temperature, y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


METRICS = ["train_loss", "mask_sum", "val_loss", "test_loss"]


def sweep(tmp_path: Any, runner: Any, model: Any = Masked) -> Any:
    return lc.sweep.run(
        model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32, test_fraction=0.3),
        deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1], epochs_after=1), seeds=[0, 1, 2],
        metrics=METRICS, trainer={}, runner=runner, out=os.path.join(tmp_path, str(runner)), backend="serial",
        tensorboard=False, plot=False, test=True)


def test_each_seed_keeps_its_own_plain_attributes_and_test_setup(tmp_path: Any) -> None:
    base, vec = sweep(tmp_path, None), sweep(tmp_path, "vectorized")
    assert base["mask_sum"].nunique() > 1  # the seeds' masks differ: sharing one would show
    assert vec[METRICS].to_numpy().tolist() == base[METRICS].to_numpy().tolist()


def test_a_tensor_attribute_assigned_in_the_step_is_refused_before_training(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match=r"assigns the tensor attributes \['ema'\]"):
        sweep(tmp_path, "vectorized", functools.partial(Masked, ema=True))
    assert not os.path.exists(os.path.join(tmp_path, "vectorized"))

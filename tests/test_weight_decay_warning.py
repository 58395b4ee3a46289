"""Weight decay under a silence / noise / mode deficit: the warning, and the effect it warns about."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl


class Branches(pl.LightningModule):
    """Two summed linear branches trained with SGD (no momentum) at a chosen weight decay."""

    def __init__(self, weight_decay: float = 0.0, optimizer: str = "sgd", split_groups: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left, self.right = nn.Linear(6, 3), nn.Linear(6, 3)
        self.weight_decay, self.optimizer, self.split_groups = weight_decay, optimizer, split_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.left(x) + self.right(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=0.01)  # AdamW's default weight_decay is 0.01
        if self.split_groups:  # the deprived branch in a group without decay
            groups: list[dict[str, Any]] = [
                {"params": self.left.parameters()}, {"params": self.right.parameters(), "weight_decay": 0.0}]
            return torch.optim.SGD(groups, lr=0.1, weight_decay=self.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=0.1, weight_decay=self.weight_decay)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(1)
        return DataLoader(TensorDataset(torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)),
                          batch_size=8)


def decay_warnings(model: pl.LightningModule, deficit: Any, max_epochs: int = 1) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=max_epochs, callbacks=[deficit]).fit(model)
    return [str(w.message) for w in caught if "weight_decay" in str(w.message)]


@pytest.mark.parametrize("mode", ["silence", "noise"])
def test_silence_or_noise_with_weight_decay_warns_once_naming_deficit_optimizer_and_value(mode):
    deficit = lc.PathwayDeficit("right", window=(0, 1), mode=mode)
    (message,) = decay_warnings(Branches(weight_decay=1e-3), deficit)
    assert f"PathwayDeficit(pathways='right', window=[0, 1) epochs, mode='{mode}'" in message
    assert "SGD(weight_decay=0.001)" in message
    assert "param group with weight_decay=0" in message and "mode='freeze'" in message
    # once per process: a second fit with the same cause says nothing
    assert decay_warnings(Branches(weight_decay=1e-3), lc.PathwayDeficit("right", window=(0, 1), mode=mode)) == []


@pytest.mark.parametrize(
    "model, mode",
    [
        (Branches(weight_decay=0.0), "silence"),  # no decay
        (Branches(weight_decay=1e-3), "freeze"),  # freeze skips the optimizer, decay included
        (Branches(weight_decay=1e-3, split_groups=True), "silence"),  # the deprived branch's group has none
    ],
)
def test_no_warning_without_decay_on_the_deprived_parameters(model, mode):
    assert decay_warnings(model, lc.PathwayDeficit("right", window=(0, 1), mode=mode)) == []


def test_adamw_default_weight_decay_warns():
    (message,) = decay_warnings(Branches(optimizer="adamw"), lc.PathwayDeficit("right", window=(0, 1), mode="silence"))
    assert "AdamW(weight_decay=0.01)" in message


def test_mode_deficit_with_weight_decay_warns():
    class Decayed(lc.models.MultiPathwayLinearNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, weight_decay=1e-4)

    model = Decayed(depth=2, width=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=1, callbacks=[lc.ModeDeficit("a", modes=[0], window=(0, 1))]).fit(
            model, lc.data.HierarchicalDataModule())
    (message,) = [str(w.message) for w in caught if "weight_decay" in str(w.message)]
    assert "ModeDeficit(pathway='a', modes=[0]" in message and "SGD(weight_decay=0.0001)" in message
    assert "mode='freeze'" not in message


def test_weight_decay_shrinks_a_silenced_pathway():
    # What the warning is about: the silenced branch gets no gradient, so plain SGD holds it,
    # but with weight decay it shrinks by (1 - lr * wd) per step: 120 steps here.
    norms = {}
    for wd in (0.0, 0.05):
        model = Branches(weight_decay=wd)
        before = model.right.weight.detach().clone()
        make_trainer(max_epochs=30, callbacks=[lc.PathwayDeficit("right", window=(0, 30), mode="silence")]).fit(model)
        norms[wd] = float(model.right.weight.detach().norm() / before.norm())
        if wd == 0.0:
            assert torch.equal(model.right.weight.detach(), before)
    assert norms[0.05] == pytest.approx((1 - 0.1 * 0.05) ** 120, rel=1e-4)  # 0.55

"""A two-input model (forward(xa, xb), batches (xa, xb, y)) with every part that reads batches."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl

N = 16


def two_input_data() -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 5, generator=gen), torch.randn(N, 3, generator=gen), torch.arange(N) % 4)


class TwoInputNet(pl.LightningModule):
    """Two inputs, two branches; it keeps every training batch it receives."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(5, 4), nn.Linear(3, 4)
        self.seen: list[tuple[torch.Tensor, ...]] = []

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        return self.a(xa) + self.b(xb)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        xa, xb, y = batch
        self.seen.append((xa.clone(), xb.clone(), y.clone()))
        loss = F.cross_entropy(self(xa, xb), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(two_input_data(), batch_size=8)


class OneInputExtraElements(TwoInputNet):
    """forward(x, scale=1.0) with batches (xa, xb, y): only xa goes to the model."""

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:  # type: ignore[override]
        return self.a(x) * scale

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        xa, _, y = batch
        return F.cross_entropy(self(xa), y)


def fisher_frame(model: pl.LightningModule, monitor: lc.FisherMonitor) -> Any:
    make_trainer(max_epochs=2, callbacks=[monitor]).fit(model)
    return monitor.to_frame()


def test_fisher_monitor_feeds_every_input_by_default():
    # Before: model(batch[0]) -> "forward() missing 1 required positional argument: 'xb'".
    default = fisher_frame(TwoInputNet(), lc.FisherMonitor(num_batches=2))
    explicit = fisher_frame(TwoInputNet(), lc.FisherMonitor(num_batches=2, inputs=lambda b: (b[0], b[1])))
    assert sorted(default.target.unique()) == ["a", "b", "total"]
    assert len(default) == 6 and default.value.gt(0).all()
    assert default.value.tolist() == explicit.value.tolist()


def test_fisher_monitor_gives_a_one_input_model_one_input():
    frame = fisher_frame(OneInputExtraElements(), lc.FisherMonitor(num_batches=1))
    assert sorted(frame.target.unique()) == ["a", "b", "total"]
    assert (frame[frame.target == "b"].value == 0).all()  # b is not in the model's output: no Fisher


def test_fisher_monitor_mismatched_inputs_say_how_to_fix_it():
    with pytest.raises(TypeError, match=r"calling the model with a tuple of 1 elements.*inputs=<callable"):
        fisher_frame(TwoInputNet(), lc.FisherMonitor(inputs=lambda b: b[0]))


class DictBatches(TwoInputNet):
    """Batches {names[0]: xa, names[1]: xb, "y": y}."""

    def __init__(self, names: tuple[str, str]) -> None:
        super().__init__()
        self.names = names

    def train_dataloader(self) -> DataLoader:
        xa, xb, y = two_input_data().tensors
        rows = [{self.names[0]: xa[i], self.names[1]: xb[i], "y": y[i]} for i in range(N)]
        return DataLoader(rows, batch_size=8)  # type: ignore[arg-type]  # a list is a map-style dataset

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[self.names[0]], batch[self.names[1]]), batch["y"])


def test_fisher_monitor_reads_mapping_batches_by_the_forward_argument_names():
    by_name = fisher_frame(DictBatches(("xa", "xb")), lc.FisherMonitor())  # forward(xa, xb)
    explicit = fisher_frame(TwoInputNet(), lc.FisherMonitor())
    assert by_name.value.tolist() == explicit.value.tolist()
    with pytest.raises(ValueError, match=r"requires 2 positional arguments \['xa', 'xb'\].*Pass inputs="):
        fisher_frame(DictBatches(("left", "right")), lc.FisherMonitor())
    frame = fisher_frame(DictBatches(("left", "right")), lc.FisherMonitor(inputs=lambda b: (b["left"], b["right"])))
    assert frame.value.tolist() == explicit.value.tolist()


@pytest.mark.parametrize("input_key", [0, 1])
def test_input_deficit_corrupts_the_chosen_input_only(input_key):
    model = TwoInputNet()
    deficit = lc.InputDeficit("noise", window=(0, 1), input_key=input_key, noise_std=0.5)
    make_trainer(max_epochs=2, callbacks=[deficit]).fit(model)
    clean = two_input_data().tensors
    assert len(model.seen) == 4
    for i, seen in enumerate(model.seen):
        rows = slice((i % 2) * 8, (i % 2) * 8 + 8)
        for element in range(3):
            same = torch.equal(seen[element], clean[element][rows])
            corrupted = i < 2 and element == input_key  # epoch 0 only, the chosen element only
            assert same != corrupted, (i, element)


def test_label_shuffle_finds_the_last_element_of_a_two_input_batch():
    model = TwoInputNet()
    make_trainer(max_epochs=1, callbacks=[lc.InputDeficit("label_shuffle", window=(0, 1), seed=3)]).fit(model)
    xa, xb, y = two_input_data().tensors
    seen_y = torch.cat([s[2] for s in model.seen])
    assert torch.equal(torch.cat([s[0] for s in model.seen]), xa)
    assert torch.equal(torch.cat([s[1] for s in model.seen]), xb)
    assert not torch.equal(seen_y, y) and sorted(seen_y.tolist()) == sorted(y.tolist())


def last_fisher_total(trainer: Any, module: Any) -> dict[str, float]:
    (monitor,) = [cb for cb in trainer.callbacks if isinstance(cb, lc.FisherMonitor)]
    frame = monitor.to_frame()
    return {"fisher_total": float(frame[frame.target == "total"].value.iloc[-1]),
            "loss": float(trainer.callback_metrics["train_loss"])}


def test_sweep_of_a_two_input_model(tmp_path):
    # The sweep never reads batches: the deficit (InputDeficit on input 1) and the monitor do.
    table = lc.sweep.run(
        TwoInputNet, deficit=lc.InputDeficit("noise", window=(0, 1), input_key=1, noise_std=3.0),
        windows=[(0, 2)], metrics=last_fisher_total, callbacks=lambda: [lc.FisherMonitor(num_batches=1)],
        trainer={"max_epochs": 3, "accelerator": "cpu", "devices": 1}, out=str(tmp_path), backend="serial",
        progress=False, plot=False, tensorboard=False,
    )
    assert (table.status == "ok").all() and len(table) == 2
    assert all(math.isfinite(v) and v > 0 for v in table.fisher_total)
    assert table.loss.nunique() == 2  # the deficit changed training

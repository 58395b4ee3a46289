"""The vectorized runner and the state a run keeps beside its weights: random streams, buffers, Python attributes.

Each test compares a real sweep with the default runner's (``runner=None``): bitwise, or refused before training.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vectorized_nets import DigitsMLP

import lightning_critical as lc
from lightning_critical.sweep import VectorizedRefused

DIGITS = functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32)


class Net(DigitsMLP):
    """A small digits MLP (64-8-10), SGD with momentum, validated."""

    hidden = 8


def run(tmp_path: Any, runner: Any, model: Any, deficit: Any = None, data: Any = DIGITS, **kw: Any) -> Any:
    kw.setdefault("windows", lc.sweep.removal([1, 2], epochs_after=1))
    kw.setdefault("trainer", {})
    kw.setdefault("share_prefixes", False)
    return lc.sweep.run(model, data, deficit=deficit or lc.InputDeficit("blur", (0, 1)), seeds=[0],
                        metrics=["train_loss", "val_loss"], runner=runner, out=str(tmp_path / str(runner)),
                        backend="serial", tensorboard=False, plot=False, save_model=True, progress=False,
                        errors="raise", **kw)


def assert_bitwise(tmp_path: Any, model: Any, **kw: Any) -> Any:
    default = run(tmp_path, None, model, **kw)
    vectorized = run(tmp_path, "vectorized", model, **kw)
    assert default["label"].tolist() == vectorized["label"].tolist()
    metrics = ["train_loss", "val_loss"]
    assert np.array_equal(default[metrics].values, vectorized[metrics].values, equal_nan=True)
    for label in default["label"]:
        a, b = (torch.load(os.path.join(tmp_path, r, "models", f"{label}.pt")) for r in ("None", "vectorized"))
        assert all(torch.equal(a[k], b[k]) for k in a), label
    return default


def jitter_list(batch: Any) -> Any:  # a user's transform drawing from the global generator
    x, y = batch
    return [x + 0.3 * torch.randn_like(x), y]


def jitter_tuple(batch: Any) -> Any:  # the same, giving a tuple where the loader gives a list
    x, y = batch
    return (x + 0.3 * torch.randn_like(x), y)


@pytest.mark.parametrize("transform", [jitter_list, jitter_tuple])
def test_an_input_deficits_callable_draws_from_the_members_stream(tmp_path: Any, transform: Any) -> None:
    default = assert_bitwise(tmp_path, Net, deficit=lc.InputDeficit(transform, (0, 1)))
    plain = run(tmp_path / "plain", None, Net)
    windowed = default["window_end"].notna()
    assert (default[windowed]["train_loss"] != plain[windowed]["train_loss"]).all()  # the callable acts


class ReassignedBuffer(Net):
    """An input normaliser kept in a buffer, updated by reassignment."""

    mu: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.training:
            self.mu = 0.9 * self.mu + 0.1 * x.mean(0)
        return self.l2(F.relu(self.l1(x - self.mu)))


def test_a_buffer_reassigned_in_forward_is_refused(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match=r"reassigns the buffers \['mu'\]"):
        run(tmp_path, "vectorized", ReassignedBuffer)


class InPlaceBuffer(Net):
    """The same normaliser updated in place: its value reaches the stacked buffers."""

    mu: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mu", torch.zeros(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.training:
            self.mu.mul_(0.5).add_(0.5 * x.mean(0))
        return self.l2(F.relu(self.l1(x - self.mu)))


class Counter(Net):
    """A warm-up counted in a Python attribute, the loss logged per epoch (every step replayed in the last epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen += 1
        x, y = batch
        loss = F.cross_entropy(self(x), y) * min(1.0, self.seen / 8)
        self.log("train_loss", loss, on_epoch=True)
        return loss


@pytest.mark.parametrize("model", [InPlaceBuffer, Counter])
def test_the_exact_log_replay_starts_from_the_state_before_the_step(tmp_path: Any, model: Any) -> None:
    assert_bitwise(tmp_path, model)


class Jittered(torch.utils.data.Dataset[Any]):
    """A dataset whose items draw from the global generator (a random augmentation)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        x, y = self.dataset[index]
        return x + 0.1 * torch.randn_like(x), y


class AugmentedValidation(lc.data.DigitsDataModule):
    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(Jittered(super().val_dataloader().dataset), batch_size=16)


class ShuffledValidation(lc.data.DigitsDataModule):
    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(super().val_dataloader().dataset, batch_size=10, shuffle=True)


class RandomSubsetValidation(lc.data.DigitsDataModule):
    def val_dataloader(self) -> Any:
        dataset: Any = super().val_dataloader().dataset
        subset = torch.utils.data.Subset(dataset, torch.randperm(len(dataset))[:6].tolist())
        return torch.utils.data.DataLoader(subset, batch_size=10)


@pytest.mark.parametrize("data", [AugmentedValidation, ShuffledValidation, RandomSubsetValidation])
def test_a_validation_loader_that_draws_keeps_the_members_stream(tmp_path: Any, data: Any) -> None:
    # windows of 2 and 3 epochs after the deficit: validations that are not a member's last draw too
    assert_bitwise(tmp_path, Net, data=functools.partial(data, subset=96, batch_size=32),
                   windows=lc.sweep.removal([1, 2], epochs_after=2))


@pytest.mark.parametrize("trainer", [{"check_val_every_n_epoch": 2}, {"num_sanity_val_steps": 2}])
def test_the_validation_loader_is_made_when_lightning_makes_it(tmp_path: Any, trainer: dict[str, Any]) -> None:
    data = functools.partial(RandomSubsetValidation, subset=96, batch_size=32)
    assert_bitwise(tmp_path, Net, data=data, windows=lc.sweep.removal([1, 2], epochs_after=2), trainer=trainer)


def test_a_forked_member_keeps_its_parents_validation_loader(tmp_path: Any) -> None:
    data = functools.partial(RandomSubsetValidation, subset=96, batch_size=32)
    assert_bitwise(tmp_path, Net, data=data, windows=lc.sweep.removal([1, 2], epochs_after=1), share_prefixes=True)


class OwnData(Net):
    """The module's own data, made in its prepare_data (Lightning calls the module's prepare_data)."""

    def prepare_data(self) -> None:
        generator = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(96, 64, generator=generator), torch.randint(0, 10, (96,), generator=generator)

    def train_dataloader(self) -> Any:
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)

    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=32)


def test_the_modules_prepare_data_is_called(tmp_path: Any) -> None:
    assert_bitwise(tmp_path, OwnData, data=None, deficit=lc.InputDeficit("noise", (0, 1)))


class TwoValidations(lc.data.DigitsDataModule):
    def val_dataloader(self) -> Any:
        return [super().val_dataloader(), super().val_dataloader()]


def test_a_list_of_validation_loaders_is_refused_by_name(tmp_path: Any) -> None:
    data = functools.partial(TwoValidations, subset=96, batch_size=32)
    with pytest.raises(VectorizedRefused, match=r"val_dataloader\(\) returned a list of 2 loaders"):
        run(tmp_path, "vectorized", Net, data=data, preflight=False)  # the pre-flight's trial fit fails too


class OneCycle(Net):
    """A schedule over the run's optimizer steps (Lightning's estimated_stepping_batches)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.5, total_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class Cosine(Net):
    """A schedule over the run's epochs (trainer.max_epochs)."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        epochs = int(self.trainer.max_epochs or 0)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)]


@pytest.mark.parametrize("model", [OneCycle, Cosine])
def test_configure_optimizers_reads_the_runs_length(tmp_path: Any, model: Any) -> None:
    # runs of 2, 3 and 4 epochs: prefixes are shared only between runs of one length
    assert_bitwise(tmp_path, model, share_prefixes=True)


class LengthInStep(Net):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) * (1 + self.current_epoch / int(self.trainer.max_epochs or 1))


def test_a_step_reading_the_runs_length_is_refused_by_name(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match=r"self\.trainer\.max_epochs read by the module"):
        run(tmp_path, "vectorized", LengthInStep)


class OneValidationInAList(lc.data.DigitsDataModule):
    def val_dataloader(self) -> Any:
        return [super().val_dataloader()]


def test_one_validation_loader_in_a_list_is_that_loader(tmp_path: Any) -> None:
    assert_bitwise(tmp_path, Net, data=functools.partial(OneValidationInAList, subset=96, batch_size=32))


class RandomRate(Net):
    """configure_optimizers draws (a learning rate from the run's stream)."""

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05 + 0.1 * float(torch.rand(())))


def test_configure_optimizers_draws_from_the_members_stream(tmp_path: Any) -> None:
    assert_bitwise(tmp_path, RandomRate)

"""The vectorized runner's device: ``VectorizedRunner(device=...)`` or the sweep's accelerator, checked before training.

On this CPU-only machine the plumbing is tested with ``device="cpu"``: every batch and gate goes
through the job's device, and the members stay bitwise equal to the default runner's runs. The
CUDA test runs where a GPU is lent.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep import VectorizedRefused
from lightning_critical.sweep.runners.vectorized import device as device_module
from lightning_critical.sweep.runners.vectorized import members as members_module

train_module = importlib.import_module("lightning_critical.sweep.runners.vectorized.train")  # the package's
# name ``train`` is the function
METRICS = ["val_acc", "val_loss", "train_loss"]
CUDA = torch.cuda.is_available()


class MLP(pl.LightningModule):
    """64-16-10 on the digits; ``training_step`` makes a tensor on ``self.device`` (as models often do)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        scale = torch.ones((), device=self.device)
        loss = F.cross_entropy(self.l2(F.relu(self.l1(x.flatten(1)))) * scale, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.l2(F.relu(self.l1(x.flatten(1))))
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)  # no decay: silence warns with it


def sweep(out: Any, runner: Any, accelerator: str, save_model: bool = True) -> Any:
    both = [lc.InputDeficit("blur", (0, 1)), lc.PathwayDeficit("l1", (0, 1), mode="silence")]
    return lc.sweep.run(
        MLP, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32), deficit=both,
        windows=lc.sweep.removal([1, 2], epochs_after=1), seeds=[0, 1], metrics=METRICS,
        trainer={"accelerator": accelerator}, runner=runner, out=str(out), backend="serial", tensorboard=False,
        plot=False, save_model=save_model)


def _task(trainer: dict[str, Any]) -> Any:
    return SimpleNamespace(spec=SimpleNamespace(trainer=trainer, metrics=("val_acc",)))


def test_a_cpu_job_moves_batches_and_gates_to_its_device_and_stays_bitwise(tmp_path: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[tuple[str, torch.device]] = []

    def spy(value: Any, device: torch.device) -> Any:
        moved.append(("gates" if isinstance(value, dict) else "batch", device))
        return device_module.to_device(value, device)

    monkeypatch.setattr(train_module, "to_device", spy)  # the gates
    monkeypatch.setattr(members_module, "to_device", spy)  # the batches (Member.transfer)
    default = sweep(tmp_path / "default", None, "cpu")
    vectorized = sweep(tmp_path / "vectorized", lc.sweep.VectorizedRunner(device="cpu"), "cpu")
    assert (vectorized["status"] == "ok").all() and default["label"].tolist() == vectorized["label"].tolist()
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    for label in default["label"]:
        a = torch.load(tmp_path / "default" / "models" / f"{label}.pt")
        b = torch.load(tmp_path / "vectorized" / "models" / f"{label}.pt")
        assert all(torch.equal(a[k], b[k]) and b[k].device.type == "cpu" for k in a), label
    # 3 steps per epoch (96 images, 32 a batch); epochs trained per seed: 1 + 2 + 3 (the job's steps 3 x 3)
    steps = 3 * 3
    assert sum(kind == "gates" for kind, _ in moved) == steps
    # Training batches of stock loaders are gathered for all members at once on the CPU (feeds.py: nothing to
    # move); the validation batches still go through each member's transfer.
    assert sum(kind == "batch" for kind, _ in moved) > 0
    assert {device for _, device in moved} == {torch.device("cpu")}


@pytest.mark.parametrize("bad", ["meta", "tpu", "cuda:x", 3, "mps"])
def test_a_bad_device_is_refused_naming_the_valid_ones(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"device=.* is not valid.*give 'cpu', 'cuda', 'cuda:<index>'"):
        lc.sweep.VectorizedRunner(device=bad)


def test_the_trainer_accelerator_maps_to_the_device_and_disagreements_are_refused() -> None:
    assert device_module.job_device(None, {"accelerator": "cpu"}) == torch.device("cpu")
    assert device_module.job_device(None, {}) == torch.device("cuda" if CUDA else "cpu")  # Lightning's "auto"
    assert device_module.job_device("cpu", {"accelerator": "auto"}) == torch.device("cpu")
    runner = lc.sweep.VectorizedRunner(device=torch.device("cpu"))
    assert runner.device == "cpu" and runner == lc.sweep.VectorizedRunner(device="cpu")
    with pytest.raises(VectorizedRefused, match="device='cpu'.*accelerator='gpu'.*disagree"):
        runner.batches([_task({"accelerator": "gpu"})])
    with pytest.raises(VectorizedRefused, match=r"accelerator='tpu' \(it maps \['auto', 'cpu', 'cuda', 'gpu'\]"):
        lc.sweep.VectorizedRunner().batches([_task({"accelerator": "tpu"})])
    with pytest.raises(VectorizedRefused, match=r"devices=2 \(a job trains on one device"):
        lc.sweep.VectorizedRunner().batches([_task({"devices": 2})])


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_is_refused_before_training_where_there_is_none(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match=r"the device 'cuda': this machine has 0 CUDA device\(s\)"):
        sweep(tmp_path, lc.sweep.VectorizedRunner(device="cuda"), "auto")
    assert not os.path.exists(tmp_path / "models")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_cuda_job_matches_the_default_runner_on_the_gpu(tmp_path: Any) -> None:
    default = sweep(tmp_path / "default", None, "gpu")
    vectorized = sweep(tmp_path / "vectorized", lc.sweep.VectorizedRunner(device="cuda"), "gpu")
    assert (vectorized["status"] == "ok").all()
    assert abs(default[METRICS].values - vectorized[METRICS].values).max() < 1e-4  # GPU kernels round differently
    weights = torch.load(tmp_path / "vectorized" / "models" / f"{default['label'][0]}.pt")
    assert all(w.device.type == "cpu" for w in weights.values())  # saved as a fit leaves them: on the CPU

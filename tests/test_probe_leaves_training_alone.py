"""A SpectralMonitor measures without touching: training ends bitwise equal with and without it.

Nonlinear pathways' ``end_to_end_maps()`` run the layers, so a probe could fire a deficit's
hooks (a noise deficit would consume one of its draws, a silence deficit would zero the
measured map), draw from the global generator (dropout, random probe inputs) or move
BatchNorm statistics. Each of these is checked here against a run without the monitor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl

WINDOW = (3, 12)  # epochs = optimizer steps here (one full batch per epoch)
EPOCHS = 16


def tanh_net() -> tuple[Any, lc.models.MultiPathwayLinearNet]:
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(
        depth=3, width=12, lr=0.05, init_scale=0.05, nonlinearity="tanh", task_basis=dm.task_basis()
    )
    return dm, net


def intact_maps(net: lc.models.MultiPathwayLinearNet) -> dict[str, torch.Tensor]:
    """Each pathway's map computed from the weights alone (no module call, so no hook can act)."""
    out = {}
    with torch.no_grad():
        for name, seq in net.pathways.items():
            assert isinstance(seq, nn.Sequential)
            h = torch.eye(net.hparams["in_features"])
            for layer in seq:
                h = h @ layer.weight.T if isinstance(layer, nn.Linear) else torch.tanh(h)
            out[name] = h.T.clone()
    return out


class Snapshot(pl.Callback):
    """The intact maps at every training batch start (placed after the monitor)."""

    def __init__(self) -> None:
        self.maps: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.maps[trainer.global_step] = intact_maps(pl_module)


def fit_tanh(callbacks: list) -> lc.models.MultiPathwayLinearNet:
    pl.seed_everything(0)
    dm, net = tanh_net()
    make_trainer(max_epochs=EPOCHS, callbacks=callbacks).fit(net, dm)
    return net


def assert_bitwise_equal(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("mode", ["noise", "silence"])
@pytest.mark.parametrize("deficit_first", [True, False], ids=["deficit-first", "monitor-first"])
def test_monitor_leaves_a_noise_or_silence_run_bitwise_unchanged(mode, deficit_first):
    def deficit():
        return lc.PathwayDeficit("pathways.b.0", WINDOW, mode=mode, noise_std=0.5)

    reference = fit_tanh([deficit()])
    untouched = fit_tanh([])
    # the deficit does change training, so an equal result below is not trivially equal
    weight = "pathways.b.0.weight"
    assert not torch.equal(reference.get_parameter(weight), untouched.get_parameter(weight))

    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=2, metrics=("singular_values",), history_file=None)
    snapshot = Snapshot()
    callbacks = [deficit(), monitor, snapshot] if deficit_first else [monitor, snapshot, deficit()]
    net = fit_tanh(callbacks)
    assert_bitwise_equal(reference, net)

    # Inside the window the recorded map is the intact one, not a map built from noise or zeros.
    frame = monitor.to_frame()
    for step in (4, 6, 10):
        assert WINDOW[0] < step < WINDOW[1]
        for target in ("a", "b"):
            got = frame[(frame.step == step) & (frame.target == target)].sort_values("index").value.to_numpy()
            want = torch.linalg.svdvals(snapshot.maps[step][target]).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{target} at step {step}")


class RandomProbeNet(pl.LightningModule):
    """A user model whose ``end_to_end_maps()`` runs dropout and BatchNorm on jittered probes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.BatchNorm1d(16), nn.Linear(16, 3))
        self.head_norm = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_norm(self.body(x))

    def end_to_end_maps(self) -> dict[str, torch.Tensor]:
        # random probe inputs draw from the global generator; dropout and BatchNorm follow the mode
        probe = torch.eye(6) + 0.01 * torch.randn(6, 6)
        return {"body": self.body(probe).T}

    def on_train_epoch_start(self) -> None:
        self.head_norm.eval()  # a submodule the user keeps in evaluation mode while training

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(1)
        return DataLoader(
            TensorDataset(torch.randn(32, 6, generator=gen), torch.randn(32, 3, generator=gen)), batch_size=8
        )


class ModeCheck(pl.Callback):
    """Placed after the monitor: the modes it sees are the user's, untouched by the probe."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((pl_module.training, pl_module.body[1].training, pl_module.head_norm.training))


def test_monitor_leaves_rng_batchnorm_and_modes_alone_when_maps_run_the_model():
    def run(callbacks):
        pl.seed_everything(0)
        model = RandomProbeNet()
        make_trainer(max_epochs=3, callbacks=callbacks).fit(model)
        return model

    reference = run([])
    monitor = lc.SpectralMonitor(every_n_steps=1, history_file=None)
    check = ModeCheck()
    model = run([monitor, check])
    assert_bitwise_equal(reference, model)  # parameters and BatchNorm statistics alike
    assert check.seen and set(check.seen) == {(True, True, False)}
    assert model.training and not model.head_norm.training
    frame = monitor.to_frame()
    assert "body" in set(frame.target) and frame.value.notna().all()
    # a record before every one of the 12 steps and one at the end
    assert len(frame[(frame.target == "body") & (frame.metric == "singular_values")].step.unique()) == 13

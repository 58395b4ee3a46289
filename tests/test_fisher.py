"""Fisher-information trace: the estimator against brute force and a closed form; FisherMonitor."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical.fisher import fisher_trace, sample_labels



def brute_force(model: nn.Module, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Per-example backward passes on the module itself, one at a time."""
    model.eval()
    labels = sample_labels(model(x), torch.Generator().manual_seed(seed))
    sums: dict[str, float] = {}
    for xi, yi in zip(x, labels):
        model.zero_grad()
        (-F.log_softmax(model(xi[None]), dim=1)[0, yi]).backward()
        for name, p in model.named_parameters():
            layer = name.rsplit(".", 1)[0]
            sums[layer] = sums.get(layer, 0.0) + (0.0 if p.grad is None else float(p.grad.pow(2).sum()))
    model.zero_grad(set_to_none=True)
    return {k: v / len(x) for k, v in sums.items()}


class Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it, so the loop fallback is used."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(5, 3), nn.Linear(5, 3)

    def forward(self, x):
        return self.a(x) if float(x.sum()) > 0 else self.b(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)),
        lambda: lc.models.SmallCNN(in_channels=1, num_classes=3, channels=(2, 3), seed=0),
        Branchy,
    ],
)
def test_per_layer_trace_equals_brute_force(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(6, 1, 4, 4) if isinstance(model, lc.models.SmallCNN) else torch.randn(6, 5)
    if isinstance(model, nn.Sequential):
        model[1].eval()  # a submodule kept in eval mode by the user stays so; the rest stays in train
    got = fisher_trace(model, x, generator=torch.Generator().manual_seed(7))
    assert model.training and (not isinstance(model, nn.Sequential) or not model[1].training)
    expected = brute_force(model, x, seed=7)
    assert sorted(got) == sorted(expected)
    for layer, (total, n) in got.items():
        assert n == 6
        assert total / n == pytest.approx(expected[layer], rel=1e-4), layer
    assert all(p.grad is None for p in model.parameters())


def test_labels_from_predictive_distribution_closed_form():
    # Softmax regression: grad_W log p(y|x) = (e_y - p) x^T and grad_b = e_y - p, so
    # E_{y~p} ||grad||^2 = (1 - ||p||^2) (||x||^2 + 1). The Monte Carlo estimate must approach it.
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    x = torch.randn(1, 4).expand(4000, 4)
    p = torch.softmax(model(x[:1]), dim=1)[0].detach()
    exact = float((1 - p.pow(2).sum()) * (x[0].pow(2).sum() + 1))
    out = fisher_trace(model, x, generator=torch.Generator().manual_seed(0), chunk_size=512)
    assert sorted(out) == ["bias", "weight"]  # parameters of the root module are their own layers
    total, n = out["weight"][0] + out["bias"][0], out["weight"][1]
    assert total / n == pytest.approx(exact, rel=0.05)


def _digits_run(tmp_path, callbacks, epochs=3):
    pl.seed_everything(0)
    dm = lc.data.DigitsDataModule(batch_size=32, subset=160, val_fraction=0.2)
    model = lc.models.SmallCNN(channels=(4, 8), seed=0)
    trainer = pl.Trainer(
        max_epochs=epochs, logger=pl.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    return model, trainer


def test_fisher_monitor_records_per_layer_and_leaves_training_unchanged(tmp_path):
    plain, _ = _digits_run(tmp_path / "plain", [])
    monitor = lc.FisherMonitor(every_n_epochs=2, num_batches=2)
    model, trainer = _digits_run(tmp_path / "fisher", [monitor])
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name  # bitwise identical training
    assert model.training and all(not m._forward_hooks for m in model.modules())
    df = monitor.to_frame()
    assert sorted(df.epoch.unique()) == [0, 2]
    assert sorted(df.step.unique()) == [1, 9]  # before the update of batch 1 of epochs 0 and 2 (4 batches/epoch)
    assert set(df.target) == {"conv1", "conv2", "fc", "total"} and set(df.metric) == {"fisher_trace"}
    for _, rows in df.groupby("step"):
        v = rows.set_index("target").value
        assert (v > 0).all()
        assert v["total"] == pytest.approx(v["conv1"] + v["conv2"] + v["fc"])
    on_disk = lc.monitors.read_history(os.path.join(trainer.logger.log_dir, "fisher_history.csv"))
    assert len(on_disk) == len(df)
    logged = open(os.path.join(trainer.logger.log_dir, "metrics.csv")).readline()
    assert "fisher_trace/conv1" in logged and "fisher_trace/total" in logged


def test_fisher_monitor_targets_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        lc.FisherMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="matches no layer.*conv1"):
        _digits_run(tmp_path, [lc.FisherMonitor(targets="decoder*")], epochs=1)
    monitor = lc.FisherMonitor(targets="conv*", num_batches=100)  # more batches than the epoch has
    _digits_run(tmp_path, [monitor], epochs=1)
    df = monitor.to_frame()
    assert set(df.target) == {"conv1", "conv2", "total"} and df.step.unique().tolist() == [4]


def test_bf16_model_estimated_in_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(6, 5)
    reference = fisher_trace(model, x, generator=torch.Generator().manual_seed(2))
    model_bf16 = model.to(torch.bfloat16)
    got = fisher_trace(model_bf16, x.to(torch.bfloat16), generator=torch.Generator().manual_seed(2))
    assert model_bf16[0].weight.dtype == torch.bfloat16  # the model is left as it was
    for layer, (total, n) in reference.items():
        # same labels, float32 arithmetic on bf16-rounded weights and inputs: close, not equal
        assert got[layer][0] / n == pytest.approx(total / n, rel=0.1), layer

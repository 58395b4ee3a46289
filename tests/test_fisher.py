"""Fisher-information trace: the estimator against brute force and a closed form; FisherMonitor."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.fisher import fisher_trace, sample_labels


def brute_force(model: nn.Module, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Per-example backward passes on the module itself, one at a time."""
    model.eval()
    labels = sample_labels(model(x), torch.Generator().manual_seed(seed))
    sums: dict[str, float] = {}
    for xi, yi in zip(x, labels, strict=True):
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
    for (name, a), (_, b) in zip(plain.state_dict().items(), model.state_dict().items(), strict=True):
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


# -- issue 10 ---------------------------------------------------------------------------------
class Poison(pl.Callback):
    """Turns conv1's weights into NaN at the start of an epoch (a diverged run)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.conv1.weight.fill_(float("nan"))


def test_non_finite_weights_record_nan_warn_once_and_training_goes_on(tmp_path):
    # Item 6: torch.multinomial used to raise on NaN probabilities and kill the run.
    monitor = lc.FisherMonitor(num_batches=1)
    for _ in range(2):  # a second fit with the same monitor warns again (per-fit state is reset)
        with pytest.warns(UserWarning, match="NaN or infinite") as caught:
            model, trainer = _digits_run(tmp_path, [Poison(epoch=1), monitor], epochs=4)
        assert sum("NaN or infinite" in str(w.message) for w in caught) == 1
        assert trainer.current_epoch == 4  # all epochs ran
        df = monitor.to_frame()
        assert sorted(df.epoch.unique()) == [0, 1, 2, 3]
        assert df[df.epoch == 0].value.notna().all() and (df[df.epoch == 0].value > 0).all()
        assert df[df.epoch >= 1].value.isna().all()


def test_without_logger_nothing_is_written(tmp_path, monkeypatch):
    # Item 8: with logger=False the history used to go to ./fisher_history.csv, appended run after run.
    monkeypatch.chdir(tmp_path)
    monitor = lc.FisherMonitor(num_batches=1)
    dm = lc.data.DigitsDataModule(batch_size=32, subset=96, val_fraction=0.2)
    for _ in range(2):
        trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[monitor])
        trainer.fit(lc.models.SmallCNN(channels=(4, 8), seed=0), dm)
    assert [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files] == []
    assert sorted(monitor.to_frame().epoch.unique()) == [0, 1]  # the second fit only, kept in memory


class TwoInputNet(pl.LightningModule):
    """A classifier of two inputs, batches (xa, xb, y)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 4), nn.Linear(3, 4)

    def forward(self, xa, xb):
        return self.a(xa) + self.b(xb)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0], batch[1]), batch[2])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen),
                                              torch.arange(16) % 4)
        return torch.utils.data.DataLoader(data, batch_size=8)


def test_two_input_model_with_inputs_callable(tmp_path):
    monitor = lc.FisherMonitor(num_batches=2, inputs=lambda batch: (batch[0], batch[1]))
    model = TwoInputNet()
    net = TwoInputNet()  # the weights at step 1, where the monitor estimates (before the update of batch 1)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[monitor])
    trainer.fit(model)
    df = monitor.to_frame().set_index("target").value
    xa, xb, _ = model.train_dataloader().dataset.tensors
    # replay the first update to get the weights the estimate saw
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(xa[:8], xb[:8]), (torch.arange(16) % 4)[:8]).backward()
    opt.step()
    gen = torch.Generator().manual_seed(0 * 1_000_003 + 1)
    expected = fisher_trace(net, (xa, xb), generator=gen)
    for layer in ("a", "b"):
        assert df[layer] == pytest.approx(expected[layer][0] / 16, rel=1e-5)
    assert df["total"] == pytest.approx(df["a"] + df["b"])


def test_fisher_trace_of_several_inputs_matches_brute_force():
    net = TwoInputNet()
    xa, xb = torch.randn(6, 5), torch.randn(6, 3)
    got = fisher_trace(net, (xa, xb), generator=torch.Generator().manual_seed(3))
    labels = sample_labels(net(xa, xb), torch.Generator().manual_seed(3))
    for layer in ("a", "b"):
        total = 0.0
        for i in range(6):
            net.zero_grad()
            (-F.log_softmax(net(xa[i : i + 1], xb[i : i + 1]), dim=1)[0, labels[i]]).backward()
            total += sum(float(p.grad.pow(2).sum()) for p in getattr(net, layer).parameters())
        assert got[layer][0] == pytest.approx(total, rel=1e-4)
    with pytest.raises(ValueError, match="share the batch dimension"):
        fisher_trace(net, (xa, xb[:3]))


def test_estimate_runs_inside_probing(tmp_path):
    # Deficit hooks see is_probing() during the estimate, so a user-defined deficit can stay out of it.
    from lightning_critical.probing import is_probing

    calls: list[tuple[bool, bool]] = []
    model = lc.models.SmallCNN(channels=(4, 8), seed=0)
    model.conv1.register_forward_hook(lambda mod, args, out: calls.append((mod.training, is_probing())))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[lc.FisherMonitor(num_batches=1)])
    trainer.fit(model, lc.data.DigitsDataModule(batch_size=32, subset=96, val_fraction=0.2))
    in_eval = [probing for training, probing in calls if not training]  # eval passes come from the estimate only
    assert in_eval and all(in_eval)
    assert not any(probing for training, probing in calls if training)


def test_digits_example_traces_each_run_once(tmp_path):
    # Item 16: the removal-0 run (a prefix of the no-deficit run) was traced too, under the same label,
    # so fisher.csv held its epochs twice and the plot's lines jumped back. Now one run is traced.
    from test_nonlinear import load_example

    example = load_example("digits_blur")
    fisher = example.main(["--out", str(tmp_path), "--seeds", "1", "--removal", "0", "--epochs-after", "1",
                           "--onsets", "0", "--length", "1", "--epochs", "4", "--subset", "96", "--channels", "4", "8",
                           "--backend", "serial"])["fisher"]
    assert not fisher.duplicated(["step", "target"]).any()
    for _, run in fisher.groupby("target"):
        assert run.epoch.tolist() == [0, 1, 2, 3]  # one full-length run, epochs in order


def test_expected_labels_are_exact_and_explain_the_drops_of_sampled_ones():
    # Item 16(b): a confident model's one-label estimate is carried by the rare examples that draw a
    # non-predicted label; a draw with none of them reads 10-50x low. labels="expected" has no label noise.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.mul_(32)  # confident: about 2 non-predicted labels expected among 40 draws
    x = torch.randn(40, 4)
    p = torch.softmax(model(x), dim=1).detach().double()
    exact = float(((1 - p.pow(2).sum(1)) * (x.double().pow(2).sum(1) + 1)).mean())  # closed form, as above
    out = fisher_trace(model, x, labels="expected")
    assert (out["weight"][0] + out["bias"][0]) / 40 == pytest.approx(exact, rel=1e-5)
    surprises = float((1 - p.max(1).values).sum())
    assert surprises < 3  # few non-predicted labels are expected per draw ...
    draws = []
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        labels = sample_labels(model(x), torch.Generator().manual_seed(seed))
        est = fisher_trace(model, x, generator=gen)
        draws.append(((labels != p.argmax(1)).any().item(), (est["weight"][0] + est["bias"][0]) / 40))
    low = [v for any_surprise, v in draws if not any_surprise]
    assert low and max(low) < exact / 3  # ... and a draw with none reads several times low (10-50x on digits)
    assert sum(v for _, v in draws) / len(draws) == pytest.approx(exact, rel=0.5)  # unbiased on average
    with pytest.raises(ValueError, match="labels='exact' is not valid"):
        fisher_trace(model, x, labels="exact")

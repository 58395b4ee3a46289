"""Reliance measures (lightning_critical.reliance): the formulas on hand-built models, the sources, the
measurement leaving training alone, the monitor and the sweep metrics in real Trainers, and the validation:
early / late deficits on MultiPathwayLinearNet and on the nonlinear TwoViewNet."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lightning_critical as lc
from lightning_critical import reliance as R
from lightning_critical._namespace import pl
from lightning_critical.sweep import metrics

QUIET: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", devices=1)


class Units(nn.Module):
    """Unit 0 sees ``xa`` only, unit 1 both, unit 2 ``xb`` only, unit 3 nothing (dead)."""

    def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
        return torch.cat([2 * xa, xa + xb, xb, 0 * xa], dim=1)


def _two_sources(n: int = 64) -> tuple[Tensor, Tensor]:
    xa = torch.linspace(-1, 1, n).unsqueeze(1)
    return xa, xa.flip(0)


# -- formulas ---------------------------------------------------------------------------------------------------
def test_rsv_is_plus_one_minus_one_zero_and_nan_for_a_dead_unit() -> None:
    sources = R.ArgumentSources({"a": 0, "b": 1})
    sv = R.source_variances(Units(), _two_sources(), sources)
    var = float(_two_sources()[0].var(unbiased=False))
    assert torch.allclose(sv["a"], torch.tensor([4 * var, var, 0, 0], dtype=torch.float64))
    rsv = R.relative_source_variance(Units(), _two_sources(), sources, "a", "b")
    assert rsv[:3].tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-6) and math.isnan(rsv[3])
    assert R.rsv_summary(rsv) == pytest.approx({"mean": 0.0, "frac_a": 1 / 3, "frac_b": 1 / 3, "dead": 0.25})
    counts, _ = R.rsv_histogram(rsv, bins=4)
    assert counts.tolist() == [1, 0, 1, 1]


def test_rsv_of_a_named_layer_and_of_split_sources() -> None:
    first = nn.Linear(4, 3)
    net = nn.Sequential(first, nn.Identity())
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]))
    halves = R.SplitSources(split=lambda args: {"l": args[0][:, :2], "r": args[0][:, 2:]},
                            join=lambda args, s: (torch.cat([s["l"], s["r"]], 1),), names=("l", "r"))
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    rsv = R.relative_source_variance(net, (x,), halves, "l", "r", layer="0", fixed=50)
    assert rsv[:2].tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(ValueError, match="layer='head' is not a submodule of Sequential"):
        R.relative_source_variance(net, (x,), halves, "l", "r", layer="head")


@pytest.mark.parametrize("replace", R.sources.REPLACEMENTS)
def test_an_unused_source_has_zero_reliance_a_needed_one_full_reliance(replace: str) -> None:
    class OnlyA(nn.Module):
        def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
            return torch.cat([xa - 0.5, 0.5 - xa], dim=1) + 0 * xb

    gen = torch.Generator().manual_seed(1)
    xa, xb = torch.rand(400, 1, generator=gen), torch.rand(400, 1, generator=gen)
    target = (xa[:, 0] < 0.5).long()
    result = R.ablation_reliance(OnlyA(), (xa, xb), target, R.ArgumentSources({"a": 0, "b": 1}), replace=replace)
    assert result.intact == 1.0 and result.reliance["b"] == 0.0
    assert result.reliance["a"] == pytest.approx(1.0)  # without a it is as bad as without any input
    chance = R.ablation_reliance(OnlyA(), (xa, xb), target, R.ArgumentSources({"a": 0, "b": 1}), replace=replace,
                                 chance=0.5)
    assert chance.reference == 0.5 and chance.reliance["a"] == pytest.approx((1 - chance.without["a"]) / 0.5)


def test_loss_reliance_is_the_share_of_the_input_driven_loss_reduction() -> None:
    class Sum(nn.Module):
        def forward(self, xa: Tensor, xb: Tensor) -> Tensor:
            return 3 * xa + xb

    xa, xb = _two_sources(100)
    result = R.ablation_reliance(Sum(), (xa, xb), 3 * xa + xb, R.ArgumentSources({"a": 0, "b": 1}), metric="loss")
    # intact loss 0; without a: E(3xa)^2 = 9v; without b: v; with neither: E(3xa + xb)^2
    v, both = float(xa.pow(2).mean()), float((3 * xa + xb).pow(2).mean())
    assert result.intact == 0.0 and result.reference == pytest.approx(both)
    assert result.reliance == pytest.approx({"a": 9 * v / both, "b": v / both})


def test_fisher_share_follows_the_pathways_weights() -> None:
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=2, width=8, init="gaussian", init_scale=1.0)
    with torch.no_grad():
        for p in net.pathways["b"].parameters():
            p.mul_(0.1)
    x = dm.dataset().tensors[0]
    share = R.fisher_share(net, (x,), likelihood="gaussian")
    assert sum(share.values()) == pytest.approx(1.0) and share["b"] < 0.05 < 0.95 < share["a"]
    traces = R.pathway_fisher_traces(net, (x,), likelihood="gaussian")
    # linear pathway a, depth 2: tr F = (1/N) sum_n (||W2||^2 ||x_n||^2 + rows * ||W1 x_n||^2)
    w1, w2 = (net.get_parameter(f"pathways.a.{i}.weight").detach().double() for i in (0, 1))
    expected = float((w2.pow(2).sum() * x.double().pow(2).sum(1) + 15 * (x.double() @ w1.T).pow(2).sum(1)).mean())
    assert traces["a"] == pytest.approx(expected, rel=1e-5)


def test_measuring_leaves_the_model_the_rng_and_the_gradients_alone() -> None:
    net = lc.models.TwoViewNet(hidden=8, seed=0)
    net.train()
    net.pathways["b"].eval()  # a user's own mode survives
    args = (torch.rand(16, 1, 8, 4), torch.rand(16, 1, 8, 4))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.random.get_rng_state()
    R.reliance_metrics(net, args, torch.arange(16) % 10, R.as_sources(None, net), layer="fusion", replace="noise")
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in net.parameters())
    assert net.training and not net.pathways["b"].training and net.fusion.training


def test_sources_and_bad_arguments_are_named() -> None:
    net = lc.models.TwoViewNet(hidden=4, seed=0)
    assert isinstance(R.as_sources(None, net), R.PathwaySources)
    assert R.as_sources({"left": 0, "right": 1}, net).names == ("left", "right")
    with pytest.raises(ValueError, match="pathway 'c' matches nothing"):
        R.as_sources(["a", "c"], net)
    with pytest.raises(ValueError, match="neither two `pathways` nor two forward arguments"):
        R.as_sources(None, nn.Linear(2, 2))
    args, y = (torch.rand(4, 1, 8, 4), torch.rand(4, 1, 8, 4)), torch.arange(4)
    with pytest.raises(ValueError, match="replace='blank' is not valid"):
        R.ablation_reliance(net, args, y, R.as_sources(None, net), replace="blank")
    with pytest.raises(ValueError, match="source='c' is not a source of the model; sources: \\['a', 'b'\\]"):
        R.ablation_reliance(net, args, y, R.as_sources(None, net), names=["c"])
    with pytest.raises(ValueError, match="dataloader='holdout' is not valid"):
        lc.RelianceMonitor(dataloader="holdout")
    with pytest.raises(ValueError, match="pair='ab' is not valid"):
        metrics.relative_source_variance(pair="ab")


# -- over training and as sweep metrics --------------------------------------------------------------------------
def _fit(callbacks: list[Any], epochs: int = 2, lr: float = 0.05, **trainer: Any) -> tuple[pl.Trainer, Any, Any]:
    pl.seed_everything(0, verbose=False)
    dm, net = lc.data.TwoViewDigits(subset=200, batch_size=32), lc.models.TwoViewNet(hidden=16, lr=lr, seed=0)
    fit = pl.Trainer(max_epochs=epochs, callbacks=callbacks, **{**QUIET, **trainer})
    fit.fit(net, dm)
    return fit, net, dm


def test_monitor_logs_the_series_and_leaves_training_bitwise_unchanged(tmp_path: Any) -> None:
    monitor = lc.RelianceMonitor(measures=("ablation", "rsv", "fisher_share"), layer="fusion", every_n_epochs=2,
                                 max_examples=64, fixed=8)
    trainer, net, _ = _fit([monitor], epochs=3, logger=pl.loggers.CSVLogger(tmp_path), log_every_n_steps=1)
    _, plain, _ = _fit([], epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), plain.parameters(), strict=True))
    frame = monitor.to_frame()
    # before the first update of epochs 0 and 2, and the trained network at the end
    n = int(trainer.num_training_batches)
    assert sorted(frame["step"].unique()) == [0, 2 * n, 3 * n] and sorted(frame["epoch"].unique()) == [0, 2, 3]
    assert {"ablation/a", "ablation/b", "rsv/mean", "rsv/a", "fisher_share/b"} <= set(frame["target"])
    import pandas as pd
    logged = pd.read_csv(f"{trainer.logger.log_dir}/metrics.csv")  # type: ignore[union-attr]
    assert logged["reliance/accuracy/intact"].notna().sum() == 3 and "reliance/fisher_share/a" in logged
    assert (tmp_path / "lightning_logs/version_0/reliance_history.csv").exists()


def test_monitor_refuses_a_missing_layer_before_training() -> None:
    with pytest.raises(ValueError, match="layer='fuse' is not a submodule of TwoViewNet"):
        _fit([lc.RelianceMonitor(layer="fuse")], epochs=1)


def test_sweep_metric_factories_measure_a_trained_model() -> None:
    trainer, net, _ = _fit([], epochs=6, lr=0.1)
    out = metrics.ablation_reliance(max_examples=64)(trainer, net)
    assert set(out) == {"reliance/ablation/a", "reliance/ablation/b", "reliance/accuracy/intact",
                        "reliance/accuracy/reference", "reliance/accuracy/without/a", "reliance/accuracy/without/b"}
    assert out["reliance/accuracy/intact"] > 0.5, out
    assert 0 < out["reliance/ablation/a"] < 1 and 0 < out["reliance/ablation/b"] < 1
    assert set(metrics.fisher_share(max_examples=32)(trainer, net)) == {"reliance/fisher_share/a",
                                                                         "reliance/fisher_share/b"}
    rsv = metrics.relative_source_variance(layer="fusion", max_examples=32, fixed=4)(trainer, net)
    assert -1 <= rsv["reliance/rsv/mean"] <= 1


# -- validation: early / late deficits ---------------------------------------------------------------------------
def _linear_run(window: tuple[int, int] | None) -> dict[str, float]:
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=3, width=16, lr=0.05)
    deficits: list[Any] = [lc.PathwayDeficit("b", window=window, mode="freeze")] if window else []
    trainer = pl.Trainer(max_epochs=200, callbacks=deficits, **QUIET)
    trainer.fit(net, dm)
    share = metrics.mode_strength_share(trainer, net)
    out = {"share": sum(v for k, v in share.items() if k.startswith("share/b/")) / (len(share) / 2)}
    for measure in (metrics.ablation_reliance(dataloader="train", replace="zeros", metric="loss"),
                    metrics.relative_source_variance(dataloader="train"),
                    metrics.fisher_share(dataloader="train", likelihood="gaussian")):
        out.update(measure(trainer, net))
    return out


def test_on_the_linear_net_every_measure_orders_the_runs_as_the_mode_strength_share() -> None:
    runs = {name: _linear_run(window) for name, window in
            (("early", (0, 60)), ("middle", (35, 95)), ("late", (100, 160)), ("baseline", None))}
    by_share = sorted(runs, key=lambda name: runs[name]["share"])
    assert by_share == ["early", "middle", "late", "baseline"]
    for key in ("reliance/ablation/b", "reliance/fisher_share/b"):
        assert sorted(runs, key=lambda name: runs[name][key]) == by_share, key
    assert sorted(runs, key=lambda name: -runs[name]["reliance/rsv/mean"]) == by_share  # RSV towards a: b unused
    early, late, base = runs["early"], runs["late"], runs["baseline"]
    assert early["share"] < 0.05 and early["reliance/ablation/b"] < 0.01 and early["reliance/rsv/mean"] > 0.95
    assert early["reliance/fisher_share/b"] < 0.05 and early["reliance/rsv/a"] > 0.9
    for key in ("reliance/ablation/b", "reliance/fisher_share/b"):
        assert late[key] == pytest.approx(base[key], abs=0.03), key
    assert abs(late["reliance/rsv/mean"]) < 0.05


def _two_view_run(window: tuple[int, int] | None) -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    dm = lc.data.TwoViewDigits(subset=400, batch_size=32)
    net = lc.models.TwoViewNet(hidden=32, lr=0.1, lr_decay=0.75, seed=0)
    deficits: list[Any] = [lc.PathwayDeficit("b", window=window, mode="noise", noise_std=0.3)] if window else []
    trainer = pl.Trainer(max_epochs=16, callbacks=deficits, limit_val_batches=0, num_sanity_val_steps=0, **QUIET)
    trainer.fit(net, dm)
    out = R.Reliance(measures=("ablation", "rsv"), dataloader="test", max_examples=256, layer="fusion", fixed=16)(
        trainer, net)
    return {**out, **metrics.fisher_share(dataloader="test", max_examples=64)(trainer, net)}


def test_on_a_nonlinear_two_view_net_an_early_deficit_removes_the_reliance_a_late_one_does_not() -> None:
    runs = {name: _two_view_run(window) for name, window in (("early", (0, 6)), ("late", (8, 14)), ("baseline", None))}
    early, late, base = runs["early"], runs["late"], runs["baseline"]
    b, rsv, fisher = "reliance/ablation/b", "reliance/rsv/mean", "reliance/fisher_share/b"
    assert base[b] > 0.5 and base[fisher] > 0.4 and abs(base[rsv]) < 0.2  # the intact net uses both views
    assert early[b] < 0.25 * base[b] and early[fisher] < 0.1 and early[rsv] > 0.8  # ... after an early deficit: a
    assert late[b] > 0.75 * base[b] and late[fisher] > 0.35 and late[rsv] < 0.3  # a late one leaves b in use
    assert early["reliance/rsv/a"] > 0.7 > 0.2 > late["reliance/rsv/a"]  # units exclusive to a


def test_a_reliance_factory_is_a_final_metric_of_a_sweep(tmp_path: Any) -> None:
    table = lc.sweep.run(
        lambda seed: lc.models.TwoViewNet(hidden=16, lr=0.1, seed=seed),
        lambda: lc.data.TwoViewDigits(subset=200, batch_size=32),
        deficit=lc.PathwayDeficit("b", window=(0, 1), mode="noise", noise_std=0.3),
        windows=lc.sweep.removal([1]), metrics=["val_acc", metrics.ablation_reliance(sources=["a", "b"])],
        trainer={"max_epochs": 4, "accelerator": "cpu"}, out=str(tmp_path), backend="serial", tensorboard=False,
        plot=False)
    assert (table.status == "ok").all() and len(table) == 2
    assert {"reliance/ablation/a", "reliance/ablation/b", "reliance/accuracy/intact"} <= set(table.columns)
    assert table["reliance/accuracy/intact"].between(0.3, 1).all() and table["reliance/ablation/b"].between(0, 1).all()

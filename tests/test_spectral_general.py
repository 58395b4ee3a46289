"""SpectralMonitor(targets="auto") on models the package has never seen.

Every layer type's documented matrix view is rebuilt here independently and compared with
``torch.linalg.svdvals``; every metric is recomputed from its formula with numpy.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lightning_critical as lc
import lightning_critical.spectral.records as spectral_records
from lightning_critical._namespace import pl
from lightning_critical.spectral import (
    find_weight_matrices,
    gram_singular_values,
    scalar_metrics,
    singular_values,
    subspace_drift,
)

ALL_METRICS = (
    "singular_values",
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "stable_rank",
    "effective_rank",
    "participation_ratio",
    "condition_number",
    "subspace_drift",
)


class Zoo(pl.LightningModule):
    """One of every layer type the monitor must find, trained on a simple weight-decay-like loss."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 5)
        self.c1 = nn.Conv1d(4, 6, 3)
        self.c2 = nn.Conv2d(4, 6, (2, 3), groups=2)
        self.c3 = nn.Conv3d(2, 3, 2)
        self.t1 = nn.ConvTranspose1d(4, 6, 3)
        self.t2 = nn.ConvTranspose2d(4, 6, 2, groups=2)
        self.t3 = nn.ConvTranspose3d(3, 2, 2)
        self.emb = nn.Embedding(10, 4)
        self.attn = nn.MultiheadAttention(8, 2)
        self.lstm = nn.LSTM(3, 4, num_layers=2)
        self.gru = nn.GRU(3, 5)
        self.rnn = nn.RNN(3, 2)
        self.extra = nn.Parameter(torch.randn(3, 2, 4))
        self.to(dtype)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        # Every parameter gets a gradient; x and the global RNG (like dropout would) make the
        # loss depend on data order and random state, so RNG use by a callback would show.
        loss = sum((p.float() ** 2).mean() for p in self.parameters()) * x.float().mean()
        return loss * (1 + 0.1 * torch.rand(()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.rand(8, 1) + 0.5)
        return torch.utils.data.DataLoader(data, batch_size=2, shuffle=True)


def documented_views(m: Zoo) -> dict[str, torch.Tensor]:
    """The matrix of each target, written out layer type by layer type (module docstring)."""
    d = m.state_dict()
    views = {"lin.weight": d["lin.weight"], "emb.weight": d["emb.weight"]}
    for name in ("c1", "c2", "c3"):
        w = d[f"{name}.weight"]  # (out, in/groups, *k) -> (out, in/groups * prod k)
        views[f"{name}.weight"] = w.reshape(w.shape[0], -1)
    for name in ("t1", "t2", "t3"):
        w = d[f"{name}.weight"]  # (in, out/groups, *k) -> (out/groups, in * prod k)
        perm = (1, 0) + tuple(range(2, w.dim()))
        views[f"{name}.weight"] = w.permute(*perm).reshape(w.shape[1], -1)
    e = m.attn.embed_dim
    ipw = d["attn.in_proj_weight"]
    views["attn.in_proj_weight.q"] = ipw[:e]
    views["attn.in_proj_weight.k"] = ipw[e : 2 * e]
    views["attn.in_proj_weight.v"] = ipw[2 * e :]
    views["attn.out_proj.weight"] = d["attn.out_proj.weight"]
    # PyTorch stacks the gates along dim 0: LSTM (i, f, g, o), GRU (r, z, n); RNN has one.
    for rnn, layers, gates in (("lstm", 2, "ifgo"), ("gru", 1, "rzn"), ("rnn", 1, "")):
        for layer in range(layers):
            for kind in ("ih", "hh"):
                w = d[f"{rnn}.weight_{kind}_l{layer}"]
                if not gates:
                    views[f"{rnn}.weight_{kind}_l{layer}"] = w
                hidden = w.shape[0] // max(len(gates), 1)
                for g, gate in enumerate(gates):
                    views[f"{rnn}.weight_{kind}_l{layer}.{gate}"] = w[g * hidden : (g + 1) * hidden]
    views["extra"] = d["extra"].reshape(3, 8)
    return views


def metric_formulas(s: np.ndarray, shape: tuple[int, ...]) -> dict[str, float]:
    """The documented formulas, written independently of lightning_critical.spectral."""
    s = np.sort(s.astype(np.float64))[::-1]
    p = s / s.sum()
    p = p[p > 0]
    tol = max(shape) * np.finfo(np.float32).eps * s[0]
    return {
        "spectral_norm": s[0],
        "frobenius_norm": math.sqrt((s**2).sum()),
        "nuclear_norm": s.sum(),
        "stable_rank": (s**2).sum() / s[0] ** 2,
        "effective_rank": math.exp(-(p * np.log(p)).sum()),
        "participation_ratio": (s**2).sum() ** 2 / (s**4).sum(),
        "condition_number": s[0] / s[s > tol][-1],
    }


class Snapshot(pl.Callback):
    """Copies the documented views when the monitor records step ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.views: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            self.views = {k: v.clone() for k, v in documented_views(pl_module).items()}


def fit(model, callbacks, tmp_path, **kw):
    trainer = pl.Trainer(
        max_epochs=kw.pop("max_epochs", 2),
        logger=kw.pop("logger", False),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kw,
    )
    trainer.fit(model)
    return trainer


def test_every_layer_type_found_with_documented_view():
    m = Zoo()
    found = find_weight_matrices(m)
    expected = documented_views(m)
    assert sorted(found) == sorted(expected)
    for name, mat in expected.items():
        assert tuple(found[name].shape) == tuple(mat.shape), name
        assert torch.equal(found[name], mat), name  # the very same matrix, entry by entry


def test_monitor_records_svdvals_and_formulas_for_every_layer(tmp_path):
    model = Zoo()
    monitor = lc.SpectralMonitor(every_n_steps=3, metrics=ALL_METRICS, history_file=None)
    snapshot = Snapshot(at_step=6)
    trainer = fit(model, [snapshot, monitor], tmp_path)
    df = monitor.to_frame()
    final = df[df.step == trainer.global_step]
    assert trainer.global_step == 8 and sorted(df.step.unique()) == [0, 3, 6, 8]
    for name, mat in documented_views(model).items():
        rows = final[final.target == name]
        sv = rows[rows.metric == "singular_values"].sort_values("index").value.to_numpy()
        ref = torch.linalg.svdvals(mat.float()).numpy()
        np.testing.assert_allclose(sv, ref, rtol=1e-6, atol=1e-7, err_msg=name)
        for metric, value in metric_formulas(ref, tuple(mat.shape)).items():
            got = rows[rows.metric == metric].value.item()
            assert got == pytest.approx(value, rel=1e-5), (name, metric)
    # subspace_drift between the records at steps 6 and 8, from the top-5 left singular vectors.
    drift = final[final.metric == "subspace_drift"].set_index("target").value
    assert sorted(drift.index) == sorted(documented_views(model))
    for name, mat in documented_views(model).items():
        k = min(5, *mat.shape)
        u6 = torch.linalg.svd(snapshot.views[name].double(), full_matrices=False)[0][:, :k]
        u8 = torch.linalg.svd(mat.double(), full_matrices=False)[0][:, :k]
        expected = 1 - float((u6.T @ u8).pow(2).sum()) / k
        assert drift[name] == pytest.approx(expected, abs=1e-4), name
    # subspace_drift is absent at the first record (nothing to compare with)
    assert df[(df.step == 0) & (df.metric == "subspace_drift")].empty


def test_subspace_drift_formula():
    torch.manual_seed(1)
    a, b = torch.randn(7, 5), torch.randn(7, 5)
    (sa, ua), (sb, ub) = singular_values({"a": a, "b": b}, with_vectors=True).values()
    assert ua is not None and ub is not None
    k = 3
    ref_a = torch.linalg.svd(a.double(), full_matrices=False)[0][:, :k]
    ref_b = torch.linalg.svd(b.double(), full_matrices=False)[0][:, :k]
    expected = 1 - float((ref_a.T @ ref_b).pow(2).sum()) / k
    assert subspace_drift(ua[:, :k], ub[:, :k]) == pytest.approx(expected, abs=1e-5)
    assert subspace_drift(ua[:, :k], ua[:, :k]) == pytest.approx(0.0, abs=1e-6)


def test_condition_number_finite_for_rank_deficient_and_zero():
    low_rank = torch.randn(6, 2) @ torch.randn(2, 5)
    (s, _), = singular_values({"w": low_rank}).values()
    cond = scalar_metrics(s, ["condition_number"], (6, 5))["condition_number"]
    assert math.isfinite(cond) and cond == pytest.approx(float(s[0] / s[1]), rel=1e-6)
    zero = scalar_metrics(torch.zeros(3), ["condition_number", "effective_rank"], (3, 3))
    assert zero == {"condition_number": 1.0, "effective_rank": 0.0}


def test_bf16_model_computed_in_float32(tmp_path):
    model = Zoo(dtype=torch.bfloat16)
    monitor = lc.SpectralMonitor(every_n_steps=4, metrics=("singular_values", "stable_rank"), history_file=None)
    trainer = fit(model, [monitor], tmp_path, max_epochs=1)
    assert model.lin.weight.dtype == torch.bfloat16
    df = monitor.to_frame()
    final = df[(df.step == trainer.global_step) & (df.metric == "singular_values")]
    for name, mat in documented_views(model).items():
        sv = final[final.target == name].sort_values("index").value.to_numpy()
        np.testing.assert_allclose(sv, torch.linalg.svdvals(mat.float()).numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_nan_weight_reported_and_training_continues(tmp_path):
    class Poisoned(Zoo):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.global_step == 2:
                with torch.no_grad():
                    self.extra[0, 0, 0] = float("nan")

    model = Poisoned()
    monitor = lc.SpectralMonitor(every_n_steps=2, metrics=("singular_values", "spectral_norm"), history_file=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(model, [monitor], tmp_path, max_epochs=2)
    assert trainer.global_step == 8  # training ran to the end
    messages = [str(w.message) for w in caught if "NaN or Inf" in str(w.message)]
    assert len(messages) == 1 and "'extra'" in messages[0] and "step 2" in messages[0]
    df = monitor.to_frame()
    extra = df[(df.target == "extra") & (df.metric == "spectral_norm")].set_index("step").value
    assert math.isfinite(extra[0]) and all(math.isnan(extra[s]) for s in (2, 4, 6, 8))
    # every other target is still recorded at every step
    ok = df[(df.target == "lin.weight") & (df.metric == "spectral_norm")]
    assert ok.value.notna().all() and sorted(ok.step) == [0, 2, 4, 6, 8]


def _train_weights(tmp_path, callbacks):
    pl.seed_everything(3)
    model = Zoo()
    fit(model, callbacks, tmp_path, max_epochs=2)
    return model


def test_bitwise_identical_training_and_nothing_attached(tmp_path):
    reference = _train_weights(tmp_path / "a", [])
    model_dict_keys = set(reference.__dict__)
    # top_k with a small randomized_min_dim exercises the randomized path too.
    truncated = ("singular_values", "spectral_norm", "frobenius_norm", "stable_rank", "subspace_drift")
    monitor = lc.SpectralMonitor(every_n_steps=1, metrics=truncated, top_k=3, randomized_min_dim=4)
    logger = pl.loggers.TensorBoardLogger(tmp_path / "tb")
    pl.seed_everything(3)
    model = Zoo()
    fit(model, [monitor], tmp_path / "b", logger=logger)
    for (name, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert set(model.__dict__) == model_dict_keys
    for module in model.modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks), module
    assert all(not p._backward_hooks for p in model.parameters() if getattr(p, "_backward_hooks", None) is not None)
    assert not monitor.to_frame().empty


def test_top_k_randomized_path_matches_leading_svdvals():
    torch.manual_seed(0)
    # A matrix with a decaying spectrum, so the randomized range finder is accurate.
    u, _ = torch.linalg.qr(torch.randn(300, 300))
    v, _ = torch.linalg.qr(torch.randn(200, 200))
    s_true = torch.logspace(0, -3, 200)
    w = u[:, :200] @ torch.diag(s_true) @ v.T
    (s, _), = singular_values({"w": w}, top_k=5, randomized_min_dim=100).values()
    torch.testing.assert_close(s, torch.linalg.svdvals(w)[:5], rtol=1e-4, atol=1e-6)


def test_targets_names_globs_and_exclusions(tmp_path):
    model = Zoo()
    monitor = lc.SpectralMonitor(
        targets=["attn.*", "c?.weight"], exclude=["*.k", "c3*"], metrics=("spectral_norm",), history_file=None
    )
    fit(model, [monitor], tmp_path, max_epochs=1)
    assert sorted(monitor.to_frame().target.unique()) == [
        "attn.in_proj_weight.q",
        "attn.in_proj_weight.v",
        "attn.out_proj.weight",
        "c1.weight",
        "c2.weight",
    ]


def test_bad_arguments_raise_before_training(tmp_path):
    with pytest.raises(ValueError, match="'bogus'.*choose from"):
        lc.SpectralMonitor(metrics=("bogus",))
    with pytest.raises(ValueError, match="every_n_steps=0"):
        lc.SpectralMonitor(every_n_steps=0)
    monitor = lc.SpectralMonitor(targets="nothing_here*", history_file=None)
    model = Zoo()
    with pytest.raises(ValueError, match="nothing_here"):
        fit(model, [monitor], tmp_path, max_epochs=1)
    assert model.lin.weight.grad is None  # raised before the first update


def test_gram_route_float32_accurate_on_large_and_rank_deficient_matrices():
    torch.manual_seed(0)
    full = torch.randn(400, 160) / 20
    low = (torch.randn(300, 5) @ torch.randn(5, 200)) / 10  # singular values 6..200 are exactly 0
    mats = {"full": full, "wide": full.T.contiguous(), "low": low}
    gram = singular_values(mats, method="gram")
    for name, mat in mats.items():
        ref = torch.linalg.svdvals(mat.double())
        s = gram[name][0]
        assert s.dtype == torch.float32 and s.shape == ref.shape
        assert float((s.double() - ref).abs().max() / ref[0]) < 1e-6, name  # documented bound
    # gram32 (and auto on CPU, min side >= 128): float32 spectra where s_min >= 0.2 s_1 ("full",
    # "wide": s_min ~ 0.23 s_1), the float64 route for the rest ("low", rank 5), so that every
    # spectrum stays float32-accurate.
    fast = singular_values(mats, method="gram32")
    auto = singular_values(mats)
    for name, mat in mats.items():
        assert torch.equal(auto[name][0], fast[name][0]), name
        ref = torch.linalg.svdvals(mat.double())
        err = float((fast[name][0].double() - ref).abs().max() / ref[0])
        svd32 = float((torch.linalg.svdvals(mat).double() - ref).abs().max() / ref[0])
        assert err < 10 * max(svd32, 1e-7), (name, err, svd32)  # as close as a float32 SVD gets
    assert not torch.equal(fast["full"][0], gram["full"][0])  # float32 work really was used
    assert torch.equal(fast["low"][0], gram["low"][0])  # redone in float64
    # the float32 pass alone is not accurate for the rank-deficient one: why it is redone
    direct = gram_singular_values(low[None], torch.float32)[0].double()
    assert float((direct - torch.linalg.svdvals(low.double())).abs().max()) > 1e-5 * float(direct[0])
    nan = full.clone()
    nan[3, 4] = float("nan")
    assert singular_values({"nan": nan}, method="gram")["nan"][0].isnan().all()
    w = torch.randn(20, 30)  # below gram_min_dim: plain svdvals, bit for bit
    assert torch.equal(singular_values({"w": w})["w"][0], torch.linalg.svdvals(w))
    with pytest.raises(ValueError, match="method='qr'.*choose one of"):
        singular_values(mats, method="qr")


def test_top_k_refuses_metrics_that_need_the_whole_spectrum():
    with pytest.raises(ValueError, match=r"metrics \['condition_number', 'nuclear_norm'\] need all"):
        lc.SpectralMonitor(top_k=2, metrics=("singular_values", "nuclear_norm", "condition_number"))
    default = lc.SpectralMonitor(top_k=2)
    assert "effective_rank" not in default.metrics and "stable_rank" in default.metrics


class Wide(pl.LightningModule):
    """One 130 x 600 map: large enough for the Gram routes, more than twice as wide as tall
    and well-conditioned (s_min ~ 0.36 s_1), so "auto" keeps its float32 Gram spectrum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(600, 130, bias=False)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.lin(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 600)), batch_size=2)


@pytest.mark.parametrize("method", ["auto", "gram", "gram32", "svd"])
def test_monitor_method_reaches_the_spectra(tmp_path, method):
    model = Wide()
    monitor = lc.SpectralMonitor(every_n_steps=1, metrics=("singular_values",), history_file=None, method=method)
    fit(model, [monitor], tmp_path, max_epochs=1)
    df = monitor.to_frame()
    got = df[df.step == df.step.max()].sort_values("index").value.to_numpy()
    w = model.lin.weight.detach()
    exact = torch.linalg.svdvals(w.double()).numpy()
    float64_gram = exact.astype(np.float32)  # the float64 Gram route, rounded once to float32
    if method == "svd":  # torch's own float32 SVD, bit for bit
        np.testing.assert_array_equal(got, torch.linalg.svdvals(w).numpy())
    elif method == "gram":
        np.testing.assert_array_equal(got, float64_gram)
    else:  # float32 Gram spectrum kept: as accurate as a float32 SVD, but not the float64 bits
        np.testing.assert_array_equal(got, singular_values({"w": w}, method="gram32")["w"][0].numpy())
        assert np.abs(got - exact).max() < 1e-5 * exact[0]
        assert not np.array_equal(got, float64_gram)


def test_float64_weights_overflow_underflow_and_empty_matrices_skip_the_float32_route():
    torch.manual_seed(0)
    w = torch.randn(600, 200)  # aspect 3, s_min ~ 0.27 s_1: float32 Gram territory
    assert not torch.equal(singular_values({"w": w})["w"][0], singular_values({"w": w}, method="gram")["w"][0])
    w64 = w.double()  # float64 weights stay in float64
    assert torch.equal(singular_values({"w": w64})["w"][0], singular_values({"w": w64}, method="gram")["w"][0])
    assert torch.equal(singular_values({"w": w}, dtype=torch.float64)["w"][0],
                       singular_values({"w": w}, method="gram", dtype=torch.float64)["w"][0])
    for scale in (1e20, 1e-22):  # a float32 Gram matrix would overflow / fall into subnormals
        big = w * scale
        exact = torch.linalg.svdvals(big.double())
        for method in ("auto", "gram32"):
            s = singular_values({"w": big}, method=method)["w"][0].double()
            assert float((s - exact).abs().max() / exact[0]) < 1e-6, (scale, method)
    for shape in ((0, 300), (300, 0)):
        for method in ("gram", "gram32"):
            s = singular_values({"e": torch.zeros(shape)}, method=method)["e"][0]
            assert s.shape == (0,) and s.dtype == torch.float32


class TwoMaps(Wide):
    def __init__(self) -> None:
        super().__init__()
        self.low = nn.Linear(300, 150, bias=False)  # made rank 3 below: s_min / s_1 = 0
        with torch.no_grad():
            self.low.weight.copy_(torch.randn(150, 3) @ torch.randn(3, 300))
        nn.init.orthogonal_(self.lin.weight)  # s_min = s_1: the float32 route stays

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + 0 * self.low.weight.sum()


def spy_on_spectra(monkeypatch) -> list:
    calls = []
    real = spectral_records.singular_values

    def spy(matrices, method="auto", **kw):
        calls.append((method, tuple(sorted(matrices))))
        return real(matrices, method=method, **kw)

    monkeypatch.setattr(spectral_records, "singular_values", spy)
    return calls


def test_monitor_sends_ill_conditioned_targets_straight_to_float64(tmp_path, monkeypatch):
    calls = spy_on_spectra(monkeypatch)
    monitor = lc.SpectralMonitor(every_n_steps=1, metrics=("singular_values",), history_file=None)
    fit(TwoMaps(), [monitor], tmp_path, max_epochs=1)
    # first record: both through the float32-first route; later ones: "low.weight" in float64 directly
    assert calls[0] == ("auto", ("lin.weight", "low.weight"))
    later = [c for c in calls[1:] if c[1]]
    assert len(later) == 4  # the records at steps 1 and 2 (the end of training), two calls each
    assert set(later) == {("auto", ("lin.weight",)), ("gram", ("low.weight",))}


def test_float64_hints_survive_a_resume(tmp_path, monkeypatch):
    ModelCheckpoint = pl.callbacks.ModelCheckpoint

    def trainer(monitor, ckpt_dir="ckpt"):
        checkpoints = ModelCheckpoint(
            dirpath=str(tmp_path / ckpt_dir), filename="{step}", every_n_train_steps=1, save_top_k=-1
        )
        return pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path, callbacks=[monitor, checkpoints])

    trainer(lc.SpectralMonitor(every_n_steps=1, metrics=("singular_values",), history_file=None)).fit(TwoMaps())
    calls = spy_on_spectra(monkeypatch)
    resumed = lc.SpectralMonitor(every_n_steps=1, metrics=("singular_values",), history_file=None)
    trainer(resumed, "ckpt_resumed").fit(TwoMaps(), ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"), weights_only=True)
    # the first record after the resume already knows "low.weight" needs the float64 route,
    # exactly as the uninterrupted run did at that step
    assert sorted(c for c in calls[:2] if c[1]) == [("auto", ("lin.weight",)), ("gram", ("low.weight",))]
    assert sorted(resumed.to_frame().step.unique()) == [2, 3, 4]

"""weightwatcher's metrics: the power-law fit of the ESD tail, MP soft rank, numerical rank, log
norms, ``analyze()`` and the monitor tracking them over training (issue 11, item 5)."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_trainer, read_tensorboard
from scipy import integrate, optimize
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.spectral import analyze, power_law_fit, scalar_metrics, singular_values
from lightning_critical.spectral.esd import fit_power_law, marchenko_pastur_median, mp_soft_rank

NEW_METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "mp_soft_rank", "numerical_rank")


def reference_fit(eigenvalues: np.ndarray) -> tuple[float, float, float, int]:
    """The documented rule written out plainly, one candidate and one point at a time."""
    x = sorted(float(v) for v in eigenvalues if v > 0)
    big_n = len(x)
    small = big_n < 20
    best: tuple[float, int] | None = None
    result = (math.nan, math.nan, math.nan, 0)
    for i in range(big_n - 1):
        tail = x[i:]
        n = len(tail)
        spread = sum(math.log(v / x[i]) for v in tail)
        if spread <= (1e-12 if small else 0.0) or (small and n < 8):
            continue
        alpha = 1 + ((n - 1) if small else n) / spread
        if alpha > 1:
            ks = max(abs(1 - (v / x[i]) ** (1 - alpha) - k / n) for k, v in enumerate(tail))
        else:
            ks = 1.0
        if best is None or ks < best[0]:
            best = (ks, i)
            result = (alpha, x[i], ks, n)
    if best is None and small and big_n >= 2:  # small samples without a long enough tail: the whole ESD
        spread = sum(math.log(v / x[0]) for v in x)
        alpha = 1 + (big_n - 1) / spread
        ks = max(abs(1 - (v / x[0]) ** (1 - alpha) - k / big_n) for k, v in enumerate(x))
        result = (alpha, x[0], ks, big_n)
    return result


def esd(matrix: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(matrix.double()).numpy() ** 2


@pytest.mark.parametrize("n", [500, 3000])
def test_alpha_recovers_the_exponent_of_an_exact_power_law_tail(n):
    rng = np.random.default_rng(n)
    tail = (1 - rng.random(n)) ** (-1 / 1.5)  # density ~ x^-2.5 above 1
    bulk = rng.uniform(0.05, 1.0, n // 2)  # not a power law: the fit must start above it
    fit = fit_power_law(np.concatenate([bulk, tail]))
    assert abs(fit.alpha - 2.5) < 5 * 1.5 / math.sqrt(fit.tail_size)  # five standard errors
    assert 0.9 <= fit.xmin <= 3 and fit.tail_size <= n


@pytest.mark.parametrize("case", ["random_matrix", "heavy_tailed", "power_law", "small_sample", "tiny", "ties"])
def test_fit_equals_a_plain_reference_implementation(case):
    rng = np.random.default_rng(7)
    values = {
        "random_matrix": esd(torch.randn(120, 60, generator=torch.Generator().manual_seed(0))),
        "heavy_tailed": esd(torch.from_numpy(rng.standard_t(2.5, (90, 70)))),
        "power_law": (1 - rng.random(150)) ** (-1 / 2.0),
        "small_sample": esd(torch.from_numpy(rng.standard_t(3, (30, 15)))),  # 15 values: small-sample rule
        "tiny": np.array([1.0, 2.0, 4.5]),  # fewer than 8: the whole ESD is the tail
        "ties": np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 5.0, 5.0] * 4),
    }[case]
    got = fit_power_law(values)
    alpha, xmin, ks, tail = reference_fit(values)
    assert got.alpha == pytest.approx(alpha, rel=1e-10)
    assert got.xmin == xmin and got.tail_size == tail
    assert got.ks_distance == pytest.approx(ks, rel=1e-9, abs=1e-12)
    # the fit does not depend on the order or the scale of the ESD
    scaled = fit_power_law(rng.permutation(values) * 37.0)
    assert scaled.alpha == pytest.approx(alpha, rel=1e-9) and scaled.xmin == pytest.approx(37.0 * xmin)


def test_fit_of_degenerate_spectra_is_nan():
    for values in ([], [3.0], [0.0, 0.0, 5.0], [2.0, 2.0, 2.0], [1.0, np.nan, 2.0]):
        fit = fit_power_law(np.array(values))
        assert math.isnan(fit.alpha) and fit.tail_size == 0, values


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.1, 0.01])
def test_marchenko_pastur_median_against_quadrature(beta):
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def cdf(x: float) -> float:
        return integrate.quad(lambda t: math.sqrt(max((b - t) * (t - a), 0.0)) / (2 * math.pi * beta * t),
                              a, x, limit=200)[0]

    median = optimize.brentq(lambda x: cdf(x) - 0.5, a + 1e-12, b, xtol=1e-13)
    assert marchenko_pastur_median(beta) == pytest.approx(median, abs=1e-8)


def test_mp_soft_rank_formula_random_and_spiked():
    lam = np.array([1.0, 2.0, 3.0, 4.0, 50.0])
    beta = 5 / 8
    expected = 3.0 * (1 + math.sqrt(beta)) ** 2 / marchenko_pastur_median(beta) / 50.0
    assert mp_soft_rank(lam, (8, 5)) == pytest.approx(expected, rel=1e-12)
    assert mp_soft_rank(lam, (5, 8)) == pytest.approx(expected, rel=1e-12)  # orientation does not matter
    assert mp_soft_rank(np.zeros(4), (4, 6)) == 0.0
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1200, 400, generator=gen)
    assert mp_soft_rank(esd(noise), (1200, 400)) == pytest.approx(1.0, abs=0.05)  # random: at the bulk edge
    u, v = torch.randn(1200, 1, generator=gen), torch.randn(400, 1, generator=gen)
    spiked = noise + 4 * (u / u.norm()) @ (v / v.norm()).T * noise.norm() / 20
    ratio = mp_soft_rank(esd(spiked), (1200, 400))
    # the spike leaves the bulk (whose median barely moves): lambda_+ / lambda_max drops accordingly
    assert ratio < 0.7 and ratio == pytest.approx(
        np.median(esd(noise)) * (1 + math.sqrt(1 / 3)) ** 2 / marchenko_pastur_median(1 / 3) / esd(spiked).max(),
        rel=0.01)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numerical_rank_and_log_norms_on_hand_made_matrices(dtype):
    w = torch.zeros(5, 4, dtype=dtype)
    w[0, 0], w[1, 1], w[2, 2] = 10.0, 1.0, 1e-9  # 1e-9 is zero in float32 (tolerance 5 * eps * 10), not in float64
    (s, _), = singular_values({"w": w}).values()
    m = scalar_metrics(s, NEW_METRICS, (5, 4))
    assert m["numerical_rank"] == (2.0 if dtype == torch.float32 else 3.0)
    assert m["log_norm"] == pytest.approx(math.log10(101.0), rel=1e-7)  # log10(sum s^2): ||W||_F^2
    assert m["log_spectral_norm"] == pytest.approx(2.0, rel=1e-7)  # log10(s_1^2)
    fit = fit_power_law(s.double().numpy()[: int(m["numerical_rank"])] ** 2)
    assert m["alpha"] == pytest.approx(fit.alpha, rel=1e-12)
    assert m["alpha_weighted"] == pytest.approx(fit.alpha * 2.0, rel=1e-7)
    zero = scalar_metrics(torch.zeros(3, dtype=dtype), NEW_METRICS, (3, 3))
    assert zero["numerical_rank"] == 0.0 and zero["mp_soft_rank"] == 0.0 and zero["log_norm"] == -math.inf
    assert math.isnan(zero["alpha"]) and math.isnan(zero["alpha_weighted"])


class Mixed(nn.Module):
    """Registration order differs from alphabetical order on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.zeta = nn.Linear(30, 40)
        self.conv = nn.Conv2d(6, 12, 3)
        self.alpha_emb = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.head = nn.Linear(40, 3)


def test_analyze_rows_follow_module_order_with_every_metric():
    torch.manual_seed(0)
    model = Mixed()
    table = analyze(model, conv="flatten")  # the monitor's view: every row is one matrix
    assert table.target.tolist() == [
        "zeta.weight", "conv.weight", "alpha_emb.weight", "attn.in_proj_weight.q", "attn.in_proj_weight.k",
        "attn.in_proj_weight.v", "attn.out_proj.weight", "head.weight",
    ]
    assert table.columns.tolist()[:4] == ["target", "rows", "cols", "taps"]
    assert set(NEW_METRICS) <= set(table.columns) and {"xmin", "ks_distance", "tail_size"} <= set(table.columns)
    conv = table.set_index("target").loc["conv.weight"]
    assert (conv.rows, conv.cols, conv.taps, conv.conv) == (12, 54, 1, "flatten")
    # every value equals what scalar_metrics gives for that matrix's spectrum
    mats = lc.spectral.find_weight_matrices(model)
    for row in table.itertuples():
        s = torch.linalg.svdvals(mats[row.target].detach().double())
        ref = scalar_metrics(s, NEW_METRICS, tuple(mats[row.target].shape))
        for metric in ("log_norm", "log_spectral_norm", "mp_soft_rank", "numerical_rank", "alpha"):
            assert getattr(row, metric) == pytest.approx(ref[metric], rel=1e-4), (row.target, metric)
        assert row.tail_size == power_law_fit(s, tuple(mats[row.target].shape)).tail_size
        assert row.spectral_norm ** 2 == pytest.approx(10 ** row.log_spectral_norm, rel=1e-5)


def test_analyze_conv_taps_pools_one_matrix_per_kernel_position():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 24, (3, 2))
    model = nn.Sequential(conv, nn.Conv1d(4, 10, 1), nn.Linear(5, 7))
    table = analyze(model, conv="taps", method="svd", dtype=torch.float64).set_index("target")
    w = conv.weight.detach().double()
    pooled = np.concatenate([esd(w[:, :, i, j]) for i in range(3) for j in range(2)])
    row = table.loc["0.weight"]
    assert (row.rows, row.cols, row.taps) == (24, 8, 6)
    assert row.alpha == pytest.approx(fit_power_law(pooled).alpha, rel=1e-9)
    assert row.log_norm == pytest.approx(math.log10(float((w**2).sum())), rel=1e-12)  # the same Frobenius norm
    assert row.numerical_rank == 48
    assert table.loc["1.weight"].taps == 1 and table.loc["2.weight"].taps == 1  # a 1-wide kernel: one matrix
    flat = analyze(model, conv="flatten", method="svd", dtype=torch.float64).set_index("target")
    assert flat.loc["0.weight"].cols == 48 and flat.loc["1.weight"].alpha == pytest.approx(table.loc["1.weight"].alpha)


def test_analyze_bad_arguments():
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"\['singular_values'\] are not scalar metrics"):
        analyze(net, metrics=["alpha", "singular_values"])
    with pytest.raises(ValueError, match="metric 'alfa' is not known"):
        analyze(net, metrics=["alfa"])
    with pytest.raises(ValueError, match="conv='pooled'"):
        analyze(net, conv="pooled")
    with pytest.raises(ValueError, match=r"leave no weight matrix of Sequential; available: \['0.weight'\]"):
        analyze(net, include="head*")
    assert analyze(nn.Sequential(nn.ReLU())).empty


def test_monitor_refuses_full_spectrum_metrics_with_top_k():
    with pytest.raises(ValueError, match=r"\['alpha', 'mp_soft_rank'\] need all of them"):
        lc.SpectralMonitor(top_k=3, metrics=["alpha", "mp_soft_rank", "log_spectral_norm"])
    lc.SpectralMonitor(top_k=3, metrics=["log_spectral_norm"])  # exact from the leading value


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(24, 48), nn.Tanh(), nn.Linear(48, 32), nn.Tanh(), nn.Linear(32, 4))
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 24, generator=gen)
        self.y = torch.randn(64, 4, generator=gen)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.body(batch[0]), batch[1])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=16)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def test_monitor_tracks_the_new_metrics_as_analyze_defines_them(tmp_path):
    model = Regression()
    monitor = lc.SpectralMonitor(every_n_steps=4, metrics=list(NEW_METRICS))
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version=0)
    trainer = make_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[monitor])
    trainer.fit(model)
    assert trainer.global_step == 12
    history = pd.read_csv(os.path.join(logger.log_dir, "spectral_history.csv"))
    assert sorted(history.step.unique()) == [0, 4, 8, 12]
    assert set(history.metric) == set(NEW_METRICS)
    final = history[history.step == 12].pivot(index="target", columns="metric", values="value")
    expected = analyze(model, metrics=NEW_METRICS).set_index("target")
    assert sorted(final.index) == sorted(expected.index) == ["body.0.weight", "body.2.weight", "body.4.weight"]
    for metric in NEW_METRICS:
        np.testing.assert_allclose(final[metric], expected.loc[final.index, metric], rtol=1e-6, err_msg=metric)
    # the metrics moved with training, and reached TensorBoard under <metric>/<target>
    first = history[history.step == 0].pivot(index="target", columns="metric", values="value")
    assert not np.allclose(first["log_norm"], final["log_norm"])
    scalars = read_tensorboard(logger.log_dir).Tags()["scalars"]
    for metric in NEW_METRICS:
        assert f"{metric}/body.2.weight" in scalars, metric


def test_alpha_matches_weightwatcher_where_installed():
    ww = pytest.importorskip("weightwatcher")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.Linear(200, 150))
    with torch.no_grad():
        for p in model.parameters():  # heavy-tailed entries: a power-law tail worth fitting
            p.copy_(torch.from_numpy(np.random.default_rng(p.numel()).standard_t(3, p.shape)).float())
    theirs = ww.WeightWatcher(model=model).analyze()
    ours = analyze(model).set_index("target")  # the default conv view is weightwatcher's
    assert len(theirs) == 3
    for row in theirs.itertuples():
        mine = ours.loc[f"{row.longname}.weight"]
        assert mine.alpha == pytest.approx(row.alpha, abs=1e-4), row.longname
        assert mine.numerical_rank == row.matrix_rank

"""SpectralMonitor on the bundled net: record cadence, tidy table, CSV, TensorBoard content."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_trainer, read_tensorboard

import lightning_critical as lc
from lightning_critical._namespace import pl

TensorBoardLogger = pl.loggers.TensorBoardLogger


def small_net(**kw):
    dm = lc.data.HierarchicalDataModule()
    kw.setdefault("depth", 3)
    kw.setdefault("width", 12)
    kw.setdefault("lr", 0.05)
    kw.setdefault("init_scale", 0.05)
    return dm, lc.models.MultiPathwayLinearNet(task_basis=dm.task_basis(), **kw)


def test_records_at_step_zero_then_every_n_and_at_the_end(tmp_path):
    dm, net = small_net()
    initial = net.end_to_end_maps()
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=4)
    make_trainer(tmp_path, max_epochs=10, callbacks=[monitor]).fit(net, dm)
    frame = monitor.to_frame()
    assert list(frame.columns) == ["step", "epoch", "target", "metric", "index", "value"]
    assert sorted(frame.step.unique()) == [0, 4, 8, 10]
    # step 0 is taken before the first update: it is the initial map's spectrum.
    s0 = frame[(frame.step == 0) & (frame.target == "a") & (frame.metric == "singular_values")].sort_values("index")
    assert np.allclose(s0.value, torch.linalg.svdvals(initial["a"]).numpy(), rtol=1e-5)
    # the last record is the trained model.
    s_end = frame[(frame.step == 10) & (frame.target == "b") & (frame.metric == "singular_values")].sort_values("index")
    assert np.allclose(s_end.value, torch.linalg.svdvals(net.end_to_end_maps()["b"]).numpy(), rtol=1e-5)
    assert set(frame.metric) == {
        "singular_values",
        "mode_strength",
        "effective_rank",
        "stable_rank",
        "spectral_norm",
        "frobenius_norm",
    }
    assert set(frame[frame.metric == "effective_rank"]["index"]) == {-1}


def test_values_follow_their_formulas(tmp_path):
    dm, net = small_net()
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=100)
    make_trainer(tmp_path, max_epochs=3, callbacks=[monitor]).fit(net, dm)
    frame = monitor.to_frame()
    last = frame[frame.step == 3]
    w = net.end_to_end_maps()["a"].double()
    s = torch.linalg.svdvals(w)
    p = s / s.sum()
    u, _, v = dm.task_basis()
    expected = {
        "effective_rank": math.exp(-(p * p.log()).sum().item()),
        "stable_rank": (s**2).sum().item() / s[0].item() ** 2,
        "spectral_norm": s[0].item(),
        "frobenius_norm": w.norm().item(),
    }
    got = last[last.target == "a"].set_index("metric")
    for metric, value in expected.items():
        assert got.loc[metric, "value"] == pytest.approx(value, rel=1e-4), metric
    k = last[(last.target == "a") & (last.metric == "mode_strength")].sort_values("index").value.to_numpy()
    assert np.allclose(k, torch.diagonal(u.double().T @ w @ v.double()).numpy(), rtol=1e-4, atol=1e-7)


def test_csv_history_and_tensorboard_content(tmp_path):
    dm, net = small_net()
    theory = {"mode_strength": {"a": np.linspace(0, 1, 21)[:, None].repeat(8, axis=1)}}
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=5, theory=theory)
    logger = TensorBoardLogger(str(tmp_path), name="run", version="")
    deficit = lc.PathwayDeficit("b", (5, 10))
    make_trainer(max_epochs=20, logger=logger, callbacks=[deficit, monitor]).fit(net, dm)
    on_disk = pd.read_csv(f"{logger.log_dir}/spectral_history.csv")
    pd.testing.assert_frame_equal(on_disk, monitor.to_frame(), check_dtype=False)

    acc = read_tensorboard(logger.log_dir)
    tags = acc.Tags()
    k = acc.Scalars("mode_strength/a/0")
    assert [e.step for e in k] == [0, 5, 10, 15, 20]
    table = monitor.to_frame()
    want = table[(table.metric == "mode_strength") & (table.target == "a") & (table["index"] == 0)].value.to_numpy()
    assert np.allclose([e.value for e in k], want, rtol=1e-6)
    assert [round(e.value, 6) for e in acc.Scalars("theory/mode_strength/a/3")] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "effective_rank/b" in tags["scalars"] and "singular_values/a/0" in tags["scalars"]
    assert {"singular_values/a", "singular_values/b"} <= set(tags["histograms"])
    active = {e.step: e.value for e in acc.Scalars("deficit/freeze/b")}
    assert active[0] == 0 and active[4] == 0 and active[5] == 1 and active[9] == 1 and active[10] == 0
    # One custom-scalars chart per mode overlays both pathways and the theory (one run each).
    from tensorboard.plugins.custom_scalar import layout_pb2

    raw = acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0]  # TensorBoard shows the last
    layout = layout_pb2.Layout.FromString(raw)
    charts = {
        c.title: list(c.multiline.tag) for cat in layout.category if cat.title == "mode strength" for c in cat.chart
    }
    assert len(charts) == 8
    assert charts["mode 0: a, b, a_theory"] == ["^mode_strength/mode_0$"]
    runs = {name: read_tensorboard(f"{logger.log_dir}/modes/{name}") for name in ("a", "b", "a_theory")}
    assert [e.value for e in runs["a"].Scalars("mode_strength/mode_0")] == [e.value for e in k]
    assert [round(e.value, 6) for e in runs["a_theory"].Scalars("mode_strength/mode_3")] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_monitor_reports_skips_and_rejects_bad_input(tmp_path, caplog):
    with pytest.raises(ValueError, match="every_n_steps=0"):
        lc.SpectralMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="metric 'rank'.*choose from"):
        lc.SpectralMonitor(metrics=("rank",))
    dm, net = small_net()
    bad = (torch.eye(15)[:, :3], torch.ones(3), torch.eye(7)[:, :3])
    with pytest.raises(ValueError, match=r"V of shape \(7, 3\) does not fit the end-to-end map 'a' of shape \(15, 8\)"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[lc.SpectralMonitor(task_basis=bad)]).fit(net, dm)
    with pytest.raises(ValueError, match="found no matrix.*available"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[lc.SpectralMonitor(targets="decoder*")]).fit(net, dm)


def test_targets_globs_and_weights(tmp_path):
    dm, net = small_net()
    monitor = lc.SpectralMonitor(targets=["pathways.a.*", "b"], exclude="*.2.weight", every_n_steps=100)
    make_trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(net, dm)
    assert sorted(monitor.to_frame().target.unique()) == ["b", "pathways.a.0.weight", "pathways.a.1.weight"]


def test_mode_strength_is_silent_without_a_basis_unless_asked_for(tmp_path, monkeypatch):
    from conftest import TwoBranchNet

    import lightning_critical.monitors.base as monitor_base  # report_once says it

    said: list[str] = []
    monkeypatch.setattr(monitor_base, "rank_zero_info", said.append)
    default = lc.SpectralMonitor(every_n_steps=2, history_file=None)
    make_trainer(tmp_path, max_epochs=1, callbacks=[default]).fit(TwoBranchNet())
    assert not [m for m in said if "mode_strength" in m]
    assert "mode_strength" not in set(default.to_frame().metric) and not default.to_frame().empty

    asked = lc.SpectralMonitor(every_n_steps=2, metrics=("mode_strength", "spectral_norm"), history_file=None)
    make_trainer(tmp_path, max_epochs=2, callbacks=[asked]).fit(TwoBranchNet())
    assert [m for m in said if "mode_strength" in m] == [
        "SpectralMonitor: mode_strength skipped: no task basis (task_basis() on the module or datamodule)."
    ]


def test_mode_strength_alone_computes_no_spectrum(tmp_path, monkeypatch):
    import lightning_critical.spectral.records as spectral_records

    def no_spectra(*args, **kwargs):
        raise AssertionError("a spectrum was computed although no metric needs one")

    monkeypatch.setattr(spectral_records, "singular_values", no_spectra)
    dm, net = small_net()
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=4, metrics=("mode_strength",), history_file=None)
    make_trainer(tmp_path, max_epochs=5, callbacks=[monitor]).fit(net, dm)
    frame = monitor.to_frame()
    assert set(frame.metric) == {"mode_strength"} and sorted(frame.step.unique()) == [0, 4, 5]
    u, _, v = dm.task_basis()
    w = net.end_to_end_maps()["a"]
    k = frame[(frame.step == 5) & (frame.target == "a")].sort_values("index").value.to_numpy()
    assert np.allclose(k, torch.diagonal(u.T @ w @ v).numpy(), rtol=1e-5, atol=1e-7)

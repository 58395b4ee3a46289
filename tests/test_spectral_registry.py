"""The metric registry: a metric registered by a user is computed, logged and kept off truncated spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TwoBranchNet, make_trainer, read_tensorboard

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.spectral import join_theory, register_metric, unregister_metric


@pytest.fixture
def user_metrics():
    """Register metrics for one test and remove them afterwards (the registry is process-wide)."""
    added: list[str] = []

    def add(name, formula, **kw):
        register_metric(name, formula, **kw)
        added.append(name)

    yield add
    for name in added:
        unregister_metric(name)


def nuclear_over_top(values: np.ndarray) -> float:
    """The test's formula, on any list of singular values: sum s_i / s_1 (needs all of them)."""
    return float(np.sum(values) / values[0])


def test_user_metric_is_computed_logged_and_full_spectrum(tmp_path, user_metrics):
    user_metrics("nuclear_over_top", lambda sp: nuclear_over_top(sp.values))
    user_metrics("top_two", lambda sp: sp.values[:2], full_spectrum=False, vector=True)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version=0)
    monitor = lc.SpectralMonitor(every_n_steps=2, metrics=["singular_values", "nuclear_over_top", "top_two"])
    make_trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[monitor]).fit(TwoBranchNet())

    frame = monitor.to_frame()
    mine = frame[frame.metric == "nuclear_over_top"]
    assert sorted(mine.step.unique()) == [0, 2, 4] and set(mine["index"]) == {-1}
    assert set(mine.target) == {"left.0.weight", "left.2.weight", "right.0.weight", "right.2.weight", "head.weight"}
    events = read_tensorboard(logger.log_dir)
    differs_from_top_k = 0
    for row in mine.itertuples():
        s = frame[(frame.step == row.step) & (frame.target == row.target) & (frame.metric == "singular_values")]
        s = s.sort_values("index").value.to_numpy()
        assert len(s) >= 3  # the whole spectrum was taken, not the leading values
        assert row.value == pytest.approx(nuclear_over_top(s), rel=1e-12)
        differs_from_top_k += not math.isclose(row.value, nuclear_over_top(s[:2]), rel_tol=1e-3)
        logged = {e.step: e.value for e in events.Scalars(f"nuclear_over_top/{row.target}")}
        assert logged[row.step] == pytest.approx(row.value, rel=1e-6)  # TensorBoard stores float32
        top_two = frame[(frame.step == row.step) & (frame.target == row.target) & (frame.metric == "top_two")]
        assert top_two.sort_values("index").value.tolist() == s[:2].tolist()
        assert {e.step: e.value for e in events.Scalars(f"top_two/{row.target}/1")}[row.step] == pytest.approx(s[1])
    assert differs_from_top_k == len(mine)

    # A metric that needs the whole spectrum is refused with top_k; one declared exact from the
    # leading values is accepted.
    with pytest.raises(ValueError, match=r"metrics \['nuclear_over_top'\] need all of them"):
        lc.SpectralMonitor(top_k=2, metrics=["singular_values", "nuclear_over_top"])
    lc.SpectralMonitor(top_k=2, metrics=["singular_values", "top_two"])
    # analyze() tabulates registered scalar metrics too
    table = lc.spectral.analyze(TwoBranchNet(), metrics=["nuclear_over_top"])
    w = TwoBranchNet().head.weight.detach()
    row = table[table.target == "head.weight"].nuclear_over_top.item()
    assert row == pytest.approx(nuclear_over_top(torch.linalg.svdvals(w.double()).numpy()), rel=1e-6)


def test_registering_is_checked():
    with pytest.raises(ValueError, match="name='stable_rank' is not valid: metric 'stable_rank' is already registered"):
        register_metric("stable_rank", lambda sp: 0.0)
    with pytest.raises(ValueError, match="formula=3 is not valid"):
        register_metric("three", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only metrics added by register_metric can be removed"):
        unregister_metric("stable_rank")
    with pytest.raises(ValueError, match="metric 'not_registered' is not known"):
        lc.SpectralMonitor(metrics=["not_registered"])


def test_theory_joined_to_records_equals_the_logged_theory(tmp_path):
    # One lookup serves both: the TensorBoard overlay and the table beside the records.
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(task_basis=dm.task_basis(), depth=3, width=12, lr=0.05, init_scale=0.05)
    modes = dm.task_basis()[0].shape[1]
    theory = {"mode_strength": {"a": np.linspace(0, 1, 4)[:, None] * np.arange(1, modes + 1)}}
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version=0)
    monitor = lc.SpectralMonitor(targets="maps", every_n_steps=2, metrics=("mode_strength",), theory=theory)
    make_trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[monitor]).fit(net, dm)
    joined = join_theory(monitor.to_frame(), theory)
    events = read_tensorboard(logger.log_dir)
    a = joined[joined.target == "a"]
    assert sorted(a.step.unique()) == [0, 2, 3] and len(a) == 3 * modes
    assert a.theory.notna().all()  # every recorded step is inside the theory's 4 rows
    for row in a.itertuples():
        logged = {e.step: e.value for e in events.Scalars(f"theory/mode_strength/a/{row.index}")}
        assert logged[row.step] == pytest.approx(row.theory, rel=1e-6)
    assert joined[joined.target == "b"].theory.isna().all()


def _nuclear_over_top(sp):
    return nuclear_over_top(sp.values)


def test_a_monitor_carries_its_user_metrics_to_a_process_whose_registry_lacks_them(tmp_path, user_metrics):
    """A sweep worker unpickles the monitor with only the built-in metrics registered."""
    import pickle

    user_metrics("nuclear_over_top_2", _nuclear_over_top)
    monitor = lc.SpectralMonitor(every_n_steps=2, metrics=["singular_values", "nuclear_over_top_2"])
    payload = pickle.dumps(monitor)
    unregister_metric("nuclear_over_top_2")
    try:
        copy = pickle.loads(payload)
        make_trainer(tmp_path, max_epochs=1, callbacks=[copy]).fit(TwoBranchNet())
    finally:
        register_metric("nuclear_over_top_2", _nuclear_over_top)  # the fixture removes it
    frame = copy.to_frame()
    mine = frame[frame.metric == "nuclear_over_top_2"].sort_values(["step", "target"])
    assert len(mine) == 15  # 5 matrices x steps 0, 2, 4
    for row in mine.itertuples():
        s = frame[(frame.step == row.step) & (frame.target == row.target) & (frame.metric == "singular_values")]
        assert row.value == pytest.approx(nuclear_over_top(s.sort_values("index").value.to_numpy()), rel=1e-12)

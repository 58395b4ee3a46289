"""Sweep figures say what the data show: protocol-aware words, seeds per point, the baseline band, the y span;
``sliding(..., epochs_after=)`` and the warning for grids that give late windows fewer clean epochs."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sized
from typing import Any, cast

import matplotlib
import numpy as np
import pytest
from conftest import SWEEP_CPU as CPU
from conftest import map_norms, pathway_data, pathway_model
from matplotlib.collections import PolyCollection

import lightning_critical as lc
from lightning_critical.plots.critical_period import MIN_SPAN
from lightning_critical.sweep.grids import CleanEpochsWarning, clean_epochs, uneven_clean_epochs

matplotlib.use("Agg")


def _sweep(out: Any, **kw: Any) -> Any:
    args: dict[str, Any] = dict(deficit=lambda window: lc.PathwayDeficit("b", window), metrics=map_norms,
                                windows=lc.sweep.removal([1, 2]), trainer={"max_epochs": 3, **CPU}, seeds=[0, 1],
                                out=str(out), backend="serial", tensorboard=False, plot=False, progress=False)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CleanEpochsWarning)
        return lc.sweep.run(pathway_model, pathway_data, **args)


def dmf(seed: int) -> Any:
    return lc.models.DeepMatrixFactorization(size=10, depth=2, lr=0.5, seed=seed)


def pretrain_until(window: Any) -> Any:
    return lc.TaskSwitch({window.start: "pretrain", window.end: "target"})


@pytest.fixture(scope="module")
def tables(tmp_path_factory: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("figures")
    switch_data = functools.partial(lc.data.MatrixCompletionDataModule, size=10, n_observed=40,
                                    tasks={"target": 1, "pretrain": 3})
    return {
        "removal": _sweep(root / "removal"),
        "sliding": _sweep(root / "sliding", windows=lc.sweep.sliding([0, 1], length=1)),
        "one_seed": _sweep(root / "one", seeds=[0]),
        "switch": lc.sweep.run(dmf, switch_data, deficit=pretrain_until,
                               windows=lc.sweep.removal([2, 4], epochs_after=3), metrics="train_loss", trainer=CPU,
                               seeds=[0, 1], out=str(root / "switch"), backend="serial", tensorboard=False,
                               plot=False, progress=False),
    }


def _texts(fig: Any) -> list[str]:
    ax = fig.axes[0]
    return [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *ax.get_legend_handles_labels()[1]]


def _bands(ax: Any) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_removal_curve_names_what_t_means_the_seeds_and_draws_the_baseline_band(tables):
    table = tables["removal"]
    assert (table.attrs["kind"], table.attrs["intervention"]) == ("removal", "deficit")
    fig = lc.plots.plot_critical_period_curve(table, "norm_b")
    ax = fig.axes[0]
    assert ax.get_title().splitlines() == ["Final norm_b vs deficit end T (removal)",
                                           "mean ± s.e., n = 2 seeds per point"]
    assert ax.get_xlabel() == "deficit removed at epoch T"
    assert ax.get_legend_handles_labels()[1] == ["deficit in [0, T)", "no deficit"]
    base = lc.sweep.summarize(table, "norm_b").iloc[0]
    assert base["baseline"] and base["sem"] > 0
    spans = [p.get_path().get_extents(p.get_transform() - ax.transData) for p in ax.patches]
    assert [(round(b.y0, 9), round(b.y1, 9)) for b in spans] == [
        (round(base["mean"] - base["sem"], 9), round(base["mean"] + base["sem"], 9))]  # the baseline's band
    assert len(_bands(ax)) == 1  # the curve's ± s.e. band


def test_sliding_curve_names_the_onset_and_the_window_length(tables):
    fig = lc.plots.plot_critical_period_curve(tables["sliding"], "norm_b")
    title, xlabel, _, *legend = _texts(fig)
    assert title.splitlines()[0] == "Final norm_b vs deficit onset k (sliding window, length 1)"
    assert xlabel == "deficit onset k (epoch; window length 1)"
    assert legend == ["deficit in [k, k + 1)", "no deficit"]


def test_task_switch_sweep_is_called_a_task_switch_never_a_deficit(tables):
    table = tables["switch"]
    assert table.attrs["intervention"] == "task switch"
    fig = lc.plots.plot_critical_period_curve(table, "train_loss")
    texts = _texts(fig)
    assert texts[0].splitlines()[0] == "Final train_loss vs switch time T (removal)"
    assert texts[1] == "task switched at epoch T"
    assert texts[3:] == ["task switch at T", "no task switch"]
    assert not [t for t in texts if "deficit" in t or "ritical period" in t]


def test_a_table_read_back_stays_neutral(tables):
    loaded = lc.sweep.load(tables["removal"].attrs["out"])
    assert "intervention" not in loaded.attrs  # the store does not say what the windows held
    texts = _texts(lc.plots.plot_critical_period_curve(loaded, "norm_b"))
    assert texts[0].splitlines()[0] == "Final norm_b vs intervention end T (removal)"
    assert texts[1] == "intervention ends at epoch T"
    assert not [t for t in texts if "deficit" in t or "ritical period" in t]


def test_one_seed_draws_no_error_bars_and_says_so(tables):
    fig = lc.plots.plot_critical_period_curve(tables["one_seed"], "norm_b")
    ax = fig.axes[0]
    assert ax.get_title().splitlines()[1] == "n = 1 seed per point: no error bars"
    assert _bands(ax) == [] and len(ax.patches) == 0  # neither the curve nor the baseline has a band
    assert len(ax.lines) == 2


def test_the_y_axis_spans_at_least_a_tenth_of_the_baseline(tables):
    flat = tables["one_seed"].copy()
    flat.attrs.update(tables["one_seed"].attrs)
    flat["val_acc"] = [0.981, 0.975, 0.984]  # the user's case: a flat one-seed result near 0.98
    flat.attrs["metrics"] = ["val_acc"]
    low, high = lc.plots.plot_critical_period_curve(flat, "val_acc").axes[0].get_ylim()
    assert high - low == pytest.approx(MIN_SPAN * 0.981)
    assert low < 0.975 and high > 0.984 and (low + high) / 2 == pytest.approx((0.975 + 0.984) / 2, abs=2e-3)
    wide = flat.assign(val_acc=[0.98, 0.5, 0.7])  # a real effect keeps matplotlib's own limits
    low, high = lc.plots.plot_critical_period_curve(wide, "val_acc").axes[0].get_ylim()
    assert low < 0.5 and 0.98 < high < 1.02


def test_seed_counts_that_differ_are_shown_as_a_range(tables):
    table = tables["removal"].copy()
    table.attrs.update(tables["removal"].attrs)
    table.loc[table.index[-1], "norm_b"] = np.nan
    title = lc.plots.plot_critical_period_curve(table, "norm_b").axes[0].get_title()
    assert title.splitlines()[1] == "mean ± s.e., n = 1-2 seeds per point (one seed: no error bar)"


def test_the_summary_carries_the_protocol(tables):
    summary = lc.sweep.summarize(tables["switch"], "train_loss")
    assert {k: summary.attrs[k] for k in ("kind", "intervention", "unit", "x")} == {
        "kind": "removal", "intervention": "task switch", "unit": "epoch", "x": "window_end"}


# -- sliding(epochs_after=) and the clean-epoch warning -------------------------------------------
def test_sliding_with_epochs_after_gives_every_window_the_same_clean_epochs():
    grid = lc.sweep.sliding([0, 2, 5], length=2, epochs_after=3)
    assert [(e.label(), e.max_epochs) for e in grid] == [("baseline", 10), ("w0-2", 5), ("w2-4", 7), ("w5-7", 10)]
    assert clean_epochs(grid, max_epochs=99) == {"w0-2": 3, "w2-4": 3, "w5-7": 3}
    with pytest.raises(ValueError, match=r"epochs_after=3 needs unit='epoch', not unit='step'"):
        lc.sweep.sliding([0, 10], length=5, unit="step", epochs_after=3)
    with pytest.raises(ValueError, match="epochs_after"):
        lc.sweep.sliding([0], length=1, epochs_after=0)


def test_the_clean_epoch_warning_names_the_windows_and_the_remedy():
    with pytest.warns(CleanEpochsWarning) as caught:
        uneven_clean_epochs(lc.sweep.sliding([0, 2], length=2), max_epochs=6)
    message = str(caught[0].message)
    assert "max_epochs=6 (w0-2: 4, w2-4: 2 clean epochs after the window)" in message
    assert "lc.sweep.sliding(..., epochs_after=N)" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert uneven_clean_epochs(lc.sweep.sliding([0, 2], length=2, epochs_after=2), max_epochs=6) is None
        assert uneven_clean_epochs(lc.sweep.removal([2, 4], epochs_after=2), max_epochs=6) is None
        assert uneven_clean_epochs(lc.sweep.sliding([1], length=2), max_epochs=6) is None  # one window
        assert uneven_clean_epochs(lc.sweep.sliding([0, 100], length=50, unit="step"), max_epochs=6) is None


def test_a_sweep_warns_once_before_training_and_epochs_after_sets_every_runs_length(tmp_path):
    built: list[int] = []

    def model(seed: int) -> Any:
        built.append(len([w for w in caught if issubclass(w.category, CleanEpochsWarning)]))
        return pathway_model(seed)

    kw: dict[str, Any] = dict(deficit=lambda window: lc.PathwayDeficit("b", window), metrics=map_norms, seeds=[0],
                              backend="serial", tensorboard=False, plot=False, progress=False, preflight=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lc.sweep.run(model, pathway_data, windows=lc.sweep.sliding([0, 1], length=1), trainer={"max_epochs": 3, **CPU},
                     out=str(tmp_path / "fixed"), **kw)
    warned = [w for w in caught if issubclass(w.category, CleanEpochsWarning)]
    assert len(warned) == 1 and built and set(built) == {1}  # once, before the first model was built
    assert warned[0].filename == __file__  # points at the user's call
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = lc.sweep.run(model, pathway_data, windows=lc.sweep.sliding([0, 1], length=1, epochs_after=2),
                             trainer=CPU, out=str(tmp_path / "after"), **kw)
    assert not [w for w in caught if issubclass(w.category, CleanEpochsWarning)]
    assert dict(zip(table["label"], table["epochs"], strict=True)) == {
        "baseline_seed0_4ep": 4, "w0-1_seed0": 3, "w1-2_seed0": 4}  # onset + 1 + 2; the baseline as the latest


def test_a_table_without_runs_draws_an_empty_curve_and_says_so(tables):
    empty = tables["removal"].iloc[:0]
    ax = lc.plots.plot_critical_period_curve(empty, "norm_b").axes[0]
    assert ax.get_title().splitlines()[1] == "no finished run with a finite value"
    assert [len(cast(Sized, line.get_xdata())) for line in ax.lines] == [0]

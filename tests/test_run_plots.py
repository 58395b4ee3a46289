"""Figures of a user's own run, from the files a real fit leaves in its log directory."""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import TwoBranchNet, make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.cli import main
from lightning_critical.plots.run_files import windows_from_indicator

TensorBoardLogger = pl.loggers.TensorBoardLogger

TARGETS = ["left.0.weight", "left.2.weight", "right.0.weight", "right.2.weight", "head.weight"]
LAYERS = ["left.0", "left.2", "right.0", "right.2", "head"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 6-epoch fit (4 steps an epoch) with the right branch frozen in epochs [2, 4) = steps [8, 16)."""

    pl.seed_everything(0, verbose=False)
    root = tmp_path_factory.mktemp("runs")
    callbacks = [lc.PathwayDeficit("right", (2, 4), mode="freeze"), lc.SpectralMonitor(every_n_steps=2),
                 lc.FisherMonitor(num_batches=1)]
    trainer = make_trainer(max_epochs=6, logger=TensorBoardLogger(str(root), name="run"), callbacks=callbacks)
    trainer.fit(TwoBranchNet())
    return str(trainer.log_dir)


def _span(patch) -> tuple[float, float]:
    """The x extent of an ``axvspan`` patch in data coordinates (a Rectangle or, in older matplotlib, a Polygon)."""
    xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
    return float(xs.min()), float(xs.max())


def test_load_run_reads_both_histories_and_the_deficit_window(run_dir):
    run = lc.plots.load_run(run_dir)
    assert run.windows == {"freeze/right": [(8, 16)]}
    assert run.steps_per_epoch == 4
    assert sorted(run.spectral.target.unique()) == sorted(TARGETS)
    assert sorted(run.spectral.step.unique()) == list(range(0, 25, 2))
    assert set(run.fisher.target) == {*LAYERS, "total"}
    assert sorted(os.path.basename(f) for f in run.files) == ["fisher_history.csv", "spectral_history.csv"]


def test_metric_over_steps_draws_each_layer_and_shades_the_window(run_dir):
    fig = lc.plots.metric_over_steps(run_dir, "effective_rank")
    ax = fig.axes[0]
    assert ax.get_title() == "effective_rank" and ax.get_xlabel() == "optimizer step"
    assert [line.get_label() for line in ax.lines] == TARGETS
    history = pd.read_csv(os.path.join(run_dir, "spectral_history.csv"))
    expected = history[(history.metric == "effective_rank") & (history.target == "right.0.weight")]
    line = ax.lines[TARGETS.index("right.0.weight")]
    np.testing.assert_array_equal(np.asarray(line.get_xdata(), float), expected.step)
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), expected.value)
    assert [_span(p) for p in ax.patches] == [(8.0, 16.0)]
    legend = ax.get_legend()
    assert legend is not None and legend.get_texts()[-1].get_text() == "deficit freeze/right"
    # explicit windows replace the event file's
    ax = lc.plots.metric_over_steps(run_dir, "stable_rank", windows={"blur": [(2, 4), (20, 22)]},
                                    targets="left.*").axes[0]
    assert [_span(p) for p in ax.patches] == [(2.0, 4.0), (20.0, 22.0)]
    assert [line.get_label() for line in ax.lines] == ["left.0.weight", "left.2.weight"]


def test_indexed_metric_draws_every_index_or_the_one_asked_for(run_dir):
    ax = lc.plots.metric_over_steps(run_dir, "singular_values", targets="head.weight").axes[0]
    assert len(ax.lines) == 3  # head is 3 x 4
    ax = lc.plots.metric_over_steps(run_dir, "singular_values", index=0).axes[0]
    assert len(ax.lines) == len(TARGETS) and ax.get_title() == "singular_values, index 0"


def test_fisher_over_epochs_draws_each_layer_and_the_window_in_epochs(run_dir):
    ax = lc.plots.fisher_over_epochs(run_dir).axes[0]
    assert [line.get_label() for line in ax.lines] == [*LAYERS, "total"]
    assert np.asarray(ax.lines[0].get_xdata(), float).tolist() == [0, 1, 2, 3, 4, 5]
    fisher = pd.read_csv(os.path.join(run_dir, "fisher_history.csv"))
    np.testing.assert_allclose(np.asarray(ax.lines[-1].get_ydata(), float), fisher[fisher.target == "total"].value)
    assert [_span(p) for p in ax.patches] == [(2.0, 4.0)]
    assert ax.get_xlabel() == "epoch"


def test_spectra_at_steps_one_panel_per_target_one_line_per_step(run_dir):
    fig = lc.plots.spectra_at_steps(run_dir, steps=[0, 8, 25])
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == TARGETS
    right = panels[TARGETS.index("right.0.weight")]
    assert [line.get_label() for line in right.lines] == ["step 0", "step 8 (deficit freeze/right)", "step 24"]
    history = pd.read_csv(os.path.join(run_dir, "spectral_history.csv"))
    s = history[(history.metric == "singular_values") & (history.target == "right.0.weight") & (history.step == 8)]
    np.testing.assert_allclose(np.asarray(right.lines[1].get_ydata(), float), s.value)
    np.testing.assert_array_equal(np.asarray(right.lines[1].get_xdata(), float), np.arange(1, 7))


def test_plot_command_writes_every_figure(run_dir, tmp_path, capsys):
    assert main(["plot", run_dir]) == 0
    names = {"effective_rank", "stable_rank", "spectral_norm", "frobenius_norm", "singular_values", "fisher_trace",
             "spectra"}
    figures = os.path.join(run_dir, "figures")
    assert set(os.listdir(figures)) == {f"{n}.png" for n in names}
    for name in names:
        image = matplotlib.image.imread(os.path.join(figures, f"{name}.png"))
        assert image.shape[0] > 200 and image.shape[1] > 400, name
        assert image[..., :3].std() > 0.05, name  # not blank
    assert "fisher_trace" in capsys.readouterr().out
    out = tmp_path / "figs"
    assert main(["plot", run_dir, "--out", str(out), "--metrics", "stable_rank", "--window", "x=0:4"]) == 0
    assert sorted(os.listdir(out)) == ["fisher_trace.png", "spectra.png", "stable_rank.png"]
    # the run directory of a run without a deficit window still plots; so do explicit windows
    assert lc.plots.plot_run(run_dir, out=str(out), metrics=["spectral_norm"], windows={})["spectral_norm"]


def test_a_directory_without_history_says_what_was_looked_for(run_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="holds no monitor history.*spectral_history.csv / fisher_history.csv"):
        lc.plots.load_run(tmp_path)
    parent = os.path.dirname(run_dir)
    with pytest.raises(ValueError, match=r"It holds runs of its own: \['version_0'\]"):
        lc.plots.load_run(parent)
    with pytest.raises(ValueError, match="is not a directory"):
        lc.plots.load_run(tmp_path / "missing")
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no monitor history" in capsys.readouterr().err
    unknown_metric = r"metric='alpha' is not valid; choose one of \(.*\) \(the metrics of the spectral history\)"
    with pytest.raises(ValueError, match=unknown_metric):
        lc.plots.metric_over_steps(run_dir, "alpha")
    with pytest.raises(ValueError, match=r"targets='conv\*' matches no target"):
        lc.plots.fisher_over_epochs(run_dir, targets="conv*")
    with pytest.raises(ValueError, match="lacks the columns"):
        lc.plots.metric_over_steps(pd.DataFrame({"step": [0]}), "x")
    with pytest.raises(SystemExit):
        main(["plot", run_dir, "--window", "freeze/b"])


def test_windows_from_indicator_merges_resumed_duplicates_and_several_windows():
    points = [(0, 0.0), (3, 0.0), (4, 1.0), (9, 1.0), (10, 0.0), (9, 1.0), (20, 0.0), (29, 0.0), (30, 1.0), (40, 1.0)]
    assert windows_from_indicator(points) == [(4, 10), (30, 40)]
    assert windows_from_indicator([(0, 0.0), (50, 0.0)]) == []


def test_many_targets_get_a_note_instead_of_a_legend():
    steps = np.repeat([0, 10], 30)
    h = pd.DataFrame({"step": steps, "epoch": 0, "target": [f"layer{i}" for i in range(30)] * 2,
                      "metric": "stable_rank", "index": -1, "value": np.linspace(1, 2, 60)})
    ax = lc.plots.metric_over_steps(h, "stable_rank").axes[0]
    assert len(ax.lines) == 30 and ax.get_legend() is None
    assert "30 targets" in ax.texts[0].get_text()

"""What a sweep shows: per-run TensorBoard hparams and whole-run logs, the summary, the curve, progress."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import SWEEP_CPU as CPU
from conftest import map_norms, pathway_data, pathway_model, read_tensorboard

import lightning_critical as lc
from lightning_critical._tensorboard_hparams import key_of


def monitors():
    return [lc.SpectralMonitor(targets="maps", every_n_steps=1, metrics=("mode_strength",), histograms=False)]


def _sweep(out, share=True, **kw):
    args = dict(model=pathway_model, datamodule=pathway_data,
                deficit=lambda window: lc.PathwayDeficit("b", window, mode="freeze"),
                windows=lc.sweep.removal([2, 4]), metrics=["train_loss", map_norms], seeds=[0, 1], callbacks=monitors,
                trainer={"max_epochs": 6, "log_every_n_steps": 1, **CPU}, out=str(out), backend="serial",
                share_prefixes=share, progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    return _sweep(root / "shared"), _sweep(root / "independent", share=False, plot=False)


def _hparams(log_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = read_tensorboard(log_dir)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key_of(key)] = getattr(value, kind)  # a sweep's columns are named "<position> <key>"
    return acc, out


def test_every_run_logs_its_window_seed_and_final_metrics_as_hparams(sweeps):
    table, _ = sweeps
    assert len(table) == 6 and (table.status == "ok").all()
    for _, row in table.iterrows():
        acc, hp = _hparams(row.log_dir)
        assert hp["seed"] == row.seed
        assert hp["baseline"] == row.baseline
        expected = (-1, -1) if row.baseline else (row.window_start, row.window_end)
        assert (hp["window_start"], hp["window_end"]) == expected
        assert hp["window"] == row.window and hp["run_id"] == row.run_id
        final = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("final/")}
        assert final == pytest.approx({"final/train_loss": row.train_loss, "final/norm_a": row.norm_a,
                                       "final/norm_b": row.norm_b}, rel=1e-6)
        assert "hp_metric" not in acc.Tags()["scalars"]


def test_a_branched_runs_logs_show_its_whole_run(sweeps):
    shared, independent = sweeps
    branched = shared[shared.branch_epoch > 0]
    assert len(branched) >= 2
    for _, row in branched.iterrows():
        twin = independent.set_index("label").loc[row.label]
        mine, theirs = read_tensorboard(row.log_dir), read_tensorboard(twin.log_dir)
        for tag in ("train_loss", "mode_strength/b/0"):
            a = [(e.step, e.value) for e in mine.Scalars(tag)]
            b = [(e.step, e.value) for e in theirs.Scalars(tag)]
            assert a == b, tag  # parent's steps before the branch, then its own: the same as from scratch
        # the 0/1 deficit marker: a resumed deficit does not re-log the sharp edge one step before the branch
        deficit = {(e.step, e.value) for e in mine.Scalars("deficit/freeze/b")}
        assert deficit <= {(e.step, e.value) for e in theirs.Scalars("deficit/freeze/b")} and (0, 1.0) in deficit
        assert [e.step for e in mine.Scalars("train_loss")] == list(range(6))
        history = pd.read_csv(os.path.join(row.log_dir, "spectral_history.csv"))
        pd.testing.assert_frame_equal(history, pd.read_csv(os.path.join(twin.log_dir, "spectral_history.csv")))
        assert history.step.min() == 0


def test_summary_curve_png_and_tensorboard_image(sweeps):
    table, _ = sweeps
    summary = lc.sweep.summarize(table, "norm_b")
    assert summary.window.tolist() == ["none", "[0, 2) epochs", "[0, 4) epochs"]
    assert summary.n_seeds.tolist() == [2, 2, 2]
    assert summary["drop"].iloc[0] == 0
    assert (summary["drop"].iloc[1:] > 0).all()  # freezing pathway b leaves it smaller
    assert summary["drop_sem"].iloc[1:].notna().all()
    out = table.attrs["out"]
    assert os.path.getsize(os.path.join(out, "critical_period.png")) > 10_000
    acc = read_tensorboard(os.path.join(out, "tensorboard", "summary"))
    assert acc.Tags()["images"] == ["critical_period/train_loss"]
    assert table.attrs["epochs_trained"] < table.attrs["epochs_independent"] == 36


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys):
    _sweep(tmp_path / "quiet", seeds=[0], windows=[(0, 1)], tensorboard=False, plot=False, progress=None,
           callbacks=None)
    assert "run/s" not in capsys.readouterr().err  # pytest's stderr is not a terminal
    _sweep(tmp_path / "bar", seeds=[0], windows=[(0, 1)], tensorboard=False, plot=False, progress=True, callbacks=None)
    err = capsys.readouterr().err
    assert "sweep" in err and "2/2" in err


def test_test_metrics_after_training(tmp_path):
    table = lc.sweep.run(
        lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed), lambda: lc.data.DigitsDataModule(subset=48),
        deficit=lc.InputDeficit("blur", window=(0, 1)), windows=[(0, 1)], metrics=["test_acc", "val_acc"], test=True,
        trainer={"max_epochs": 2, **CPU}, out=str(tmp_path), backend="serial", progress=False, plot=False)
    assert (table.status == "ok").all() and table.test_acc.between(0, 1).all()
    acc = read_tensorboard(table.log_dir.iloc[1])
    assert "test_acc" in acc.Tags()["scalars"] and "final/test_acc" in acc.Tags()["scalars"]

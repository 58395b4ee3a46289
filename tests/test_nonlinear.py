"""The nonlinear examples run end to end (small settings) and show what they claim."""

from __future__ import annotations

import importlib.util
import os

import pandas as pd
import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("nonlinearity, late_tolerance", [("tanh", 0.01), ("relu", 0.1)])
def test_nonlinear_pathways_early_deficit_winner_take_all_late_harmless(tmp_path, nonlinearity, late_tolerance):
    # The paper's schedule (1000 epochs at lr 0.01, deficits of 150 epochs at onset 0 or 750)
    # at twice the learning rate and half the epochs: the same gradient-flow time, half the cost.
    example = load_example("nonlinear_pathways")
    _, shares = example.main([
        "--out", str(tmp_path), "--nonlinearity", nonlinearity, "--lr", "0.02", "--epochs", "500", "--length", "75",
        "--late", "375",
    ])
    share = shares.set_index("condition").share_b
    assert share["early deficit"] < 0.05  # pathway a took (almost) everything
    # a late deficit leaves (almost) no trace; ReLU moves a little (a 0.04 shift of share)
    assert abs(share["late deficit"] - share["no deficit"]) < late_tolerance
    assert share["no deficit"] > 0.3
    assert os.path.getsize(tmp_path / "nonlinear_pathways.png") > 10_000
    assert set(shares.columns) >= {"nonlinearity", "condition", "share_b"}


QUICK = ["--seeds", "2", "--removal", "0", "1", "2", "--epochs-after", "1", "--onsets", "0", "1", "--length", "1",
         "--epochs", "3", "--subset", "100", "--channels", "4", "8", "--backend", "serial"]


def _paired(table, early_mask, late_mask):
    """Per-seed accuracy difference early - late, as the example should compute it."""
    acc = table.set_index("seed").test_acc
    diff = acc[early_mask.to_numpy()] - acc[late_mask.to_numpy()]
    return diff.mean(), diff.std(ddof=1) / len(diff) ** 0.5


def test_digits_blur_pipeline(tmp_path):
    example = load_example("digits_blur")
    out = example.main(["--out", str(tmp_path), *QUICK])
    removal, sliding, effects, fisher = out["removal"], out["sliding"], out["effects"], out["fisher"]
    assert (removal.status == "ok").all() and (sliding.status == "ok").all()
    # removal: blur in [0, k) then one clean epoch; k = 0 is the no-deficit run
    pairs = sorted(zip(removal.window_end.fillna(0), removal.epochs, strict=True))
    assert pairs == [(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
    assert removal.attrs["epochs_trained"] < removal.attrs["epochs_independent"]  # the blurred prefix is shared
    assert sorted(sliding.window_start.fillna(-1)) == [-1, -1, 0, 0, 1, 1] and (sliding.epochs == 3).all()
    assert removal.test_acc.between(0, 1).all() and sliding.test_acc.between(0, 1).all()
    # the effects are paired by seed: removal at 0 vs at 2, sliding onset 1 vs onset 0
    effect = effects.set_index("curve")
    mean, sem = _paired(removal.sort_values("seed"), removal.sort_values("seed").baseline,
                        removal.sort_values("seed").window_end == 2)
    assert effect.loc["removal", ["early", "late", "n_seeds"]].tolist() == [0, 2, 2]
    assert effect.loc["removal", "difference"] == pytest.approx(mean)
    assert effect.loc["removal", "sem"] == pytest.approx(sem)
    runs = sliding[~sliding.baseline].sort_values("seed")
    mean, _ = _paired(runs, runs.window_start == 1, runs.window_start == 0)
    assert effect.loc["sliding", "difference"] == pytest.approx(mean)
    assert set(out["summary"].curve) == {"removal", "sliding"} and (out["summary"].n_seeds == 2).all()
    # the Fisher trace of one no-deficit run of --epochs epochs, every layer, each epoch once
    assert set(fisher.target) == {"conv1", "conv2", "fc", "total"}
    for _, layer in fisher.groupby("target"):
        assert layer.epoch.tolist() == [0, 1, 2]
    for name in ("removal.csv", "sliding.csv", "summary.csv", "effects.csv", "fisher.csv"):
        assert len(pd.read_csv(tmp_path / name)) > 0
    assert os.path.getsize(tmp_path / "digits_blur.png") > 20_000
    # running again reuses the finished runs: nothing is appended to the sweeps' result stores
    stores = [tmp_path / curve / "results.jsonl" for curve in ("removal", "sliding")]
    lines = [p.read_text().count("\n") for p in stores]
    again = example.main(["--out", str(tmp_path), *QUICK, "--fisher-batches", "0"])
    assert [p.read_text().count("\n") for p in stores] == lines
    assert again["removal"].test_acc.tolist() == removal.test_acc.tolist()


def test_digits_blur_effects_pair_runs_by_seed():
    # seed 1 is 10 points better everywhere: pairing removes it, so the s.e. is that of the differences only
    example = load_example("digits_blur")
    nan = float("nan")
    removal = pd.DataFrame({
        "seed": [0, 1, 0, 1, 0, 1], "baseline": [True, True, False, False, False, False],
        "window_start": [nan, nan, 0, 0, 0, 0], "window_end": [nan, nan, 4, 4, 8, 8],
        "test_acc": [0.90, 1.00, 0.88, 0.98, 0.85, 0.96], "status": ["ok"] * 6,
    })
    sliding = removal.assign(window_start=[nan, nan, 0, 0, 6, 6], window_end=[nan, nan, 4, 4, 10, 10],
                             test_acc=[0.90, 1.00, 0.86, 0.95, 0.89, 0.99])
    effects = example.early_late_effects(removal, sliding).set_index("curve")
    assert effects.loc["removal", ["early", "late"]].tolist() == [0, 8]
    assert effects.loc["removal", "difference"] == pytest.approx(0.045)  # (0.05 + 0.04) / 2
    assert effects.loc["removal", "sem"] == pytest.approx(0.005)  # std([0.05, 0.04]) / sqrt(2)
    assert effects.loc["sliding", ["early", "late"]].tolist() == [0, 6]
    assert effects.loc["sliding", "difference"] == pytest.approx(0.035)  # (0.03 + 0.04) / 2
    assert effects.loc["sliding", "z"] == pytest.approx(0.035 / 0.005)
    drops = example.paired_drops(sliding)
    assert drops.window_start.tolist() == [0, 6] and drops["mean"].tolist() == pytest.approx([0.045, 0.01])


def test_digits_blur_reads_cifar_files(tmp_path):
    from test_digits_cifar import write_cifar_batches

    write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py", n_per_file=20)
    example = load_example("digits_blur")
    out = example.main([
        "--out", str(tmp_path / "out"), "--cifar-root", str(tmp_path / "cifar"), "--seeds", "1", "--removal", "1",
        "--epochs-after", "1", "--onsets", "0", "--length", "1", "--epochs", "2", "--channels", "4", "8",
        "--backend", "serial",
    ])
    removal, sliding = out["removal"], out["sliding"]
    assert removal.window_end.fillna(0).tolist() == [0, 1] and removal.epochs.tolist() == [1, 2]
    assert sliding.window_start.fillna(-1).tolist() == [-1, 0]
    assert (removal.status == "ok").all() and removal.test_acc.between(0, 1).all()
    assert out["fisher"].epoch.max() == 1 and os.path.getsize(tmp_path / "out" / "digits_blur.png") > 20_000


def test_add_to_your_script_leaves_the_model_untouched(tmp_path):
    example = load_example("add_to_your_script")
    out = example.main(["--out", str(tmp_path), "--epochs", "9", "--subset", "100"])
    model = out["model"]
    assert "training_step" not in model.__dict__
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    spectra = out["spectral"]
    assert set(spectra.target) == {"features.0.weight", "features.3.weight", "head.weight"}
    assert {"singular_values", "effective_rank", "stable_rank"} <= set(spectra.metric)
    assert sorted(out["fisher"].epoch.unique()) == list(range(9))
    events = [f for f in os.listdir(out["log_dir"]) if f.startswith("events.out.tfevents")]
    assert events

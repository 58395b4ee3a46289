"""The nonlinear examples run end to end (small settings) and show what they claim."""

from __future__ import annotations

import importlib.util
import os

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


def test_digits_blur_pipeline(tmp_path):
    example = load_example("digits_blur")
    results, curves, fisher = example.main([
        "--out", str(tmp_path), "--removal", "0", "2", "--post-epochs", "2", "--seeds", "1", "--subset", "200",
        "--factor", "4",
    ])
    assert sorted(results.removal_epoch) == [-1, 0, 2]
    assert results.epochs.tolist() == [2, 4, 4]
    assert curves.epoch.tolist() == [0, 1, 2, 3]
    assert set(fisher.target) == {"conv1", "conv2", "fc", "total"}
    assert sorted(fisher.removal_epoch.unique()) == [0, 2]  # the no-deficit run and the middle removal
    for name in ("results.csv", "curves.csv", "fisher.csv", "digits_blur.png"):
        assert os.path.getsize(tmp_path / name) > 0


def test_digits_blur_reads_cifar_files(tmp_path):
    from test_digits_cifar import write_cifar_batches

    write_cifar_batches(tmp_path / "cifar" / "cifar-10-batches-py", n_per_file=20)
    example = load_example("digits_blur")
    results, _, _ = example.main([
        "--out", str(tmp_path / "out"), "--cifar-root", str(tmp_path / "cifar"), "--removal", "1",
        "--post-epochs", "1", "--seeds", "1",
    ])
    assert results.removal_epoch.tolist() == [1, -1] and results.test_acc.between(0, 1).all()


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

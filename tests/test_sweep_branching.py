"""Shared prefixes are exact: a branched run ends bitwise equal to the same run trained from scratch."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import SWEEP_CPU as CPU
from conftest import pathway_data, pathway_model

import lightning_critical as lc


def pathway_share(trainer, module):
    maps = module.end_to_end_maps()
    return {"norm_a": float(maps["a"].norm()), "norm_b": float(maps["b"].norm())}


def cnn_model(seed):
    # SGD with momentum 0.9, weight decay and an ExponentialLR scheduler (lr_decay)
    return lc.models.SmallCNN(1, 10, channels=(4, 8), lr=0.05, momentum=0.9, weight_decay=5e-3, lr_decay=0.8, seed=seed)


def cnn_data():
    return lc.data.DigitsDataModule(batch_size=16, subset=80, val_fraction=0.2)


def _models(table):
    out = {}
    for _, row in table.iterrows():
        path = os.path.join(table.attrs["out"], "models", f"{row['label']}.pt")
        out[row["window"]] = torch.load(path)
    return out


def _assert_identical(shared, independent, metrics):
    assert list(shared["window"]) == list(independent["window"])
    assert (shared["status"] == "ok").all() and (independent["status"] == "ok").all(), shared["error"].tolist()
    for metric in metrics:
        assert shared[metric].tolist() == independent[metric].tolist(), metric  # exact, not approximate
    a, b = _models(shared), _models(independent)
    for window in a:
        for name in a[window]:
            assert torch.equal(a[window][name], b[window][name]), (window, name)


def _sweep(tmp_path, name, share, **kw):
    return lc.sweep.run(out=str(tmp_path / name), backend="serial", share_prefixes=share, save_model=True,
                        tensorboard=False, plot=False, progress=False, **kw)


@pytest.mark.parametrize("grid", [lc.sweep.removal([2, 4, 6]), lc.sweep.sliding([0, 2, 5], length=2)],
                         ids=["removal", "sliding"])
def test_branched_pathway_runs_equal_independent_runs(tmp_path, grid):
    kw = dict(model=pathway_model, datamodule=pathway_data,
              deficit=lambda window: lc.PathwayDeficit("b", window, mode="freeze"),
              windows=grid, metrics=["train_loss", pathway_share],
              trainer={"max_epochs": 8, "log_every_n_steps": 1, **CPU})
    shared = _sweep(tmp_path, "shared", True, **kw)
    independent = _sweep(tmp_path, "independent", False, **kw)
    _assert_identical(shared, independent, ["train_loss", "norm_a", "norm_b"])
    assert shared.attrs["epochs_trained"] < shared.attrs["epochs_independent"] == independent.attrs["epochs_trained"]
    assert shared["parent"].notna().sum() >= 2
    assert (shared["epochs_trained"] + shared["branch_epoch"] == shared["epochs"]).all()
    # the deficit really mattered: frozen pathways end smaller than in the baseline
    base = shared[shared.baseline].norm_b.item()
    assert shared[~shared.baseline].norm_b.min() < base


@pytest.mark.parametrize("grid", [lc.sweep.removal([1, 2, 3]), lc.sweep.sliding([0, 1, 2], length=1)],
                         ids=["removal", "sliding"])
def test_branched_shuffled_cnn_runs_equal_independent_runs(tmp_path, grid):
    # shuffled minibatches, momentum, weight decay, ExponentialLR, a validation loop, InputDeficit blur
    kw = dict(model=cnn_model, datamodule=cnn_data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
              windows=grid, metrics=["val_loss", "val_acc", "train_loss"], trainer={"max_epochs": 4, **CPU})
    shared = _sweep(tmp_path, "shared", True, **kw)
    independent = _sweep(tmp_path, "independent", False, **kw)
    _assert_identical(shared, independent, ["val_loss", "val_acc", "train_loss"])
    assert shared.attrs["epochs_trained"] < shared.attrs["epochs_independent"]
    # blur changed training: not all final validation losses coincide
    assert shared["val_loss"].nunique() > 1

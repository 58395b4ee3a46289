"""Bad input to lc.sweep.run is a clear error before any training: it names the argument and what is valid."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical.sweep.backends import ray_available

CPU = {"accelerator": "cpu", "devices": 1}


def pathway_model(seed):
    return lc.models.MultiPathwayLinearNet(depth=2, width=12, lr=0.05, seed=seed)


def pathway_data():
    return lc.data.HierarchicalDataModule()


def freeze_b(window):
    return lc.PathwayDeficit("b", window, mode="freeze")


# Any-typed on purpose: the cases below pass wrong types to lc.sweep.run, which must reject them at run time.
GOOD: dict[str, Any] = dict(
    model=pathway_model, datamodule=pathway_data, deficit=freeze_b, windows=lc.sweep.removal([2]), metrics="train_loss",
    trainer={"max_epochs": 3, "log_every_n_steps": 1, **CPU}, backend="serial", tensorboard=False, plot=False,
    progress=False)

CASES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "empty explicit grid": (dict(windows=[]), ValueError, r"windows=\[\] is empty"),
    "empty removal grid": (dict(windows=lambda: lc.sweep.removal([])), ValueError, r"ends=\[\] is empty"),
    "empty sliding grid": (dict(windows=lambda: lc.sweep.sliding([], length=2)), ValueError, r"onsets=\[\] is empty"),
    "window past max_epochs": (dict(windows=lc.sweep.removal([5])), ValueError,
                               r"\[0, 5\) epochs does not fit in training \(max_epochs=3\)"),
    "sliding window past the end": (dict(windows=lc.sweep.sliding([2], length=2)), ValueError,
                                    r"\[2, 4\) epochs does not fit"),
    "step window past the end": (dict(windows=lc.sweep.removal([10], unit="step"), steps_per_epoch=1), ValueError,
                                 "the run's 3 steps"),
    "overlapping windows in one run": (dict(windows=[[(0, 2), (1, 3)]]), ValueError,
                                       r"overlapping windows \[0, 2\) epochs and \[1, 3\)"),
    "repeated ends": (dict(windows=lambda: lc.sweep.removal([1, 1])), ValueError, r"repeats \[1\]"),
    "model instance instead of factory": (dict(model="instance"), TypeError, "not a model instance"),
    "model factory returns a plain module": (dict(model=lambda seed: torch.nn.Linear(2, 2)), TypeError,
                                             "returned Linear, not a LightningModule"),
    "datamodule factory returns a dataloader": (
        dict(datamodule=lambda: DataLoader(TensorDataset(torch.zeros(2, 8)))), TypeError,
        "returned DataLoader, not a LightningDataModule"),
    "deficit factory returns no callback": (dict(deficit=lambda window: "freeze"), TypeError,
                                            "returned str, not a Lightning Callback"),
    "deficit is not callable": (dict(deficit=3), TypeError, "deficit=3 is not valid"),
    "float seed": (dict(seeds=[0, 1.5]), ValueError, r"seeds\[1\]=1.5 must be an integer >= 0, not float"),
    "string seeds": (dict(seeds="0"), ValueError, "seeds='0' is not valid"),
    "no seeds": (dict(seeds=[]), ValueError, r"seeds=\[\] is empty"),
    "repeated seeds": (dict(seeds=[1, 1]), ValueError, r"repeats \[1\]"),
    "unknown backend": (dict(backend="threads"), ValueError,
                        r"backend='threads' is not valid; choose one of \('serial', 'process', 'ray'\)"),
    "no max_epochs": (dict(trainer={"accelerator": "cpu"}), ValueError, "trainer= needs max_epochs"),
    "trainer callbacks": (dict(trainer={"max_epochs": 3, "callbacks": []}), ValueError, r"may not set \['callbacks'\]"),
    "trainer logger object": (dict(trainer={"max_epochs": 3, "logger": "tb"}), ValueError,
                              r"trainer\['logger'\]='tb' is not valid"),
    "trainer max_steps": (dict(trainer={"max_epochs": 3, "max_steps": 10}), ValueError, "max_steps.*not supported"),
    "trainer unknown key, metric functions only": (
        dict(trainer={"max_epochs": 3, "nonsense": 1, "max_epoch": 3}, metrics=lambda trainer, module: {"x": 1.0}),
        ValueError,
        r"unknown pl.Trainer arguments \['nonsense', 'max_epoch'\].*'max_epoch' did you mean \['max_epochs'"),
    "metrics empty": (dict(metrics=[]), ValueError, r"metrics=\[\] is not valid"),
    "params not taken by any factory": (dict(params={"depth": [1, 2]}), ValueError,
                                        r"params\['depth'\] is not an argument of any factory"),
    "params with an object value": (dict(params={"seed_": [object()]}), ValueError, "swept values must be numbers"),
    "plot names no metric": (dict(plot="val_acc"), ValueError,
                             r"plot='val_acc' is not valid; choose one of \('train_loss',\) \(the sweep's metrics\)"),
    "threads_per_run zero": (dict(threads_per_run=0), ValueError, "threads_per_run=0 must be an integer >= 1"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_training(tmp_path, name):
    change, error, match = CASES[name]
    kwargs = {**GOOD, "out": str(tmp_path / "out"), **change}
    if kwargs["model"] == "instance":
        kwargs["model"] = pathway_model(0)
    with pytest.raises(error, match=match):
        if callable(kwargs["windows"]):  # grid constructors that must raise themselves
            kwargs["windows"] = kwargs["windows"]()
        lc.sweep.run(**kwargs)
    assert not os.path.exists(tmp_path / "out" / "results.jsonl")
    assert not os.path.exists(tmp_path / "out" / "sweep.json")


@pytest.mark.skipif(ray_available(), reason="Ray is installed")
def test_ray_backend_without_ray_says_how_to_install_it(tmp_path):
    with pytest.raises(ImportError, match=r'pip install "lightning-critical\[ray\]"'):
        lc.sweep.run(**{**GOOD, "out": str(tmp_path), "backend": "ray"})


def test_unknown_metric_is_refused_before_training_and_lists_what_the_trial_produced(tmp_path):
    out = tmp_path / "out"
    produced = r"\['val_accuracy'\] not in trainer.callback_metrics after a trial fit.*it produced \['train_loss'\]"
    with pytest.raises(ValueError, match=produced):
        lc.sweep.run(**{**GOOD, "out": str(out), "metrics": ["val_accuracy"], "windows": lc.sweep.removal([1, 2])})
    assert not os.path.exists(out / "results.jsonl") and not os.path.exists(out / "sweep.json")


def test_unknown_metric_stops_after_the_first_run_without_preflight(tmp_path):
    out = tmp_path / "out"
    produced = r"'val_accuracy' is not in trainer.callback_metrics; this run produced \['train_loss'\]"
    with pytest.raises(ValueError, match=produced):
        lc.sweep.run(**{**GOOD, "out": str(out), "metrics": ["val_accuracy"], "windows": lc.sweep.removal([1, 2]),
                        "preflight": False})
    with open(out / "results.jsonl") as fh:
        assert len(fh.readlines()) == 1  # no further run trained
    # fixing the name in the same directory is allowed: only failed runs were there
    table = lc.sweep.run(**{**GOOD, "out": str(out)})
    assert (table.status == "ok").all()


def test_a_directory_that_is_not_a_sweep_or_holds_another_is_refused(tmp_path):
    (tmp_path / "data.txt").write_text("mine")
    with pytest.raises(lc.sweep.SweepDirectoryError, match="is not a sweep directory"):
        lc.sweep.run(**{**GOOD, "out": str(tmp_path)})
    out = tmp_path / "sweep"
    lc.sweep.run(**{**GOOD, "out": str(out)})
    with pytest.raises(lc.sweep.SweepDirectoryError, match=r"holds a different sweep(.|\n)*deficit"):
        lc.sweep.run(**{**GOOD, "out": str(out), "deficit": lambda window: lc.PathwayDeficit("a", window)})
    with open(out / "sweep.json") as fh:
        assert "freeze_b" in json.dumps(json.load(fh))  # untouched

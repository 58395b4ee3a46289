"""The option groups Study / Execution / Output: each checks its own fields, run_study is lc.sweep.run."""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import pandas as pd
import pytest

import lightning_critical as lc
from lightning_critical.sweep.study import check_together

CPU = {"accelerator": "cpu", "devices": 1}


def pathway_model(seed):
    return lc.models.MultiPathwayLinearNet(depth=2, width=12, lr=0.05, seed=seed)


def freeze_b(window):
    return lc.PathwayDeficit("b", window, mode="freeze")


STUDY: dict[str, Any] = dict(
    model=pathway_model, datamodule=lc.data.HierarchicalDataModule, deficit=freeze_b,
    windows=lc.sweep.removal([1, 2]), metrics="train_loss", trainer={"max_epochs": 3, "log_every_n_steps": 1, **CPU})


def study(**change: Any) -> lc.sweep.Study:
    return lc.sweep.Study(**{**STUDY, **change})


class PartialRunner:
    """A runner that honours nothing optional (its ``supports`` is empty); never asked to train here."""

    name, shares_prefixes, supports = "partial", False, frozenset[str]()

    def batches(self, tasks):
        return [tasks]

    def run(self, tasks):
        raise AssertionError("not reached")


STUDY_CASES: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "string seeds": (dict(seeds="0"), ValueError, "seeds='0' is not valid"),
    "repeated seeds": (dict(seeds=[2, 2]), ValueError, r"seeds=\[2, 2\] repeats \[2\]"),
    "negative seed": (dict(seeds=[-1]), ValueError, r"seeds\[0\]=-1 must be an integer >= 0"),
    "no metrics": (dict(metrics=[]), ValueError, r"metrics=\[\] is not valid"),
    "metric entry": (dict(metrics=["train_loss", 3]), ValueError, "metrics entry 3 is not valid"),
    "trainer not a dict": (dict(trainer=[3]), ValueError, r"trainer=\[3\] is not valid"),
    "trainer without max_epochs": (dict(trainer=CPU), ValueError, "trainer= needs max_epochs"),
    "trainer owns callbacks": (dict(trainer={"max_epochs": 3, "callbacks": []}), ValueError,
                               r"may not set \['callbacks'\]"),
    "window past the end": (dict(windows=[(0, 4)]), ValueError, r"\[0, 4\) epochs does not fit .*max_epochs=3"),
    "no windows": (dict(windows=None), ValueError, "windows=None is not valid"),
    "steps_per_epoch zero": (dict(steps_per_epoch=0), ValueError, "steps_per_epoch=0 must be an integer >= 1"),
    "model instance": (dict(model=pathway_model(0)), TypeError, "not a model instance"),
    "no deficit": (dict(deficit=None), TypeError, "deficit=None is not valid"),
    "callbacks as a list": (dict(callbacks=[]), TypeError, r"callbacks=\[\] is not valid"),
    "params nobody takes": (dict(params={"depth": [1, 2]}), ValueError, r"params\['depth'\] is not an argument"),
}


@pytest.mark.parametrize("name", list(STUDY_CASES))
def test_a_study_refuses_a_bad_field_when_made(name):
    change, error, match = STUDY_CASES[name]
    with pytest.raises(error, match=match):
        study(**change)


@pytest.mark.parametrize(("change", "error", "match"), [
    (dict(errors="ignore"), ValueError, r"errors='ignore' is not valid; choose one of \('record', 'raise'\)"),
    (dict(resume="keep"), ValueError, r"resume='keep' is not valid; choose one of \('refuse', 'rerun', 'reuse'\)"),
    (dict(verify="some"), ValueError, "verify='some' is not valid: choose 'first'"),
    (dict(backend="threads"), ValueError, r"backend='threads' is not valid; choose one of \('serial', 'process'"),
    (dict(backend_options=["gpu"]), TypeError, r"backend_options=\['gpu'\] is not valid"),
    (dict(threads_per_run=0), ValueError, "threads_per_run=0 must be an integer >= 1"),
    (dict(workers=0), ValueError, "workers=0 must be an integer >= 1"),
    (dict(runner=object()), TypeError, r"runner=<object object at .*> is not valid: it lacks \['name'"),
])
def test_an_execution_refuses_a_bad_field_when_made(change, error, match):
    with pytest.raises(error, match=match):
        lc.sweep.Execution(**change)


@pytest.mark.parametrize(("change", "match"), [
    (dict(out=3), "out=3 is not valid: give the sweep's directory"),
    (dict(out=""), "out='' is not valid"),
    (dict(plot=["val_acc"]), r"plot=\['val_acc'\] is not valid: give True, False or the name"),
    (dict(tensorboard="yes"), "tensorboard='yes' is not valid: give True, False or None"),
])
def test_an_output_refuses_a_bad_field_when_made(change, match):
    with pytest.raises(TypeError, match=match):
        lc.sweep.Output(**change)


def test_checks_across_groups_happen_where_they_meet():
    execution, output = lc.sweep.Execution(runner=PartialRunner()), lc.sweep.Output(tensorboard=None)
    assert check_together(study(), execution, output) is False  # tensorboard=None: only where the runner supports it
    assert check_together(study(), lc.sweep.Execution(), output) is True
    assert check_together(study(trainer={"max_epochs": 3, "logger": False}), lc.sweep.Execution(), output) is False
    with pytest.raises(ValueError, match=r"runner 'partial' does not support \['test', 'save_model'\]"):
        check_together(study(test=True), execution, lc.sweep.Output(save_model=True))
    with pytest.raises(ValueError, match=r"plot='val_acc' is not valid; choose one of \('train_loss',\)"):
        check_together(study(), lc.sweep.Execution(), lc.sweep.Output(plot="val_acc"))
    assert check_together(study(metrics=lc.sweep.metrics.mode_strength_share), lc.sweep.Execution(),
                          lc.sweep.Output(plot="anything")) is True  # a function's names are known only after a run


def test_the_groups_are_plain_dataclasses_checked_again_when_replaced():
    base = study()
    more = dataclasses.replace(base, seeds=[0, 1, 2])
    assert (more.seed_list, base.seed_list) == ([0, 1, 2], [0])
    assert [e.label() for e in more.grid] == ["baseline", "w0-1", "w0-2"]
    assert more.trainer_kwargs["max_epochs"] == 3 and dataclasses.asdict(more)["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"repeats \[1\]"):
        dataclasses.replace(base, seeds=[1, 1])
    execution = dataclasses.replace(lc.sweep.Execution(), backend="serial", verify=3)
    assert (execution.backend, execution.audit_limit, execution.training_runner.name) == ("serial", 3, "lightning")
    with pytest.raises(ValueError, match="errors='later' is not valid"):
        dataclasses.replace(execution, errors="later")
    assert dataclasses.replace(lc.sweep.Output(), plot="train_loss") == lc.sweep.Output(plot="train_loss")


def test_the_groups_fields_are_exactly_runs_keywords_with_its_defaults():
    parameters = inspect.signature(lc.sweep.run).parameters
    fields = {f.name: f for group in (lc.sweep.Study, lc.sweep.Execution, lc.sweep.Output)
              for f in dataclasses.fields(group)}
    assert sorted(fields) == sorted(parameters)
    for name, p in parameters.items():
        if p.default is not inspect.Parameter.empty:
            assert fields[name].default == p.default, name


def _tables(tmp_path, **change: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    execution: dict[str, Any] = dict(backend="serial", progress=False, verify="all")
    output: dict[str, Any] = dict(tensorboard=False, plot=False)
    grouped = lc.sweep.run_study(study(seeds=[0, 1], **change), lc.sweep.Execution(**execution),
                                 lc.sweep.Output(out=str(tmp_path / "grouped"), **output))
    loose = lc.sweep.run(**STUDY, seeds=[0, 1], **change, **execution, **output, out=str(tmp_path / "loose"))
    return grouped, loose


def test_run_study_gives_the_table_of_lc_sweep_run(tmp_path):
    grouped, loose = _tables(tmp_path)
    assert (grouped.status == "ok").all() and len(grouped) == 6
    assert grouped.epochs_trained.sum() < grouped.epochs.sum()  # prefixes were shared, and audited
    columns = [c for c in grouped.columns if c != "seconds"]
    pd.testing.assert_frame_equal(grouped[columns], loose[columns], check_exact=True)  # bitwise metrics
    assert {k: v for k, v in grouped.attrs.items() if k not in ("out", "audit")} == \
           {k: v for k, v in loose.attrs.items() if k not in ("out", "audit")}
    assert grouped.attrs["audit"]["passed"] == loose.attrs["audit"]["passed"] > 0


def test_a_field_changed_after_making_its_group_is_checked_before_training(tmp_path):
    bad = study()
    bad.seeds = "0"  # type: ignore[assignment]  # plain dataclasses: a field can be set; the sweep checks every group again
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="seeds='0' is not valid"):
        lc.sweep.run_study(bad, lc.sweep.Execution(backend="serial"), lc.sweep.Output(out=str(out)))
    assert not os.path.exists(out / "sweep.json") and not os.path.exists(out / "results.jsonl")

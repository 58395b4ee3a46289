"""Sweeping a template deficit's own arguments (``params={"deficit.factor": [...]}``), with one baseline per seed."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import lightning_critical as lc
from lightning_critical.deficits import WindowedDeficit
from lightning_critical.plots import plot_critical_period_curve
from lightning_critical.sweep.build import build_deficits, swept_deficits
from lightning_critical.sweep.session import Session
from lightning_critical.sweep.spec import RunSpec, SweepSpec

CPU = {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1}
QUIET: dict[str, Any] = dict(backend="serial", tensorboard=False, plot=False)


def pathway_model(seed: int, depth: int = 2) -> Any:
    return lc.models.MultiPathwayLinearNet(depth=depth, width=8, lr=0.05, seed=seed)


def digits_model(seed: int) -> Any:
    return lc.models.SmallCNN(channels=(4, 8), seed=seed)


def digits() -> Any:
    return lc.data.DigitsDataModule(subset=64, batch_size=32)


def built_deficit(trainer: Any, module: Any) -> dict[str, float]:
    """What the run's deficit was built with, read back from the Trainer (-1 where it has none: the baseline)."""
    deficits = [c for c in trainer.callbacks if isinstance(c, WindowedDeficit)]
    factor = [float(c.factor) for c in deficits if isinstance(c, lc.InputDeficit)]
    noise = [float(c.mode == "noise") for c in deficits if isinstance(c, lc.PathwayDeficit)]
    return {"built_factor": (factor or [-1.0])[0], "built_noise": (noise or [-1.0])[0],
            "deficits": float(len(deficits))}


def test_blur_factor_swept_through_params_has_one_baseline_per_seed(tmp_path: Any) -> None:
    kwargs: dict[str, Any] = dict(
        deficit=lc.InputDeficit("blur", window=(0, 1), factor=2), windows=lc.sweep.removal([1]),
        params={"deficit.factor": [2, 4]}, seeds=[0, 1], metrics=["val_acc", built_deficit],
        trainer={"max_epochs": 2, **CPU}, out=tmp_path, **QUIET)
    table = lc.sweep.run(digits_model, digits, **kwargs)
    assert table["label"].tolist() == [
        "baseline_seed0", "baseline_seed1", "w0-1_seed0_deficit.factor=2", "w0-1_seed1_deficit.factor=2",
        "w0-1_seed0_deficit.factor=4", "w0-1_seed1_deficit.factor=4"]
    assert (table["status"] == "ok").all() and table.attrs["deficit_params"] == ["deficit.factor"]
    windowed = table[~table["baseline"]]
    assert windowed["built_factor"].tolist() == windowed["deficit.factor"].astype(float).tolist() == [2, 2, 4, 4]
    base = table[table["baseline"]]
    assert base["deficit.factor"].isna().all() and base["deficits"].tolist() == [0, 0]
    assert table.attrs["epochs_trained"] == 6 * 2  # six fits of two epochs: the baseline trained once per seed
    # one baseline row in the summary, a drop per (window, value) against it
    summary = lc.sweep.summarize(table, "val_acc")
    assert summary["baseline"].tolist() == [True, False, False]
    assert summary["n_seeds"].tolist() == [2, 2, 2]
    assert summary.loc[1:, "deficit.factor"].tolist() == [2, 4]
    b_mean = base["val_acc"].mean()
    for _, row in summary[~summary["baseline"]].iterrows():
        mean = windowed.loc[windowed["deficit.factor"] == row["deficit.factor"], "val_acc"].mean()
        assert row["drop"] == pytest.approx(b_mean - mean) and np.isfinite(row["drop_sem"])
    # the figure: a curve per value, one baseline (no duplicate legend entries)
    labels = plot_critical_period_curve(table, "val_acc").axes[0].get_legend_handles_labels()[1]
    assert [label for label in labels if label.startswith("no deficit")] == ["no deficit"]
    assert len(labels) == len(set(labels)) == 3
    # resumable: the same call trains nothing, and load() gives the same rows
    again = lc.sweep.run(digits_model, digits, **kwargs)
    assert again.attrs["runs_to_train"] == 0 and again["run_id"].tolist() == table["run_id"].tolist()
    loaded = lc.sweep.load(tmp_path)
    assert loaded["label"].tolist() == table["label"].tolist() and loaded.attrs["deficit_params"] == ["deficit.factor"]


def test_pathway_mode_and_a_factory_argument_swept_together(tmp_path: Any) -> None:
    # depth reaches the model: one baseline per (depth, seed); deficit.mode reaches only the deficit
    table = lc.sweep.run(
        pathway_model, lc.data.HierarchicalDataModule, deficit=lc.PathwayDeficit("b", (0, 1)),
        windows=[(0, 1)], params={"deficit.mode": ["freeze", "noise"], "depth": [1, 2]}, seeds=[0],
        metrics=["train_loss", built_deficit], trainer={"max_epochs": 2, **CPU}, out=tmp_path, **QUIET)
    base = table[table["baseline"]]
    assert base["depth"].tolist() == [1, 2] and base["deficit.mode"].isna().all()
    windowed = table[~table["baseline"]]
    assert len(table) == 2 + 4 and len(set(table["run_id"])) == 6
    assert windowed["built_noise"].tolist() == [float(m == "noise") for m in windowed["deficit.mode"]]
    assert base["train_loss"].iloc[0] != base["train_loss"].iloc[1]  # depth changes the baseline
    summary = lc.sweep.summarize(table, "train_loss")
    assert summary["baseline"].tolist() == [True, False, False, True, False, False]
    assert summary["depth"].tolist() == [1, 1, 1, 2, 2, 2]
    for _, row in summary[~summary["baseline"]].iterrows():
        ref = base.loc[base["depth"] == row["depth"], "train_loss"].iloc[0]
        assert row["drop"] == pytest.approx(ref - row["mean"])


def test_a_factory_argument_alone_still_retrains_the_baseline_per_value(tmp_path: Any) -> None:
    table = lc.sweep.run(
        pathway_model, lc.data.HierarchicalDataModule, deficit=lc.PathwayDeficit("b", (0, 1)), windows=[(0, 1)],
        params={"depth": [1, 2]}, seeds=[0], metrics="train_loss", trainer={"max_epochs": 2, **CPU},
        out=tmp_path, **QUIET)
    assert table["baseline"].sum() == 2 and table.attrs["deficit_params"] == []
    assert not table["depth"].isna().any()


def test_the_partial_form_still_works_and_shares_the_baseline(tmp_path: Any) -> None:
    # a deficit factory whose signature names the swept value: it reaches only the deficit
    table = lc.sweep.run(
        pathway_model, lc.data.HierarchicalDataModule, deficit=functools.partial(lc.PathwayDeficit, "b"),
        windows=[(0, 1)], params={"mode": ["freeze", "noise"]}, seeds=[0, 1],
        metrics=["train_loss", built_deficit], trainer={"max_epochs": 2, **CPU}, out=tmp_path, **QUIET)
    assert table["baseline"].sum() == 2 and table.attrs["deficit_params"] == ["mode"]
    windowed = table[~table["baseline"]]
    assert windowed["built_noise"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert lc.sweep.summarize(table)["baseline"].tolist() == [True, False, False]


def test_a_baseline_run_id_does_not_depend_on_deficit_values(tmp_path: Any) -> None:
    def baseline_ids(values: list[Any]) -> list[str]:
        study = lc.sweep.Study(pathway_model, lc.data.HierarchicalDataModule, deficit=lc.PathwayDeficit("b", (0, 1)),
                               windows=[(0, 1)], params={"deficit.mode": values}, seeds=[0, 1],
                               metrics="train_loss", trainer={"max_epochs": 2, **CPU})
        session = Session(study, lc.sweep.Execution(backend="serial"), lc.sweep.Output(out=tmp_path))
        session.identify()
        return [rid for rid, run in session.by_id.items() if run.baseline]

    assert baseline_ids(["freeze"]) == baseline_ids(["freeze", "noise"]) and len(baseline_ids(["noise"])) == 2


def test_each_of_several_deficits_is_addressed_by_index_or_its_own_argument() -> None:
    deficits = [lc.InputDeficit("noise", (0, 1), noise_std=0.5), lc.PathwayDeficit("b", (0, 1))]
    made = swept_deficits(deficits, {"deficit.1.noise_std": 2.0, "deficit.mode": "noise", "deficit.0.seed": 3})
    assert [made[0].noise_std, made[0].seed, made[1].noise_std, made[1].mode] == [0.5, 3, 2.0, "noise"]
    spec = SweepSpec(model=pathway_model, deficit=deficits, trainer={"max_epochs": 4})
    run = RunSpec((lc.Window(1, 3),), seed=7, params=(("deficit.0.noise_std", 0.25),))
    built = build_deficits(spec, run)
    assert [(d.window, type(d).__name__) for d in built] == [(lc.Window(1, 3), "InputDeficit"),
                                                            (lc.Window(1, 3), "PathwayDeficit")]
    assert (built[0].noise_std, built[0].seed, built[1].seed) == (0.25, 7, 7)  # the seed rule still holds
    assert spec.factory_kwargs(run) == {"seed": 7}  # never passed to a factory


BAD_NAMES: dict[str, tuple[Any, dict[str, Any], str]] = {
    "a typo": (lc.InputDeficit("blur", (0, 1)), {"deficit.factr": [2]},
               r"no template deficit takes an argument 'factr'.*'deficit.factor'"),
    "a template argument without the prefix": (lc.InputDeficit("blur", (0, 1)), {"factor": [2]},
                                              r"params\['factor'\] is not an argument of any factory.*'deficit.factor' "
                                              r"sets the template deficit's 'factor'.*Valid names: factory arguments "
                                              r"\['depth'.*'deficit.noise_std'"),
    "the window": (lc.InputDeficit("blur", (0, 1)), {"deficit.window": [(0, 2)]}, r"come from windows="),
    "ambiguous in a list": ([lc.InputDeficit("noise", (0, 1)), lc.PathwayDeficit("b", (0, 1))],
                            {"deficit.noise_std": [1.0]},
                            r"'noise_std' is an argument of deficits \[0, 1\]: name one, e.g. 'deficit.0.noise_std'"),
    "an index past the list": ([lc.InputDeficit("noise", (0, 1)), lc.PathwayDeficit("b", (0, 1))],
                               {"deficit.2.mode": ["noise"]}, r"deficit entry 2 is not in deficit="),
    "an argument of the other entry": ([lc.InputDeficit("noise", (0, 1)), lc.PathwayDeficit("b", (0, 1))],
                                       {"deficit.0.mode": ["noise"]}, r"deficit entry 0 takes no argument 'mode'"),
    "a factory": (functools.partial(lc.PathwayDeficit, "b"), {"deficit.mode": ["noise"]},
                  r"holds no WindowedDeficit template, only factories .*params=\{'mode': \[...\]\}"),
    "one argument twice": ([lc.InputDeficit("noise", (0, 1)), lc.PathwayDeficit("b", (0, 1))],
                           {"deficit.mode": ["noise"], "deficit.1.mode": ["freeze"]},
                           r"'deficit.1.mode' and 'deficit.mode' both set argument 'mode' of deficit entry 1"),
    "a bad value": (lc.PathwayDeficit("b", (0, 1)), {"deficit.mode": ["freeze", "bogus"]}, r"mode='bogus'"),
}


def refuse_to_build(seed: int, depth: int = 2) -> Any:
    raise AssertionError("a bad name must be refused before anything is built")


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_deficit_names_are_refused_before_training(case: str, tmp_path: Any) -> None:
    deficit, params, message = BAD_NAMES[case]
    with pytest.raises(ValueError, match=message):
        lc.sweep.run(refuse_to_build, deficit=deficit, windows=[(0, 1)], params=params, metrics="train_loss",
                     trainer={"max_epochs": 2}, out=tmp_path, **QUIET)


def test_summarize_finds_the_shared_baseline_in_a_table_that_lost_its_attrs() -> None:
    table = pd.DataFrame({
        "window": ["none", "none", "[0, 2) epochs", "[0, 2) epochs", "[0, 2) epochs", "[0, 2) epochs"],
        "window_start": [np.nan, np.nan, 0, 0, 0, 0], "window_end": [np.nan, np.nan, 2, 2, 2, 2],
        "baseline": [True, True, False, False, False, False], "seed": [0, 1, 0, 1, 0, 1],
        "deficit.factor": [pd.NA, pd.NA, 2, 2, 4, 4], "acc": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "status": ["ok"] * 6})
    summary = lc.sweep.summarize(table, "acc", by=["deficit.factor"])
    assert summary["baseline"].tolist() == [True, False, False]
    assert summary["drop"].round(3).tolist() == [0.0, 0.2, 0.4]
    assert summary.attrs["deficit_params"] == ["deficit.factor"]


def test_the_one_baseline_still_shares_its_prefix_with_the_first_values_runs(tmp_path: Any) -> None:
    table = lc.sweep.run(
        pathway_model, lc.data.HierarchicalDataModule, deficit=lc.PathwayDeficit("b", (0, 1)), windows=[(2, 3)],
        params={"deficit.mode": ["freeze", "noise"]}, seeds=[0], metrics="train_loss",
        trainer={"max_epochs": 3, **CPU}, out=tmp_path, verify="all", **QUIET)
    trained = dict(zip(table["label"], table["epochs_trained"], strict=True))
    # the baseline and the freeze run share epochs 0-1; the noise run (another plan group) trains alone
    assert sorted(trained.values()) == [1, 3, 3] and table.attrs["epochs_trained"] == 7
    assert trained["w2-3_seed0_deficit.mode=noise"] == 3
    audit = table.attrs["audit"]
    assert audit["audited"] == audit["passed"] >= 1  # each branched run retrained from scratch: equal


def test_a_cli_config_sweeps_its_deficit_factory_argument_against_one_baseline(tmp_path: Any) -> None:
    from lightning_critical.cli import main

    config = tmp_path / "modes.yaml"
    config.write_text(
        "study:\n"
        "  model: {class_path: lightning_critical.models.MultiPathwayLinearNet, init_args: {depth: 2, width: 8}}\n"
        "  datamodule: {class_path: lightning_critical.data.HierarchicalDataModule}\n"
        "  deficit: {class_path: lightning_critical.PathwayDeficit, init_args: {pathways: b}}\n"
        "  windows: [[0, 1]]\n  seeds: [0, 1]\n  params: {mode: [freeze, noise]}\n  metrics: [train_loss]\n"
        "  trainer: {max_epochs: 2, accelerator: cpu, log_every_n_steps: 1}\n"
        "execution: {backend: serial}\noutput: {tensorboard: false, plot: false}\n")
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    table = lc.sweep.load(tmp_path / "out")
    assert table["label"].tolist() == ["baseline_seed0", "baseline_seed1", "w0-1_seed0_mode=freeze",
                                       "w0-1_seed1_mode=freeze", "w0-1_seed0_mode=noise", "w0-1_seed1_mode=noise"]
    assert table.attrs["deficit_params"] == ["mode"]

"""One seed rule: a deficit given as a template, a factory or a YAML config draws with the same seed.

A deficit's seed is the run's seed unless it was fixed explicitly (``seed=`` given to its
constructor, or bound by a ``functools.partial``); the table records it as ``deficit_seed``.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd
import pytest
import torch

import lightning_critical as lc
from lightning_critical.cli import main
from lightning_critical.deficits.base import WindowedDeficit

MODEL = functools.partial(lc.models.SmallCNN, channels=[4, 8])
DATA = functools.partial(lc.data.DigitsDataModule, subset=64, batch_size=32)
COMMON: dict[str, Any] = dict(
    windows=lc.sweep.removal([1, 2]), metrics=["val_loss"], trainer={"max_epochs": 2, "accelerator": "cpu"},
    seeds=[0, 1], backend="serial", tensorboard=False, plot=False, progress=False)
YAML = """
study:
  model: {class_path: lightning_critical.models.SmallCNN, init_args: {channels: [4, 8]}}
  datamodule: {class_path: lightning_critical.data.DigitsDataModule, init_args: {subset: 64, batch_size: 32}}
  deficit: {class_path: lightning_critical.InputDeficit, init_args: {transform: noise%s}}
  windows: {removal: [1, 2]}
  seeds: [0, 1]
  metrics: [val_loss]
  trainer: {max_epochs: 2, accelerator: cpu}
execution: {backend: serial}
output: {tensorboard: false, plot: false}
"""
COLUMNS = ["label", "seed", "deficit_seed", "val_loss"]


def _noise_in(window):  # a factory that names no seed: its deficit still gets the run's
    return lc.InputDeficit("noise", window)


def _sweep(tmp_path, name: str, deficit: Any) -> pd.DataFrame:
    table = lc.sweep.run(MODEL, DATA, deficit=deficit, out=str(tmp_path / name), **COMMON)
    return table[COLUMNS].sort_values("label").reset_index(drop=True)


def _cli(tmp_path, name: str, extra: str = "") -> pd.DataFrame:
    config = tmp_path / f"{name}.yaml"
    config.write_text(YAML % extra)
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / name)]) == 0
    return lc.sweep.load(tmp_path / name)[COLUMNS].sort_values("label").reset_index(drop=True)


def test_template_factory_function_and_cli_give_one_table(tmp_path):
    template = _sweep(tmp_path, "template", lc.InputDeficit("noise", window=(0, 1)))
    factory = _sweep(tmp_path, "factory", functools.partial(lc.InputDeficit, transform="noise"))
    function = _sweep(tmp_path, "function", _noise_in)
    cli = _cli(tmp_path, "cli")
    for other in (factory, function, cli):
        pd.testing.assert_frame_equal(template, other, check_exact=True)
    windowed = template[template.label != "baseline_seed0"].dropna(subset=["deficit_seed"])
    assert len(windowed) == 4 and (windowed.deficit_seed == windowed.seed).all()  # the run's seed
    assert template.deficit_seed.isna().sum() == 2  # the baselines have no deficit


def test_an_explicit_seed_is_kept_in_every_form_and_recorded(tmp_path):
    template = _sweep(tmp_path, "template", lc.InputDeficit("noise", window=(0, 1), seed=5))
    partial = _sweep(tmp_path, "partial", functools.partial(lc.InputDeficit, transform="noise", seed=5))
    cli = _cli(tmp_path, "cli", ", seed: 5")
    for other in (partial, cli):
        pd.testing.assert_frame_equal(template, other, check_exact=True)
    assert set(template.deficit_seed.dropna()) == {5}
    per_run = _sweep(tmp_path, "per_run", lc.InputDeficit("noise", window=(0, 1)))
    seed0 = template.label == "w0-1_seed0"
    assert (per_run.val_loss[seed0] != template.val_loss[seed0]).all()  # the seed reaches the noise


def test_deficits_with_different_seeds_are_recorded_in_callback_order(tmp_path):
    deficits = [lc.PathwayDeficit("a", (0, 1), mode="noise", seed=3), lc.PathwayDeficit("b", (0, 1), mode="noise")]
    out = tmp_path / "two"
    table = lc.sweep.run(lambda seed: lc.models.MultiPathwayLinearNet(depth=2, width=8, seed=seed),
                         lc.data.HierarchicalDataModule, deficit=deficits, windows=[(0, 1)], seeds=[0, 1],
                         metrics="train_loss", trainer={"max_epochs": 2, "accelerator": "cpu", "log_every_n_steps": 1},
                         out=str(out),
                         backend="serial", tensorboard=False, plot=False, progress=False)
    seeds = table.set_index("label").deficit_seed
    assert seeds[["w0-1_seed0", "w0-1_seed1"]].tolist() == ["3 + 0", "3 + 1"]
    assert seeds[["baseline_seed0", "baseline_seed1"]].isna().all()
    assert lc.sweep.load(out).set_index("label").deficit_seed["w0-1_seed1"] == "3 + 1"


# -- with_window ---------------------------------------------------------------------------------
class HalfGain(WindowedDeficit):
    def __init__(self, pathway: str, window: Any, gain: float = 0.5, seed: int = 0) -> None:
        super().__init__(window)
        self.pathway, self.gain, self.seed = pathway, gain, seed


@pytest.mark.parametrize("deficit", [
    lc.InputDeficit("blur", (0, 2), factor=2, input_key=0),
    lc.PathwayDeficit(["a", "b"], (0, 2), mode="noise", noise_std=0.5),
    lc.ModeDeficit("a", modes=[0, 2], window=(0, 2), task_basis=(torch.eye(3), torch.ones(3), torch.eye(3))),
    HalfGain("a", (0, 2), gain=0.25),
], ids=["input", "pathway", "mode", "user_subclass"])
def test_with_window_builds_the_same_deficit_for_another_window(deficit):
    moved = deficit.with_window((3, 5))
    assert type(moved) is type(deficit) and moved.window == lc.Window(3, 5)
    same = {k: v for k, v in vars(deficit).items() if not k.startswith("_") and k != "window"}
    assert repr(moved).replace("[3, 5)", "[0, 2)") == repr(deficit)
    for key, value in same.items():
        assert repr(getattr(moved, key)) == repr(value), key
    assert deficit.window == lc.Window(0, 2)  # the original is untouched


def test_with_window_follows_the_window_unit_and_applies_overrides():
    steps = lc.InputDeficit("noise", (0, 2), unit="step")
    assert steps.with_window(lc.Window(0, 3)).window == lc.Window(0, 3, "epoch")
    assert steps.with_window((0, 3), seed=4).seed == 4
    with pytest.raises(TypeError, match=r"\['gain'\] are not arguments of InputDeficit"):
        steps.with_window((0, 3), gain=2)


def test_with_window_refuses_what_it_cannot_rebuild():
    class FixedWindow(WindowedDeficit):
        def __init__(self, strength: float = 1.0) -> None:
            super().__init__((0, 3))

    with pytest.raises(TypeError, match=r"FixedWindow\(strength.*has no 'window' parameter"):
        FixedWindow().with_window((1, 2))
    edited = lc.InputDeficit("noise", (0, 2))
    edited.noise_std = 3.0
    with pytest.raises(ValueError, match=r"\['noise_std'\] changed after construction"):
        edited.with_window((1, 2))


def test_a_template_edited_after_construction_is_refused_before_training(tmp_path):
    edited = lc.InputDeficit("noise", (0, 1))
    edited.noise_std = 3.0  # the old deepcopy kept it; a rebuild would silently drop it
    with pytest.raises(ValueError, match="changed after construction"):
        lc.sweep.run(MODEL, DATA, deficit=edited, out=str(tmp_path / "out"), **COMMON)
    assert not (tmp_path / "out" / "results.jsonl").exists()

"""examples/multisensory.py: the pipeline on tiny settings, and its early-vs-late effects paired over seeds."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pandas as pd
import pytest

from lightning_critical.curve import paired_effect

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "multisensory.py")
# 2 seeds, 10 runs of 2-8 epochs on 400 digits: about 5 s on one core
TINY = ["--seeds", "2", "--removal", "0", "3", "--onsets", "0", "3", "--length", "3", "--epochs-after", "2",
        "--backend", "serial"]


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("multisensory", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multisensory_pipeline_writes_the_tables_and_figure_and_an_early_deficit_removes_the_reliance(
        tmp_path: Any) -> None:
    example = load_example()
    out = example.main(["--out", str(tmp_path), *TINY])
    removal, sliding, effects = out["removal"], out["sliding"], out["effects"]
    assert (removal.status == "ok").all() and (sliding.status == "ok").all()
    # every deficit gets 2 clean epochs: removal [0, 3) trains 5, sliding [3, 6) trains 8 (the baseline too)
    assert sorted(zip(removal.window_end.fillna(0), removal.epochs, strict=True)) == [(0, 2), (0, 2), (3, 5), (3, 5)]
    assert sorted(zip(sliding.window_start.fillna(-1), sliding.epochs, strict=True)) == [
        (-1, 8), (-1, 8), (0, 5), (0, 5), (3, 8), (3, 8)]
    b, alone_b = example.RELIANCE["b"], example.ALONE["b"]
    for column in (b, example.RELIANCE["a"], example.ALONE["a"], alone_b, example.RSV["mean"], example.ACC):
        assert sliding[column].notna().all(), column
    runs = sliding[~sliding.baseline].groupby("window_start")[b].mean()
    assert runs[0] < runs[3], runs  # the early deficit leaves less reliance on view b than the late one
    assert runs[0] < 0.2 < sliding.loc[sliding.baseline, b].mean()
    # the early-vs-late effect of the sliding curve is late minus early, paired over the 2 seeds
    row = effects.set_index(["curve", "metric"]).loc[("sliding", b)]
    by_seed = sliding[~sliding.baseline].pivot_table(index="seed", columns="window_start", values=b)
    assert row["difference"] == pytest.approx((by_seed[3] - by_seed[0]).mean()) and row["n_seeds"] == 2
    assert row["difference"] > 0 and (row["early"], row["late"]) == (0, 3)
    assert set(out["summary"].curve) == {"removal", "sliding"} and b in set(out["summary"].metric)
    for name in ("removal", "sliding", "summary", "effects"):
        assert len(pd.read_csv(tmp_path / f"{name}.csv")) > 0, name
    assert os.path.getsize(tmp_path / "multisensory.png") > 20_000


def test_paired_effect_is_the_mean_per_seed_difference_over_its_standard_error() -> None:
    # seed x onset; seed 2 is 0.3 higher everywhere: pairing removes it. Differences 0.5, 0.4, 0.6 -> mean 0.5,
    # std 0.1, s.e. 0.1 / sqrt(3)
    wide = pd.DataFrame({0: [0.1, 0.2, 0.4], 10: [0.6, 0.6, 1.0]}, index=[0, 1, 2])
    effect = paired_effect(wide, 10, 0)
    assert effect["difference"] == pytest.approx(0.5) and effect["n_seeds"] == 3
    assert effect["sem"] == pytest.approx(0.1 / 3 ** 0.5) and effect["z"] == pytest.approx(0.5 * 3 ** 0.5 / 0.1)
    assert paired_effect(wide.iloc[:1], 10, 0)["n_seeds"] == 1  # one seed: no standard error
    assert pd.isna(paired_effect(wide.iloc[:1], 10, 0)["z"])


def test_effects_pair_each_seeds_early_and_late_runs_on_both_curves() -> None:
    example = load_example()
    nan, b = float("nan"), example.RELIANCE["b"]
    removal = pd.DataFrame({  # the baseline is T = 0; the harmful deficit is the long one (T = 8)
        "seed": [0, 1, 0, 1], "baseline": [True, True, False, False], "window_start": [nan, nan, 0, 0],
        "window_end": [nan, nan, 8, 8], b: [0.70, 0.80, 0.10, 0.30], "status": ["ok"] * 4,
    })
    sliding = pd.DataFrame({  # onsets 0 and 6 and a failed run, which is left out of the pairs
        "seed": [0, 1, 0, 1, 0, 1, 2], "baseline": [True, True, False, False, False, False, False],
        "window_start": [nan, nan, 0, 0, 6, 6, 0], "window_end": [nan, nan, 4, 4, 10, 10, 4],
        b: [0.7, 0.8, 0.05, 0.15, 0.6, 0.6, 0.0], "status": ["ok"] * 6 + ["failed"],
    })
    effects = example.early_late_effects(removal, sliding, metrics=[b]).set_index("curve")
    assert effects.loc["removal", ["early", "late", "n_seeds"]].tolist() == [0, 8, 2]
    assert effects.loc["removal", "difference"] == pytest.approx(0.55)  # (0.6 + 0.5) / 2
    assert effects.loc["removal", "sem"] == pytest.approx(0.05)  # std([0.6, 0.5]) / sqrt(2)
    assert effects.loc["sliding", ["early", "late", "n_seeds"]].tolist() == [0, 6, 2]
    assert effects.loc["sliding", "difference"] == pytest.approx(0.5)  # late minus early: (0.55 + 0.45) / 2
    assert effects.loc["sliding", "z"] == pytest.approx(0.5 / 0.05)

"""``lightning-critical sweep --config`` end to end on the example configs (shrunk with --set)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from lightning_critical.cli import main
from lightning_critical.sweep.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "examples", "configs")


def test_digits_blur_sweep_config_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "digits"
    config = os.path.join(CONFIGS, "digits_blur_sweep.yaml")
    args = ["sweep", "--config", config, "--out", str(out), "--backend", "serial",
            "--seeds", "0", "1", "--set", "windows.removal={ends: [0, 1, 2], epochs_after: 1}",
            "--set", "data.init_args.subset=64", "--set", "model.init_args.channels=[4, 8]"]
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 6 and (table.status == "ok").all()
    ends_and_epochs = sorted(zip(table.window_end.fillna(0), table.epochs, strict=True))
    assert ends_and_epochs == [(0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3)]
    summary = pd.read_csv(out / "summary.csv")
    assert summary.n_seeds.tolist() == [2, 2, 2] and {"mean", "sem", "drop", "drop_sem"} <= set(summary.columns)
    assert os.path.getsize(out / "critical_period.png") > 10_000
    text = capsys.readouterr().out
    assert "6 runs (0 failed)" in text and "tensorboard --logdir" in text


def test_multipathway_sweep_config_plots_the_deprived_share(tmp_path):
    out = tmp_path / "pathways"
    config = os.path.join(CONFIGS, "multipathway_sweep.yaml")
    args = ["sweep", "--config", config, "--out", str(out), "--backend", "serial",
            "--set", "trainer.max_epochs=30", "--set", "windows.sliding={onsets: [0, 10], length: 10}",
            "--set", "model.init_args={depth: 2, width: 16, lr: 0.05}"]
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 and "share/b/0" in table.columns
    early = table[table.window_start == 0]["share/b/0"].item()
    assert early < table[table.baseline]["share/b/0"].item()  # an early freeze leaves b less of mode 0
    assert os.path.getsize(out / "critical_period.png") > 10_000


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {class_path: lightning_critical.models.NoSuchModel}\ndeficit: x\nwindows: [[0, 1]]\n"
                   "metrics: [val_acc]\ntrainer: {max_epochs: 2}\nwindow: [0, 1]\n")
    with pytest.raises(ValueError, match=r"unknown keys \['window'\]"):
        load_config(str(bad))
    bad.write_text("model: {class_path: lightning_critical.models.NoSuchModel}\ndeficit: InputDeficit\n"
                   "windows: [[0, 1]]\nmetrics: [val_acc]\ntrainer: {max_epochs: 2}\n")
    with pytest.raises(ValueError, match="model.class_path='lightning_critical.models.NoSuchModel' cannot be imported"):
        load_config(str(bad))

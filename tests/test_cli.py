"""The README's flagship demo and the LightningCLI configs, run for real."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from conftest import read_tensorboard

from lightning_critical.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_writes_figures_tables_and_tensorboard(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in ("trajectories.png", "onset_sweep.png", "phase.png"):
        assert (out / name).stat().st_size > 20_000, name
    runs = pd.read_csv(out / "trajectories.csv")
    final = runs[runs.step == 1000].pivot_table(index=["label", "pathway"], columns="mode", values="measured")
    early = final.loc["early"]
    assert (early.loc["b"] / early.sum())[[0, 1]].max() < 0.02
    acc = read_tensorboard(str(out / "tensorboard" / "w0-150_seed0"))  # the early run, as the engine names it
    scalars = acc.Tags()["scalars"]
    assert {"mode_strength/a/0", "theory/mode_strength/b/7", "deficit/freeze/b", "train_loss"} <= set(scalars)
    k_b = {e.step: e.value for e in acc.Scalars("mode_strength/b/0")}
    theory_b = {e.step: e.value for e in acc.Scalars("theory/mode_strength/b/0")}
    assert max(abs(k_b[t] - theory_b[t]) for t in k_b) < 4e-3
    printed = capsys.readouterr().out
    assert "Open the logs with" in printed
    # progress: one line per finished training run, with the time elapsed
    assert [line[:6] for line in printed.splitlines() if "elapsed)" in line] == [f"[ {k}/6]" for k in range(1, 7)]


def test_lightningcli_config_runs(tmp_path):
    config = os.path.join(ROOT, "examples", "configs", "multipathway_early_deficit.yaml")
    main(["fit", "--config", config, "--trainer.max_epochs", "20",
          "--trainer.logger.init_args.save_dir", str(tmp_path)])
    run = tmp_path / "early_deficit" / "version_0"
    history = pd.read_csv(run / "spectral_history.csv")
    assert sorted(history.step.unique()) == [0, 10, 20]
    acc = read_tensorboard(str(run))
    assert [e.value for e in acc.Scalars("deficit/freeze/b")][0] == 1.0


def test_matrix_completion_command_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "mc"
    args = ["matrix-completion", "--depths", "1", "2", "--switch-epochs", "0", "300", "--continue-epochs", "300",
            "--size", "12", "--n-observed", "60", "--pretrain-rank", "3", "--target-rank", "1", "--lr", "0.5",
            "--processes", "1", "--out", str(out)]
    assert main(args) == 0
    table = pd.read_csv(out / "matrix_completion.csv")
    assert sorted(zip(table.depth, table.switch_epoch, strict=True)) == [(1, 0), (1, 300), (2, 0), (2, 300)]
    assert (out / "matrix_completion.png").stat().st_size > 10_000
    assert "figure trained in" in capsys.readouterr().out


def test_matrix_completion_switch_example_runs(tmp_path):
    import runpy

    module = runpy.run_path(os.path.join(ROOT, "examples", "matrix_completion_switch.py"))
    module["main"](["--size", "12", "--n-observed", "60", "--pretrain-rank", "3", "--target-rank", "1",
                    "--switch", "100", "--continue-epochs", "100", "--every", "20", "--out", str(tmp_path)])
    pngs = list(tmp_path.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)


def test_plot_command_is_listed_and_documents_its_options(capsys):
    assert main(["--help"]) == 0
    assert "plot" in capsys.readouterr().out.split("Commands:")[1]
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert "RUN_DIR/figures" in usage and "NAME=START:END" in usage and "deficit/<name>" in usage


def test_fit_with_a_broken_yaml_config_gets_lightningclis_message(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:  # LightningCLI's parser error, not a raw yaml traceback
        main(["fit", "--config", str(broken)])
    assert exit_info.value.code == 2
    assert "did not find expected" in capsys.readouterr().err  # the YAML problem, in a usage error

"""Every script in benchmarks/ runs in its ``--quick`` mode, so an API change that breaks one fails here.

Run in this process (``main(argv)``): importing torch and Lightning once, not once per
script, keeps the whole file at seconds. Nothing about time is asserted, only that each
script runs to the end and what it measures is consistent.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from lightning_critical.sweep.backends import ray_available

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(str(BENCHMARKS / "*.py")))


def load(script: str) -> ModuleType:
    """Import ``benchmarks/<script>`` under a name of its own (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{script[:-3]}", BENCHMARKS / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """The scripts set torch's threads and quieten loggers for themselves: undo it for later tests."""
    threads, path = torch.get_num_threads(), list(sys.path)
    loggers = {name: logging.getLogger(name).level for name in ("pytorch_lightning", "lightning.pytorch")}
    yield
    torch.set_num_threads(threads)
    sys.path[:] = path
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)


def test_every_benchmark_has_a_quick_mode():
    assert SCRIPTS == ["flagship_demo.py", "matrix_completion.py", "monitor_overhead.py", "spectral.py", "sweep.py",
                       "vectorized.py"]
    for script in SCRIPTS:
        assert "--quick" in (BENCHMARKS / script).read_text(), f"{script} has no --quick mode"


def test_vectorized_quick_compares_the_runners_and_their_tables(capsys: pytest.CaptureFixture[str]):
    # the script itself asserts that the tables agree (the MLP's: bitwise); --quick leaves out the process column
    result = load("vectorized.py").main(["--quick"])
    out = capsys.readouterr().out
    assert "default runner, serial" in out and "vectorized runner (one job)" in out
    assert "runs whose val_acc differ: 0 of 6 (bitwise equal)" in out
    mlp = result["mlp"]
    assert set(mlp["seconds"]) == {"serial", "vectorized"} and mlp["diff"] == 0
    # the useful FLOPs over each column's wall, against the matmul limit measured in the same run
    for column, seconds in mlp["seconds"].items():
        assert mlp["fraction"][column] == pytest.approx(mlp["useful_flops"] / seconds / result["limit"])
        assert 0 < mlp["fraction"][column] < 1
    assert out.count("% of the limit") == 2


def test_vectorized_quick_device_mode_prints_per_step_ratios(capsys: pytest.CaptureFixture[str]):
    result = load("vectorized.py").main(["--quick", "--device", "cpu", "--model", "mlp"])
    out = capsys.readouterr().out
    assert list(result["mlp"]) == [1, 2] and all(math.isfinite(r) and r > 0 for r in result["mlp"].values())
    assert "MLP 64-64-10 on cpu: default runner (a Lightning fit)" in out
    assert out.count("ratio M x default / vectorized") == 2 and "% of the device's float32 limit" in out


def test_matrix_completion_quick_baseline_matches_the_figure(capsys: pytest.CaptureFixture[str]):
    result: dict[str, Any] = load("matrix_completion.py").main(["--quick"])
    # the plain-PyTorch baseline and the shared-prefix ensemble train the same runs
    assert set(result["checks"]) == {(1, 0), (2, 60)}
    for baseline, figure in result["checks"].values():
        assert math.isfinite(baseline) and baseline == pytest.approx(figure, rel=1e-5, abs=1e-7)
    assert math.isfinite(result["speedup"]) and result["speedup"] > 0
    assert "speed-up:" in capsys.readouterr().out


def test_flagship_demo_quick_writes_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    result = load("flagship_demo.py").main(["--quick", "--out", str(tmp_path)])
    for name in ("trajectories.png", "onset_sweep.png", "phase.png"):
        assert (tmp_path / name).stat().st_size > 5_000, name
    # the engine's run labels (the grid's no-deficit baseline trains too)
    runs = sorted(d for d in os.listdir(tmp_path / "tensorboard") if os.path.isdir(tmp_path / "tensorboard" / d))
    assert runs == ["baseline_seed0", "w0-10_seed0", "w20-30_seed0"]  # beside them: the sweep's HParams experiment
    assert result["demo_s"] > 0 and "flagship demo (toy size)" in capsys.readouterr().out


def test_spectral_quick_runs_both_parts(capsys: pytest.CaptureFixture[str]):
    load("spectral.py").main(["--quick"])
    out = capsys.readouterr().out
    for model in ("toy transformer", "toy ResNet"):
        assert f"{model}: " in out
    assert out.count("ours method='auto' (all singular values") == 2
    assert out.count("ours method='gram' (all singular values") == 2
    assert out.count("ours analyze(conv='flatten')") == 2 and out.count("ours analyze(conv='taps')") == 2
    # weightwatcher is optional: compared when installed, reported as skipped otherwise
    try:
        import weightwatcher  # noqa: F401
    except ImportError:
        assert "weightwatcher is not installed" in out
    else:
        assert "max |s_ours - s_ww| / s_max" in out
        # the toy models' layers: weightwatcher's alpha reproduced on every one (its conv convention)
        assert out.count("alpha within 0.05 on 100% of them") >= 4
    assert "with SpectralMonitor()" in out and "time inside SpectralMonitor() hooks" in out


def test_sweep_quick_compares_sharing_processes_and_ray(capsys: pytest.CaptureFixture[str]):
    # the script itself asserts that every pair of sweeps it times gives identical tables
    result = load("sweep.py").main(["--quick"])
    for grid in ("removal", "sliding"):
        a = result["a"][grid]
        assert a["epochs_shared"] < a["epochs_independent"]  # the grid shares prefixes
        assert a["epoch_ratio"] == a["epochs_independent"] / a["epochs_shared"]
        assert math.isfinite(a["wall_ratio"]) and a["wall_ratio"] > 0
    assert result["b"]["runs"] == 2 * 3 and result["b"]["speedup"] > 0
    assert math.isfinite(result["d"]["extra"]) and result["d"]["audit_seconds"] > 0  # (d) the audit ran and passed
    out = capsys.readouterr().out
    assert out.count("tables identical") == 4
    if ray_available():  # (c) needs Ray; without it the script says so and goes on
        assert math.isfinite(result["c"]["ray_cold"]) and "table identical to serial" in out
    else:
        assert "c" not in result and "(c) skipped: Ray is not installed" in out


def test_monitor_overhead_quick_measures_the_four_models(capsys: pytest.CaptureFixture[str]):
    result = load("monitor_overhead.py").main(["--quick"])
    assert list(result) == ["MLP", "transformer", "LSTM", "CNN"]
    for name, r in result.items():
        # 4 steps: the log-spaced default records at steps 0, 1, 2, 3 and at the end (4)
        assert r["records"] == 5, name
        assert 0 < r["hook_s"] < r["fit_s"] and math.isfinite(r["wall_pct"]), name
        assert r["hook_pct"] == pytest.approx(100 * r["hook_s"] / (r["fit_s"] - r["hook_s"])), name
    out = capsys.readouterr().out
    assert "default cadence" in out and out.count("%") >= 8

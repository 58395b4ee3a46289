"""Record cadences: the log-spaced default, its resumability, and values identical to a fixed cadence."""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.cadence import EveryNSteps, LogSpaced, as_cadence
from lightning_critical.spectral.records import all_finite, to_host

ModelCheckpoint = pl.callbacks.ModelCheckpoint
TensorBoardLogger = pl.loggers.TensorBoardLogger

METRICS = ("singular_values", "mode_strength", "stable_rank", "effective_rank", "spectral_norm", "subspace_drift")


def test_log_spaced_records_every_step_then_per_octave_evenly_spaced():
    assert LogSpaced().steps(100) == [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96]
    assert LogSpaced(per_octave=1).steps(100) == [0, 1, 2, 4, 8, 16, 32, 64]
    for per_octave in (1, 2, 4, 8, 16):
        steps = LogSpaced(per_octave).steps(1 << 14)
        assert steps[: per_octave + 1] == list(range(per_octave + 1))  # dense at the start
        for e in range(per_octave.bit_length() - 1, 14):  # then exactly per_octave records per doubling
            octave = [s for s in steps if (1 << e) <= s < (2 << e)]
            gap = (1 << e) // per_octave
            assert octave == list(range(1 << e, 2 << e, gap)), (per_octave, e)
    # the cap: every multiple of max_every is recorded too, so no gap is wider than it
    capped = LogSpaced(per_octave=2, max_every=100).steps(1000)
    assert capped == sorted(set(LogSpaced(per_octave=2).steps(192)) | set(range(0, 1001, 100)))
    for per_octave, cap in ((2, 100), (4, 500), (1, 16), (2, 7), (8, 64)):
        steps = LogSpaced(per_octave=per_octave, max_every=cap).steps(20_000)
        assert max(b - a for a, b in zip(steps[:-1], steps[1:], strict=True)) <= cap, (per_octave, cap)


def test_cadences_are_pure_functions_of_the_step():
    # the same question gets the same answer whatever was asked before: nothing to restore on resume
    log = LogSpaced(per_octave=4, max_every=64)
    forward = [log.is_due(s) for s in range(3000)]
    backward = [log.is_due(s) for s in reversed(range(3000))][::-1]
    assert forward == backward == [LogSpaced(per_octave=4, max_every=64).is_due(s) for s in range(3000)]
    assert LogSpaced(4, 64) == log and hash(LogSpaced(4, 64)) == hash(log) and log != LogSpaced(4)


def test_cadence_arguments_are_checked():
    assert as_cadence(5) == EveryNSteps(5) and as_cadence("log") == LogSpaced()
    assert as_cadence(LogSpaced(8)) == LogSpaced(8)
    cases: list[tuple[Any, str]] = [
        (0, "every_n_steps=0 must be an integer >= 1. Other choices: 'log'"),
        ("often", "every_n_steps='often' must be an integer >= 1, not str. Other choices: 'log'"),
        (None, "every_n_steps=None must be an integer >= 1, not NoneType"),
        (True, "every_n_steps=True must be an integer >= 1, not bool"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            as_cadence(bad)
        with pytest.raises(ValueError, match=message):
            lc.SpectralMonitor(every_n_steps=bad)
    with pytest.raises(ValueError, match=r"per_octave=3 must be a power of two \(1, 2, 4, 8, ...\)"):
        LogSpaced(per_octave=3)
    with pytest.raises(ValueError, match="max_every=0 must be an integer >= 1 or None"):
        LogSpaced(max_every=0)


def test_an_integer_cadence_keeps_its_state_key_and_a_log_one_names_itself():
    assert "'every_n_steps': 7," in lc.SpectralMonitor(every_n_steps=7).state_key
    default = lc.SpectralMonitor()
    assert default.cadence == LogSpaced() and "'every_n_steps': LogSpaced(per_octave=2)," in default.state_key
    assert lc.SpectralMonitor(every_n_steps=LogSpaced(4, 50)).state_key != default.state_key


def small_net() -> tuple[Any, lc.models.MultiPathwayLinearNet]:
    dm = lc.data.HierarchicalDataModule()
    net = lc.models.MultiPathwayLinearNet(depth=3, width=12, lr=0.05, init_scale=0.05, task_basis=dm.task_basis())
    return dm, net


def fit(monitor: lc.SpectralMonitor, epochs: int, ckpt_path: Any = None, **kw: Any) -> pl.Trainer:
    pl.seed_everything(0)
    dm, net = small_net()
    trainer = make_trainer(max_epochs=epochs, callbacks=[monitor, *kw.pop("callbacks", [])], **kw)
    trainer.fit(net, dm, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return trainer


def test_the_default_monitor_records_log_spaced_steps_and_the_end(tmp_path):
    monitor = lc.SpectralMonitor(history_file=None)
    trainer = fit(monitor, epochs=50)
    assert trainer.global_step == 50  # one full batch per epoch
    assert sorted(monitor.to_frame().step.unique()) == [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 50]


def test_log_spaced_values_are_those_of_a_fixed_cadence_at_the_same_steps(tmp_path):
    # Recording less often changes which steps are recorded, never a recorded number.
    every = lc.SpectralMonitor(every_n_steps=1, metrics=METRICS, history_file=None)
    fit(every, epochs=40)
    log = lc.SpectralMonitor(metrics=METRICS, history_file=None)
    fit(log, epochs=40)
    steps = LogSpaced().steps(40)
    assert sorted(log.to_frame().step.unique()) == steps + ([40] if 40 not in steps else [])
    # subspace_drift compares with the previous record, so it differs by design; all else is equal
    keep = ["step", "target", "metric", "index"]
    ours = log.to_frame().query("metric != 'subspace_drift'").sort_values(keep).reset_index(drop=True)
    theirs = every.to_frame().query("metric != 'subspace_drift' and step in @ours.step.unique()")
    theirs = theirs.sort_values(keep).reset_index(drop=True)
    assert len(ours) > 500
    pd.testing.assert_frame_equal(ours, theirs)
    drift = log.to_frame().query("metric == 'subspace_drift'")
    assert sorted(drift.step.unique()) == sorted(set(steps[1:]) | {40})


def logger_at(root: Any) -> TensorBoardLogger:
    return TensorBoardLogger(str(root), name="run", version="fixed")


def csv_text(logger: TensorBoardLogger) -> str:
    with open(os.path.join(logger.log_dir, "spectral_history.csv")) as fh:
        return fh.read()


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("cadence", ["log", LogSpaced(per_octave=4, max_every=8)])
def test_a_resumed_fit_records_at_the_steps_of_an_uninterrupted_one(tmp_path, cadence):
    whole = lc.SpectralMonitor(every_n_steps=cadence, metrics=METRICS)
    fit(whole, epochs=40, logger=logger_at(tmp_path / "whole"))
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="{step}", every_n_train_steps=10,
                                  save_top_k=-1)
    fit(lc.SpectralMonitor(every_n_steps=cadence, metrics=METRICS), epochs=25, enable_checkpointing=True,
        callbacks=[checkpoints], logger=logger_at(tmp_path / "resumed"))
    # a new process resumes from step 20, between two log-spaced records (16 and 24)
    resumed = lc.SpectralMonitor(every_n_steps=cadence, metrics=METRICS)
    fit(resumed, epochs=40, ckpt_path=tmp_path / "ckpt" / "step=20.ckpt", logger=logger_at(tmp_path / "resumed"))
    assert csv_text(logger_at(tmp_path / "resumed")) == csv_text(logger_at(tmp_path / "whole"))
    pd.testing.assert_frame_equal(resumed.to_frame(), whole.to_frame())
    expected = as_cadence(cadence).steps(40)
    assert sorted(resumed.to_frame().step.unique()) == expected + ([40] if 40 not in expected else [])


def test_all_finite_agrees_with_isfinite_including_sums_that_overflow():
    big = torch.full((3, 3), 1e308, dtype=torch.float64)  # finite entries whose float64 sum is Inf
    cases = [torch.randn(4, 5), big, torch.randn(2, 2), torch.randn(6, 3).half()]
    cases[2][1, 1] = math.nan
    bad_inf = torch.randn(4, 5)
    bad_inf[0, 3] = -math.inf
    both = torch.zeros(3, 3)
    both[0, 0], both[1, 1] = math.inf, -math.inf  # sums to NaN
    cases += [bad_inf, both, torch.full((2, 2), 6e4).half()]  # half entries near their max: float64 sum is fine
    assert all_finite(cases) == [bool(torch.isfinite(m).all()) for m in cases] == [
        True, True, False, True, False, False, True
    ]


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_spectra_reach_the_host_unchanged_in_one_transfer_per_dtype(device):
    tensors = {"a": torch.rand(5, device=device), "b": torch.rand(0, device=device),
               "c": torch.rand(7, dtype=torch.float64, device=device), "d": torch.rand(3, device=device)}
    host = to_host(tensors)
    assert list(host) == list(tensors)
    for name, t in tensors.items():
        assert host[name].device.type == "cpu" and host[name].dtype == t.dtype
        assert torch.equal(host[name], t.cpu()), name

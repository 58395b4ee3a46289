"""Quiet and informative: one warning per distinct cause, no noise for user models."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from conftest import TwoBranchNet, make_trainer

import lightning_critical as lc


def fit_and_catch(callbacks: list[Any], max_epochs: int = 2) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=max_epochs, callbacks=callbacks).fit(TwoBranchNet(optimizer="adam"))
    return [str(w.message) for w in caught]


def test_cut_short_is_said_once_per_distinct_window_per_process():
    # The flagship demo's onset sweep trained five nets with one window past max_epochs and
    # printed the same "cut short" warning five times.
    said = []
    for _ in range(3):
        said += fit_and_catch([lc.PathwayDeficit("right", window=(1, 5))])
    assert [m for m in said if "cut short" in m] == [
        "PathwayDeficit[freeze/right, [1, 5) epochs] ends after max_epochs=2: it will be cut short."
    ]
    # a distinct cause is still said
    later = fit_and_catch([lc.PathwayDeficit("right", window=(3, 5))])
    assert [m for m in later if "never be active" in m] == [
        "PathwayDeficit[freeze/right, [3, 5) epochs] starts at or after max_epochs=2: it will never be active."
    ]


def test_default_metrics_on_a_user_model_say_nothing_about_mode_strength(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    for name in ("pytorch_lightning", "lightning.pytorch"):
        caplog.set_level(logging.INFO, logger=name)
        # Lightning's loggers do not propagate to the root, where pytest < 8 keeps caplog's handler
        logger = logging.getLogger(name)
        if caplog.handler not in logger.handlers:
            monkeypatch.setattr(logger, "handlers", [*logger.handlers, caplog.handler])
    monitor = lc.SpectralMonitor(every_n_steps=2)
    said = fit_and_catch([monitor], max_epochs=1)
    assert not [m for m in said + caplog.messages if "mode_strength" in m or "task basis" in m]
    frame = monitor.to_frame()
    assert "mode_strength" not in set(frame.metric) and "singular_values" in set(frame.metric)
    # asked for by name, its absence is reported (once)
    caplog.clear()
    fit_and_catch([lc.SpectralMonitor(every_n_steps=2, metrics=("mode_strength", "spectral_norm"))], max_epochs=1)
    # one record (a handler reached twice, through the root and the named logger, appends it twice)
    assert len({id(r) for r in caplog.records if "mode_strength skipped: no task basis" in r.getMessage()}) == 1


def test_demo_stages_report_each_finished_run():
    from lightning_critical.experiments.pathways import deficit_onset_sweep, early_middle_late

    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        early_middle_late({"early": 0, "late": 30}, length=20, width=8, depth=2, max_epochs=40, every_n_steps=40,
                          progress=lines.append)
        deficit_onset_sweep(depths=(2,), onsets=(0,), length=20, sgd_onsets=(30,), width=8, max_epochs=40,
                            progress=lines.append)
    assert [line.split(":")[0] for line in lines] == [
        "early deficit, epochs [0, 20)", "late deficit, epochs [30, 50)",
        "onset sweep, depth 2, deficit epochs [30, 40)",
    ]
    # windows past the end of training are trained up to it (the same runs), not warned about
    assert [str(w.message) for w in caught if "cut short" in str(w.message)] == []

"""Monitor: a user-written monitor on the base, in a real Trainer (cadence, history, resume, report-once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import pandas as pd
import pytest
import torch
from conftest import TwoBranchNet, make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.history import read_history
from lightning_critical.monitors.base import Monitor
from lightning_critical.probing import is_probing

CSVLogger = pl.loggers.CSVLogger


class BranchNorm(Monitor):
    """The Frobenius norm of each branch's first weight; says once that the head is left out."""

    metric = "branch_norm"

    def __init__(self, every_n_steps: Any = 2, history_file: str | None = "branch_norms.csv") -> None:
        super().__init__(every_n_steps, history_file)
        self.probing_seen: list[bool] = []
        self.paths_seen: list[str | None] = []

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "left"):
            raise ValueError("BranchNorm needs a model with branches 'left' and 'right'.")

    def measure(self, trainer: pl.Trainer, pl_module: Any) -> Mapping[str, float]:
        self.probing_seen.append(is_probing() and not torch.is_grad_enabled())
        self.paths_seen.append(self.history_path)
        self.report_once("head", "the head is not measured.")
        return {name: float(getattr(pl_module, name)[0].weight.detach().norm()) for name in ("left", "right")}


def _logged(tmp_path: Any) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "metrics.csv")


def test_a_user_monitor_records_on_its_cadence_keeps_a_history_and_logs_scalars(tmp_path, monkeypatch):
    import lightning_critical.monitors.base as monitor_base

    said: list[str] = []
    monkeypatch.setattr(monitor_base, "rank_zero_info", said.append)
    monitor = BranchNorm(every_n_steps=3)
    logger = CSVLogger(str(tmp_path), name="", version="")
    model = TwoBranchNet()
    make_trainer(tmp_path, max_epochs=2, callbacks=[monitor], logger=logger, log_every_n_steps=1).fit(model)

    frame = monitor.to_frame()
    assert sorted(frame.step.unique()) == [0, 3, 6]  # 8 steps, every 3
    assert set(frame.target) == {"left", "right"} and set(frame.metric) == {"branch_norm"}
    assert set(frame["index"]) == {-1}
    last = frame[frame.step == 6].set_index("target").value
    first = cast(torch.nn.Linear, model.left[0])
    assert last["left"] != pytest.approx(float(first.weight.norm()))  # taken before update 7, not after
    assert all(monitor.probing_seen) and len(monitor.probing_seen) == 3
    on_disk = read_history(str(tmp_path / "branch_norms.csv"))
    pd.testing.assert_frame_equal(on_disk.reset_index(drop=True), frame.reset_index(drop=True), check_dtype=False)
    logged = _logged(tmp_path)
    assert logged.dropna(subset=["branch_norm/left"]).step.tolist() == [0, 3, 6]
    assert said == ["BranchNorm: the head is not measured."]  # once, not at every record


def test_a_user_monitor_resumed_from_a_checkpoint_continues_the_same_history(tmp_path):
    whole = BranchNorm(every_n_steps=1)
    make_trainer(tmp_path / "whole", max_epochs=3, callbacks=[whole]).fit(TwoBranchNet())

    first = BranchNorm(every_n_steps=1)
    logger = CSVLogger(str(tmp_path / "run"), name="", version="")
    trainer = make_trainer(tmp_path / "run", max_epochs=1, callbacks=[first], logger=logger)
    trainer.fit(TwoBranchNet())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = BranchNorm(every_n_steps=1)
    logger = CSVLogger(str(tmp_path / "run"), name="", version="")
    make_trainer(tmp_path / "run", max_epochs=3, callbacks=[resumed], logger=logger).fit(
        TwoBranchNet(), ckpt_path=str(ckpt)
    )
    on_disk = read_history(str(tmp_path / "run" / "branch_norms.csv"))
    assert on_disk.step.tolist() == whole.to_frame().step.tolist()  # 0..11: no gap, no duplicate
    assert on_disk.value.tolist() == pytest.approx(whole.to_frame().value.tolist(), rel=0, abs=0)


def test_a_failing_fit_closes_the_history_file_with_what_was_recorded(tmp_path):
    monitor = BranchNorm(every_n_steps=1)
    logger = CSVLogger(str(tmp_path), name="", version="")
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(tmp_path, max_epochs=3, callbacks=[monitor], logger=logger).fit(TwoBranchNet(fail_at_step=5))
    assert monitor.paths_seen[0] == str(tmp_path / "branch_norms.csv") and monitor.history_path is None  # closed
    assert read_history(str(tmp_path / "branch_norms.csv")).step.unique().tolist() == [0, 1, 2, 3, 4, 5]


def test_the_base_validates_before_training_and_refuses_two_monitors_on_one_file(tmp_path):
    class NoBranches(TwoBranchNet):
        def __init__(self) -> None:
            super().__init__()
            del self.left

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.right(x))

    with pytest.raises(ValueError, match="needs a model with branches"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[BranchNorm()]).fit(NoBranches())
    logger = CSVLogger(str(tmp_path), name="", version="")
    with pytest.raises(ValueError, match=r"history_file='branch_norms.csv' is used by two monitors"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[BranchNorm(), BranchNorm(every_n_steps=5)],
                     logger=logger).fit(TwoBranchNet())
    with pytest.raises(ValueError, match=r"history_file='fisher_history.csv' is used by two monitors"):
        make_trainer(tmp_path, max_epochs=1, callbacks=[lc.FisherMonitor(), lc.FisherMonitor(num_batches=1)],
                     logger=CSVLogger(str(tmp_path), name="", version="")).fit(TwoBranchNet())
    with pytest.raises(ValueError, match=r"every_n_steps=0"):
        BranchNorm(every_n_steps=0)


def test_a_monitor_without_measure_or_cadence_says_what_to_implement(tmp_path):
    class Empty(Monitor):
        pass

    with pytest.raises(NotImplementedError, match=r"Empty must implement measure\(\) or override record\(\)"):
        make_trainer(tmp_path, max_steps=1, callbacks=[Empty()]).fit(TwoBranchNet())

    class NoCadence(BranchNorm):
        def __init__(self) -> None:
            super().__init__(every_n_steps=None, history_file=None)

    with pytest.raises(NotImplementedError, match=r"NoCadence has no cadence"):
        make_trainer(tmp_path, max_steps=1, callbacks=[NoCadence()]).fit(TwoBranchNet())


def test_the_bundled_monitors_share_the_base():
    for cls in (lc.SpectralMonitor, lc.FisherMonitor):
        assert issubclass(cls, Monitor)
        assert "to_frame" not in cls.__dict__ and "report_once" not in cls.__dict__, cls  # one implementation
    assert lc.FisherMonitor().metric == "fisher_trace" and lc.FisherMonitor().cadence is None

"""Resumable and fault-tolerant sweeps: failures recorded, reruns skip and retry, interrupts lose nothing."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import SWEEP_CPU as CPU
from conftest import map_norms, pathway_data, pathway_model

import lightning_critical as lc
from lightning_critical._namespace import pl


class Misbehave(pl.Callback):
    """While ``flag`` exists: raise, interrupt (Ctrl-C) or kill the process at the start of epoch 6."""

    def __init__(self, flag, how):
        self.flag, self.how = flag, how

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != 6 or not os.path.exists(self.flag):
            return
        if self.how == "raise":
            raise RuntimeError("boom inside the window")
        if self.how == "interrupt":
            raise KeyboardInterrupt
        os._exit(3)


class FreezeAndMisbehave:
    """Freeze pathway b in each window; the run whose window ends at ``end`` misbehaves."""

    def __init__(self, flag, end, how):
        self.flag, self.end, self.how = flag, end, how

    def __call__(self, window):
        callbacks: list[pl.Callback] = [lc.PathwayDeficit("b", window, mode="freeze")]
        if window.end == self.end:
            callbacks.append(Misbehave(self.flag, self.how))
        return callbacks


def _sweep(out, deficit, backend="serial", **kw):
    args = dict(model=pathway_model, datamodule=pathway_data, deficit=deficit, windows=lc.sweep.removal([2, 4, 6]),
                metrics=map_norms, trainer={"max_epochs": 8, **CPU}, out=str(out), backend=backend, tensorboard=False,
                plot=False, progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


def _lines(out):
    with open(os.path.join(out, "results.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture
def reference(tmp_path):
    """The same sweep, uninterrupted, every run from scratch."""
    return _sweep(tmp_path / "reference", FreezeAndMisbehave(str(tmp_path / "never"), 4, "raise"), share_prefixes=False)


def test_a_failing_run_is_recorded_and_a_rerun_retries_only_it(tmp_path, reference):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "sweep"
    deficit = FreezeAndMisbehave(str(flag), 4, "raise")
    table = _sweep(out, deficit)
    failed = table[table.status == "failed"]
    assert failed.window.tolist() == ["[0, 4) epochs"]
    assert "RuntimeError: boom inside the window" in failed.error.item()
    assert (table[table.status == "ok"].window_end.fillna(0).tolist()) == [0, 2, 6]
    assert len(_lines(out)) == 4
    flag.unlink()
    again = _sweep(out, deficit)
    assert (again.status == "ok").all()
    lines = _lines(out)
    assert len(lines) == 5 and lines[-1]["run_id"] == failed.run_id.item()  # only the failed run trained again
    assert again.norm_b.tolist() == reference.norm_b.tolist()


def test_ctrl_c_in_a_serial_sweep_loses_no_finished_run(tmp_path, reference):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "sweep"
    deficit = FreezeAndMisbehave(str(flag), 2, "interrupt")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _sweep(out, deficit)
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's "ignore Ctrl-C from now on" is undone
    saved = lc.sweep.load(out)  # a valid table of what finished
    assert len(saved) >= 1 and (saved.status == "ok").all()
    assert "[0, 2) epochs" not in saved.window.tolist()
    flag.unlink()
    resumed = _sweep(out, deficit)
    assert (resumed.status == "ok").all()
    assert len(_lines(out)) == 4  # every run trained once
    # the interrupted run branched from a checkpoint left by the first session and still equals scratch
    assert resumed.norm_b.tolist() == reference.norm_b.tolist()
    assert resumed.norm_a.tolist() == reference.norm_a.tolist()
    assert not (out / "checkpoints").exists()  # cleaned once everything finished


def test_a_worker_that_dies_fails_only_its_run(tmp_path, reference):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "sweep"
    deficit = FreezeAndMisbehave(str(flag), 4, "exit")
    table = _sweep(out, deficit, backend="process", workers=2)
    assert table.set_index("window").status.to_dict() == {
        "none": "ok", "[0, 2) epochs": "ok", "[0, 4) epochs": "failed", "[0, 6) epochs": "ok"}
    assert "worker process died" in table[table.status == "failed"].error.item()
    assert len(lc.sweep.load(out)) == 4
    ok = table.status == "ok"
    assert table[ok].norm_b.tolist() == reference[ok].norm_b.tolist()
    flag.unlink()
    again = _sweep(out, deficit, backend="serial")
    assert again.norm_b.tolist() == reference.norm_b.tolist()


def test_an_out_directory_holding_another_sweep_is_refused(tmp_path):
    out = tmp_path / "sweep"
    deficit = FreezeAndMisbehave(str(tmp_path / "never"), 4, "raise")
    _sweep(out, deficit, windows=lc.sweep.removal([2]), trainer={"max_epochs": 3, **CPU})
    with pytest.raises(lc.sweep.SweepDirectoryError, match=r"holds a different sweep(.|\n)*trainer.max_epochs: 3 -> 4"):
        _sweep(out, deficit, windows=lc.sweep.removal([2]), trainer={"max_epochs": 4, **CPU})
    # more seeds or windows on the same training setup are the same sweep: only the new runs train
    more = _sweep(out, deficit, windows=lc.sweep.removal([1, 2]), trainer={"max_epochs": 3, **CPU}, seeds=[0, 1])
    assert len(more) == 6 and (more.status == "ok").all()
    assert len(_lines(out)) == 6

"""The vectorized runner's logs: every member's TensorBoard files read back equal to the default runner's runs'.

Also: every logged value is kept over the whole run (a value logged only in early epochs is a final
metric, as in Lightning's ``callback_metrics``), ``tensorboard=True`` with ``runner="auto"``, and a
refused sweep writes nothing.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_sweep_vectorized import MLP

import lightning_critical as lc
from lightning_critical import _tensorboard_hparams as hparams_files
from lightning_critical.sweep import VectorizedRefused
from lightning_critical.sweep.runners.vectorized import AutoRunner
from lightning_critical.sweep.runners.vectorized.history import Histories

BOOKKEEPING = ("run_id", "branch_epoch")  # the runner is part of the identity; the default runner branches


class Logging(MLP):
    """Logs on every kind of cadence: per step, per epoch (mean), both (forked), to the callback only, early only,
    only on Lightning's logging steps (as ``MultiPathwayLinearNet`` does), per validation batch."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log("train_loss", loss)
        self.log("train_acc", acc, on_step=True, on_epoch=True)
        self.log("train_acc_mean", acc, on_step=False, on_epoch=True)
        self.log("hidden", acc, logger=False)
        if self.current_epoch == 0:
            self.log("early_acc", acc)
        if self.global_step % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]
            self.log("sampled_acc", acc)
            self.log("sampled_loss", loss)  # replayed alone where logged (an irregular name): bitwise
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        x, y = batch
        self.log("val_batch_acc", (self(x).argmax(1) == y).float().mean(), on_step=True, on_epoch=False)


FINAL = ["val_acc", "val_loss", "train_loss", "train_acc_epoch", "train_acc_mean", "hidden", "early_acc",
         "sampled_acc", "sampled_loss"]


def sweep(out: Any, runner: Any, deficit: Any = None, model: Any = Logging, **kw: Any) -> Any:
    # share_prefixes=False: a branched run of the default runner starts from its parent's checkpoint, whose
    # callback_metrics (a value logged only in early epochs) it does not get back
    return lc.sweep.run(
        model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
        deficit=deficit or lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1, 2], epochs_after=1),
        seeds=[0, 1], metrics=kw.pop("metrics", FINAL), trainer={"log_every_n_steps": 2, **kw.pop("trainer", {})},
        runner=runner, out=str(out), backend="serial", plot=False, share_prefixes=False, **kw)


def events(log_dir: str) -> set[tuple[str, int, Any]]:
    """Every ``(tag, step, value)`` of the run's event files (a scalar's value, else its plugin and content)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    out = set()
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for raw in RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(raw)
            for value in event.summary.value if event.HasField("summary") else ():
                kept = value.simple_value if value.HasField("simple_value") else (
                    value.metadata.plugin_data.plugin_name, value.tensor.SerializeToString())
                if not value.tag.startswith("_hparams_"):  # the session: compared by read_run_session
                    out.add((value.tag, event.step, kept))
    return out


def session(log_dir: str) -> tuple[dict[str, Any], dict[str, float], int]:
    found = hparams_files.read_run_session(log_dir)
    assert found is not None, log_dir
    params, metrics, step = found
    return {k: v for k, v in params.items() if k not in BOOKKEEPING}, metrics, step


def schedule(log_dir: str) -> dict[str, Any]:
    with open(os.path.join(log_dir, "schedule.json")) as fh:
        out = json.load(fh)
    out["run"] = {k: v for k, v in out["run"].items() if k not in BOOKKEEPING}
    return dict(out)


@pytest.mark.parametrize("deficit", [
    None,  # an input deficit per member
    lc.PathwayDeficit("l1", (0, 1), mode="freeze"),
    lc.PathwayDeficit("l1", (0, 2), mode="silence"),
])
def test_tensorboard_logs_equal_the_default_runners_runs(tmp_path: Any, deficit: Any) -> None:
    default = sweep(tmp_path / "default", None, deficit, tensorboard=True)
    vectorized = sweep(tmp_path / "vectorized", "vectorized", deficit, tensorboard=True)
    assert (default[FINAL].values == vectorized[FINAL].values).all()
    for label, log_dir in zip(vectorized["label"], vectorized["log_dir"], strict=True):
        theirs = str(tmp_path / "default" / "tensorboard" / label)
        assert log_dir == str(tmp_path / "vectorized" / "tensorboard" / label)
        ours = events(log_dir)
        tags = {tag for tag, _, _ in ours}
        assert {"train_loss", "train_acc_step", "train_acc_epoch", "train_acc_mean", "val_loss", "epoch",
                "sampled_acc", "early_acc", "val_batch_acc"} <= tags and "hidden" not in tags, tags
        assert any(tag.startswith("deficit/") for tag in tags) == (label.startswith("w")), label
        assert ours == events(theirs), (label, sorted(ours ^ events(theirs))[:6])
        assert session(log_dir) == session(theirs)
        assert schedule(log_dir) == schedule(theirs)
        with open(os.path.join(log_dir, "hparams.yaml")) as a, open(os.path.join(theirs, "hparams.yaml")) as b:
            assert a.read() == b.read()
    assert os.path.exists(os.path.join(tmp_path, "vectorized", "tensorboard", hparams_files.SWEEP_FILE))


def test_a_value_logged_only_in_early_epochs_is_a_final_metric(tmp_path: Any) -> None:
    # log_every_n_steps=4 > the last epoch's 3 steps: "sampled_*" of the 2-epoch runs were last logged at step 4,
    # not the run's last (bitwise: replayed), "early_acc" in epoch 0 (was MetricNotFound)
    kw = {"trainer": {"log_every_n_steps": 4}, "tensorboard": False}
    default = sweep(tmp_path / "default", None, **kw)
    vectorized = sweep(tmp_path / "vectorized", "vectorized", **kw)
    assert (vectorized["status"] == "ok").all()
    assert (default[FINAL].values == vectorized[FINAL].values).all()


def test_auto_writes_tensorboard_logs(tmp_path: Any, capsys: Any) -> None:
    table = sweep(tmp_path, "auto", metrics=["val_acc"], tensorboard=True)
    assert "runner='auto': the vectorized runner" in capsys.readouterr().out
    assert all(os.path.exists(os.path.join(d, "schedule.json")) for d in table["log_dir"])
    assert "tensorboard" in lc.sweep.VectorizedRunner.supports and "tensorboard" in AutoRunner.supports


def test_a_refused_sweep_writes_nothing(tmp_path: Any) -> None:
    out = tmp_path / "refused"
    with pytest.raises(VectorizedRefused, match="Mine"):  # a deficit class of the user's
        sweep(out, "vectorized", type("Mine", (lc.PathwayDeficit,), {})("l1", (0, 1)), metrics=["val_acc"])
    assert not os.path.exists(out) or not os.listdir(out)


def test_a_forked_member_keeps_its_parents_logs() -> None:
    parent, child, other = object(), object(), object()
    logs = Histories([parent, other], every=1, scalars=True)
    logs.log([parent, other], [0, 1], 0, 0, {"train_loss": torch.tensor([1.0, 2.0])})
    logs.update([parent, other], [0, 1], {"train_loss": torch.tensor([1.0, 2.0])})
    logs.fork(parent, child)
    logs.log([parent, child], [1], 1, 0, {"train_loss": torch.tensor([3.0, 4.0])})
    assert logs[child].events == [(0, {"train_loss": 1.0, "epoch": 0.0}), (1, {"train_loss": 4.0, "epoch": 0.0})]
    assert logs[parent].events == [(0, {"train_loss": 1.0, "epoch": 0.0})]
    assert logs[child].callback == {"train_loss": 1.0}


class Sampled(MLP):
    """Logs its loss every step and again, as ``sampled_loss``, only at ``log_every_n_steps`` steps."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.global_step % self.trainer.log_every_n_steps == 0:  # type: ignore[attr-defined]
            self.log("sampled_loss", loss)
        return loss


def test_steps_that_log_a_name_irregularly_are_replayed(tmp_path: Any, monkeypatch: Any) -> None:
    from lightning_critical.sweep.runners.vectorized.stack import Stack

    replayed: list[int] = []
    original = Stack.replay

    def replay(self: Stack, method: str, *args: Any) -> Any:
        if method == "training_step":
            replayed.append(self.view.global_step)
        return original(self, method, *args)

    monkeypatch.setattr(Stack, "replay", replay)
    table = sweep(tmp_path, "vectorized", model=Sampled, metrics=["sampled_loss", "train_loss"],
                  trainer={"log_every_n_steps": 4}, tensorboard=False)
    assert (table["status"] == "ok").all()
    # runs of 3, 6 and 9 steps: their last steps 2, 5, 8 (final values); the job's first step 0; step 4, whose
    # sampled_loss stays final for the 6-step runs (step 8's for the others)
    assert sorted(set(replayed)) == [0, 2, 4, 5, 8]


def test_the_bundled_linear_nets_logs_equal_the_default_runners(tmp_path: Any) -> None:
    # logs only at steps where global_step % log_every_n_steps == 0; no validation; hyperparameters in the session
    def run(runner: Any) -> Any:
        return lc.sweep.run(
            functools.partial(lc.models.MultiPathwayLinearNet, depth=2, width=8),
            functools.partial(lc.data.HierarchicalDataModule, batch_size=4), deficit=lc.PathwayDeficit("b", (0, 1)),
            windows=lc.sweep.removal([1]), seeds=[0], metrics="train_loss",
            trainer={"max_epochs": 3, "log_every_n_steps": 3}, runner=runner, out=str(tmp_path / str(runner)),
            backend="serial", tensorboard=True, plot=False, share_prefixes=False)
    default, vectorized = run(None), run("vectorized")
    assert default["train_loss"].tolist() == vectorized["train_loss"].tolist()
    for label, log_dir in zip(vectorized["label"], vectorized["log_dir"], strict=True):
        theirs = str(tmp_path / "None" / "tensorboard" / label)
        assert events(log_dir) == events(theirs) and {t for t, _, _ in events(log_dir)} >= {"train_loss", "epoch"}
        assert session(log_dir) == session(theirs) and "model/depth" in session(log_dir)[0]
        assert schedule(log_dir) == schedule(theirs)

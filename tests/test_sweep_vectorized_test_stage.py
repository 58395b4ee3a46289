"""``test=True`` with the vectorized runner: each member's test values equal its run's under the default runner."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_sweep_vectorized import MLP

import lightning_critical as lc
from lightning_critical.sweep import VectorizedRefused

METRICS = ["test_acc", "test_loss", "val_acc", "train_loss"]


class MLPWithTest(MLP):
    """The suite's MLP with a ``test_step`` (logs with a batch size of its own, as users do)."""

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y), batch_size=len(y))
        self.log("test_acc", (logits.argmax(1) == y).float().mean())


class HookedTest(MLPWithTest):
    def on_test_epoch_end(self) -> None:
        pass


def sweep(tmp_path: Any, runner: Any, model: Any = MLPWithTest, metrics: list[str] = METRICS) -> Any:
    return lc.sweep.run(
        model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32, test_fraction=0.3),
        deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1, 2], epochs_after=1), seeds=[0, 1],
        metrics=metrics, trainer={}, runner=runner, out=os.path.join(tmp_path, str(runner)), backend="serial",
        tensorboard=False, plot=False, test=True)


def test_test_values_equal_the_default_runners_bitwise(tmp_path: Any) -> None:
    base = sweep(tmp_path, None)
    vec = sweep(tmp_path, "vectorized")
    assert (vec["status"] == "ok").all() and list(vec["label"]) == list(base["label"])
    assert vec[METRICS].to_numpy().tolist() == base[METRICS].to_numpy().tolist()
    assert base["test_acc"].nunique() > 1  # the runs differ: the comparison means something


def test_convolutional_members_are_tested_on_their_own_rows(tmp_path: Any) -> None:
    cnn = functools.partial(lc.models.SmallCNN, 1, 10, channels=(4, 8), lr=0.1)
    base = sweep(tmp_path, None, cnn, ["test_acc", "test_loss"])
    vec = sweep(tmp_path, "vectorized", cnn, ["test_acc", "test_loss"])
    gap = (base[["test_acc", "test_loss"]] - vec[["test_acc", "test_loss"]]).abs().to_numpy().max()
    assert gap < 1e-4  # the trained weights differ by float32 rounding of the grouped convolution only


def test_overridden_test_hooks_and_a_missing_test_step_are_refused_before_training(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match=r"on_test_epoch_end"):
        sweep(tmp_path, "vectorized", HookedTest)
    with pytest.raises(ValueError, match=r"MLP has no test_step"):  # the pre-flight says it first
        sweep(tmp_path, lc.sweep.VectorizedRunner(), MLP)
    assert not os.path.exists(os.path.join(tmp_path, "vectorized", "models"))


def test_auto_runner_keeps_the_vectorized_runner_with_test(tmp_path: Any, capsys: Any) -> None:
    table = sweep(tmp_path, "auto", metrics=["test_acc"])
    assert "the vectorized runner" in capsys.readouterr().out
    assert torch.isfinite(torch.tensor(table["test_acc"].to_numpy())).all()


def test_no_validation_with_limit_val_batches_zero_as_under_lightning(tmp_path: Any) -> None:
    def run(runner: Any, limit: float) -> Any:
        return lc.sweep.run(
            MLPWithTest, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
            deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1], epochs_after=1), seeds=[0],
            metrics=["train_loss", "test_acc"], trainer={"limit_val_batches": limit}, runner=runner,
            out=os.path.join(tmp_path, f"{runner}{limit}"), backend="serial", tensorboard=False, plot=False,
            test=True)

    base, vec = run(None, 0), run("vectorized", 0)
    assert vec[["train_loss", "test_acc"]].to_numpy().tolist() == base[["train_loss", "test_acc"]].to_numpy().tolist()
    with pytest.raises(VectorizedRefused, match=r"limit_val_batches=0.5 \(it honours 0 and 1.0\)"):
        run("vectorized", 0.5)


def test_test_values_reach_tensorboard_as_the_default_runners(tmp_path: Any) -> None:
    from test_sweep_vectorized_logs import events

    def run(runner: Any) -> Any:
        return lc.sweep.run(
            MLPWithTest, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32, test_fraction=0.3),
            deficit=lc.InputDeficit("blur", (0, 1)), windows=[(0, 1)], seeds=[0], metrics=["test_acc"],
            trainer={"max_epochs": 2}, runner=runner, out=os.path.join(tmp_path, str(runner)), backend="serial",
            plot=False, test=True, tensorboard=True)

    base, vec = run(None), run("vectorized")
    for theirs, ours in zip(base["log_dir"], vec["log_dir"], strict=True):
        assert {"test_acc", "test_loss"} <= {tag for tag, _, _ in events(ours)}
        assert events(ours) == events(theirs)


def test_the_preflight_finds_a_mistyped_metric_before_the_job(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="test_acc_typo"):
        sweep(tmp_path, "vectorized", metrics=["test_acc_typo"])
    assert not os.path.exists(os.path.join(tmp_path, "vectorized", "results.jsonl"))  # nothing trained

"""The vectorized runner: members equal the default runner's runs bitwise; what it cannot map is refused first."""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep import VectorizedRefused

METRICS = ["val_acc", "val_loss", "train_loss"]


class MLP(pl.LightningModule):
    """A 64-16-10 MLP on the digits; ``opt`` picks the optimizer, the flags a construct to refuse."""

    def __init__(self, opt: str = "sgd", dropout: bool = False, item: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.opt, self.item, self.lr = opt, item, lr
        self.l1, self.l2 = nn.Linear(64, 16), nn.Linear(16, 10)
        self.drop = nn.Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.drop(F.relu(self.l1(x.flatten(1)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self.item and loss.item() > 100:  # data-dependent control flow
            loss = loss * 0
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        if self.opt == "lbfgs":
            return torch.optim.LBFGS(self.parameters())
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        if self.opt == "plateau":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                                                       "monitor": "val_loss"}}
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)}


class Manual(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class Hooked(MLP):
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        pass


def sweep(tmp_path: Any, runner: Any, model: Any = MLP, deficit: Any = None, **kw: Any) -> Any:
    out = os.path.join(tmp_path, str(runner))
    return lc.sweep.run(
        model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
        deficit=deficit or lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1, 2], epochs_after=1),
        seeds=[0, 1], metrics=METRICS, trainer=kw.pop("trainer", {}), runner=runner, out=out, backend="serial",
        tensorboard=False, plot=False, **kw)


def weights(tmp_path: Any, runner: str, label: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(tmp_path, runner, "models", f"{label}.pt"))


@pytest.mark.parametrize(("opt", "deficit"), [
    ("sgd", None),  # SGD + momentum + weight decay + ExponentialLR, an input deficit per member
    ("adam", lc.PathwayDeficit("l1", (0, 1), mode="freeze")),
    ("sgd", lc.PathwayDeficit("l1", (0, 2), mode="freeze")),
    ("sgd", lc.PathwayDeficit("l1", (0, 1), mode="silence")),
])
def test_members_equal_the_default_runners_runs_bitwise(tmp_path: Any, opt: str, deficit: Any) -> None:
    model = functools.partial(MLP, opt=opt)
    default = sweep(tmp_path, None, model, deficit, save_model=True)
    vectorized = sweep(tmp_path, "vectorized", model, deficit, save_model=True)
    assert (vectorized["status"] == "ok").all()
    assert default["label"].tolist() == vectorized["label"].tolist()
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    for label in default["label"]:
        a, b = weights(tmp_path, "None", label), weights(tmp_path, "vectorized", label)
        assert all(torch.equal(a[k], b[k]) for k in a), label


@pytest.mark.parametrize(("runner", "opt", "deficit"), [
    (lc.sweep.VectorizedRunner(stacked_optimizer=False), "sgd", lc.PathwayDeficit("l1", (0, 1), mode="freeze")),
    (lc.sweep.VectorizedRunner(stacked_optimizer=False), "adam", None),
    (lc.sweep.VectorizedRunner(), "adam", None),  # one stock Adam over the stacked rows
])
def test_one_optimizer_per_member_and_stacked_adam_are_bitwise(tmp_path: Any, runner: Any, opt: str,
                                                               deficit: Any) -> None:
    model = functools.partial(MLP, opt=opt)
    default = sweep(tmp_path, None, model, deficit)
    vectorized = sweep(tmp_path, runner, model, deficit)
    assert (default[METRICS].values == vectorized[METRICS].values).all()


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_per_member_is_bitwise(tmp_path: Any, algorithm: str) -> None:
    freeze = lc.PathwayDeficit("l1", (0, 1), mode="freeze")  # clipped over the member's unfrozen gradients only
    trainer = {"gradient_clip_val": 0.05, "gradient_clip_algorithm": algorithm}
    default = sweep(tmp_path, None, deficit=freeze, trainer=trainer)
    vectorized = sweep(tmp_path, "vectorized", deficit=freeze, trainer=trainer)
    unclipped = sweep(tmp_path / "u", "vectorized", deficit=freeze)
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    assert (default[METRICS].values != unclipped[METRICS].values).any()  # the clip bites


def test_a_swept_learning_rate_shares_the_job_bitwise(tmp_path: Any, capsys: Any) -> None:
    default = sweep(tmp_path, None, params={"lr": [0.05, 0.2]})
    vectorized = sweep(tmp_path, "auto", params={"lr": [0.05, 0.2]})
    assert "(12 runs in 1 job(s))" in capsys.readouterr().out  # one stacked optimizer, row-wise: their lr differ
    assert (default[METRICS].values == vectorized[METRICS].values).all()


def test_convolutions_within_float32_rounding(tmp_path: Any) -> None:
    cnn = functools.partial(lc.models.SmallCNN, 1, 10, channels=(4, 8), lr=0.1, lr_decay=0.85)
    default = sweep(tmp_path, None, cnn)
    vectorized = sweep(tmp_path, "vectorized", cnn)
    assert (vectorized["status"] == "ok").all()
    assert abs(default[METRICS].values - vectorized[METRICS].values).max() < 1e-3  # docs/vectorized.md


class BatchNormMLP(MLP):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.bn(self.l1(x.flatten(1)))))


def test_batchnorm_keeps_running_statistics_per_member(tmp_path: Any) -> None:
    default = sweep(tmp_path, None, BatchNormMLP, save_model=True)
    vectorized = sweep(tmp_path, "vectorized", BatchNormMLP, save_model=True)
    assert abs(default[METRICS].values - vectorized[METRICS].values).max() < 1e-5  # vmap's batch statistics round
    for label in default["label"]:
        a, b = weights(tmp_path, "None", label), weights(tmp_path, "vectorized", label)
        assert int(a["bn.num_batches_tracked"]) == int(b["bn.num_batches_tracked"]) > 0
        assert torch.allclose(a["bn.running_mean"], b["bn.running_mean"], atol=1e-5)
    means = [weights(tmp_path, "vectorized", label)["bn.running_mean"] for label in default["label"][:2]]
    assert not torch.equal(*means)  # each member its own statistics


def test_exact_logs_off_is_close(tmp_path: Any) -> None:
    default = sweep(tmp_path, None)
    fast = sweep(tmp_path, lc.sweep.VectorizedRunner(exact_logs=False))
    assert (abs(default[METRICS].values - fast[METRICS].values) < 1e-5).all()


@pytest.mark.parametrize(("model", "construct"), [
    (Manual, "manual optimization"),
    (functools.partial(MLP, opt="lbfgs"), "LBFGS"),
    (functools.partial(MLP, opt="plateau"), "ReduceLROnPlateau"),
    (functools.partial(MLP, dropout=True), "dropout module 'drop'"),
    (functools.partial(MLP, item=True), "trial step on two members failed"),
    (Hooked, "overrides the hooks \\['on_train_batch_start'\\]"),
])
def test_refusals_raise_before_training(tmp_path: Any, model: Any, construct: str) -> None:
    with pytest.raises(VectorizedRefused, match=construct) as info:
        sweep(tmp_path, "vectorized", model)
    assert "runner=None" in str(info.value)
    assert not os.path.exists(os.path.join(tmp_path, "vectorized", "models"))
    results = os.path.join(tmp_path, "vectorized", "results.jsonl")
    assert not os.path.exists(results) or os.path.getsize(results) == 0


def test_unsupported_deficits_and_options_are_refused(tmp_path: Any) -> None:
    with pytest.raises(VectorizedRefused, match="Mine"):  # a deficit class of the user's (built-in ones are mapped)
        sweep(tmp_path, "vectorized", deficit=type("Mine", (lc.PathwayDeficit,), {})("l1", (0, 1)))
    with pytest.raises(VectorizedRefused, match="trainer arguments"):
        lc.sweep.VectorizedRunner().batches([_task(trainer={"accumulate_grad_batches": 2})])
    with pytest.raises(ValueError, match="does not support"):
        sweep(tmp_path, "vectorized", callbacks=lambda: [pl.Callback()])
    with pytest.raises(ValueError, match="no test_step"):  # the pre-flight's check, as for the default runner
        sweep(tmp_path, "vectorized", test=True)


def _task(trainer: dict[str, Any]) -> Any:
    from types import SimpleNamespace
    return SimpleNamespace(spec=SimpleNamespace(trainer=trainer, metrics=("val_acc",)))


def test_auto_says_which_runner_and_why(tmp_path: Any, capsys: Any) -> None:
    table = sweep(tmp_path, "auto")
    assert "runner='auto': the vectorized runner (6 runs in 1 job(s)): the model qualifies" in capsys.readouterr().out
    sweep(tmp_path / "b", "auto", functools.partial(MLP, opt="plateau"))
    out = capsys.readouterr().out
    assert "runner='auto': the default runner (one fit per run): ReduceLROnPlateau" in out
    assert (table["status"] == "ok").all()


def test_batches_group_by_shapes_and_length() -> None:
    from lightning_critical.sweep.runners.vectorized.checks import REFUSALS
    assert len(REFUSALS) >= 6
    with pytest.raises(ValueError, match="max_members=0"):
        lc.sweep.VectorizedRunner(max_members=0)
    with pytest.raises(TypeError, match="runner='fast' is not valid"):
        lc.sweep.run(MLP, windows=[(0, 1)], deficit=lc.InputDeficit("blur", (0, 1)), metrics=METRICS,
                     trainer={"max_epochs": 2}, runner="fast")


@pytest.mark.parametrize(("init", "every"), [("aligned", 1), ("gaussian", 3)])
def test_the_bundled_linear_net_without_validation_is_bitwise(tmp_path: Any, init: str, every: int) -> None:
    # Aligned init reads the datamodule's task basis in setup; the step logs when (global_step + 1) is a multiple
    # of the trainer's log_every_n_steps (every=3, 6 steps: logged at steps 3 and 6, not at all if global_step
    # stayed 0); HierarchicalDataModule
    # has no val_dataloader.
    def run(runner: Any) -> Any:
        return lc.sweep.run(
            functools.partial(lc.models.MultiPathwayLinearNet, depth=2, width=8, init=init),
            functools.partial(lc.data.HierarchicalDataModule, batch_size=4),
            deficit=lc.PathwayDeficit("b", (0, 1)), windows=lc.sweep.removal([1]), seeds=[0, 1],
            metrics="train_loss", trainer={"max_epochs": 3, "log_every_n_steps": every}, runner=runner,
            out=str(tmp_path / str(runner)), backend="serial", tensorboard=False, plot=False, save_model=True)
    default, vectorized = run(None), run("vectorized")
    assert (vectorized["status"] == "ok").all()
    assert default["train_loss"].tolist() == vectorized["train_loss"].tolist()
    for label in default["label"]:
        a, b = weights(tmp_path, "None", label), weights(tmp_path, "vectorized", label)
        assert all(torch.equal(a[k], b[k]) for k in a), label


class ReadsTrainer(MLP):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        _ = self.trainer.max_epochs
        return super().training_step(batch, batch_idx)


def test_a_step_reading_the_trainer_is_refused_by_name_and_auto_falls_back(tmp_path: Any, capsys: Any,
                                                                           monkeypatch: Any) -> None:
    with pytest.raises(VectorizedRefused, match="the step reads self.trainer"):
        sweep(tmp_path, "vectorized", ReadsTrainer)
    from lightning_critical.sweep.runners.vectorized import VectorizedRunner

    def broken(self: Any, tasks: Any, *_: Any) -> None:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(VectorizedRunner, "trial", broken)
    with pytest.raises(VectorizedRefused, match="checking the sweep raised KeyError: 'a bug of ours'"):
        sweep(tmp_path / "v", "vectorized")
    table = sweep(tmp_path / "a", "auto")
    assert "the default runner (one fit per run): checking the sweep raised KeyError" in capsys.readouterr().out
    assert (table["status"] == "ok").all()

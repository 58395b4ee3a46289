"""Shared prefixes inside a vectorized job: one row until members part, then a fork, bitwise the default runner's."""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from vectorized_nets import DigitsMLP

import lightning_critical as lc
from lightning_critical.schedule import Window
from lightning_critical.sweep.runners.vectorized.prefixes import branch_points, fork_member, member_epochs
from lightning_critical.sweep.spec import RunSpec

METRICS = ["val_acc", "val_loss", "train_loss"]


class Net(DigitsMLP):
    """The digits MLP; ``opt``: SGD (momentum, weight decay, a StepLR per step) or Adam."""

    def __init__(self, opt: str = "sgd") -> None:
        super().__init__()
        self.opt = opt

    def configure_optimizers(self) -> Any:
        if self.opt == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-2)
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": step, "interval": "step"}}


class OwnGenerator(lc.data.DigitsDataModule):
    """Digits whose train loader shuffles with the datamodule's own generator (not the global one)."""

    def __init__(self, seed: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.gen = torch.Generator().manual_seed(seed + 7)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=self.gen)


def sweep(out: Any, runner: Any, windows: Any, model: Any = Net, deficit: Any = None, **kw: Any) -> Any:
    data = kw.pop("data", lc.data.DigitsDataModule)
    return lc.sweep.run(
        model, functools.partial(data, subset=96, batch_size=32),
        deficit=deficit or lc.InputDeficit("blur", (0, 1)), windows=windows, seeds=[0, 1], metrics=METRICS,
        trainer=kw.pop("trainer", {}), runner=runner, out=os.path.join(out, str(runner)), backend="serial",
        tensorboard=False, plot=False, save_model=True, **kw)


def assert_bitwise(out: Any, default: Any, vectorized: Any) -> None:
    assert (vectorized["status"] == "ok").all()
    assert default["label"].tolist() == vectorized["label"].tolist()
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    for label in default["label"]:
        a = torch.load(os.path.join(out, "None", "models", f"{label}.pt"))
        b = torch.load(os.path.join(out, "vectorized", "models", f"{label}.pt"))
        assert all(torch.equal(a[k], b[k]) for k in a), label


REMOVAL = lc.sweep.removal([1, 2, 3], epochs_after=1)
SLIDING = lc.sweep.sliding([0, 1, 2], length=1)
PER_MEMBER = lc.sweep.VectorizedRunner(stacked_optimizer=False)  # one optimizer per member


@pytest.mark.parametrize(("opt", "windows", "deficit", "runner"), [
    ("sgd", REMOVAL, None, "vectorized"),  # SGD + momentum + weight decay + a per-step StepLR, an input deficit
    ("sgd", SLIDING, lc.PathwayDeficit("l1", (0, 1), mode="silence"), "vectorized"),
    ("adam", REMOVAL, lc.PathwayDeficit("l1", (0, 1), mode="freeze"), "vectorized"),  # one optimizer per member
    ("sgd", SLIDING, lc.PathwayDeficit("l1", (0, 1), mode="freeze"), PER_MEMBER),
])
def test_shared_prefixes_train_the_default_runners_epochs_bitwise(tmp_path: Any, opt: str, windows: Any,
                                                                  deficit: Any, runner: Any) -> None:
    model = functools.partial(Net, opt=opt)
    default = sweep(tmp_path, None, windows, model, deficit, trainer={"max_epochs": 4})
    vectorized = sweep(tmp_path, runner, windows, model, deficit, trainer={"max_epochs": 4})
    if runner != "vectorized":  # the runner's own directory name
        os.rename(os.path.join(tmp_path, str(runner)), os.path.join(tmp_path, "vectorized"))
    assert_bitwise(tmp_path, default, vectorized)
    assert vectorized["epochs_trained"].tolist() == default["epochs_trained"].tolist()
    assert vectorized.attrs["epochs_trained"] == default.attrs["epochs_trained"] < default.attrs["epochs_independent"]
    assert (vectorized["branch_epoch"] > 0).any()


def test_step_windows_share_inside_the_job_and_stay_bitwise(tmp_path: Any) -> None:
    windows = lc.sweep.sliding([4, 7], length=2, unit="step")  # 3 steps per epoch, unknown to the default runner
    default = sweep(tmp_path, None, windows, trainer={"max_epochs": 3})
    vectorized = sweep(tmp_path, "vectorized", windows, trainer={"max_epochs": 3})
    assert_bitwise(tmp_path, default, vectorized)
    assert vectorized.attrs["epochs_trained"] < default.attrs["epochs_trained"]


def test_a_fork_carries_the_generator_objects_of_the_datamodule(tmp_path: Any) -> None:
    default = sweep(tmp_path, None, REMOVAL, data=OwnGenerator)
    vectorized = sweep(tmp_path, "vectorized", REMOVAL, data=OwnGenerator)
    assert_bitwise(tmp_path, default, vectorized)
    assert (vectorized["branch_epoch"] > 0).any()


def test_share_prefixes_false_trains_every_member_from_scratch(tmp_path: Any) -> None:
    default = sweep(tmp_path, None, REMOVAL, share_prefixes=False)
    vectorized = sweep(tmp_path, "vectorized", REMOVAL, share_prefixes=False)
    assert_bitwise(tmp_path, default, vectorized)
    assert (vectorized["branch_epoch"] == 0).all()
    assert vectorized.attrs["epochs_trained"] == vectorized.attrs["epochs_independent"]


def test_branch_points_follow_the_prefix_tree() -> None:
    def task(windows: tuple[Window, ...], epochs: int, seed: int = 0) -> Any:
        return SimpleNamespace(run=RunSpec(windows, seed=seed), epochs=epochs)
    tasks = [task((), 4), task((Window(0, 1),), 2), task((Window(0, 3),), 4), task((Window(0, 3),), 4, seed=1)]
    forks = branch_points(tasks, steps_per_epoch=5)
    assert forks == {2: (1, 1)}  # [1, 1, 1, 0] branches from [1, 0] after one epoch; other seeds never share
    assert member_epochs(tasks, forks) == 13
    assert branch_points(tasks, steps_per_epoch=5, share=False) == {}


def test_a_fork_clones_optimizer_schedulers_and_random_states() -> None:
    def member(seed: int) -> Any:
        torch.manual_seed(seed)
        net = nn.Linear(2, 2)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        return SimpleNamespace(model=net, named=list(net.named_parameters()), optimizer=opt,
                               schedulers=[SimpleNamespace(scheduler=sched)], rng=(torch.get_rng_state(), None, None),
                               datamodule=None, deficits=[], train_loader=None, val_loader=None)
    parent, child = member(0), member(1)
    parent.model(torch.ones(1, 2)).sum().backward()
    parent.optimizer.step()
    parent.schedulers[0].scheduler.step()
    fork_member(parent, child)
    assert child.optimizer.param_groups[0]["lr"] == parent.optimizer.param_groups[0]["lr"] == 0.05
    assert child.schedulers[0].scheduler.last_epoch == 1
    mine = child.optimizer.state[child.named[0][1]]["momentum_buffer"]
    theirs = parent.optimizer.state[parent.named[0][1]]["momentum_buffer"]
    assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()
    assert torch.equal(child.rng[0], parent.rng[0]) and child.rng[0].data_ptr() != parent.rng[0].data_ptr()


def test_jobs_split_by_max_members_keep_a_seeds_runs_together(tmp_path: Any) -> None:
    default = sweep(tmp_path, None, REMOVAL)
    vectorized = sweep(tmp_path, lc.sweep.VectorizedRunner(max_members=4), REMOVAL)  # 4 runs per seed
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    assert vectorized["epochs_trained"].tolist() == default["epochs_trained"].tolist()

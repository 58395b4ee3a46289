"""Deficits and the monitor under DDP on CPU (two processes): same keys on every rank, no hang.

Each spawned worker destroys its gloo process group at exit (``_distributed``): left alive, it
made a worker abort now and then on a loaded machine (SIGABRT, "terminate called without an
active exception"), see :mod:`lightning_critical._distributed`.
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Any, cast

import pandas as pd
import torch
from conftest import TwoBranchNet, make_trainer, read_tensorboard

import lightning_critical as lc
from lightning_critical._namespace import pl


class CleanExit(pl.Callback):
    """Records, last of all at the worker's exit, whether its process group is gone.

    Placed first in the callback list, so its ``setup`` registers the record before the
    package's callbacks register the destroy (atexit is LIFO): the record then proves that
    our callbacks alone made the exit clean."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = record_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rank = trainer.global_rank
        path = os.path.join(self.record_dir, f"exit-rank{rank}.json")

        def record() -> None:  # registered first, so it runs after the destroy (atexit is LIFO)
            with open(path, "w") as fh:
                json.dump({"initialized": torch.distributed.is_initialized()}, fh)

        atexit.register(record)


class EveryRankLogger(pl.loggers.Logger):
    """Records the keys each rank logs (Lightning's own loggers write on rank zero only)."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    @property
    def name(self) -> str:
        return "every-rank"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rank = cast(Any, pl.utilities.rank_zero_only).rank  # set at run time, not in the stubs
        with open(os.path.join(self.directory, f"keys-rank{rank}.jsonl"), "a") as fh:
            fh.write(json.dumps([step, sorted(metrics)]) + "\n")


def assert_clean_exits(record_dir) -> None:
    for rank in (0, 1):
        with open(os.path.join(record_dir, f"exit-rank{rank}.json")) as fh:
            assert json.load(fh) == {"initialized": False}, rank


def test_ddp_spawn_freeze_and_monitor(tmp_path):
    TensorBoardLogger = pl.loggers.TensorBoardLogger

    model = TwoBranchNet()
    before = {k: v.clone() for k, v in model.right.state_dict().items()}
    logger = TensorBoardLogger(str(tmp_path), name="ddp", version="")
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, logger=[logger, EveryRankLogger(str(tmp_path))],
        deterministic=False,
        callbacks=[CleanExit(str(tmp_path)), lc.PathwayDeficit("right", (0, 2)), lc.SpectralMonitor(every_n_steps=2)],
    )
    trainer.fit(model)
    assert_clean_exits(tmp_path)
    # ddp_spawn copies the trained weights back into the launching process's model.
    for k, v in model.right.state_dict().items():
        assert torch.equal(v, before[k]), k
    history = pd.read_csv(f"{logger.log_dir}/spectral_history.csv")
    assert sorted(history.step.unique()) == [0, 2, 4]  # 4 batches/epoch over 2 ranks: 2 steps per epoch
    assert history.duplicated(["step", "target", "metric", "index"]).sum() == 0  # rank zero writes alone
    acc = read_tensorboard(logger.log_dir)
    assert "stable_rank/left.0.weight" in acc.Tags()["scalars"]
    # every rank logs the same indicator and monitor keys at the same steps; rank zero writes the schedule
    ranks = [[json.loads(line) for line in open(tmp_path / f"keys-rank{r}.jsonl")] for r in (0, 1)]
    ours = [[(step, keys) for step, keys in rank if any(k.startswith(("deficit/", "stable_rank/")) for k in keys)]
            for rank in ranks]
    assert ours[0] == ours[1] and len(ours[0]) > 4
    with open(os.path.join(logger.log_dir, "schedule.json")) as fh:
        assert json.load(fh)["deficits"][0]["steps"] == [[0, 4]]


def test_ddp_spawn_input_deficit_and_fisher_monitor(tmp_path):
    TensorBoardLogger = pl.loggers.TensorBoardLogger

    model = TwoBranchNet()
    logger = TensorBoardLogger(str(tmp_path), name="ddp", version="")
    fisher = lc.FisherMonitor(every_n_epochs=1, num_batches=1)
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, logger=logger, deterministic=False,
        callbacks=[CleanExit(str(tmp_path)), lc.InputDeficit("noise", (0, 1), noise_std=0.5), fisher],
    )
    trainer.fit(model)
    assert_clean_exits(tmp_path)
    history = pd.read_csv(f"{logger.log_dir}/fisher_history.csv")
    assert set(history.metric) == {"fisher_trace"} and sorted(history.epoch.unique()) == [0, 1]
    assert history.duplicated(["step", "target", "metric", "index"]).sum() == 0  # rank zero writes alone
    assert "training_step" not in model.__dict__  # the InputDeficit wrapper is gone
    acc = read_tensorboard(logger.log_dir)
    assert any(tag.startswith("fisher_trace/") for tag in acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("deficit/input/noise")][0] == 1.0

"""Deficits and the monitor under DDP on CPU (two processes): same keys on every rank, no hang."""

from __future__ import annotations

import pandas as pd
import torch

import lightning_critical as lc
from conftest import TwoBranchNet, make_trainer, read_tensorboard


def test_ddp_spawn_freeze_and_monitor(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    model = TwoBranchNet()
    before = {k: v.clone() for k, v in model.right.state_dict().items()}
    logger = TensorBoardLogger(str(tmp_path), name="ddp", version="")
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, logger=logger, deterministic=False,
        callbacks=[lc.PathwayDeficit("right", (0, 2)), lc.SpectralMonitor(every_n_steps=2)],
    )
    trainer.fit(model)
    # ddp_spawn copies the trained weights back into the launching process's model.
    for k, v in model.right.state_dict().items():
        assert torch.equal(v, before[k]), k
    history = pd.read_csv(f"{logger.log_dir}/spectral_history.csv")
    assert sorted(history.step.unique()) == [0, 2, 4]  # 4 batches/epoch over 2 ranks: 2 steps per epoch
    assert history.duplicated(["step", "target", "metric", "index"]).sum() == 0  # rank zero writes alone
    acc = read_tensorboard(logger.log_dir)
    assert "stable_rank/left.0.weight" in acc.Tags()["scalars"]


def test_ddp_spawn_input_deficit_and_fisher_monitor(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    model = TwoBranchNet()
    logger = TensorBoardLogger(str(tmp_path), name="ddp", version="")
    fisher = lc.FisherMonitor(every_n_epochs=1, num_batches=1)
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, logger=logger, deterministic=False,
        callbacks=[lc.InputDeficit("noise", (0, 1), noise_std=0.5), fisher],
    )
    trainer.fit(model)
    history = pd.read_csv(f"{logger.log_dir}/fisher_history.csv")
    assert set(history.metric) == {"fisher_trace"} and sorted(history.epoch.unique()) == [0, 1]
    assert history.duplicated(["step", "target", "metric", "index"]).sum() == 0  # rank zero writes alone
    assert "training_step" not in model.__dict__  # the InputDeficit wrapper is gone
    acc = read_tensorboard(logger.log_dir)
    assert any(tag.startswith("fisher_trace/") for tag in acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("deficit/input/noise")][0] == 1.0

"""The only Lightning internals we rely on: if an upgrade breaks one, this fails loudly."""

from typing import Any

from conftest import TwoBranchNet, make_trainer

from lightning_critical import _lightning
from lightning_critical._namespace import pl

TensorBoardLogger = pl.loggers.TensorBoardLogger
CSVLogger = pl.loggers.CSVLogger


def test_adapter_against_a_real_trainer(tmp_path):
    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["steps_per_epoch"] = _lightning.steps_per_epoch(trainer)
            seen["writers"] = _lightning.tensorboard_writers(trainer)
            seen["run_dir"] = _lightning.run_dir(trainer)
            seen["log_dirs"] = _lightning.log_dirs(trainer)
            _lightning.log_scalars(trainer, {"probe/x": 1.5}, step=7)

    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    csv = CSVLogger(str(tmp_path), name="csv", version="")
    make_trainer(max_epochs=1, accumulate_grad_batches=2, logger=[tb, csv], callbacks=[Probe()]).fit(TwoBranchNet())
    assert seen["steps_per_epoch"] == 2  # 4 batches, accumulating 2
    assert len(seen["writers"]) == 1 and seen["writers"][0] is tb.experiment
    assert seen["run_dir"] == tb.log_dir
    assert seen["log_dirs"] == [tb.log_dir, csv.log_dir]
    assert "probe/x" in open(f"{csv.log_dir}/metrics.csv").read()


def test_steps_per_epoch_counts_the_last_incomplete_accumulation_group():
    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["steps_per_epoch"] = _lightning.steps_per_epoch(trainer)

    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, limit_train_batches=3, callbacks=[Probe()])
    trainer.fit(TwoBranchNet())
    assert seen["steps_per_epoch"] == trainer.global_step == 2

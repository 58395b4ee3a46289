"""TaskSwitch: exact switch timing (workers, prefetch, steps), validation and resume parity."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.protocols import TaskSwitchable

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
QUIET: dict[str, Any] = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             devices=1)


class TaskRecorder(pl.Callback):
    """Which task's ground truth each optimizer step actually trained on."""

    def __init__(self, dm: MatrixCompletionDataModule) -> None:
        self.dm = dm
        self.seen: list[tuple[int, int, str]] = []  # (epoch, step, task)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        name = next(n for n in self.dm.tasks if torch.equal(batch["ground_truth"], self.dm.ground_truth(n)))
        self.seen.append((trainer.current_epoch, trainer.global_step, name))


def _dm(**kw):
    kw.setdefault("tasks", {"pretrain": 3, "target": 1})
    return MatrixCompletionDataModule(size=8, n_observed=24, seed=1, **kw)


def test_epoch_switch_full_batch():
    dm = _dm()
    rec = TaskRecorder(dm)
    trainer = pl.Trainer(max_epochs=7, callbacks=[TaskSwitch({4: "target"}), rec], enable_checkpointing=False, **QUIET)
    trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm)
    assert [name for _, _, name in rec.seen] == ["pretrain"] * 4 + ["target"] * 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_step_switch_mid_epoch_is_exact_with_and_without_workers(num_workers):
    # 4 steps per epoch; the switch at step 6 falls mid-epoch, after Lightning (and the
    # workers) have already prefetched the next batch.
    dm = _dm(batch_size=6, num_workers=num_workers)
    rec = TaskRecorder(dm)
    switch = TaskSwitch({6: "target", 9: "pretrain"}, unit="step")
    trainer = pl.Trainer(max_epochs=3, callbacks=[switch, rec], enable_checkpointing=False, **QUIET)
    trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm)
    names = [name for _, _, name in rec.seen]
    steps = [step for _, step, _ in rec.seen]
    assert steps == list(range(12))
    assert names == ["pretrain"] * 6 + ["target"] * 3 + ["pretrain"] * 3


def test_epoch_switch_with_workers():
    dm = _dm(num_workers=2)
    rec = TaskRecorder(dm)
    trainer = pl.Trainer(max_epochs=3, callbacks=[TaskSwitch({1: "target"}), rec], enable_checkpointing=False, **QUIET)
    trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm)
    assert [name for _, _, name in rec.seen] == ["pretrain", "target", "target"]


def test_unknown_task_fails_before_training():
    dm = _dm()
    model = DeepMatrixFactorization(size=8, depth=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(max_epochs=3, callbacks=[TaskSwitch({1: "targett"})], enable_checkpointing=False, **QUIET)
    with pytest.raises(ValueError, match=r"'targett'.*valid tasks: \['pretrain', 'target'\]"):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


class PlainDataModule(pl.LightningDataModule):
    def train_dataloader(self):
        return _dm().train_dataloader()


def test_datamodule_without_protocol_is_a_clear_error():
    trainer = pl.Trainer(max_epochs=1, callbacks=[TaskSwitch({1: "target"})], enable_checkpointing=False, **QUIET)
    with pytest.raises(TypeError, match=r"PlainDataModule lacks \['tasks', 'set_task'\]"):
        trainer.fit(DeepMatrixFactorization(size=8, depth=2), datamodule=PlainDataModule())
    assert trainer.global_step == 0
    assert not isinstance(PlainDataModule(), TaskSwitchable) and isinstance(_dm(), TaskSwitchable)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(schedule={1: "a"}, unit="batch"), r"unit='batch' is not valid; choose one of \('epoch', 'step'\)"),
        (dict(schedule={-1: "a"}), r"schedule time -1 must be a non-negative integer"),
        (dict(schedule={1.5: "a"}), r"schedule time 1.5"),
        (dict(schedule={"x": "a"}), r"schedule time 'x'"),
        (dict(schedule={1: 3}), r"schedule\[1\]=3 must be a task name"),
        (dict(schedule={}), r"non-empty mapping"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSwitch(**kwargs)


def test_task_at_is_a_pure_function_of_time():
    switch = TaskSwitch({10: "b", 20: "c"})
    switch._initial_task = "a"
    assert [switch.task_at(t) for t in (0, 9, 10, 19, 20, 500)] == ["a", "a", "b", "b", "c", "c"]
    # as a YAML/CLI config may give it (the annotation says int: the type jsonargparse parses keys to)
    assert TaskSwitch({"40000": "b"}).schedule == {40000: "b"}  # type: ignore[dict-item]
    assert lc.TaskSwitch is TaskSwitch


def _fit(tmp_path, max_epochs, ckpt_path=None, unit="epoch"):
    pl.seed_everything(0, verbose=False)
    dm = _dm()
    model = DeepMatrixFactorization(size=8, depth=3, init_scale=0.1, lr=2.0, seed=0)
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[TaskSwitch({10: "target"}, unit=unit)],
                         default_root_dir=tmp_path, enable_checkpointing=False, deterministic=True, **QUIET)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, model, dm


@pytest.mark.parametrize("unit", ["epoch", "step"])
@pytest.mark.parametrize("stop_at", [6, 14])  # checkpoint before / after the switch at 10
def test_resume_reproduces_uninterrupted_run_exactly(tmp_path, unit, stop_at):
    _, full, full_dm = _fit(tmp_path / "full", 20, unit=unit)
    first, _, _ = _fit(tmp_path / "a", stop_at, unit=unit)
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)
    _, resumed, dm = _fit(tmp_path / "b", 20, ckpt_path=str(ckpt), unit=unit)
    assert dm.task == full_dm.task == "target"
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_switch_reused_for_a_second_fit_starts_from_that_fits_task():
    switch, dm = TaskSwitch({3: "target"}), _dm()
    trainer = pl.Trainer(max_epochs=4, callbacks=[switch], enable_checkpointing=False, **QUIET)
    trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm)
    other = _dm(tasks={"target": 1, "pretrain": 3})  # its first (initial) task is "target"
    rec = TaskRecorder(other)
    trainer = pl.Trainer(max_epochs=2, callbacks=[switch, rec], enable_checkpointing=False, **QUIET)
    trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=other)
    assert [name for _, _, name in rec.seen] == ["target", "target"]


def test_a_fresh_switch_on_a_reused_datamodule_trains_the_pre_switch_phase():
    dm = _dm()
    pl.Trainer(max_epochs=4, callbacks=[TaskSwitch({2: "target"})], enable_checkpointing=False, **QUIET).fit(
        DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm
    )
    assert dm.task == "target"  # where the first run left it
    rec = TaskRecorder(dm)
    trainer = pl.Trainer(max_epochs=4, callbacks=[TaskSwitch({2: "target"}), rec], enable_checkpointing=False, **QUIET)
    with pytest.warns(UserWarning, match=r"still on task 'target', where a TaskSwitch of an earlier fit left it.*"
                                         r"starts from 'pretrain'.*initial='target'"):
        trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm)
    assert [name for _, _, name in rec.seen] == ["pretrain", "pretrain", "target", "target"]


def test_initial_task_explicit_from_the_target_or_as_the_user_set_it():
    def seen(dm, switch):
        rec = TaskRecorder(dm)
        pl.Trainer(max_epochs=3, callbacks=[switch, rec], enable_checkpointing=False, **QUIET).fit(
            DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=dm
        )
        return [name for _, _, name in rec.seen]

    assert seen(_dm(), TaskSwitch({2: "pretrain"}, initial="target")) == ["target", "target", "pretrain"]
    dm = _dm()
    dm.set_task("target")  # the user's choice (no TaskSwitch touched this datamodule): kept
    assert seen(dm, TaskSwitch({2: "pretrain"})) == ["target", "target", "pretrain"]
    dm = _dm()
    dm.initial_task = "target"  # a datamodule may name its own initial task
    assert seen(dm, TaskSwitch({2: "pretrain"})) == ["target", "target", "pretrain"]
    trainer = pl.Trainer(max_epochs=1, callbacks=[TaskSwitch({1: "target"}, initial="pretrian")], **QUIET)
    with pytest.raises(ValueError, match=r"initial='pretrian' is not a task.*valid tasks: \['pretrain', 'target'\]"):
        trainer.fit(DeepMatrixFactorization(size=8, depth=2, seed=0), datamodule=_dm())
    assert trainer.global_step == 0


def test_schedule_keys_that_mean_one_time_are_an_error():
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match=r"schedule keys '3' and 3 both mean epoch 3"):
        TaskSwitch({"3": "a", 3: "b"})  # type: ignore[dict-item]  # a config's digit-string key
    with pytest.raises(ValueError, match=r"schedule keys 3 and '3' both mean step 3"):
        TaskSwitch({3: "a", "3": "b"}, unit="step")  # type: ignore[dict-item]  # a config's digit-string key
    assert TaskSwitch({np.int64(3): "a"}).schedule == {3: "a"}  # np.arange sweeps
    assert isinstance(inspect.getattr_static(TaskSwitch, "state_key"), property)  # defined on the base
    assert TaskSwitch({1: "a"}).state_key != TaskSwitch({1: "a"}, initial="b").state_key

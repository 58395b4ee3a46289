"""One runner contract: every job goes through ``runner.run(tasks)``, under one run envelope.

The default runner is no exception: a ``LightningRunner`` subclass's ``run`` is what trains
(on main a subclass whose ``run`` raised still gave an all-"ok" table, because the engine
called the fit behind the runner's back). Fake runners drive the engine without training.
"""

from __future__ import annotations

import os
import pickle
import random
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep.failures import materialize
from lightning_critical.sweep.runners.base import BranchRefused, MetricNotFound, Task, envelope, record
from lightning_critical.sweep.spec import RunSpec, SweepSpec
from lightning_critical.sweep.units import Job, job_groups, run_unit

QUIET: dict[str, Any] = dict(tensorboard=False, plot=False, progress=False)
MAIN_PID = int(os.environ.setdefault("LC_TEST_MAIN_PID", str(os.getpid())))  # inherited by spawned workers


class TinyNet(pl.LightningModule):
    """A 3 -> 1 linear regression on 8 fixed points: a fit takes a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def train_dataloader(self) -> Any:
        x = torch.linspace(-1, 1, 24).reshape(8, 3)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _sweep(out: Any, **kw: Any) -> Any:
    args: dict[str, Any] = dict(deficit=lc.PathwayDeficit("layer", window=(0, 1)), windows=lc.sweep.removal([1]),
                                metrics="train_loss", trainer={"max_epochs": 2, "accelerator": "cpu"},
                                out=str(out), backend="serial", **QUIET)
    args.update(kw)
    return lc.sweep.run(TinyNet, **args)


# -- the default runner's run is what trains ----------------------------------------------------
class Refusing(lc.sweep.LightningRunner):
    def run(self, tasks):
        raise RuntimeError("this runner trains nothing")


class Edited(lc.sweep.LightningRunner):
    def run(self, tasks):
        records = super().run(tasks)
        for rec in records:
            rec["metrics"]["train_loss"] += 1000.0
        return records


def test_a_lightning_runner_subclass_whose_run_raises_gives_failed_rows(tmp_path):
    with pytest.warns(lc.sweep.FailedRunsWarning):
        table = _sweep(tmp_path, runner=Refusing())
    assert list(table["status"]) == ["failed", "failed"]
    assert all("RuntimeError: this runner trains nothing" in e for e in table["error"])
    with pytest.raises(RuntimeError, match="this runner trains nothing"):  # the run's own exception
        _sweep(tmp_path / "raise", runner=Refusing(), errors="raise")


def test_a_subclass_that_wraps_super_run_sees_its_edit_in_the_table(tmp_path):
    plain = _sweep(tmp_path / "plain")
    edited = _sweep(tmp_path / "edited", runner=Edited())
    assert list(edited["status"]) == ["ok", "ok"]
    assert list(edited["train_loss"]) == [v + 1000.0 for v in plain["train_loss"]]
    assert plain.attrs["sweep"] != edited.attrs["sweep"]  # a subclass is part of the sweep's identity


# -- a fake runner drives the engine without training --------------------------------------------
class Fake:
    """Trains nothing: one job per seed; value = 10 * seed + window end; says whether it ran in a worker."""

    name = "fake"
    shares_prefixes = False

    def batches(self, tasks):
        by_seed: dict[int, list] = {}
        for task in tasks:
            by_seed.setdefault(task.run.seed, []).append(task)
        return list(by_seed.values())

    def run(self, tasks):
        return envelope(list(tasks), self._train)

    @staticmethod
    def _train(tasks):
        in_worker = float(os.getpid() != MAIN_PID)
        return [{"metrics": {"value": 10.0 * t.run.seed + (t.run.windows[0].end if t.run.windows else 0),
                             "jobs": float(len(tasks)), "in_worker": in_worker}} for t in tasks]


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_a_fake_runner_drives_the_engine_on_serial_and_process_backends(tmp_path, backend):
    table = _sweep(tmp_path, runner=Fake(), windows=lc.sweep.removal([1, 2]), seeds=[0, 1], metrics="value",
                   backend=backend, workers=2, preflight=False, trainer={"max_epochs": 3})
    assert list(table["status"]) == ["ok"] * 6
    assert table.set_index(["window", "seed"])["value"].to_dict() == {
        ("none", 0): 0.0, ("none", 1): 10.0, ("[0, 1) epochs", 0): 1.0, ("[0, 1) epochs", 1): 11.0,
        ("[0, 2) epochs", 0): 2.0, ("[0, 2) epochs", 1): 12.0}
    assert set(table["jobs"]) == {3.0}  # one job per seed, as batches() grouped them
    assert set(table["in_worker"]) == {1.0 if backend == "process" else 0.0}


def test_a_runner_whose_batches_drop_a_run_is_refused_before_training(tmp_path):
    class Dropping(Fake):
        def batches(self, tasks):
            return [list(tasks)[1:]]

    with pytest.raises(ValueError, match=r"batches\(tasks\) must put every task in exactly one.*missing \['"):
        _sweep(tmp_path, runner=Dropping(), preflight=False)


def test_job_groups_and_run_unit_check_what_a_runner_returns():
    tasks = [SimpleNamespace(run_id=r) for r in "ab"]
    assert job_groups(lc.sweep.LightningRunner(), tasks) == [["a"], ["b"]]

    class Twice:
        def batches(self, tasks):
            return [list(tasks), list(tasks)]

        def run(self, tasks):
            return {"status": "ok"}

    with pytest.raises(ValueError, match=r"repeated \['a', 'b'\]"):
        job_groups(Twice(), tasks)
    with pytest.raises(TypeError, match="returned dict, not a list of records"):
        run_unit(Job(Twice(), tasks))
    with pytest.raises(TypeError, match="not a units.Job"):
        run_unit(tasks[0])  # type: ignore[arg-type]


def test_errors_raise_gives_the_runs_own_exception_type_through_the_envelope(tmp_path):
    class Diverged(ArithmeticError):
        pass

    class Raising(Fake):
        def run(self, tasks):
            return envelope(list(tasks), self._raise)

        @staticmethod
        def _raise(tasks):
            raise Diverged("the loss diverged")

    with pytest.raises(Diverged, match="the loss diverged"):
        _sweep(tmp_path, runner=Raising(), preflight=False, errors="raise")


# -- a record that breaks the contract fails its run, named; it is never re-keyed ---------------------
class Reversed(Fake):
    """Complete records (``record(task, ...)``), in the wrong order."""

    name = "reversed"

    def batches(self, tasks):
        return [list(tasks)]

    def run(self, tasks):
        return [record(t, metrics={"value": float(t.run.seed)}, seed=99) for t in reversed(tasks)]


class Bare(Reversed):
    """Duck-typed: records without a status (or a run id); ``keep``: the keys it does give."""

    name = "bare"

    def __init__(self, keep: tuple[str, ...] = ()) -> None:
        self.keep = keep

    def run(self, tasks):
        return [{key: value for key, value in record(t, metrics={"value": 1.0}).items() if key in self.keep}
                for t in tasks]


def test_records_returned_out_of_order_fail_each_run_naming_the_runner_and_both_ids(tmp_path):
    with pytest.warns(lc.sweep.FailedRunsWarning):
        table = _sweep(tmp_path, runner=Reversed(), seeds=[0, 1], metrics="value", preflight=False)
    assert list(table["status"]) == ["failed"] * 4
    assert list(table["seed"]) == [0, 1, 0, 1]  # the run's own columns, not the record's
    ids = list(table["run_id"])
    for rid, theirs, label, error in zip(ids, ids[::-1], table["label"], table["error"], strict=True):
        assert error == (f"runner 'reversed' returned the record of run {theirs!r} for run {rid!r} ({label}): "
                         "a runner returns one record per task, in the order of the tasks")
    stored = lc.sweep.load(str(tmp_path))
    assert stored[["run_id", "label", "seed", "status"]].values.tolist() == \
        table[["run_id", "label", "seed", "status"]].values.tolist()


@pytest.mark.parametrize("keep, missing", [(("run_id", "metrics"), "'status'"),
                                           (("metrics",), "'run_id', no 'status'")])
def test_records_without_a_status_fail_their_runs_and_the_sweep_completes(tmp_path, keep, missing):
    with pytest.warns(lc.sweep.FailedRunsWarning):
        table = _sweep(tmp_path, runner=Bare(keep), metrics="value", preflight=False)
    assert list(table["status"]) == ["failed", "failed"] and list(table["epochs_trained"]) == [0, 0]
    for rid, label, error in zip(table["run_id"], table["label"], table["error"], strict=True):
        assert error == (f"runner 'bare': the record of run {rid!r} ({label}) has no {missing} "
                         "(lc.sweep.runners.record(task, ...) makes one)")
    assert len(lc.sweep.load(str(tmp_path))) == 2  # stored
    with pytest.raises(lc.sweep.RunFailed, match="runner 'bare': the record of run"):
        _sweep(tmp_path / "raise", runner=Bare(keep), metrics="value", preflight=False, errors="raise")


def test_a_record_gets_the_defaults_it_lacks_and_never_overwrites_the_runs_columns(tmp_path):
    class Partial(Bare):
        def run(self, tasks):
            return [{"run_id": t.run_id, "status": "ok", "metrics": {"value": 2.0}, "seed": 7, "label": "x",
                     "window": "[5, 6) epochs"} for t in tasks]

    table = _sweep(tmp_path, runner=Partial(), metrics="value", preflight=False)
    assert table[["label", "window", "seed", "status", "value", "epochs_trained"]].values.tolist() == [
        ["baseline_seed0", "none", 0, "ok", 2.0, 2], ["w0-1_seed0", "[0, 1) epochs", 0, "ok", 2.0, 2]]


# -- the envelope --------------------------------------------------------------------------------
def _task(label: str = "w0-1_seed0", threads: int = 1) -> Task:
    spec = cast(SweepSpec, SimpleNamespace(threads_per_run=threads, tensorboard=False))  # all the envelope reads
    return Task(spec, cast(RunSpec, None), f"id-{label}", label, "out", 3)


def test_the_envelope_gives_the_run_its_threads_and_the_caller_its_threads_and_random_states():
    before = torch.get_num_threads()
    inner = 2 if before == 1 else 1
    torch.manual_seed(3)
    random.seed(3)
    expected = (torch.rand(1), random.random())
    torch.manual_seed(3)
    random.seed(3)
    seen: dict[str, Any] = {}

    def train(task):
        seen["threads"] = torch.get_num_threads()
        torch.manual_seed(123)  # a run seeds and draws; the caller must not notice
        random.seed(123)
        torch.rand(5)
        return {"metrics": {"m": 1.0}}

    rec = envelope(_task(threads=inner), train)
    assert rec["status"] == "ok" and rec["metrics"] == {"m": 1.0} and rec["seconds"] >= 0
    assert rec["pid"] == os.getpid() and rec["epochs_trained"] == 3
    assert seen["threads"] == inner and torch.get_num_threads() == before
    after = (torch.rand(1), random.random())
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_in_a_run_becomes_keyboard_interrupt(exc):
    def train(tasks):
        raise exc()

    with pytest.raises(KeyboardInterrupt, match=r"run w0-1_seed0 \(\+1 more\) interrupted"):
        envelope([_task(), _task("w0-2_seed0")], train)


def test_an_exception_becomes_a_failed_record_carrying_the_exception():
    err = ValueError("lr=5: the loss diverged")

    def train(task):
        raise err

    rec = envelope(_task(), train)
    assert rec["status"] == "failed" and rec["epochs_trained"] == 0 and rec["metrics"] == {}
    assert rec["error"].startswith("ValueError: lr=5: the loss diverged\nTraceback")
    assert materialize(rec["exception"]) is err  # in this process: the very exception
    back = materialize(pickle.loads(pickle.dumps(rec["exception"])))  # from a worker: one of the same type
    assert type(back) is ValueError and str(back) == "lr=5: the loss diverged"


def test_refused_fatal_and_miscounted_units_are_records_of_every_task():
    tasks = [_task(), _task("w0-2_seed0")]

    def refuse(ts):
        raise BranchRefused("T_max: 6 -> 4")

    def missing(ts):
        raise MetricNotFound("metrics: 'val_acc' is not in trainer.callback_metrics")

    refused = envelope(tasks, refuse)
    assert [r["status"] for r in refused] == ["refused", "refused"] and refused[0]["refused"] == "T_max: 6 -> 4"
    fatal = envelope(tasks, missing)
    assert [(r["status"], r["fatal"]) for r in fatal] == [("failed", True), ("failed", True)]
    short = envelope(tasks, lambda ts: [{"metrics": {"m": 1.0}}])
    assert [r["status"] for r in short] == ["failed", "failed"]
    assert "train returned 1 results for 2 tasks" in short[0]["error"]
    assert [r["label"] for r in envelope(tasks, lambda ts: [{}, {"status": "failed", "error": "x"}])] == [
        "w0-1_seed0", "w0-2_seed0"]

"""The dispatcher and each observer alone, with a fake backend and a fake runner: nothing trains, milliseconds each.

The fake backend hands out jobs that finish one at a time in an order the test chooses (never
at submission: everything ready is submitted first); the fake runner "trains" by writing its
branch checkpoints (empty files) when its job starts or when it finishes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pytest

from lightning_critical.sweep.audit import Twin
from lightning_critical.sweep.dispatcher import Dispatcher, SweepAborted
from lightning_critical.sweep.observers import CheckpointCollector, LogStitcher, Observer, Progress, StoreWriter
from lightning_critical.sweep.plan import Node, PlanItem, make_plan
from lightning_critical.sweep.readiness import Start, from_scratch, readiness, retarget
from lightning_critical.sweep.runners.base import MetricNotFound
from lightning_critical.sweep.store import Store

# c branches from p after 1 epoch; x and y train from scratch (other groups)
PAIR = [("p", "g", [1, 1, 1, 0]), ("c", "g", [1, 0, 0, 0])]
SOLO = [("x", "h", [0, 0]), ("y", "k", [0, 0]), ("z", "m", [0, 0])]


@dataclass
class Task:
    run_id: str
    epochs: int
    branch_epoch: int
    resume_path: str | None
    save_paths: dict[int, str]
    parent: str | None
    audit_path: str | None = None


@dataclass
class Job:
    tasks: list[Task]


class Runner:
    """Trains nothing. ``fail``/``fatal``/``kill``/``interrupt``/``raise_``: run ids that end so; ``refuse``: once."""

    def __init__(self, checkpoints_at: str = "start", fail=(), fatal=(), kill=(), interrupt=(), raise_=(),
                 refuse=None) -> None:
        self.checkpoints_at = checkpoints_at
        self.fail, self.fatal, self.kill = set(fail), set(fatal), set(kill)
        self.interrupt, self.raise_, self.refuse = set(interrupt), set(raise_), dict(refuse or {})

    def start(self, task: Task) -> None:
        if self.checkpoints_at == "start" and task.run_id not in self.fail:
            _write_checkpoints(task)

    def finish(self, task: Task) -> dict[str, Any]:
        rid = task.run_id
        if rid in self.kill:
            raise BrokenProcessPool("a worker died")
        if rid in self.interrupt:
            raise KeyboardInterrupt
        if rid in self.raise_:
            raise ImportError("no module named 'user_code'")
        base: dict[str, Any] = {
                "run_id": rid, "error": None, "metrics": {}, "epochs": task.epochs, "branch_epoch": task.branch_epoch,
                "parent": task.parent, "epochs_trained": task.epochs - task.branch_epoch, "log_dir": None,
                "seconds": 0.0}
        if task.resume_path and rid in self.refuse:
            return {**base, "status": "refused", "refused": self.refuse.pop(rid)}
        if rid in self.fail:
            return {**base, "status": "failed", "error": "RuntimeError: diverged", "epochs_trained": 0}
        if rid in self.fatal:
            return {**base, "status": "failed", "error": "metric 'acc' not found", "fatal": True}
        if self.checkpoints_at == "finish":
            _write_checkpoints(task)
        return {**base, "status": "ok", "metrics": {"m": 1.0}}


def _write_checkpoints(task: Task) -> None:
    for path in task.save_paths.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path[: -len(".ckpt")] + ".json", "w") as fh:
            json.dump({"run_id": task.run_id}, fh)
        open(path, "w").close()


class Pending:
    """A job in flight: not done when first asked (so everything ready is submitted first), then done on its turn."""

    def __init__(self, backend: OrderedBackend, job: Job) -> None:
        self.backend, self.job, self.asked, self.cancelled = backend, job, 0, False
        for task in job.tasks:
            backend.runner.start(task)

    def done(self) -> bool:
        self.asked += 1
        return self.asked > 1 and self.backend.turn() is self

    def result(self) -> list[dict[str, Any]]:
        self.backend.in_flight.remove(self)
        return [self.backend.runner.finish(task) for task in self.job.tasks]

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class OrderedBackend:
    """Jobs finish one at a time: those whose first run comes first in ``order``, else in submission order."""

    name, needs_pickling = "fake", False

    def __init__(self, runner: Runner, order=(), max_in_flight: int | None = None, can_restart: bool = True) -> None:
        self.runner, self.order, self.max_in_flight, self.can_restart = runner, list(order), max_in_flight, can_restart
        self.in_flight: list[Pending] = []
        self.submitted: list[list[tuple[str, int]]] = []  # (run id, branch epoch) of each job's tasks
        self.most_in_flight, self.restarts = 0, 0
        self.closed: list[Any] = []

    def submit(self, job: Job) -> Pending:
        pending = Pending(self, job)
        self.in_flight.append(pending)
        self.submitted.append([(t.run_id, t.branch_epoch) for t in job.tasks])
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return pending

    def turn(self) -> Pending:
        rank = {rid: i for i, rid in enumerate(self.order)}
        return min(self.in_flight, key=lambda p: rank.get(p.job.tasks[0].run_id, len(rank)))

    def restart(self) -> bool:
        self.restarts += 1
        self.in_flight.clear()
        return self.can_restart

    def close(self, cancel: bool) -> None:
        self.closed.append(cancel)


class Events(Observer):
    """Records every event."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_start(self, nodes):
        self.events.append(("start", [n.run_id for n in nodes]))

    def on_retarget(self, old, new):
        self.events.append(("retarget", old.run_id, old.branch_epoch, new.branch_epoch))

    def on_run_end(self, node, record):
        self.events.append(("end", node.run_id, record["status"]))

    def on_row(self, record):
        self.events.append(("row", record["run_id"], record["status"]))

    def on_close(self):
        self.events.append(("close",))


def _dispatch(tmp_path, runner: Runner, items=PAIR, groups=None, **backend_kw):
    store = Store(str(tmp_path))
    os.makedirs(store.out, exist_ok=True)
    plan = make_plan([PlanItem(rid, g, len(t), t) for rid, g, t in items])

    def make_job(nodes: list[Node]) -> Job:
        return Job([Task(n.run_id, n.epochs, n.branch_epoch,
                         store.checkpoint_path(n.resume_key) if n.resume_key else None,
                         {k: store.checkpoint_path(key) for k, key in n.save_keys.items()}, n.parent) for n in nodes])

    backend, events = OrderedBackend(runner, **backend_kw), Events()
    fields = {rid: {"run_id": rid, "label": rid} for rid, _, _ in items}
    dispatcher = Dispatcher(plan, backend, make_job, store=store, fields=fields, log_dirs=dict.fromkeys(fields),
                            groups=groups, observers=[StoreWriter(store), events], poll_seconds=0.0)
    return dispatcher, backend, events, store


def _rows(events: Events) -> list[tuple[str, str]]:
    return [(e[1], e[2]) for e in events.events if e[0] == "row"]


def test_the_plan_the_fakes_rely_on():
    plan = make_plan([PlanItem(rid, g, len(t), t) for rid, g, t in PAIR])
    assert [(n.run_id, n.parent, n.branch_epoch) for n in plan.nodes] == [("p", None, 0), ("c", "p", 1)]


def test_jobs_are_the_runners_groups_and_every_row_is_stored(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(), items=SOLO, groups=[["y", "x"], ["z"]])
    dispatcher.run()
    assert backend.submitted == [[("y", 0), ("x", 0)], [("z", 0)]]  # one job per group, tasks in the group's order
    assert backend.most_in_flight == 2 and backend.closed == [False]
    assert sorted(_rows(events)) == [("x", "ok"), ("y", "ok"), ("z", "ok")]
    assert set(store.latest()) == {"x", "y", "z"}
    assert events.events[0] == ("start", ["x", "y", "z"]) and events.events[-1] == ("close",)


def test_a_child_waits_for_its_parents_checkpoint(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(checkpoints_at="finish"))
    dispatcher.run()
    assert backend.submitted == [[("p", 0)], [("c", 1)]] and backend.most_in_flight == 1
    assert store.latest()["c"]["parent"] == "p" and store.latest()["c"]["branch_epoch"] == 1


def test_a_child_starts_while_its_parent_trains(tmp_path):
    dispatcher, backend, events, _ = _dispatch(tmp_path, Runner(checkpoints_at="start"), order=["c", "p"])
    dispatcher.run()
    assert backend.most_in_flight == 2  # c was submitted once p's checkpoint existed, p still in flight
    assert _rows(events) == [("c", "ok"), ("p", "ok")]


def test_a_child_whose_parent_failed_starts_from_scratch_and_the_plan_is_untouched(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(checkpoints_at="finish", fail={"p"}))
    planned = dispatcher.plan.by_id()["c"]
    dispatcher.run()
    assert backend.submitted == [[("p", 0)], [("c", 0)]]
    assert ("retarget", "c", 1, 0) in events.events
    assert (planned.branch_epoch, planned.parent) == (1, "p")  # the plan's node is as planned
    assert store.latest()["c"]["status"] == "ok" and store.latest()["c"]["parent"] is None


def test_a_refused_branch_retrains_from_scratch_and_says_why(tmp_path, capsys):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(refuse={"c": "its own schedule differs"}))
    dispatcher.run()
    assert backend.submitted == [[("p", 0)], [("c", 1)], [("c", 0)]]
    assert _rows(events) == [("p", "ok"), ("c", "ok")]  # a refusal is not a row
    assert store.latest()["c"]["branch_refused"] == "its own schedule differs"
    assert "run c cannot branch exactly from run p: its own schedule differs" in capsys.readouterr().err


def test_a_worker_death_retries_each_job_alone_and_fails_only_the_killer(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(kill={"y"}), items=SOLO, order=["y"])
    dispatcher.run()
    assert backend.submitted[:3] == [[("x", 0)], [("y", 0)], [("z", 0)]] and backend.restarts == 2
    assert sorted(sum(backend.submitted[3:], [])) == [("x", 0), ("y", 0), ("z", 0)]  # each again, alone
    latest = store.latest()
    assert latest["y"]["status"] == "failed" and "worker process died" in latest["y"]["error"]
    assert latest["x"]["status"] == latest["z"]["status"] == "ok"


def test_a_broken_executor_aborts_and_keeps_the_finished_rows(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(kill={"y"}), items=SOLO, order=["x", "y"],
                                                   can_restart=False)
    with pytest.raises(SweepAborted, match="the executor broke"):
        dispatcher.run()
    latest = store.latest()
    assert latest["x"]["status"] == "ok"
    assert latest["y"]["status"] == latest["z"]["status"] == "failed" and "executor broke" in latest["z"]["error"]
    assert backend.closed == [False]


def test_a_missing_metric_stops_submitting(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(fatal={"x"}), items=SOLO, max_in_flight=1)
    with pytest.raises(MetricNotFound, match="metric 'acc' not found"):
        dispatcher.run()
    assert backend.submitted == [[("x", 0)]] and set(store.latest()) == {"x"} and backend.closed == [False]


def test_ctrl_c_cancels_the_jobs_in_flight_and_closes_the_backend(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(interrupt={"x"}), items=SOLO, order=["x"])
    with pytest.raises(KeyboardInterrupt):
        dispatcher.run()
    assert [p.cancelled for p in backend.in_flight] == [True, True]  # y and z
    assert backend.closed == [True] and events.events[-1] == ("close",)


def test_an_error_of_the_backend_fails_its_runs_and_is_carried(tmp_path):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(raise_={"x"}), items=SOLO[:2], groups=[["x", "y"]])
    dispatcher.run()
    latest = store.latest()
    assert [latest[r]["status"] for r in "xy"] == ["failed", "failed"]
    assert "the backend could not run it: ImportError" in latest["y"]["error"]
    assert isinstance(dispatcher.first_exception.err, ImportError)


def test_a_runner_returning_too_few_records_fails_every_run_of_the_job(tmp_path, monkeypatch):
    dispatcher, backend, events, store = _dispatch(tmp_path, Runner(), items=SOLO[:2], groups=[["x", "y"]])
    result = Pending.result
    monkeypatch.setattr(Pending, "result", lambda self: result(self)[:1])
    dispatcher.run()
    assert [store.latest()[r]["error"] for r in "xy"] == ["the runner returned 1 records for 2 runs"] * 2


# -- retargeting -----------------------------------------------------------------------------
def test_readiness_and_retarget_return_new_nodes():
    b = Node("b", 4, branch_epoch=3, parent="a", resume_key="k3", prefix_keys=["k0", "k1", "k2", "k3", "k4"])
    on_disk = {"k1", "k2"}.__contains__
    assert readiness(b, on_disk, {"a"}.__contains__) is Start.WAIT
    assert readiness(b, on_disk, set().__contains__) is Start.RETARGET
    writers: dict[str, str] = {"k2": "z"}
    nobody: dict[str, str] = {}
    moved = retarget(b, on_disk, writers.get)
    assert (moved.branch_epoch, moved.resume_key, moved.parent) == (2, "k2", "z")  # the deepest on disk
    assert (b.branch_epoch, b.resume_key, b.parent) == (3, "k3", "a")
    assert retarget(b, on_disk, nobody.get, sharing=False).resume_key is None
    assert retarget(b, set().__contains__, nobody.get).branch_epoch == 0
    twin = from_scratch(Twin("b", 4, 3, "a", "k3", {2: "k"}), write_checkpoints=False)
    assert isinstance(twin, Twin) and twin.save_keys == {} and twin.parent is None


# -- each observer alone ----------------------------------------------------------------------
class FakeStore:
    def __init__(self, info=None):
        self.rows, self.removed, self.info = [], [], dict(info or {})

    def append(self, record):
        self.rows.append(record)

    def remove_checkpoint(self, key):
        self.removed.append(key)

    def checkpoint_info(self, key):
        return self.info.get(key, {})


def test_the_store_writer_appends_every_row():
    store = FakeStore()
    writer = StoreWriter(store)  # type: ignore[arg-type]
    writer.on_run_end(Node("a", 2), {"run_id": "a", "status": "ok"})  # not final yet: not stored
    writer.on_row({"run_id": "a", "status": "ok"})
    writer.on_row({"run_id": "a", "status": "ok", "audit": "equal"})
    assert store.rows == [{"run_id": "a", "status": "ok"}, {"run_id": "a", "status": "ok", "audit": "equal"}]


def test_the_checkpoint_collector_waits_for_every_consumer_and_follows_retargets():
    store = FakeStore()
    b, c, d = Node("b", 4, 2, "a", "k"), Node("c", 4, 2, "a", "k"), Node("d", 4, 1, "a", "j")
    collector = CheckpointCollector(store)
    collector.on_start([Node("a", 4), b, c, d])
    collector.on_run_end(b, {"status": "failed"})  # a failed consumer may retry from it: kept
    collector.on_retarget(c, from_scratch(c))  # c no longer needs k
    collector.on_run_end(d, {"status": "ok"})
    assert store.removed == ["j"]
    collector.on_run_end(b, {"status": "ok"})
    assert store.removed == ["j", "k"]
    kept = CheckpointCollector(store, keep=True)
    kept.on_start([d])
    kept.on_run_end(d, {"status": "ok"})
    assert store.removed == ["j", "k"]


def test_the_log_stitcher_copies_a_parents_prefix_once_both_ended():
    copies = []
    store = FakeStore(info={"old": {"log_dir": "logs/earlier"}})
    stitcher = LogStitcher(store, {"p": "logs/p", "c": "logs/c"}, copy=lambda *args: copies.append(args))
    child = Node("c", 4, 1, "p", "k")
    stitcher.on_start([Node("p", 4), child])
    stitcher.on_run_end(child, {"log_dir": "logs/c", "branch_step": 8})
    assert copies == []  # its parent still trains
    stitcher.on_run_end(Node("p", 4), {"log_dir": "logs/p"})
    assert copies == [("logs/p", "logs/c", 8)]
    stitcher.on_run_end(Node("e", 4, 2, "gone", "old"), {"log_dir": "logs/e", "branch_step": 4})
    assert copies[-1] == ("logs/earlier", "logs/e", 4)  # a parent of an earlier call: from its checkpoint's info


def test_the_log_stitcher_drops_a_copy_for_a_run_whose_logs_became_a_whole_run():
    copies = []
    stitcher = LogStitcher(FakeStore(), {"p": "logs/p"}, copy=lambda *args: copies.append(args))
    stitcher.on_start([Node("p", 4), Node("c", 4, 1, "p", "k"), Node("d", 4, 1, "p", "k")])
    stitcher.on_run_end(Node("c", 4, 1, "p", "k"), {"log_dir": "logs/c", "branch_step": 8})
    stitcher.on_run_end(Node("c", 4), {"log_dir": "logs/c"})  # retrained from scratch
    stitcher.on_run_end(Node("d", 4, 1, "p", "k"), {"log_dir": "logs/d", "branch_step": 8})
    stitcher.on_row({"run_id": "d", "branch_epoch": 0})  # the audit adopted its from-scratch twin's logs
    stitcher.on_run_end(Node("p", 4), {"log_dir": "logs/p"})
    assert copies == []


def test_progress_counts_rows_requeues_and_failures():
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.n, self.postfix, self.closed = total, 0, "", False
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def close(self):
            self.closed = True

    progress = Progress(show=True, make_bar=Bar)
    progress.on_start([Node("a", 2), Node("b", 2)])
    progress.on_row({"run_id": "a", "status": "failed"})
    progress.on_requeue(Node("a", 2))
    progress.on_row({"run_id": "a", "status": "ok"})
    progress.on_row({"run_id": "b", "status": "failed"})
    progress.on_close()
    (bar,) = bars
    assert (bar.total, bar.n, bar.postfix, bar.closed) == (3, 3, "failed=1", True)
    hidden = Progress(show=False, make_bar=Bar)
    hidden.on_start([Node("a", 2)])
    hidden.on_row({"run_id": "a", "status": "ok"})
    assert len(bars) == 1 and hidden.bar is None

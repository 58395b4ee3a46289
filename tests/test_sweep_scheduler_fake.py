"""The dispatcher's handling of refused branches and of the exactness audit, driven with fake runs (no training).

A fake run "trains" by writing its branch checkpoints (empty files) and, when the audit asks,
its final weights: one tensor whose value is a function of the run, so a test decides whether
a branched run ends as its from-scratch twin (an exact engine) or not.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from lightning_critical.sweep.audit import Audit, AuditWarning, compare_states, tolerance
from lightning_critical.sweep.dispatcher import Dispatcher
from lightning_critical.sweep.observers import standard_observers
from lightning_critical.sweep.plan import PlanItem, make_plan
from lightning_critical.sweep.store import Store


@dataclass
class FakeTask:
    run_id: str
    label: str
    out: str
    epochs: int
    branch_epoch: int = 0
    resume_path: str | None = None
    save_paths: dict[int, str] = field(default_factory=dict)
    parent: str | None = None
    audit_path: str | None = None


@dataclass
class FakeJob:
    tasks: list[FakeTask]


class FakeRunner:
    """Runs fake tasks; ``refuse``: run ids refused (once each) when they branch; ``drift``: what branching adds."""

    def __init__(self, refuse: dict[str, str] | None = None, drift: float = 0.0, twin_sleep: float = 0.0,
                 interrupt_twins: bool = False, fail_twins: bool = False) -> None:
        self.refuse = dict(refuse or {})
        self.drift, self.twin_sleep = drift, twin_sleep
        self.interrupt_twins, self.fail_twins = interrupt_twins, fail_twins
        self.calls: list[tuple[str, int, bool]] = []  # (run id, branch epoch, is a twin)

    def run(self, tasks: list[FakeTask]) -> list[dict[str, Any]]:
        return [self(task) for task in tasks]

    def __call__(self, task: FakeTask) -> dict[str, Any]:
        twin = f"{os.sep}audit{os.sep}" in task.out + os.sep
        self.calls.append((task.run_id, task.branch_epoch, twin))
        if twin:
            if self.interrupt_twins:
                raise KeyboardInterrupt
            time.sleep(self.twin_sleep)
        base = {"run_id": task.run_id, "label": task.label, "error": None, "epochs": task.epochs,
                "branch_epoch": task.branch_epoch, "parent": task.parent, "log_dir": None, "seconds": 0.01,
                "epochs_trained": task.epochs - task.branch_epoch}
        if task.resume_path and task.run_id in self.refuse:
            return {**base, "status": "refused", "refused": self.refuse.pop(task.run_id), "epochs_trained": 0}
        if twin and self.fail_twins:
            return {**base, "status": "failed", "error": "RuntimeError: out of luck"}
        for epoch, path in (task.save_paths or {}).items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path[: -len(".ckpt")] + ".json", "w") as fh:
                json.dump({"run_id": task.run_id, "epoch": epoch}, fh)
            open(path, "w").close()
        value = float(sum(map(ord, task.run_id))) + (self.drift if task.branch_epoch else 0.0)
        if task.audit_path:
            os.makedirs(os.path.dirname(task.audit_path), exist_ok=True)
            torch.save({"state_dict": {"layer.weight": torch.full((2,), value), "layer.bias": torch.zeros(1)},
                        "device": "cpu", "precision": "32-true"}, task.audit_path)
        return {**base, "status": "ok", "metrics": {"m": value}}


class FakeBackend:
    """Runs each task at submission (``threads``: on a thread pool instead, results arriving later)."""

    name, needs_pickling = "fake", False

    def __init__(self, runner: FakeRunner, threads: int = 0) -> None:
        self.runner = runner
        self.max_in_flight = None
        self.pool = cf.ThreadPoolExecutor(threads) if threads else None

    def submit(self, job: FakeJob) -> cf.Future:
        if self.pool is not None:
            return self.pool.submit(self.run, job)
        future: cf.Future = cf.Future()
        future.set_result(self.run(job))
        return future

    def run(self, job: FakeJob) -> list[dict[str, Any]]:
        return [self.runner(task) for task in job.tasks]

    def restart(self) -> bool:
        return False

    def close(self, cancel: bool) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


# a: trains [1, 1, 1, 1, 0] from scratch; b branches from a after 3 epochs; c branches from b after 4
# (c's schedule leaves b's only in its last epoch); d is another group (from scratch).
# STAR: x, y and z all branch from root after 1 epoch.
ITEMS = [("a", "g", [1, 1, 1, 1, 0]), ("b", "g", [1, 1, 1, 0, 2]), ("c", "g", [1, 1, 1, 0, 0]),
         ("d", "h", [0, 0, 0, 0, 0])]
STAR = [("root", "s", [1, 3, 3]), ("x", "s", [1, 0, 0]), ("y", "s", [1, 1, 1]), ("z", "s", [1, 2, 2])]


def _run(out: Any, runner: FakeRunner, verify: int | None = 1, items: list = ITEMS, threads: int = 0,
         keep: bool = False) -> tuple[Dispatcher, dict[str, dict[str, Any]]]:
    store = Store(str(out))
    os.makedirs(store.out, exist_ok=True)
    latest = store.latest()
    todo = [PlanItem(rid, g, len(t), t) for rid, g, t in items if latest.get(rid, {}).get("status") != "ok"]
    plan = make_plan(todo, available=store.available_checkpoints())

    def make_task(node: Any) -> FakeTask:
        return FakeTask(node.run_id, node.run_id, store.out, node.epochs, node.branch_epoch,
                        store.checkpoint_path(node.resume_key) if node.resume_key else None,
                        {k: store.checkpoint_path(key) for k, key in node.save_keys.items()}, node.parent)

    fields = {rid: {"run_id": rid, "label": rid} for rid, _, _ in items}
    log_dirs = dict.fromkeys(fields)
    dispatcher = Dispatcher(plan, FakeBackend(runner, threads), lambda nodes: FakeJob([make_task(n) for n in nodes]),
                            store=store, fields=fields, log_dirs=log_dirs, audit=Audit(verify, store.out, latest),
                            observers=standard_observers(store, log_dirs, progress=False, keep_checkpoints=keep))
    dispatcher.run()
    return dispatcher, store.latest()


def _lines(out: Any) -> list[dict[str, Any]]:
    with open(os.path.join(str(out), "results.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def test_the_plan_the_fakes_rely_on():
    plan = make_plan([PlanItem(rid, g, len(t), t) for rid, g, t in ITEMS])
    assert {n.run_id: (n.parent, n.branch_epoch) for n in plan.nodes} == {
        "a": (None, 0), "b": ("a", 3), "c": ("b", 4), "d": (None, 0)}


def test_a_refused_branch_retrains_from_scratch_and_its_children_keep_their_plan(tmp_path, capsys):
    runner = FakeRunner(refuse={"b": "its LR schedule is built from max_epochs"})
    _, latest = _run(tmp_path, runner, verify=0)
    assert [(rid, be) for rid, be, _ in runner.calls] == [("a", 0), ("b", 3), ("b", 0), ("c", 4), ("d", 0)]
    assert latest["b"]["status"] == "ok" and latest["b"]["branch_epoch"] == 0
    assert latest["b"]["branch_refused"] == "its LR schedule is built from max_epochs"
    assert latest["c"]["branch_epoch"] == 4 and latest["c"]["parent"] == "b"  # b still wrote c's checkpoint
    assert "branch_refused" not in latest["c"] and "branch_refused" not in latest["a"]
    assert len(_lines(tmp_path)) == 4  # a refusal is not a result
    assert "run b cannot branch exactly from run a: its LR schedule" in capsys.readouterr().err


def test_each_reason_is_printed_once_and_every_refused_child_says_why(tmp_path, capsys):
    reason = "a callback configured from max_epochs"
    runner = FakeRunner(refuse={"x": reason, "y": reason, "z": "another reason"})
    _, latest = _run(tmp_path, runner, verify=0, items=STAR)
    assert {rid: latest[rid].get("branch_refused") for rid in "xyz"} == {"x": reason, "y": reason,
                                                                        "z": "another reason"}
    assert all(latest[rid]["branch_epoch"] == 0 for rid in "xyz")
    err = capsys.readouterr().err
    assert err.count(reason) == 1 and err.count("another reason") == 1


def test_a_refusal_of_a_run_that_does_not_branch_is_a_failure_not_a_loop(tmp_path):
    class AlwaysRefuses(FakeRunner):
        def __call__(self, task):
            self.calls.append((task.run_id, task.branch_epoch, False))
            return {"run_id": task.run_id, "status": "refused", "refused": "never happy"}

    runner = AlwaysRefuses()
    _, latest = _run(tmp_path, runner, verify=0, items=STAR[:2])
    assert latest["root"]["status"] == "failed" and "never happy" in latest["root"]["error"]
    assert latest["x"]["status"] == "failed" and len(runner.calls) == 2  # x: no checkpoint, so from scratch


def test_an_audit_that_passes(tmp_path, capsys):
    runner = FakeRunner()
    dispatcher, latest = _run(tmp_path, runner, verify=1)
    # c is audited: branched deepest (after 4 epochs), although b branched and finished first
    assert latest["c"]["audit"] == "equal" and latest["c"]["branch_epoch"] == 4
    assert [c for c in runner.calls if c[2]] == [("c", 0, True)]  # one twin, from scratch, right after c
    assert runner.calls.index(("c", 0, True)) == runner.calls.index(("c", 4, False)) + 1
    assert "audit" not in latest["b"]  # verify=1: the deepest branched run only
    assert latest["b"]["branch_epoch"] == 3  # sharing goes on
    assert len(_lines(tmp_path)) == 4
    assert not os.listdir(tmp_path / "audit") if (tmp_path / "audit").exists() else True  # b's standby weights too


def test_an_audit_mismatch_stops_sharing_and_the_row_takes_the_from_scratch_results(tmp_path):
    runner = FakeRunner(drift=0.5)
    with pytest.warns(AuditWarning, match=r"run c branched at epoch 4 did not end as(.|\n)*layer.weight"):
        dispatcher, latest = _run(tmp_path, runner, verify=1)
    assert latest["c"]["audit"].startswith("differs: layer.weight max|diff|=0.5 (1 of 2 tensors differ")
    assert latest["c"]["metrics"]["m"] == float(sum(map(ord, "c")))  # the twin's metric, not the drifted one
    assert latest["c"]["branch_epoch"] == 0
    # b had finished branched, unaudited: retrained from scratch
    assert latest["b"]["branch_epoch"] == 0 and latest["b"]["branch_refused"].startswith(
        "sharing stopped: the audit of c found differs")
    assert ("b", 3, False) in runner.calls and ("b", 0, False) in runner.calls
    assert latest["b"]["metrics"]["m"] == float(sum(map(ord, "b")))
    assert os.path.exists(tmp_path / "audit" / "c.branched.pt")  # kept as evidence
    assert not os.path.exists(tmp_path / "audit" / "b.branched.pt")  # b's standby weights are not
    assert dispatcher.sharing_off


def test_branched_runs_finished_before_a_mismatch_are_retrained(tmp_path):
    # x is audited; y and z finish (branched) while x's twin still trains
    runner = FakeRunner(drift=0.5, twin_sleep=0.3)
    with pytest.warns(AuditWarning):
        _, latest = _run(tmp_path, runner, verify=1, items=STAR, threads=4)
    assert all(latest[rid]["branch_epoch"] == 0 for rid in "xyz")
    assert all(latest[rid]["metrics"]["m"] == float(sum(map(ord, rid))) for rid in "xyz")  # all the truth
    retrained = [rid for rid in "xyz" if latest[rid].get("branch_refused")]
    audited = [rid for rid in "xyz" if latest[rid].get("audit")]
    assert len(audited) == 1 and sorted(retrained + audited) == ["x", "y", "z"]
    for rid in retrained:  # they had finished as branched runs (the twin sleeps), then trained again
        assert (rid, 1, False) in runner.calls and (rid, 0, False) in runner.calls


def test_a_mismatch_recorded_earlier_keeps_sharing_off(tmp_path):
    with pytest.warns(AuditWarning):
        _run(tmp_path, FakeRunner(drift=0.5), verify=1, items=STAR[:2])
    runner = FakeRunner(drift=0.5)
    _, latest = _run(tmp_path, runner, verify=0, items=STAR)
    assert [c[1] for c in runner.calls] == [0, 0]  # y and z trained from scratch
    assert latest["y"]["branch_refused"].startswith("sharing stopped")


def test_an_earlier_unaudited_branch_is_retrained_after_a_mismatch(tmp_path):
    _run(tmp_path, FakeRunner(drift=0.5), verify=0, items=STAR[:2], keep=True)  # x branched, not audited
    runner = FakeRunner(drift=0.5)
    with pytest.warns(AuditWarning):
        _, latest = _run(tmp_path, runner, verify=1, items=STAR[:3])  # y is audited and differs
    assert latest["x"]["branch_epoch"] == 0 and latest["x"]["metrics"]["m"] == float(ord("x"))
    assert latest["x"]["branch_refused"].startswith("sharing stopped: the audit of y")


def test_an_interrupted_audit_resumes_with_its_twin_only(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, FakeRunner(interrupt_twins=True), verify=1)
    assert "c" not in Store(str(tmp_path)).latest()  # held back until its audit
    assert os.path.exists(tmp_path / "audit" / "c.branched.json")
    runner = FakeRunner()
    _, latest = _run(tmp_path, runner, verify=1)
    assert ("c", 4, False) not in runner.calls and ("c", 0, True) in runner.calls  # c itself did not retrain
    assert latest["c"]["audit"] == "equal" and latest["c"]["branch_epoch"] == 4
    assert not os.path.exists(tmp_path / "audit" / "c.branched.json")
    # an audit done is not redone: a new branched run in a later call is not audited under verify=1
    more = ITEMS + [("e", "k", [5, 5, 5, 0]), ("f", "k", [5, 5, 0, 0])]
    runner = FakeRunner()
    _, latest = _run(tmp_path, runner, verify=1, items=more)
    assert [c for c in runner.calls if c[2]] == [] and latest["f"]["branch_epoch"] == 2
    assert "audit" not in latest["f"]


def test_verify_all_audits_every_branched_run(tmp_path):
    runner = FakeRunner()
    _, latest = _run(tmp_path, runner, verify=None)
    assert {rid: latest[rid].get("audit") for rid in "abcd"} == {"a": None, "b": "equal", "c": "equal", "d": None}


def test_a_twin_that_fails_leaves_the_row_unverified_and_audits_the_next_branch(tmp_path):
    runner = FakeRunner(fail_twins=True)
    _, latest = _run(tmp_path, runner, verify=1)
    assert latest["c"]["audit"].startswith("not verified: the from-scratch run failed (RuntimeError: out of luck")
    assert latest["c"]["status"] == "ok"
    # the next in risk order is audited instead, although it had finished (and was stored) before c
    assert latest["b"]["audit"].startswith("not verified")
    assert [c for c in runner.calls if c[2]] == [("c", 0, True), ("b", 0, True)]
    assert [r["run_id"] for r in _lines(tmp_path)].count("b") == 2  # stored, then stored again with its verdict


def test_compare_states_tolerance_and_special_values():
    a = {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}
    assert compare_states(a, {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}).equal
    assert not compare_states(a, {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}).equal
    assert compare_states({"w": torch.tensor([0.0])}, {"w": torch.tensor([-0.0])}).equal
    assert not compare_states(a, {"w": a["w"]}).equal  # a missing tensor differs
    near = {"w": torch.tensor([1.0, 100.0])}, {"w": torch.tensor([1.001, 100.0])}
    assert not compare_states(*near).equal
    assert compare_states(*near, rtol=tolerance("cuda", "32-true")).equal  # 1e-3 <= 1e-4 * 100
    assert not compare_states(*near, rtol=1e-6).equal
    assert compare_states({"s": torch.ones(2, dtype=torch.int64)}, {"s": torch.ones(2, dtype=torch.int32)}).differing


# RISK, in grid order: D trains [1, 1, 1, 3] from scratch; A, B and C branch from it after 3 epochs (C runs
# 5 epochs, its parent 4), E after 1. Planned (and submitted) D, A, B, E, C.
RISK = [("E", "g", [1, 0, 0, 0]), ("D", "g", [1, 1, 1, 3]), ("B", "g", [1, 1, 1, 0]), ("C", "g", [1, 1, 1, 2, 2]),
        ("A", "g", [1, 1, 1, 1])]


def test_the_audited_runs_are_the_deepest_branches_then_other_lengths_then_grid_order(tmp_path):
    runner = FakeRunner()
    dispatcher, latest = _run(tmp_path, runner, verify=2, items=RISK)
    assert dispatcher.audit.order == ["C", "B", "A", "E"]
    assert [rid for rid, _, twin in runner.calls if twin] == ["B", "C"]  # in the order they finished
    assert {rid: latest[rid].get("audit") for rid in "ABCDE"} == {"A": None, "B": "equal", "C": "equal", "D": None,
                                                                    "E": None}
    assert not os.listdir(tmp_path / "audit")  # A's and E's standby weights deleted once the choice was made


def test_the_same_runs_are_audited_whatever_order_they_finish_in(tmp_path):
    # on a thread pool the branched runs finish in any order; the audited ones do not change
    runner = FakeRunner()
    _, latest = _run(tmp_path, runner, verify=1, items=RISK, threads=4)
    assert {rid for rid in "ABCDE" if latest[rid].get("audit")} == {"C"}


def test_when_the_chosen_run_is_refused_the_next_in_risk_order_is_audited(tmp_path):
    # c (after 4 epochs) is chosen and refused; e (branched from f after 4 epochs too, later in grid order) is
    # next, not b (after 3 epochs), although b finished first
    items = ITEMS + [("e", "k", [5, 5, 5, 5, 0]), ("f", "k", [5, 5, 5, 5, 1])]
    runner = FakeRunner(refuse={"c": "its own configuration differs"})
    dispatcher, latest = _run(tmp_path, runner, verify=1, items=items)
    assert dispatcher.audit.order == ["c", "e", "b"]
    assert latest["c"]["branch_refused"] == "its own configuration differs" and "audit" not in latest["c"]
    assert latest["e"]["audit"] == "equal" and latest["e"]["branch_epoch"] == 4
    assert "audit" not in latest["b"] and latest["b"]["branch_epoch"] == 3
    assert [rid for rid, _, twin in runner.calls if twin] == ["e"]


def test_when_the_chosen_run_fails_a_stored_standby_run_is_audited_and_can_stop_sharing(tmp_path):
    # c is chosen and fails; b, next in risk order, had finished and been stored: its twin runs now, and
    # its difference gives its row the truth
    class FailC(FakeRunner):
        def __call__(self, task):
            record = super().__call__(task)
            return {**record, "status": "failed", "error": "boom"} if task.run_id == "c" else record

    runner = FailC(drift=0.5)
    with pytest.warns(AuditWarning, match="run b branched at epoch 3"):
        _, latest = _run(tmp_path, runner, verify=1)
    assert ("c", 4, False) in runner.calls  # c was chosen, and trained branched, before b's audit
    assert latest["b"]["audit"].startswith("differs: layer.weight") and latest["b"]["branch_epoch"] == 0
    assert latest["b"]["metrics"]["m"] == float(sum(map(ord, "b")))
    assert ("b", 0, False) not in runner.calls  # its twin's results were adopted: it is not trained a third time

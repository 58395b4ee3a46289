"""The dispatcher: submit the jobs of a plan that are ready, collect their records, retry, tell the observers.

* **Jobs.** Every unit of work is a job ``make_job(nodes)`` (a runner and its tasks, one per
  node; :mod:`lightning_critical.sweep.units`), whatever the runner: the default runner's jobs
  hold one run each, a grouping runner's (``runner.batches``, given here as ``groups`` of run
  ids) several. A job's result is a list of records, one per task in order (``"ok"`` /
  ``"failed"`` / ``"refused"``; ``"fatal": True`` for a missing metric; ``"exception"`` carried).
* **Ready.** A run starts as soon as the checkpoint it branches from is on disk, while its
  parent keeps training. If the parent ends without writing it (it failed first, or stopped
  early), the run is retargeted (:mod:`~lightning_critical.sweep.readiness`): it starts from its
  deepest own-prefix checkpoint on disk, else from scratch. Nodes are never changed in place:
  a retargeted run is a new node, and the observers hear ``on_retarget(old, new)``.
* **Collect.** A failed run is a result too and the sweep goes on; the observers
  (:mod:`~lightning_critical.sweep.observers`) store every row the moment it is final, collect
  checkpoints, stitch logs and show progress. A ``"fatal"`` record (a metric name no run
  produces) stops submitting; the dispatch then raises ``MetricNotFound``.
* **Retry.** A worker process that dies takes the pool with it: the jobs it held are retried in
  a fresh pool one at a time, so the job that kills its worker is found and recorded as failed
  and the others finish; a backend that cannot restart (a caller's executor broke) records
  them as failed and the dispatch raises :class:`SweepAborted`. A run whose record says
  ``status="refused"`` (it cannot branch exactly from its parent) is not a result: it is
  retrained from scratch and its row's ``branch_refused`` says why (each reason printed once).
* **The audit** (:class:`~lightning_critical.sweep.audit.Audit`) marks branched runs to audit,
  holds their rows until their from-scratch twins (run first, as soon as queued) have been
  compared, and may stop sharing: then no run branches any more and branched runs finished
  without a passed audit are retrained from scratch.
* **Ctrl-C** (or any error) cancels the jobs in flight, closes the backend and re-raises;
  whatever finished is on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from lightning_critical.sweep.audit import Audit, Twin
from lightning_critical.sweep.backends.workers import WorkerDied, WorkerStartupError
from lightning_critical.sweep.failures import carry
from lightning_critical.sweep.observers import Observer
from lightning_critical.sweep.plan import Node, Plan
from lightning_critical.sweep.readiness import Start, from_scratch, readiness, retarget
from lightning_critical.sweep.runners.base import MetricNotFound, conform
from lightning_critical.sweep.store import Store
from lightning_critical.sweep.table import refuse_colliding_metrics

Job = list[Node]  # the dispatcher's own list of a job's nodes (a node in it may be replaced, never changed)


class SweepAborted(RuntimeError):
    """The backend can no longer run anything (e.g. a caller's executor broke); results so far are saved."""


class Dispatcher:
    """Run ``plan`` on ``backend``: ready -> submit -> collect -> retry, telling ``observers`` (module docstring).

    Args:
        plan: the runs of this call (parents before children).
        backend: where jobs run (:mod:`lightning_critical.sweep.backends`).
        make_job: ``make_job(nodes) -> job``: the unit of work of these runs (a dataclass with
            ``tasks``, one per node, in order).
        store: the sweep's store (where checkpoints are).
        fields: every run's columns, by run id (the start of its row).
        log_dirs: every run's log directory, by run id (``None``: no logs).
        groups: run ids trained as one job (``runner.batches``), in the order to submit them;
            default: one job per run, in plan order (parents first).
        audit: the exactness audit (default: none).
        observers: told of every event, in order (:func:`~lightning_critical.sweep.observers.standard_observers`).
        poll_seconds: how long to wait for a job between checks for new ready runs.
    """

    def __init__(self, plan: Plan, backend: Any, make_job: Callable[[list[Node]], Any], *, store: Store,
                 fields: Mapping[str, dict[str, Any]], log_dirs: Mapping[str, str | None],
                 groups: Sequence[Sequence[str]] | None = None, audit: Audit | None = None,
                 observers: Sequence[Observer] = (), poll_seconds: float = 0.05) -> None:
        self.plan, self.backend, self.make_job, self.store = plan, backend, make_job, store
        self.fields, self.log_dirs, self.observers, self.poll = fields, log_dirs, list(observers), poll_seconds
        by_id = plan.by_id()
        # the runner's order (the session gives its tasks in plan order when it shares prefixes, so parents come
        # first; else in grid order); a child submitted early only waits for its parent's checkpoint
        chosen = [[n.run_id] for n in plan.nodes] if groups is None else [list(g) for g in groups if g]
        self.pending: list[Job] = [[by_id[rid] for rid in group] for group in chosen]
        self.running: dict[Any, Job] = {}  # a concurrent.futures.Future, or any object with done() and result()
        self.ids = set(by_id)
        self.done: dict[str, str] = {}  # run id -> status of its latest end
        self.suspects: set[str] = set()  # jobs that may kill their worker: each runs alone
        self.first_exception: BaseException | None = None
        self.fatal: str | None = None
        self.aborted: str | None = None
        self.audit = audit if audit is not None else Audit(0, store.out)
        self.refused: dict[str, str] = {}  # run id -> why it did not branch
        self.reasons: set[str] = set()
        self.branched_done: list[Node] = []  # branched runs stored without a passed audit
        self.sharing_off = False
        self.jumped = False  # work was put first in line: _fill starts a new pass
        self.runner = "the runner"  # its name, in a record that breaks the runner contract

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Dispatch every job; raise ``MetricNotFound`` / :class:`SweepAborted` after, ``KeyboardInterrupt`` at once."""
        self._tell("on_start", list(self.plan.nodes))
        try:
            self._begin()
            while self.pending or self.running:
                self._fill()
                if not self.running:
                    if self.pending and not (self.fatal or self.aborted):
                        self._unblock(self.pending[0])
                        continue
                    break
                for future in _wait(list(self.running), self.poll):
                    if future in self.running:
                        self._collect(future)
        except BaseException:
            self._cancel()
            raise
        finally:
            self._tell("on_close")
        self.backend.close(cancel=False)
        if self.fatal:
            raise MetricNotFound(self.fatal)
        if self.aborted:
            raise SweepAborted(self.aborted)

    def _begin(self) -> None:
        self.audit.rank(self.plan.nodes, list(self.fields))  # which branched runs to audit: from the plan
        for job in list(self.pending):  # audits interrupted in an earlier call: only their twins remain
            twin = self.audit.resume(job[0]) if len(job) == 1 else None
            if twin is not None:
                self._remove(job)
                self.done[twin.run_id] = "ok"
                self._tell("on_run_end", job[0], self.audit.held[twin.run_id])  # it ended in that call
                self.pending.insert(0, [twin])
        if self.audit.stopped:
            self._stop_sharing()

    def _cancel(self) -> None:
        for future in self.running:  # stop what can be stopped (queued futures, cluster jobs)
            try:
                future.cancel()
            except Exception:
                pass
        self.backend.close(cancel=True)

    def _tell(self, hook: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, hook)(*args)

    # -- ready -> submit ------------------------------------------------------------------------
    def _fill(self) -> None:
        while self._fill_pass():
            pass

    def _fill_pass(self) -> bool:
        """Submit every ready job; ``True`` when a result put work first in line (start a new pass)."""
        if self.fatal or self.aborted or any(job[0].run_id in self.suspects for job in self.running.values()):
            return False  # a suspect runs alone
        for job in list(self.pending):
            limit = self.backend.max_in_flight
            if limit is not None and len(self.running) >= limit:
                return False
            suspect = job[0].run_id in self.suspects
            if suspect and self.running or not any(j is job for j in self.pending) or not self._ready(job):
                continue
            self._remove(job)
            future = self.backend.submit(self._job(job))
            self.running[future] = job
            if future.done():  # the serial backend: record before starting the next run
                self._collect(future)
                if self.fatal:
                    return False
                if self.jumped:
                    self.jumped = False
                    return True
            if suspect:
                return False
        return False

    def _ready(self, job: Job) -> bool:
        for i, node in enumerate(job):
            start = readiness(node, self._on_disk, self._unfinished)
            if start is Start.WAIT:
                return False
            if start is Start.RETARGET:
                self._replace(job, i, self._retargeted(node))
        return True

    def _unblock(self, job: Job) -> None:
        """Nothing runs and nothing is ready: a parent vanished without its checkpoint; start from what exists."""
        for i, node in enumerate(job):
            if readiness(node, self._on_disk, self._unfinished) is not Start.NOW:
                self._replace(job, i, self._retargeted(node))

    def _retargeted(self, node: Node) -> Node:
        return retarget(node, self._on_disk, self._writer, sharing=not self.sharing_off)

    def _on_disk(self, key: str) -> bool:
        return os.path.exists(self.store.checkpoint_path(key))

    def _writer(self, key: str) -> str | None:
        return self.store.checkpoint_info(key).get("run_id")

    def _unfinished(self, run_id: str) -> bool:
        return run_id in self.ids and run_id not in self.done

    def _replace(self, job: Job, i: int, new: Node) -> None:
        old, job[i] = job[i], new
        self._tell("on_retarget", old, new)

    def _remove(self, job: Job) -> None:
        self.pending = [j for j in self.pending if j is not job]

    def _first(self, job: Job) -> None:
        self.pending.insert(0, job)
        self.jumped = True

    def _job(self, nodes: Job) -> Any:
        """The unit of work of ``nodes``; a single run's task as the audit wants it (weights saved, or a twin)."""
        job = self.make_job(list(nodes))
        runner = getattr(job, "runner", None)
        self.runner = str(getattr(runner, "name", type(runner).__name__)) if runner is not None else self.runner
        tasks = getattr(job, "tasks", None)
        if len(nodes) != 1 or not tasks:
            return job
        node, task = nodes[0], tasks[0]
        changed = self.audit.twin_task(task) if isinstance(node, Twin) else self.audit.prepare(node, task)
        return job if changed is task else dataclasses.replace(job, tasks=[changed])

    # -- collect -> retry ----------------------------------------------------------------------
    def _collect(self, future: Any) -> None:
        job = self.running.pop(future)
        try:
            result = future.result()
        except KeyboardInterrupt:
            raise
        except cf.BrokenExecutor as err:
            self._broken(job, err)
            return
        except Exception as err:  # e.g. the worker could not import the run's code: that error, as itself
            result = [{**self._failure(node, f"the backend could not run it: {type(err).__name__}: {err}"),
                       "exception": carry(err)} for node in job]
        records = result if isinstance(result, list) else [result]
        if len(records) != len(job):
            records = [self._failure(node, f"the runner returned {len(records)} records for {len(job)} runs")
                       for node in job]
        self.suspects.discard(job[0].run_id)
        for node, record in zip(job, records, strict=True):  # a record of another run fails: never re-keyed
            self._record(node, conform(record, self._task(node), self.runner))

    def _broken(self, job: Job, err: BaseException) -> None:
        """A worker died: the pool is gone with every job it held."""
        explain = getattr(self.backend, "explain_broken", None)  # the backend may know how it died
        err = explain(err) if explain is not None else err
        lost = [job] + list(self.running.values())
        self.running.clear()
        if not self.backend.restart():
            for lost_job in lost:
                for node in lost_job:
                    self._record(node, self._failure(node, f"the executor broke: {_describe(err)}"))
            self.aborted = f"the executor broke ({_describe(err)}); finished runs are saved, rerun to retry the others."
            return
        if len(lost) == 1 and job[0].run_id in self.suspects:
            self.suspects.discard(job[0].run_id)
            died = str(err) if isinstance(err, WorkerDied) else \
                "its worker process died (killed, out of memory, or os._exit)"
            for node in job:
                self._record(node, self._failure(node, died))
            return
        for lost_job in lost:  # retry each alone in a fresh pool to find the one that kills its worker
            self.suspects.add(lost_job[0].run_id)
        self.pending = lost + self.pending

    def _failure(self, node: Node, message: str) -> dict[str, Any]:
        return {"run_id": node.run_id, "status": "failed", "error": message, "metrics": {}, "epochs": node.epochs,
                "branch_epoch": node.branch_epoch, "parent": node.parent, "epochs_trained": 0, "seconds": None,
                "log_dir": self.log_dirs.get(node.run_id)}

    def _task(self, node: Node) -> SimpleNamespace:
        return SimpleNamespace(run_id=node.run_id, label=self.fields.get(node.run_id, {}).get("label", node.run_id),
                               epochs=node.epochs, branch_epoch=node.branch_epoch, parent=node.parent,
                               log_dir=self.log_dirs.get(node.run_id))

    def _record(self, node: Node, record: dict[str, Any]) -> None:
        exception = record.pop("exception", None) if isinstance(record, dict) else None
        if isinstance(node, Twin):  # a twin's failure is the audit's business, not errors="raise"'s
            self._verdict(node, record)
            return
        if exception is not None and self.first_exception is None:
            self.first_exception = exception
        if record.get("status") == "refused":
            self._refused(node, record)
            return
        fields = self.fields[node.run_id]  # the engine's columns: a record never overwrites them
        row = {**fields, **record, **fields, "finished_at": time.time()}
        refuse_colliding_metrics(row)  # a metric function's name that would overwrite a column stops the sweep
        if node.run_id in self.refused:
            row["branch_refused"] = self.refused[node.run_id]
        self.done[node.run_id] = row["status"]
        if row.get("fatal"):
            self.fatal = row["error"]
        self._tell("on_run_end", node, row)
        if self.sharing_off and row.get("branch_epoch"):  # it branched before the audit stopped sharing
            self.audit.release(node)
            self._again(node, str(self.audit.stopped))
            return
        twin = self.audit.on_result(node, row)
        if twin is not None:
            self._first([twin])  # the audit's verdict before more runs branch
            return
        self._tell("on_row", row)
        if row["status"] == "ok" and row.get("branch_epoch"):
            self.branched_done.append(node)
        self._fallbacks()

    # -- refused branches and the audit ----------------------------------------------------------
    def _again(self, node: Node, reason: str) -> None:
        """Train ``node`` again from scratch, first in line; its row says why (``branch_refused``)."""
        new = from_scratch(node)
        self._tell("on_retarget", node, new)
        self.refused[node.run_id] = reason
        self._first([new])

    def _refused(self, node: Node, record: dict[str, Any]) -> None:
        """``node`` cannot branch exactly (said before training): retrain it from scratch."""
        reason = str(record.get("refused") or "no reason given")
        if node.resume_key is None:  # nothing left to refuse: a runner's error, not a loop
            self._record(node, self._failure(node, f"refused although it trains from scratch: {reason}"))
            return
        if reason not in self.reasons:
            self.reasons.add(reason)
            label = self.fields[node.run_id].get("label", node.run_id)
            parent = self.fields.get(node.parent or "", {}).get("label", node.parent)
            print(f"lightning-critical: run {label} cannot branch exactly from run {parent}: {reason}. It trains "
                  "from scratch (table column branch_refused); other runs refused for this reason say so there.",
                  file=sys.stderr)
        self.audit.release(node)
        self._again(node, reason)
        self._fallbacks()

    def _verdict(self, twin: Twin, record: dict[str, Any]) -> None:
        final = self.audit.on_twin(twin, record)
        self.done[twin.run_id] = str(final.get("status"))
        self._tell("on_row", final)
        if self.audit.stopped and not self.sharing_off:
            self._stop_sharing()
        self._fallbacks()

    def _fallbacks(self) -> None:
        """A run chosen for the audit dropped out: audit the next one, even when it is already stored."""
        for twin in self.audit.fallbacks():
            self.branched_done = [n for n in self.branched_done if n.run_id != twin.run_id]
            self._first([twin])
            self._tell("on_requeue", twin)  # its row is stored again with the verdict

    def _stop_sharing(self) -> None:
        """After an audit found a difference: nothing branches any more; unverified branched runs retrain."""
        self.sharing_off = True
        reason = str(self.audit.stopped)
        for job in self.pending:
            for i, node in enumerate(job):
                if node.resume_key is not None:
                    self.refused[node.run_id] = reason
                self._replace(job, i, from_scratch(node, write_checkpoints=False))
        again, self.branched_done = self.branched_done, []
        queued = {n.run_id for job in [*self.pending, *self.running.values()] for n in job}
        again += [Node(rid, epochs) for rid, epochs in self.audit.unverified()
                  if rid in self.fields and rid not in queued and rid not in self.done]
        for node in again:
            new = from_scratch(node, write_checkpoints=False)
            self._tell("on_retarget", node, new)
            self.refused[node.run_id] = reason
            self.ids.add(node.run_id)
            self.done.pop(node.run_id, None)
            self.pending.append([new])
            self._tell("on_requeue", new)


def _describe(err: BaseException) -> str:
    return str(err) if isinstance(err, WorkerStartupError) else repr(err)


def _wait(futures: list[Any], timeout: float) -> list[Any]:
    """The finished ones among ``futures``, waiting up to ``timeout`` for one.

    ``concurrent.futures`` futures are waited on; other job objects (e.g. submitit's ``Job``,
    anything with ``done()`` and ``result()``) are polled.
    """
    if all(isinstance(f, cf.Future) for f in futures):
        done, _ = cf.wait(futures, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)
    finished = [f for f in futures if f.done()]
    if not finished:
        time.sleep(timeout)
    return finished

"""Run a plan's nodes on a backend: start each run once its branch checkpoint exists, record every result.

* A run starts as soon as the checkpoint it branches from is on disk, while its parent keeps
  training. If the parent ends without writing it (it failed first, or stopped early), the run
  starts from its deepest own-prefix checkpoint on disk, else from scratch.
* Every result is appended to ``results.jsonl`` the moment it arrives; a failed run is a
  result too and the sweep goes on.
* A worker process that dies takes the pool with it: the runs it held are retried in a fresh
  pool one at a time, so the run that kills its worker is found and recorded as failed and the
  others finish.
* Ctrl-C stops the workers and re-raises; whatever finished is on disk.
* Every unit of work is ``make_job(nodes)``, a :class:`~lightning_critical.sweep.units.Job`
  (the runner and its tasks: one per job unless ``batches`` groups them, e.g. the factorization
  ensemble) whose result is one record per run.
* Once a branched run and its parent have both finished, the parent's logs before the branch
  are copied into the run's log directory; a checkpoint whose runs all finished is deleted.
* A run whose record says ``status="refused"`` (it cannot branch exactly from its parent,
  e.g. its own configuration differs) is not a result: it is retrained from scratch and its
  row's ``branch_refused`` says why (each reason is printed once). Every child is checked on
  its own (the check is per run and costs a model build, not training).
* The exactness audit (:class:`~lightning_critical.sweep.audit.Audit`) marks branched runs to
  audit (chosen from the plan, most at risk first: :mod:`~lightning_critical.sweep.audit_order`;
  when one is refused, retargeted or fails, the next in that order), holds their records until
  their from-scratch twins (run first, as soon as queued) have been compared, and may stop
  sharing: then no run branches any more and branched runs finished without a passed audit are
  retrained from scratch.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from lightning_critical.sweep.audit import Audit, Twin
from lightning_critical.sweep.failures import carry
from lightning_critical.sweep.logs import copy_prefix
from lightning_critical.sweep.plan import Node, Plan
from lightning_critical.sweep.runners.base import MetricNotFound
from lightning_critical.sweep.store import Store
from lightning_critical.sweep.table import refuse_colliding_metrics
from lightning_critical.sweep.workers import WorkerDied, WorkerStartupError


class SweepAborted(RuntimeError):
    """The backend can no longer run anything (e.g. a caller's executor broke); results so far are saved."""


class Scheduler:
    """Execute ``plan`` on ``backend``; ``make_job(nodes)`` builds what a worker runs, ``fields`` the run columns."""

    def __init__(
        self,
        plan: Plan,
        make_job: Callable[[list[Node]], Any],
        store: Store,
        backend: Any,
        fields: dict[str, dict[str, Any]],
        log_dirs: dict[str, str | None],
        progress: bool | None,
        keep_checkpoints: bool = False,
        poll_seconds: float = 0.05,
        batches: list[list[str]] | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.plan = plan
        self.make_job = make_job
        self.store = store
        self.backend = backend
        self.fields = fields
        self.log_dirs = log_dirs
        self.keep_checkpoints = keep_checkpoints
        self.poll = poll_seconds
        self.ids = {n.run_id for n in plan.nodes}
        if batches is None:
            self.pending: list[list[Node]] = [[n] for n in plan.nodes]
        else:
            by_id = plan.by_id()
            self.pending = [[by_id[rid] for rid in batch] for batch in batches if batch]
        self.single = all(len(job) == 1 for job in self.pending)  # one run per job: the audit may retrain it
        # concurrent.futures.Future, or any object with done() and result() -> the job's nodes
        self.running: dict[Any, list[Node]] = {}
        self.first_exception: BaseException | None = None
        self.done: dict[str, str] = {}
        self.suspects: set[str] = set()
        self.fatal: str | None = None
        self.aborted: str | None = None
        self.consumers: dict[str, set[str]] = {}
        for node in plan.nodes:
            if node.resume_key is not None:
                self.consumers.setdefault(node.resume_key, set()).add(node.run_id)
        self.log_final: set[str] = set()
        self.log_waiting: dict[str, list[tuple[Node, dict[str, Any]]]] = {}
        self.bar = _progress_bar(len(plan.nodes), progress)
        self.audit = audit if audit is not None else Audit(0, store.out)
        self.refused: dict[str, str] = {}  # run id -> why it did not branch
        self.reasons: set[str] = set()
        self.branched_done: list[Node] = []  # branched runs stored without a passed audit
        self.sharing_off = False
        self.jumped = False  # work was put first in line: _fill starts a new pass
        self.audit.rank(plan.nodes, list(fields))  # which branched runs to audit: from the plan, most at risk first
        if self.single:
            for job in list(self.pending):  # audits interrupted in an earlier call: only their twins remain
                twin = self.audit.resume(job[0])
                if twin is not None:
                    self.pending.remove(job)
                    self.done[twin.run_id] = "ok"
                    self.log_final.add(twin.run_id)
                    self.pending.insert(0, [twin])
        if self.audit.stopped:
            self._stop_sharing()

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            while self.pending or self.running:
                self._fill()
                if not self.running:
                    if self.pending and not (self.fatal or self.aborted):
                        # nothing can start: a parent vanished without its checkpoint; start from what exists
                        for node in self.pending[0]:
                            self._retarget(node)
                        continue
                    break
                for future in _wait(list(self.running), self.poll):
                    if future in self.running:
                        self._collect(future)
        except BaseException:
            for future in self.running:  # stop what can be stopped (queued futures, cluster jobs)
                try:
                    future.cancel()
                except Exception:
                    pass
            self.backend.close(cancel=True)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()
        self.backend.close(cancel=False)
        if self.fatal:
            raise MetricNotFound(self.fatal)
        if self.aborted:
            raise SweepAborted(self.aborted)

    def _capacity(self) -> bool:
        limit = self.backend.max_in_flight
        return limit is None or len(self.running) < limit

    def _fill(self) -> None:
        while self._fill_pass():
            pass

    def _fill_pass(self) -> bool:
        """Submit every ready job; ``True`` when a result put work first in line (start a new pass)."""
        if self.fatal or self.aborted:
            return False
        if any(job[0].run_id in self.suspects for job in self.running.values()):
            return False  # a suspect runs alone
        for job in list(self.pending):
            if not self._capacity():
                return False
            suspect = job[0].run_id in self.suspects
            if suspect and self.running:
                continue
            if job not in self.pending or not all(self._ready(node) for node in job):
                continue
            self.pending.remove(job)
            future = self.backend.submit(self._work(job))
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

    def _work(self, job: list[Node]) -> Any:
        work = self.make_job(job)
        if self.single:
            node, task = job[0], work.tasks[0]
            work.tasks = [self.audit.twin_task(task) if isinstance(node, Twin) else self.audit.prepare(node, task)]
        return work

    def _first(self, job: list[Node]) -> None:
        self.pending.insert(0, job)
        self.jumped = True

    def _ready(self, node: Node) -> bool:
        if node.resume_key is None:
            return True
        if os.path.exists(self.store.checkpoint_path(node.resume_key)):
            return True
        if node.parent in self.ids and node.parent not in self.done:
            return False  # the parent has not reached the branch point yet
        self._retarget(node)
        return True

    def _retarget(self, node: Node) -> None:
        """Start ``node`` from its deepest own-prefix checkpoint on disk, else from scratch."""
        old = node.resume_key
        if old is not None:
            self.consumers.get(old, set()).discard(node.run_id)
        depth = 0 if self.sharing_off else max(
            (d for d in range(1, node.epochs) if d < len(node.prefix_keys)
             and os.path.exists(self.store.checkpoint_path(node.prefix_keys[d]))), default=0)
        if depth:
            node.branch_epoch, node.resume_key = depth, node.prefix_keys[depth]
            node.parent = self.store.checkpoint_info(node.resume_key).get("run_id")
            self.consumers.setdefault(node.resume_key, set()).add(node.run_id)
        else:
            node.branch_epoch, node.resume_key, node.parent = 0, None, None

    # -- results -------------------------------------------------------------------------
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
        for node, record in zip(job, records, strict=True):
            self._record(node, record)

    def _broken(self, job: list[Node], err: BaseException) -> None:
        """A worker died: the pool is gone with every run it held."""
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

    def _record(self, node: Node, record: dict[str, Any]) -> None:
        exception = record.pop("exception", None) if isinstance(record, dict) else None
        if isinstance(node, Twin):  # a twin's failure is the audit's business, not errors="raise"'s
            final = self.audit.on_twin(node, record)
            self.done[node.run_id] = str(final.get("status"))
            if not final.get("branch_epoch"):  # its logs are now the twin's whole run: no prefix to copy in
                for waiting in self.log_waiting.values():
                    waiting[:] = [(n, r) for n, r in waiting if n.run_id != node.run_id]
            self._store(final)
            if self.audit.stopped and not self.sharing_off:
                self._stop_sharing()
            self._fallbacks()
            return
        if exception is not None and self.first_exception is None:
            self.first_exception = exception
        if record.get("status") == "refused":
            self._refused(node, record)
            return
        full = {**self.fields[node.run_id], **record, "finished_at": time.time()}
        refuse_colliding_metrics(full)  # a metric function's name that would overwrite a column stops the sweep
        if node.run_id in self.refused:
            full["branch_refused"] = self.refused[node.run_id]
        self.done[node.run_id] = full["status"]
        if full.get("fatal"):
            self.fatal = full["error"]
        self._finish_logs(node, full)
        if full["status"] == "ok" and node.resume_key is not None:
            users = self.consumers.get(node.resume_key, set())
            users.discard(node.run_id)
            if not users and not self.keep_checkpoints:
                self.store.remove_checkpoint(node.resume_key)
        if self.sharing_off and full.get("branch_epoch"):  # it branched before the audit stopped sharing
            self.audit.release(node)
            self._to_scratch(node, str(self.audit.stopped))
            self._first([node])
            return
        twin = self.audit.on_result(node, full)
        if twin is not None:
            self._first([twin])  # the audit's verdict before more runs branch
            return
        self._store(full)
        if full["status"] == "ok" and full.get("branch_epoch") and self.single:
            self.branched_done.append(node)
        self._fallbacks()

    def _fallbacks(self) -> None:
        """A run chosen for the audit dropped out: audit the next one, even when it is already stored."""
        for twin in self.audit.fallbacks():
            self.branched_done = [n for n in self.branched_done if n.run_id != twin.run_id]
            self._first([twin])
            if self.bar is not None:
                self.bar.total += 1  # its row is stored again with the verdict

    def _store(self, full: dict[str, Any]) -> None:
        self.store.append(full)
        if self.bar is not None:
            failed = sum(1 for s in self.done.values() if s != "ok")
            self.bar.set_postfix_str(f"failed={failed}" if failed else "", refresh=False)
            self.bar.update(1)

    # -- refused branches and the audit's stop -------------------------------------------------
    def _to_scratch(self, node: Node, reason: str) -> None:
        if node.resume_key is not None:
            self.consumers.get(node.resume_key, set()).discard(node.run_id)
        node.branch_epoch, node.resume_key, node.parent = 0, None, None
        self.refused[node.run_id] = reason

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
        self._to_scratch(node, reason)
        self._first([node])
        self._fallbacks()

    def _stop_sharing(self) -> None:
        """After an audit found a difference: nothing branches any more; unverified branched runs retrain."""
        self.sharing_off = True
        reason = str(self.audit.stopped)
        for job in self.pending:
            for node in job:
                node.save_keys = {}
                if node.resume_key is not None:
                    self._to_scratch(node, reason)
        again = list(self.branched_done)
        self.branched_done.clear()
        queued = {n.run_id for job in self.pending for n in job} | {n.run_id for job in self.running.values()
                                                                    for n in job}
        if self.single:
            again += [Node(rid, epochs) for rid, epochs in self.audit.unverified()
                      if rid in self.fields and rid not in queued and rid not in self.done]
        for node in again:
            self._to_scratch(node, reason)
            self.ids.add(node.run_id)
            self.done.pop(node.run_id, None)
            self.pending.append([node])
            if self.bar is not None:
                self.bar.total += 1

    def _finish_logs(self, node: Node, record: dict[str, Any]) -> None:
        parent = node.parent
        if parent is not None and node.branch_epoch > 0 and parent in self.ids and parent not in self.log_final:
            self.log_waiting.setdefault(parent, []).append((node, record))
            return
        self._copy_logs(node, record)

    def _copy_logs(self, node: Node, record: dict[str, Any]) -> None:
        if node.parent is not None and node.branch_epoch > 0 and record.get("log_dir"):
            source = self.log_dirs.get(node.parent) if node.parent in self.ids else None
            if source is None and node.resume_key is not None:
                source = self.store.checkpoint_info(node.resume_key).get("log_dir")
            try:
                copy_prefix(source, record["log_dir"], int(record.get("branch_step") or 0))
            except Exception as err:
                print(f"lightning-critical: could not copy the branch prefix logs into {record['log_dir']}: {err}",
                      file=sys.stderr)
        self.log_final.add(node.run_id)
        for child, child_record in self.log_waiting.pop(node.run_id, []):
            self._copy_logs(child, child_record)


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


def _progress_bar(total: int, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed; the bar is only used as Any

    return tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)

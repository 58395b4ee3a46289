"""The exactness audit: retrain some branched runs from scratch and compare final weights and metrics (pure torch).

A branched run is meant to end as the same run trained from scratch would. The engine captures
what it knows of (:mod:`lightning_critical.sweep.runners.branching`), but a model may hold state the
engine cannot see; the audit is the safety net. ``lc.sweep.run(verify=...)`` chooses how many
branched runs are audited: ``"first"`` (default: one), an integer ``n``, ``"all"``, or
``False`` / ``"none"``. Which ones comes from the plan, never from which run finishes first
(:func:`~lightning_critical.sweep.audit_order.audit_order`): the runs most at risk, i.e. the
deepest branch points first (state a branch point misses may matter only late in training),
then runs whose length differs from their parent's, then grid order. When a chosen run is
refused, retargeted to another checkpoint, or fails, the next in that order is audited: the
next few in that order (as many again as are chosen) save their final weights on standby while
the choice may still change (deleted once it is made), so the next one is audited even if it
has already finished (its row is then stored again with its verdict); a run that trained
without them is passed over.

How an audit runs (the dispatcher, :mod:`~lightning_critical.sweep.dispatcher`, calls :class:`Audit` at each step):

* the audited run writes its final weights to ``<out>/audit/<run_id>.branched.pt``; its record
  is held back (and kept in ``<run_id>.branched.json``, so an interrupted audit is resumed
  without retraining the run) until its *twin*, the same run trained from scratch with its
  logs under ``<out>/audit/scratch``, has written ``<run_id>.scratch.pt``;
* :func:`compare_states` compares every tensor: bitwise (``torch.equal``) when the run trained
  on CPU, else within :func:`tolerance` (relative to each tensor's largest magnitude:
  ``1e-4`` for 32/64-bit precision, ``1e-2`` for 16-bit and mixed precision, because
  accelerator kernels reduce in an unspecified order), then every metric the row reports,
  under the same rule (:func:`~lightning_critical.sweep.audit_compare.compare_metrics`; NaN
  equals NaN): a metric that differs is a difference even when the weights are equal. Metrics
  must be functions of the training: a process id or a duration differs between two runs from
  scratch and fails the audit;
* **equal**: the run's row says ``audit="equal"`` and its weights files are deleted;
* **not verified** (the twin failed, e.g. its worker died): the row keeps its result and says
  so, and the next branched run is audited instead;
* **differs**: the row takes the twin's results (the truth: metrics, logs, saved model), says
  ``audit="differs: <tensor> max|diff|=..."`` (or ``"differs: metric <name>: ..."``), an
  :class:`AuditWarning` names the run and the difference, and sharing stops for the rest of
  the sweep (and for later calls on the same ``out``): runs still to train start from scratch,
  and branched runs already finished without a passed audit are retrained from scratch (their
  ``branch_refused`` column says why). Both weights files are kept for inspection.

An audit done in an earlier call counts towards ``verify`` and is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_critical.sweep.audit_compare import (  # noqa: F401  # Comparison: re-exported
    DIFFERS,
    EQUAL,
    Comparison,
    compare_metrics,
    compare_states,
    tolerance,
)
from lightning_critical.sweep.audit_files import adopt_twin, drop_twin_files, remove, write_json
from lightning_critical.sweep.audit_order import audit_order
from lightning_critical.sweep.plan import Node

AUDIT_DIR = "audit"
NOT_VERIFIED = "not verified"


class AuditWarning(UserWarning):
    """A branched run ended different from the same run trained from scratch."""


def check_verify(verify: Any) -> int | None:
    """How many branched runs to audit (``None``: all), from ``lc.sweep.run``'s ``verify``.

    Example::

        >>> check_verify("first"), check_verify(3), check_verify("all"), check_verify(False)
        (1, 3, None, 0)
        >>> check_verify("some")
        Traceback (most recent call last):
        ...
        ValueError: verify='some' is not valid: choose 'first' (default), 'all', 'none' / False or an integer n >= 0.
    """
    if verify is True or verify == "first":
        return 1
    if verify is False or verify is None or verify == "none":
        return 0
    if verify == "all":
        return None
    if isinstance(verify, numbers.Integral) and not isinstance(verify, bool) and int(verify) >= 0:  # numpy ints too
        return int(verify)
    raise ValueError(
        f"verify={verify!r} is not valid: choose 'first' (default), 'all', 'none' / False or an integer n >= 0."
    )


def save_weights(path: str, module: Any, trainer: Any) -> None:
    """Write ``module``'s final ``state_dict`` (on CPU) with the device and precision it trained with."""
    device = getattr(getattr(module, "device", None), "type", "cpu")
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}
    payload = {"state_dict": state, "device": str(device), "precision": str(getattr(trainer, "precision", ""))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


class Twin(Node):
    """The from-scratch twin of an audited run, as the dispatcher runs it (not a run of the table)."""


class Audit:
    """The dispatcher's audit bookkeeping: which branched runs to audit and what their twins decide.

    Args:
        limit: how many branched runs to audit in this ``out`` (from :func:`check_verify`; ``None``: all).
        out: the sweep directory.
        previous: the latest record of every run already in ``out`` (earlier calls' audits count).

    Example (nothing trains here: an audit that is off marks no run)::

        >>> import tempfile
        >>> audit = Audit(0, tempfile.mkdtemp())
        >>> audit.prepare(Node("r", 4, branch_epoch=2, resume_key="k"), "task")
        'task'
    """

    def __init__(self, limit: int | None, out: str, previous: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.limit = limit
        self.out = out
        self.dir = os.path.join(out, AUDIT_DIR)
        self.previous = dict(previous or {})
        earlier = [r for r in self.previous.values() if str(r.get("audit")).startswith((EQUAL, DIFFERS))]
        self.count = len(earlier)  # audits done or under way in this out
        self.stopped: str | None = next((_stop_reason(r) for r in earlier if str(r["audit"]).startswith(DIFFERS)),
                                        None)
        self.marked: set[str] = set()  # chosen and running: their twins follow
        self.standby: set[str] = set()  # running with their weights saved, in case a run chosen before them drops out
        self.standby_done: dict[str, dict[str, Any]] = {}  # finished standby runs (stored), by run id
        self.tried: set[str] = set()  # audited, under audit, or out of the running (refused, retargeted, failed)
        self.order: list[str] = []  # the branched runs of this call, most at risk first
        self.depth: dict[str, int] = {}  # their planned branch epochs
        self.held: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, str] = {}  # this call's, by label
        self.seconds = 0.0

    def path(self, run_id: str, which: str, ext: str = "pt") -> str:
        return os.path.join(self.dir, f"{run_id}.{which}.{ext}")

    def _room(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.count)

    def _next(self, reserve: bool = False) -> list[str]:
        """The runs to audit next: the first candidates in risk order, as many as there is room for.

        With ``reserve``, also the ones after them that keep their weights on standby: as many
        again as there are runs chosen or being audited (bounding the weights kept on disk).
        """
        room = self._room()
        left = [rid for rid in self.order if rid not in self.tried]
        if room is None:
            return left
        return left[:2 * (room + len(self.marked) + len(self.held))] if reserve else left[:room]

    def _open(self) -> bool:
        """Whether the choice may still change (a run already chosen may yet drop out)."""
        return not self.stopped and self.limit != 0 and (bool(self.marked or self.held) or self._room() != 0) \
            and any(rid not in self.tried for rid in self.order)

    # -- the dispatcher's calls ------------------------------------------------------------
    def rank(self, nodes: Sequence[Node], grid_order: Sequence[str]) -> None:
        """Know the plan: which branched runs to audit first (:func:`~.audit_order.audit_order`)."""
        self.order = audit_order(nodes, grid_order)
        self.depth = {n.run_id: n.branch_epoch for n in nodes if n.resume_key is not None}

    def prepare(self, node: Node, task: Any) -> Any:
        """``task``, told to save its final weights when ``node`` is a branched run to audit (or on standby)."""
        rid = node.run_id
        if self.limit == 0 or self.stopped or node.resume_key is None or rid in self.tried:
            return task
        if rid not in self.depth or node.branch_epoch != self.depth[rid]:  # retargeted: not the run planned
            self.tried.add(rid)
            self._settle()
            return task
        if rid in self._next():
            self.marked.add(rid)
            self.tried.add(rid)
            self.count += 1
        elif self._open() and rid in self._next(reserve=True):
            self.standby.add(rid)
        else:
            self.tried.add(rid)  # trained without its final weights saved: it cannot be audited
            return task
        return dataclasses.replace(task, audit_path=self.path(rid, "branched"))

    def release(self, node: Node) -> None:
        """``node`` will not be audited after all (it failed, was refused, or retrains from scratch)."""
        rid = node.run_id
        self.tried.add(rid)
        if rid in self.marked:
            self.marked.discard(rid)
            self.count -= 1
        if rid in self.standby:
            self.standby.discard(rid)
            remove(self.path(rid, "branched"))
        self._settle()

    def on_result(self, node: Node, record: dict[str, Any]) -> Twin | None:
        """The twin to run when ``record`` is an audited run's result (its record is then held back)."""
        rid = node.run_id
        if rid in self.standby:
            self.standby.discard(rid)
            ok = record.get("status") == "ok" and record.get("branch_epoch")
            if ok and rid in self._next():  # a run chosen before it dropped out: this one is audited now
                self.marked.add(rid)
                self.tried.add(rid)
                self.count += 1
            elif ok and self._open():
                self.standby_done[rid] = record
                return None
            else:
                self.tried.add(rid)
                remove(self.path(rid, "branched"))
                return None
        if rid not in self.marked:
            return None
        if record.get("status") != "ok" or not record.get("branch_epoch"):
            self.release(node)
            return None
        self.marked.discard(rid)
        self.held[rid] = record
        write_json(self.path(rid, "branched", "json"), record)
        self._settle()
        return Twin(rid, node.epochs)

    def fallbacks(self) -> list[Twin]:
        """Twins of finished standby runs that are now to be audited (a run chosen before them dropped out).

        Their rows were stored as they finished; the twin's verdict stores them again.
        """
        twins = []
        for rid in self._next():
            record = self.standby_done.pop(rid, None)
            if record is None:
                continue
            self.tried.add(rid)
            self.count += 1
            self.held[rid] = record
            write_json(self.path(rid, "branched", "json"), record)
            twins.append(Twin(rid, int(record.get("epochs") or 0)))
        self._settle()
        return twins

    def _settle(self) -> None:
        """Once the choice is made, standby weights are no longer needed."""
        if self._open():
            return
        for rid in list(self.standby_done):
            remove(self.path(rid, "branched"))
        self.standby_done.clear()

    def resume(self, node: Node) -> Twin | None:
        """The twin of ``node`` when an earlier call trained it and was interrupted during its audit."""
        record_path, weights = self.path(node.run_id, "branched", "json"), self.path(node.run_id, "branched")
        if not (os.path.exists(record_path) and os.path.exists(weights)):
            return None
        if self.limit == 0:
            remove(record_path, weights)
            return None
        try:
            with open(record_path) as fh:
                self.held[node.run_id] = json.load(fh)
        except (OSError, ValueError):
            return None
        self.count += 1
        self.tried.add(node.run_id)
        return Twin(node.run_id, node.epochs)

    def twin_task(self, task: Any) -> Any:
        """The from-scratch twin of an audited run's task: no checkpoints, its logs and files under ``<out>/audit``."""
        return dataclasses.replace(task, out=os.path.join(self.dir, "scratch"), branch_epoch=0, resume_path=None,
                                   save_paths={}, parent=None, audit_path=self.path(task.run_id, "scratch"))

    def on_twin(self, twin: Twin, record: dict[str, Any]) -> dict[str, Any]:
        """The audited run's final record, once its twin has finished (also decides whether sharing stops)."""
        rid = twin.run_id
        held = self.held.pop(rid)
        remove(self.path(rid, "branched", "json"))
        self.seconds += float(record.get("seconds") or 0.0)
        label = held.get("label", rid)
        if record.get("status") != "ok":  # nothing to compare: the row keeps its result, another run is audited
            first = str(record.get("error") or "").strip().splitlines()[:1]
            verdict = f"{NOT_VERIFIED}: the from-scratch run failed ({first[0] if first else 'no error message'})"
            self.count -= 1
        else:
            verdict = self._compare(rid, held, record)
        self.verdicts[label] = verdict
        final = {**held, "audit": verdict, "audit_seconds": float(record.get("seconds") or 0.0)}
        if verdict.startswith(DIFFERS):
            final.update(status=record.get("status"), error=record.get("error"), metrics=record.get("metrics", {}),
                         epochs_trained=record.get("epochs_trained"), branch_epoch=0, parent=None, branch_step=0,
                         global_step=record.get("global_step"),
                         seconds=float(held.get("seconds") or 0.0) + float(record.get("seconds") or 0.0))
            adopt_twin(self.dir, self.out, label, held.get("log_dir"), record.get("log_dir"))
            self.stopped = self.stopped or _stop_reason(final)
            warnings.warn(
                f"lightning-critical: audit: run {label} branched at epoch {held.get('branch_epoch')} did not end as "
                f"the same run trained from scratch ({verdict}). Its row now holds the from-scratch results; sharing "
                f"stops for the rest of this sweep. Both final weights are kept in {self.dir}.", AuditWarning,
                stacklevel=2)
        else:
            remove(self.path(rid, "branched"), self.path(rid, "scratch"))
            drop_twin_files(self.dir, label, record.get("log_dir"))
        self._settle()
        return final

    def _compare(self, rid: str, held: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        try:
            a = torch.load(self.path(rid, "branched"), map_location="cpu", weights_only=False)
            b = torch.load(self.path(rid, "scratch"), map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            return f"{DIFFERS}: the final weights could not be read ({type(err).__name__}: {err})"
        rtol = tolerance(str(a.get("device")), str(a.get("precision")))
        comparison = compare_states(a["state_dict"], b["state_dict"], rtol)
        if not comparison.equal:
            return comparison.verdict()
        metric = compare_metrics(held.get("metrics") or {}, record.get("metrics") or {}, rtol)  # what the row reports
        return f"{DIFFERS}: {metric} (final weights {comparison.verdict()})" if metric else comparison.verdict()

    def unverified(self) -> list[tuple[str, int]]:
        """Runs of earlier calls that branched and were not audited: ``(run_id, epochs)``."""
        return [(rid, int(r.get("epochs") or 0)) for rid, r in self.previous.items()
                if r.get("status") == "ok" and r.get("branch_epoch") and not r.get("audit")]

    # -- what the table and the console say --------------------------------------------------
    def summary(self, records: Sequence[Mapping[str, Any]], verify: Any) -> dict[str, Any]:
        """``table.attrs["audit"]``: the audits of the table's runs (this call's and earlier ones)."""
        audited = [r for r in records if r.get("audit")]
        return {
            "verify": verify if isinstance(verify, (bool, int, str)) else str(verify),
            "audited": len(audited),
            "passed": sum(1 for r in audited if str(r["audit"]).startswith(EQUAL)),
            "seconds": float(sum(float(r.get("audit_seconds") or 0.0) for r in audited)),
            "this_call": dict(self.verdicts),
            "sharing_stopped": self.stopped,
        }

    def report(self, summary: Mapping[str, Any]) -> None:
        """Print one line saying what was audited."""
        if self.verdicts:
            items = "; ".join(f"{label}: {v}" for label, v in self.verdicts.items())
            what = (f"retrained {len(self.verdicts)} branched run(s) from scratch in {self.seconds:.1f} s and "
                    f"compared final weights and metrics: {items}")
        elif summary["audited"]:
            what = f"{summary['audited']} run(s) audited in an earlier call, {summary['passed']} passed"
        elif self.limit == 0 and check_verify(summary["verify"]) != 0:
            what = "not available with this runner (only the default Lightning runner's branched runs are audited)"
        elif self.limit == 0:
            what = "off (verify=False): branched runs are not compared with runs trained from scratch"
        else:
            what = "no branched run to audit"
        found = any(v.startswith(DIFFERS) for v in self.verdicts.values())
        stop = " Sharing stopped for the rest of the sweep." if found else (
            f" Sharing is off ({self.stopped})." if self.stopped else "")
        print(f"lightning-critical: audit: {what}.{stop}", file=sys.stderr)


def _stop_reason(record: Mapping[str, Any]) -> str:
    return f"sharing stopped: the audit of {record.get('label', record.get('run_id'))} found {record.get('audit')}"

"""The exactness audit: retrain some branched runs from scratch and compare final weights (pure torch).

A branched run is meant to end as the same run trained from scratch would. The engine captures
what it knows of (:mod:`lightning_critical.sweep.execute`), but a model may hold state the
engine cannot see; the audit is the safety net. ``lc.sweep.run(verify=...)`` chooses which
branched runs are audited: ``"first"`` (default, the first branched run of the sweep), an
integer ``n`` (the first ``n``), ``"all"``, or ``False`` / ``"none"``.

How an audit runs (the scheduler calls :class:`Audit` at each step):

* the audited run writes its final weights to ``<out>/audit/<run_id>.branched.pt``; its record
  is held back (and kept in ``<run_id>.branched.json``, so an interrupted audit is resumed
  without retraining the run) until its *twin*, the same run trained from scratch with its
  logs under ``<out>/audit/scratch``, has written ``<run_id>.scratch.pt``;
* :func:`compare_states` compares every tensor: bitwise (``torch.equal``) when the run trained
  on CPU, else within :func:`tolerance` (relative to each tensor's largest magnitude:
  ``1e-4`` for 32/64-bit precision, ``1e-2`` for 16-bit and mixed precision, because
  accelerator kernels reduce in an unspecified order); the verdict is the weights' (a metric
  that differs with equal weights, e.g. a pid or a duration, is only noted);
* **equal**: the run's row says ``audit="equal"`` and its weights files are deleted;
* **not verified** (the twin failed, e.g. its worker died): the row keeps its result and says
  so, and the next branched run is audited instead;
* **differs**: the row takes the twin's results (the truth: metrics, logs, saved model), says
  ``audit="differs: <tensor> max|diff|=..."``, an :class:`AuditWarning` names the run and the
  tensor, and sharing stops for the rest of the sweep (and for later calls on the same
  ``out``): runs still to train start from scratch, and branched runs already finished
  without a passed audit are retrained from scratch (their ``branch_refused`` column says why).
  Both weights files are kept for inspection.

An audit done in an earlier call counts towards ``verify`` and is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_critical.sweep.plan import Node

AUDIT_DIR = "audit"
EQUAL = "equal"
DIFFERS = "differs"
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


def tolerance(device: str, precision: str) -> float | None:
    """The relative tolerance of the comparison (``None``: bitwise) for a run's device type and precision.

    Example::

        >>> tolerance("cpu", "32-true"), tolerance("cuda", "32-true"), tolerance("cuda", "bf16-mixed")
        (None, 0.0001, 0.01)
    """
    if device == "cpu":
        return None
    return 1e-2 if "16" in str(precision) else 1e-4


def save_weights(path: str, module: Any, trainer: Any) -> None:
    """Write ``module``'s final ``state_dict`` (on CPU) with the device and precision it trained with."""
    device = getattr(getattr(module, "device", None), "type", "cpu")
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}
    payload = {"state_dict": state, "device": str(device), "precision": str(getattr(trainer, "precision", ""))}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


@dataclass
class Comparison:
    """The outcome of comparing two state dicts (see :func:`compare_states`)."""

    tensors: int
    differing: list[str]
    max_diff: float
    rtol: float | None

    @property
    def equal(self) -> bool:
        return not self.differing

    def verdict(self) -> str:
        """The table's ``audit`` value."""
        if self.equal:
            return EQUAL if self.rtol is None else f"{EQUAL} within rtol={self.rtol:g} (max|diff|={self.max_diff:.3g})"
        how = "bitwise" if self.rtol is None else f"rtol={self.rtol:g}"
        return (f"{DIFFERS}: {self.differing[0]} max|diff|={self.max_diff:.3g} "
                f"({len(self.differing)} of {self.tensors} tensors differ, {how})")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if not (a.is_floating_point() or a.is_complex()):
        return float((a.long() - b.long()).abs().max()) if a.numel() else 0.0
    nan = torch.isnan(a) | torch.isnan(b)
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return math.inf
    d = (a.double() - b.double()).abs().masked_fill(nan, 0.0)
    return float(d.nan_to_num(nan=math.inf).max()) if d.numel() else 0.0  # inf - inf is nan: a real difference


def compare_states(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float | None = None) -> Comparison:
    """Compare every entry of two state dicts: bitwise (``rtol=None``; NaN equals NaN) or within ``rtol``.

    Within ``rtol`` means ``max|a - b| <= rtol * max|b|`` per tensor; integer tensors are always exact.
    ``max_diff`` is the largest absolute difference of the first differing tensor (or of all, when equal).

    Example::

        >>> import torch
        >>> x = {"w": torch.ones(2), "b": torch.zeros(1)}
        >>> compare_states(x, {"w": torch.ones(2), "b": torch.zeros(1)}).verdict()
        'equal'
        >>> compare_states(x, {"w": torch.tensor([1.0, 1.5]), "b": torch.zeros(1)}).verdict()
        'differs: w max|diff|=0.5 (1 of 2 tensors differ, bitwise)'
    """
    differing: list[str] = []
    first_diff, largest = 0.0, 0.0
    names = list(a) + [k for k in b if k not in a]
    for name in names:
        if name not in a or name not in b:
            diff, same = math.inf, False
        else:
            x, y = a[name], b[name]
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                diff, same = (0.0, True) if x == y else (math.inf, False)
            elif x.shape != y.shape or x.dtype != y.dtype:
                diff, same = math.inf, False
            else:
                diff = _diff(x, y)
                exact = rtol is None or not (x.is_floating_point() or x.is_complex())
                if exact:
                    same = diff == 0.0
                else:
                    scale = float(y.double().abs().nan_to_num(0.0).max()) if y.numel() else 0.0
                    same = diff <= rtol * scale  # type: ignore[operator]  # rtol is a float here
        largest = max(largest, diff)
        if not same:
            if not differing:
                first_diff = diff
            differing.append(name)
    return Comparison(len(names), differing, first_diff if differing else largest, rtol)


def _metric_note(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """A note naming the first metric that differs (NaN equals NaN), or ``""``.

    Only a note: a metric may legitimately differ between two runs with equal weights (a pid,
    a duration), so the verdict is the weights'.
    """
    for name in list(a) + [k for k in b if k not in a]:
        x, y = a.get(name), b.get(name)
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        if x != y and not both_nan:
            return f" (weights; metric {name} differs: {x!r} branched, {y!r} from scratch)"
    return ""


class Twin(Node):
    """The from-scratch twin of an audited run, as the scheduler runs it (not a run of the table)."""


class Audit:
    """The scheduler's audit bookkeeping: which branched runs to audit and what their twins decide.

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
        self.marked: set[str] = set()
        self.held: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, str] = {}  # this call's, by label
        self.seconds = 0.0

    def path(self, run_id: str, which: str, ext: str = "pt") -> str:
        return os.path.join(self.dir, f"{run_id}.{which}.{ext}")

    def _room(self) -> bool:
        return self.limit is None or self.count < self.limit

    # -- the scheduler's calls -------------------------------------------------------------
    def prepare(self, node: Node, task: Any) -> Any:
        """``task``, told to save its final weights when ``node`` is a branched run to audit."""
        if self.limit == 0 or self.stopped or node.resume_key is None or not self._room():
            return task
        self.marked.add(node.run_id)
        self.count += 1
        return dataclasses.replace(task, audit_path=self.path(node.run_id, "branched"))

    def release(self, node: Node) -> None:
        """``node`` will not be audited after all (it failed, was refused, or retrains from scratch)."""
        if node.run_id in self.marked:
            self.marked.discard(node.run_id)
            self.count -= 1

    def on_result(self, node: Node, record: dict[str, Any]) -> Twin | None:
        """The twin to run when ``record`` is an audited run's result (its record is then held back)."""
        if node.run_id not in self.marked:
            return None
        if record.get("status") != "ok" or not record.get("branch_epoch"):
            self.release(node)
            return None
        self.marked.discard(node.run_id)
        self.held[node.run_id] = record
        _write_json(self.path(node.run_id, "branched", "json"), record)
        return Twin(node.run_id, node.epochs)

    def resume(self, node: Node) -> Twin | None:
        """The twin of ``node`` when an earlier call trained it and was interrupted during its audit."""
        record_path, weights = self.path(node.run_id, "branched", "json"), self.path(node.run_id, "branched")
        if not (os.path.exists(record_path) and os.path.exists(weights)):
            return None
        if self.limit == 0:
            _remove(record_path, weights)
            return None
        try:
            with open(record_path) as fh:
                self.held[node.run_id] = json.load(fh)
        except (OSError, ValueError):
            return None
        self.count += 1
        return Twin(node.run_id, node.epochs)

    def twin_task(self, task: Any) -> Any:
        """The from-scratch twin of an audited run's task: no checkpoints, its logs and files under ``<out>/audit``."""
        return dataclasses.replace(task, out=os.path.join(self.dir, "scratch"), branch_epoch=0, resume_path=None,
                                   save_paths={}, parent=None, audit_path=self.path(task.run_id, "scratch"))

    def on_twin(self, twin: Twin, record: dict[str, Any]) -> dict[str, Any]:
        """The audited run's final record, once its twin has finished (also decides whether sharing stops)."""
        rid = twin.run_id
        held = self.held.pop(rid)
        _remove(self.path(rid, "branched", "json"))
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
            self._adopt_twin(label, held.get("log_dir"), record.get("log_dir"))
            self.stopped = self.stopped or _stop_reason(final)
            warnings.warn(
                f"lightning-critical: audit: run {label} branched at epoch {held.get('branch_epoch')} did not end as "
                f"the same run trained from scratch ({verdict}). Its row now holds the from-scratch results; sharing "
                f"stops for the rest of this sweep. Both final weights are kept in {self.dir}.", AuditWarning,
                stacklevel=2)
        else:
            _remove(self.path(rid, "branched"), self.path(rid, "scratch"))
            self._drop_twin_files(label, record.get("log_dir"))
        return final

    def _compare(self, rid: str, held: Mapping[str, Any], record: Mapping[str, Any]) -> str:
        try:
            a = torch.load(self.path(rid, "branched"), map_location="cpu", weights_only=False)
            b = torch.load(self.path(rid, "scratch"), map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError) as err:
            return f"{DIFFERS}: the final weights could not be read ({type(err).__name__}: {err})"
        rtol = tolerance(str(a.get("device")), str(a.get("precision")))
        comparison = compare_states(a["state_dict"], b["state_dict"], rtol)
        if comparison.equal and rtol is None:
            return comparison.verdict() + _metric_note(held.get("metrics") or {}, record.get("metrics") or {})
        return comparison.verdict()

    def _adopt_twin(self, label: str, run_logs: str | None, twin_logs: str | None) -> None:
        """The twin's logs and saved model replace the branched run's (they hold the truth)."""
        if run_logs and twin_logs and os.path.isdir(twin_logs):
            shutil.rmtree(run_logs, ignore_errors=True)
            os.makedirs(os.path.dirname(run_logs), exist_ok=True)
            shutil.move(twin_logs, run_logs)
        model = os.path.join(self.dir, "scratch", "models", f"{label}.pt")
        if os.path.exists(model):
            target = os.path.join(self.out, "models", f"{label}.pt")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(model, target)
        self._drop_twin_files(label, None)

    def _drop_twin_files(self, label: str, twin_logs: str | None) -> None:
        if twin_logs:
            shutil.rmtree(twin_logs, ignore_errors=True)
        _remove(os.path.join(self.dir, "scratch", "models", f"{label}.pt"))
        for folder in ("scratch/models", "scratch/tensorboard", "scratch/runs", "scratch", ""):  # only if empty
            try:
                os.rmdir(os.path.join(self.dir, folder))
            except OSError:
                pass

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
                    f"compared final weights: {items}")
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


def _write_json(path: str, record: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, default=str)
    os.replace(tmp, path)


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass

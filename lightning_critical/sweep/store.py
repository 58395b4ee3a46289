"""The sweep's directory on disk: its identity, the results appended run by run, checkpoints.

Layout of ``<out>``:

* ``sweep.json``: what trains the runs (the sweep's identity). A directory holding a
  different sweep is refused with both descriptions' differences.
* ``results.jsonl``: one JSON line per finished (or failed) run, appended, flushed and
  fsynced at once; the last line of a run id wins (a failed run retried successfully).
  Strictly valid JSON (:mod:`lightning_critical.sweep.records`): a NaN or infinite number is
  written as ``null`` and named in the line's ``"nonfinite"`` map, and read back as the number.
  A line cut short by a crash is skipped when reading; before the next append it is moved to
  ``results.jsonl.torn`` (with a note on stderr) so the new line starts on a line of its own.
* ``plans.jsonl``: the grid order of each call that trained runs, one line per call, so that
  ``load()`` returns rows in plan order (:func:`~lightning_critical.sweep.table.order_records`).
* ``.lock``: the live sweep's pid, host and start time (:mod:`lightning_critical.sweep.lock`).
* ``checkpoints/<key>.ckpt``: branch points shared between runs (written atomically), with
  ``<key>.json`` naming the run that wrote it.
* ``tensorboard/<label>/``: each run's logs. ``models/<label>.pt``: final weights (optional).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from lightning_critical.sweep.records import decode_line, encode_line
from lightning_critical.sweep.spec import canonical_json

RESULTS = "results.jsonl"
TORN = RESULTS + ".torn"
PLANS = "plans.jsonl"
IDENTITY = "sweep.json"
CHECKPOINTS = "checkpoints"


class SweepDirectoryError(ValueError):
    """The output directory holds a different sweep."""


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    if canonical_json(old) != canonical_json(new):
        return [f"{prefix}: {canonical_json(old)[:200]} -> {canonical_json(new)[:200]}"]
    return []


class Store:
    """One sweep's output directory.

    Example::

        >>> import tempfile
        >>> store = Store(tempfile.mkdtemp())
        >>> store.claim("abc", {"model": "m"})
        >>> store.append({"run_id": "r1", "status": "ok"})
        >>> store.latest()["r1"]["status"]
        'ok'
    """

    def __init__(self, out: str) -> None:
        self.out = os.path.abspath(os.fspath(out))
        self.results_path = os.path.join(self.out, RESULTS)
        self.checkpoint_dir = os.path.join(self.out, CHECKPOINTS)

    # -- identity --------------------------------------------------------------------------
    def claim(self, identity: str, description: dict[str, Any], replace: bool = False) -> None:
        """Mark the directory as this sweep's, or raise :class:`SweepDirectoryError` if it holds another.

        ``replace=True`` takes over a directory holding another sweep: its description and
        results are renamed to ``*.replaced`` and its checkpoints deleted.
        """
        path = os.path.join(self.out, IDENTITY)
        if replace and os.path.exists(path):
            for name in (IDENTITY, RESULTS):
                old = os.path.join(self.out, name)
                if os.path.exists(old):
                    os.replace(old, old + ".replaced")
            self.remove_all_checkpoints()
            text = json.dumps({"identity": identity, "description": description}, indent=1, sort_keys=True)
            _atomic_write(path, text)
            return
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    old = json.load(fh)
            except (OSError, ValueError) as err:
                raise SweepDirectoryError(
                    f"{path} is not a readable sweep description ({err}); choose another out=.") from None
            if old.get("identity") != identity:
                diff = _differences(old.get("description", {}), description)
                details = "\n  ".join(diff[:10]) or "(the descriptions match but were written by another version)"
                raise SweepDirectoryError(
                    f"out={self.out!r} holds a different sweep (identity {old.get('identity')}, "
                    f"this one is {identity}); "
                    f"what differs (stored -> this call):\n  {details}\n"
                    "Choose another out= directory, or delete the old one to start over."
                )
            return
        if os.path.isdir(self.out) and any(n for n in os.listdir(self.out) if not n.startswith(".")):
            if not os.path.exists(self.results_path):
                raise SweepDirectoryError(
                    f"out={self.out!r} exists and is not a sweep directory (no {IDENTITY}); "
                    "choose an empty or new directory."
                )
        os.makedirs(self.out, exist_ok=True)
        _atomic_write(path, json.dumps({"identity": identity, "description": description}, indent=1, sort_keys=True))

    # -- results ---------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Append one run's result (strict JSON) and make it durable before returning.

        A last line cut short by an earlier crash is moved aside first (:meth:`repair`).
        """
        self._append_line(encode_line(record), self.results_path)

    def note_plan(self, plan: dict[str, Any], sweep: str) -> None:
        """Record a call's grid order (``{"windows": [...], "params": [...], "seeds": [...]}``) for ``sweep``."""
        self._append_line(encode_line({"plan": plan, "sweep": sweep}), os.path.join(self.out, PLANS))

    def _append_line(self, line: str, path: str) -> None:
        self.repair(path)
        with open(path, "ab") as fh:  # one write of one whole line
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def repair(self, path: str | None = None) -> None:
        """End ``results.jsonl`` (or ``path``) on a complete line: a last line without its newline is a crash mid-write.

        If that line is a whole record, only its newline was lost and it is kept; otherwise it is
        appended to ``<file>.torn`` and cut off, with a note on stderr. Never glues the next line
        to a fragment. Needs the sweep's lock (one writer).
        """
        path = path or self.results_path
        try:
            fh = open(path, "r+b")
        except FileNotFoundError:
            return
        with fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            start = _last_line_start(fh, size)
            fh.seek(start)
            tail = fh.read()
            if decode_line(tail) is not None:
                fh.seek(size)
                fh.write(b"\n")
            else:
                with open(path + ".torn", "ab") as torn:
                    torn.write(tail + b"\n")
                    torn.flush()
                    os.fsync(torn.fileno())
                fh.truncate(start)
                print(f"lightning-critical: the last line of {path} was cut short ({len(tail)} bytes, "
                      f"a crash mid-write); moved it to {os.path.basename(path)}.torn and continued after the last "
                      "complete line.",
                      file=sys.stderr)
            fh.flush()
            os.fsync(fh.fileno())

    def _lines(self, path: str) -> Iterator[dict[str, Any]]:
        if not os.path.exists(path):
            return
        with open(path, "rb") as fh:
            for raw in fh:
                value = decode_line(raw)
                if value is not None:
                    yield value

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable run record of ``results.jsonl``, in file order (a line cut short by a crash is skipped)."""
        for value in self._lines(self.results_path):
            if "run_id" in value:
                yield value

    def plans(self, sweeps: Iterable[str]) -> list[dict[str, Any]]:
        """The grid orders :meth:`note_plan` recorded for the given sweep identities, oldest first."""
        wanted = set(sweeps)
        return [v["plan"] for v in self._lines(os.path.join(self.out, PLANS))
                if isinstance(v.get("plan"), dict) and v.get("sweep") in wanted]

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every run id."""
        out: dict[str, dict[str, Any]] = {}
        for record in self.records():
            out[record["run_id"]] = record
        return out

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_path(self, key: str) -> str:
        return os.path.join(self.checkpoint_dir, f"{key}.ckpt")

    def available_checkpoints(self) -> dict[str, str | None]:
        """Checkpoint keys on disk, mapped to the run id that wrote each (``None`` if unknown)."""
        if not os.path.isdir(self.checkpoint_dir):
            return {}
        out: dict[str, str | None] = {}
        for name in os.listdir(self.checkpoint_dir):
            if name.endswith(".ckpt"):
                key = name[: -len(".ckpt")]
                out[key] = None
                try:
                    with open(os.path.join(self.checkpoint_dir, f"{key}.json")) as fh:
                        out[key] = json.load(fh).get("run_id")
                except (OSError, ValueError):
                    pass
        return out

    def checkpoint_info(self, key: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.checkpoint_dir, f"{key}.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def remove_checkpoint(self, key: str) -> None:
        for suffix in (".ckpt", ".json"):
            try:
                os.remove(os.path.join(self.checkpoint_dir, key + suffix))
            except FileNotFoundError:
                pass

    def remove_all_checkpoints(self) -> None:
        if not os.path.isdir(self.checkpoint_dir):
            return
        for name in os.listdir(self.checkpoint_dir):
            try:
                os.remove(os.path.join(self.checkpoint_dir, name))
            except OSError:
                pass
        try:
            os.rmdir(self.checkpoint_dir)
        except OSError:
            pass


def _last_line_start(fh: Any, size: int, chunk: int = 65536) -> int:
    """The offset just after the last newline before ``size`` (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        fh.seek(start)
        block = fh.read(end - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0

"""The sweep's directory on disk: its identity, the results appended run by run, checkpoints.

Layout of ``<out>``:

* ``sweep.json``: what trains the runs (the sweep's identity: arguments, user code, library
  versions) and the history of takeovers. A directory holding a different sweep is refused
  with what changed, unless ``resume=`` says to rerun or reuse; either way the old sweep is
  set aside in ``replaced/<old identity>/``, never deleted.
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

import datetime
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_critical._checks import check_choice
from lightning_critical.sweep.changes import changes, changes_besides_code
from lightning_critical.sweep.records import decode_line, encode_line

RESULTS = "results.jsonl"
TORN = RESULTS + ".torn"
PLANS = "plans.jsonl"
IDENTITY = "sweep.json"
CHECKPOINTS = "checkpoints"
REPLACED = "replaced"
RESUME = ("refuse", "rerun", "reuse")


class SweepDirectoryError(ValueError):
    """The output directory holds a different sweep."""


@dataclass(frozen=True)
class Takeover:
    """A directory's sweep of another identity, taken over by :meth:`Store.claim` (``rerun`` or ``reuse``)."""

    previous: str
    resume: str
    reused: int
    changed: list[str]
    set_aside: str


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    def stored(self) -> dict[str, Any] | None:
        """The content of ``sweep.json`` (``None`` when absent); an unreadable one is refused."""
        path = os.path.join(self.out, IDENTITY)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as fh:
                stored = json.load(fh)
        except (OSError, ValueError) as err:
            raise SweepDirectoryError(
                f"{path} is not a readable sweep description ({err}); choose another out=.") from None
        if not isinstance(stored, dict):
            raise SweepDirectoryError(f"{path} is not a sweep description; choose another out=.")
        return stored

    def claim(self, identity: str, description: dict[str, Any], replace: bool = False, resume: str = "refuse",
              rekey: Callable[[str], Mapping[str, Mapping[str, Any]]] | None = None) -> Takeover | None:
        """Mark the directory as this sweep's; decide with ``resume`` if it holds a sweep of another identity.

        ``resume="refuse"`` raises :class:`SweepDirectoryError` naming what changed (code,
        versions, arguments) and the choices. ``"rerun"`` (or ``replace=True``) sets the stored
        sweep aside (``sweep.json`` and ``results.jsonl`` moved to ``replaced/<old identity>/``,
        checkpoints deleted) and starts afresh. ``"reuse"`` sets it aside too, but carries its
        finished runs over as this sweep's: ``rekey(old_identity)`` maps old run ids to the new
        runs' fields; each carried record gets ``reused_from`` (the old identity) and
        ``reused_run_id``. Only code and versions may differ for ``"reuse"``: results of other
        arguments (Trainer, deficit, metrics) are another experiment, refused. Both record the
        takeover in ``sweep.json``'s ``history``.
        Returns the :class:`Takeover`, or ``None`` when nothing was taken over.
        """
        check_choice("resume", resume, RESUME)
        stored = self.stored()
        if stored is None:
            if os.path.isdir(self.out) and any(n for n in os.listdir(self.out) if not n.startswith(".")):
                if not os.path.exists(self.results_path):
                    raise SweepDirectoryError(
                        f"out={self.out!r} exists and is not a sweep directory (no {IDENTITY}); "
                        "choose an empty or new directory."
                    )
            os.makedirs(self.out, exist_ok=True)
            self._write_identity({"identity": identity, "description": description})
            return None
        old = str(stored.get("identity"))
        if old == identity:
            return None
        diff = changes(stored.get("description") or {}, description)
        if replace:
            resume = "rerun"
        besides = changes_besides_code(stored.get("description") or {}, description)
        if resume == "refuse":
            shown = diff[:12] + ([f"... and {len(diff) - 12} more"] if len(diff) > 12 else [])
            details = "\n  ".join(shown) or "(the descriptions match but were written by another version)"
            reuse = "" if besides else (
                "resume='reuse' (keep the stored results as this sweep's; their rows are marked reused_from), ")
            raise SweepDirectoryError(
                f"out={self.out!r} holds a different sweep (identity {old}, this one is {identity}); "
                f"what differs (stored -> this call):\n  {details}\n"
                "Its results may not be what this call would compute. Choose: resume='rerun' (train again; the "
                f"stored results are set aside in {REPLACED}/{old}/), {reuse}or another out= directory."
            )
        if resume == "reuse":
            if besides:
                raise SweepDirectoryError(
                    f"out={self.out!r}: resume='reuse' keeps stored results across changes of code and library "
                    f"versions only, and this call also changes:\n  " + "\n  ".join(besides[:12]) + "\n"
                    "Its stored runs are results of another experiment: use resume='rerun' or another out= directory."
                )
        carried = self._carried(old, identity, rekey) if resume == "reuse" else []
        aside = self._set_aside(old)
        self.remove_all_checkpoints()  # keyed by the old identity: never used again
        if carried:
            _atomic_write(self.results_path, "".join(encode_line(r) + "\n" for r in carried))
        entry = {"resume": resume, "from": old, "to": identity, "set_aside": os.path.relpath(aside, self.out),
                 "reused": len(carried), "changed": diff,
                 "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        history = [*(stored.get("history") or []), entry]
        self._write_identity({"identity": identity, "description": description, "history": history})
        return Takeover(old, resume, len(carried), diff, aside)

    def _carried(self, old: str, identity: str,
                 rekey: Callable[[str], Mapping[str, Mapping[str, Any]]] | None) -> list[dict[str, Any]]:
        mapping = rekey(old) if rekey is not None else {}
        latest = self.latest()
        out = []
        for old_id, fields in mapping.items():
            record = latest.get(old_id)
            if record is not None and record.get("status") == "ok":
                parent = mapping.get(record.get("parent") or "", {}).get("run_id", record.get("parent"))
                out.append({**record, **fields, "parent": parent, "sweep": identity, "reused_from": old,
                            "reused_run_id": old_id})
        return out

    def _set_aside(self, old: str) -> str:
        aside = os.path.join(self.out, REPLACED, old)
        n = 1
        while os.path.exists(aside):  # the same identity set aside before (a -> b -> a -> b)
            n += 1
            aside = os.path.join(self.out, REPLACED, f"{old}-{n}")
        os.makedirs(aside)
        for name in (RESULTS, IDENTITY):
            path = os.path.join(self.out, name)
            if os.path.exists(path):
                os.replace(path, os.path.join(aside, name))
        return aside

    def _write_identity(self, content: dict[str, Any]) -> None:
        _atomic_write(os.path.join(self.out, IDENTITY), json.dumps(content, indent=1, sort_keys=True))

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

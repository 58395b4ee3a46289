"""The sweep's directory on disk: its identity, the results appended run by run, checkpoints.

Layout of ``<out>``:

* ``sweep.json``: what trains the runs (the sweep's identity: arguments, user code, library
  versions) and the history of takeovers. A directory holding a different sweep is refused
  with what changed, unless ``resume=`` says to rerun or reuse; either way the old sweep is
  set aside in ``replaced/<old identity>/``, never deleted.
* ``results.jsonl``: one JSON line per finished (or failed) run, appended, flushed and
  fsynced at once; the last line of a run id wins (a failed run retried successfully). A line
  cut short by a crash is skipped when reading, so the table is always readable.
* ``checkpoints/<key>.ckpt``: branch points shared between runs (written atomically), with
  ``<key>.json`` naming the run that wrote it.
* ``tensorboard/<label>/``: each run's logs. ``models/<label>.pt``: final weights (optional).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lightning_critical._checks import check_choice
from lightning_critical.sweep.identity import changes, changes_besides_code

RESULTS = "results.jsonl"
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


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, allow_nan=True, default=str) + "\n"


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
            _atomic_write(self.results_path, "".join(_line(r) for r in carried))
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
        """Append one run's result and make it durable before returning."""
        with open(self.results_path, "a") as fh:
            fh.write(_line(record))
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable line of ``results.jsonl``, in order (lines cut short by a crash are skipped)."""
        if not os.path.exists(self.results_path):
            return
        with open(self.results_path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "run_id" in record:
                    yield record

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

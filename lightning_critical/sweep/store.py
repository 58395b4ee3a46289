"""The sweep's directory on disk: its identity, the results appended run by run, checkpoints.

Layout of ``<out>``:

* ``sweep.json``: what trains the runs (the sweep's identity). A directory holding a
  different sweep is refused with both descriptions' differences.
* ``results.jsonl``: one JSON line per finished (or failed) run, appended, flushed and
  fsynced at once; the last line of a run id wins (a failed run retried successfully). A line
  cut short by a crash is skipped when reading, so the table is always readable.
* ``checkpoints/<key>.ckpt``: branch points shared between runs (written atomically), with
  ``<key>.json`` naming the run that wrote it.
* ``tensorboard/<label>/``: each run's logs. ``models/<label>.pt``: final weights (optional).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from lightning_critical.sweep.spec import canonical_json

RESULTS = "results.jsonl"
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
        """Append one run's result and make it durable before returning."""
        line = json.dumps(record, sort_keys=True, allow_nan=True, default=str)
        with open(self.results_path, "a") as fh:
            fh.write(line + "\n")
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

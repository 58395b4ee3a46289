"""The audit's files under ``<out>/audit``: held records, final weights, and a twin's logs and saved model.

Example::

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_json(os.path.join(folder, "r.branched.json"), {"run_id": "r"})
    >>> remove(os.path.join(folder, "r.branched.json"), os.path.join(folder, "absent"))
    >>> os.listdir(folder)
    []
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any


def adopt_twin(audit_dir: str, out: str, label: str, run_logs: str | None, twin_logs: str | None) -> None:
    """The twin's logs and saved model replace the branched run's (they hold the truth)."""
    if run_logs and twin_logs and os.path.isdir(twin_logs):
        shutil.rmtree(run_logs, ignore_errors=True)
        os.makedirs(os.path.dirname(run_logs), exist_ok=True)
        shutil.move(twin_logs, run_logs)
    model = os.path.join(audit_dir, "scratch", "models", f"{label}.pt")
    if os.path.exists(model):
        target = os.path.join(out, "models", f"{label}.pt")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(model, target)
    drop_twin_files(audit_dir, label, None)


def drop_twin_files(audit_dir: str, label: str, twin_logs: str | None) -> None:
    """Delete a twin's logs and saved model, and the audit's folders once empty."""
    if twin_logs:
        shutil.rmtree(twin_logs, ignore_errors=True)
    remove(os.path.join(audit_dir, "scratch", "models", f"{label}.pt"))
    for folder in ("scratch/models", "scratch/tensorboard", "scratch/runs", "scratch", ""):  # only if empty
        try:
            os.rmdir(os.path.join(audit_dir, folder))
        except OSError:
            pass


def write_json(path: str, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically (a temporary file renamed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, default=str)
    os.replace(tmp, path)


def remove(*paths: str) -> None:
    """Delete the files that exist among ``paths``."""
    for path in paths:
        try:
            os.remove(path)
        except OSError:
            pass

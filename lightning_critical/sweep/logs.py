"""Give a branched run its whole history: copy its parent's records from before the branch step.

A run that starts from a branch checkpoint logs from the branch step on. Once the run and its
parent have both finished, :func:`copy_prefix` adds, to the run's log directory,

* the parent's TensorBoard events with ``step < branch_step`` (hparams excluded), in an event
  file whose name sorts before the run's own, so TensorBoard reads them first (likewise in
  every sub-run directory, such as the monitor's per-series runs ``modes/<map>``);
* the parent's monitor history CSVs (``step, epoch, target, metric, index, value``) rows with
  ``step < branch_step``, ahead of the run's own rows.
"""

from __future__ import annotations

import csv
import glob
import os
import time

PREFIX_FILE = "events.out.tfevents.0000000000.sweep-prefix"
HISTORY_COLUMNS = ["step", "epoch", "target", "metric", "index", "value"]


def copy_prefix(parent_dir: str | None, child_dir: str | None, before_step: int) -> None:
    """Copy ``parent_dir``'s records with ``step < before_step`` into ``child_dir`` (both TensorBoard run dirs)."""
    if not parent_dir or not child_dir or before_step <= 0 or not os.path.isdir(parent_dir):
        return
    os.makedirs(child_dir, exist_ok=True)
    _copy_events(parent_dir, child_dir, before_step)
    files = glob.glob(os.path.join(parent_dir, "**", "events.out.tfevents.*"), recursive=True)
    for run in sorted({os.path.relpath(os.path.dirname(f), parent_dir) for f in files} - {"."}):
        # sub-runs, e.g. the monitor's per-series runs modes/<map>
        _copy_events(os.path.join(parent_dir, run), os.path.join(child_dir, run), before_step)
    _copy_histories(parent_dir, child_dir, before_step)


def _copy_events(parent_dir: str, child_dir: str, before_step: int) -> None:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    files = sorted(glob.glob(os.path.join(parent_dir, "events.out.tfevents.*")))
    events = []
    for path in files:
        for raw in RawEventFileLoader(path).Load():  # raw: the records exactly as written, not migrated
            event = event_pb2.Event.FromString(raw)
            if event.HasField("file_version") or event.step >= before_step:
                continue
            if event.HasField("summary"):
                keep = [v for v in event.summary.value if not v.tag.startswith("_hparams_")]
                if not keep:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(keep)
            events.append(event)
    if not events:
        return
    os.makedirs(child_dir, exist_ok=True)
    target = os.path.join(child_dir, PREFIX_FILE)
    tmp = target + ".tmp"
    with open(tmp, "wb") as fh:
        writer = RecordWriter(fh)
        writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        for event in events:
            writer.write(event.SerializeToString())
        writer.flush()
    os.replace(tmp, target)


def _read_history(path: str) -> list[list[str]] | None:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError:
        return None
    if not rows or rows[0] != HISTORY_COLUMNS:
        return None
    return rows[1:]


def _copy_histories(parent_dir: str, child_dir: str, before_step: int) -> None:
    for path in glob.glob(os.path.join(parent_dir, "**", "*.csv"), recursive=True):
        parent_rows = _read_history(path)
        if parent_rows is None:
            continue
        target = os.path.join(child_dir, os.path.relpath(path, parent_dir))
        own = _read_history(target) if os.path.exists(target) else []
        if own is None:  # not a history file of ours: leave it alone
            continue
        rows = [r for r in parent_rows if int(r[0]) < before_step] + [r for r in own if int(r[0]) >= before_step]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = target + ".tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HISTORY_COLUMNS)
            writer.writerows(rows)
        os.replace(tmp, target)

"""The sweep's tidy table: one row per run, built from the runs and their result records (pandas only).

Its summary over seeds (the critical-period curve) is :func:`lightning_critical.curve.summarize`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from lightning_critical.curve import RESULT_COLUMNS, RUN_COLUMNS
from lightning_critical.sweep.spec import RunSpec


def run_fields(run: RunSpec, run_id: str, label: str, epochs: int) -> dict[str, Any]:
    """The columns that describe a run (before it has results)."""
    windows = run.windows
    return {
        "run_id": run_id,
        "label": label,
        "window": " + ".join(str(w) for w in windows) if windows else "none",
        "window_start": float(windows[0].start) if windows else math.nan,
        "window_end": float(windows[-1].end if windows[-1].end is not None else epochs) if windows else math.nan,
        "unit": windows[0].unit if windows else "epoch",
        "baseline": not windows,
        "seed": run.seed,
        "params": run.params_dict,
        "epochs": epochs,
    }


def to_table(records: Iterable[dict[str, Any]], params: Sequence[str] | None = None,
             metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run: run columns, swept values, metric values, then status and bookkeeping.

    ``deficit_seed`` is the seed the run's deficits drew with (see
    :func:`lightning_critical.sweep.spec.deficit_seed`; ``<NA>`` for the baseline and for deficits
    without one), beside ``seed``, the run's own.

    ``records`` are result records (or run fields with ``status="pending"``).
    """
    rows = []
    param_names: list[str] = list(params or [])
    metric_names: list[str] = list(metrics or [])
    for record in records:
        row = {k: record.get(k) for k in RUN_COLUMNS}
        for key, value in (record.get("params") or {}).items():
            row[key] = value
            if key not in param_names:
                param_names.append(key)
        for key, value in (record.get("metrics") or {}).items():
            row[key] = value
            if key not in metric_names:
                metric_names.append(key)
        for key in RESULT_COLUMNS:
            row[key] = record.get(key)
        row["status"] = record.get("status", "pending")
        rows.append(row)
    columns = RUN_COLUMNS + param_names + [m for m in metric_names if m not in param_names] + RESULT_COLUMNS
    table = pd.DataFrame(rows, columns=columns)
    for name in ("window_start", "window_end", "seconds"):
        table[name] = pd.to_numeric(table[name], errors="coerce").astype(float)
    for name in ("seed", "epochs"):
        table[name] = pd.to_numeric(table[name], errors="coerce").astype("Int64")
    for name in ("epochs_trained", "branch_epoch"):
        table[name] = pd.to_numeric(table[name], errors="coerce").astype("Int64")
    if not any(isinstance(v, str) for v in table["deficit_seed"]):  # "a + b" when a run's deficits differ
        table["deficit_seed"] = pd.to_numeric(table["deficit_seed"], errors="coerce").astype("Int64")
    table["baseline"] = table["baseline"].astype(bool)
    table.attrs["params"] = param_names
    table.attrs["metrics"] = metric_names
    return table

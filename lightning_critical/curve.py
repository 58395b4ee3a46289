"""A critical-period curve from a sweep table: per window, the metric's mean over seeds and its drop.

A sweep table has one row per run (:mod:`lightning_critical.sweep.table` builds it); the curve
is :func:`summarize` of it, which both the sweep (its ``critical_period.png``) and
:mod:`lightning_critical.plots` draw. pandas only: no torch, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RUN_COLUMNS = ["run_id", "label", "window", "window_start", "window_end", "unit", "baseline", "seed"]
"""Columns that describe a run of a sweep table."""
RESULT_COLUMNS = ["status", "error", "audit", "branch_refused", "seconds", "epochs", "epochs_trained", "branch_epoch",
                  "parent", "log_dir"]
"""Columns a run's result adds (besides its metrics)."""


def summarize(table: pd.DataFrame, metric: str | None = None, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard error and number of seeds per window (and swept values), with the drop versus the baseline.

    Only runs with ``status == "ok"`` count. ``drop = baseline mean - mean`` (positive when the
    deficit lowers the metric), ``drop_sem`` its standard error (the two means' errors added in
    quadrature); the baseline is the no-deficit run with the same swept values.

    Args:
        table: a sweep table (from :func:`lightning_critical.sweep.run` or ``load``).
        metric: the metric column (default: the table's first metric).
        by: extra columns to keep apart (default: the swept parameters).

    Example::

        >>> t = pd.DataFrame({"window": ["none", "none", "[0, 5) epochs", "[0, 5) epochs"],
        ...                   "window_start": [np.nan, np.nan, 0.0, 0.0], "window_end": [np.nan, np.nan, 5.0, 5.0],
        ...                   "baseline": [True, True, False, False], "seed": [0, 1, 0, 1],
        ...                   "acc": [0.9, 0.8, 0.6, 0.5], "status": ["ok"] * 4})
        >>> s = summarize(t, "acc")
        >>> s[["window", "mean", "n_seeds", "drop"]].round(3).values.tolist()
        [['none', 0.85, 2, 0.0], ['[0, 5) epochs', 0.55, 2, 0.3]]
    """
    metric = metric or (table.attrs.get("metrics") or [None])[0]
    if metric is None or metric not in table.columns:
        known = table.attrs.get("metrics") or [c for c in table.columns if c not in RUN_COLUMNS + RESULT_COLUMNS]
        raise ValueError(f"metric={metric!r} is not a column of the sweep table; choose one of {known}.")
    by = list(table.attrs.get("params", []) if by is None else by)
    ok = table[table["status"] == "ok"].copy()
    keys = by + ["baseline", "window", "window_start", "window_end"]
    rows = []
    for key, group in ok.groupby(keys, dropna=False, sort=False):
        values = pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(dtype=float)
        n = len(values)
        sem = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        mean = float(values.mean()) if n else math.nan
        rows.append({**dict(zip(keys, key, strict=True)), "mean": mean, "sem": sem, "n_seeds": n})
    out = pd.DataFrame(rows, columns=keys + ["mean", "sem", "n_seeds"])
    base = out[out["baseline"]].set_index(by)[["mean", "sem"]] if by else out[out["baseline"]][["mean", "sem"]]
    drops, errors = [], []
    for _, row in out.iterrows():
        if by:
            idx = tuple(row[b] for b in by) if len(by) > 1 else row[by[0]]
            ref = base.loc[idx] if idx in base.index else None
        else:
            ref = base.iloc[0] if len(base) else None
        if ref is None:
            drops.append(math.nan)
            errors.append(math.nan)
            continue
        drops.append(float(ref["mean"] - row["mean"]))
        errors.append(0.0 if row["baseline"] else float(math.sqrt(ref["sem"] ** 2 + row["sem"] ** 2)))
    out["drop"] = drops
    out["drop_sem"] = errors
    out = out.sort_values(by + ["baseline", "window_start", "window_end"],
                          ascending=[True] * len(by) + [False, True, True], kind="stable").reset_index(drop=True)
    out.attrs["metric"] = metric
    return out

"""A critical-period curve from a sweep table: per window, the metric's mean over seeds and its drop.

A sweep table has one row per run (:mod:`lightning_critical.sweep.table` builds it); the curve
is :func:`summarize` of it, which both the sweep (its ``critical_period.png``) and
:mod:`lightning_critical.plots` draw. pandas only: no torch, no Lightning.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

RUN_COLUMNS = ["run_id", "label", "window", "window_start", "window_end", "unit", "baseline", "seed",
               "deficit_seed"]
"""Columns that describe a run of a sweep table."""
RESULT_COLUMNS = ["status", "error", "audit", "branch_refused", "seconds", "epochs", "epochs_trained", "branch_epoch",
                  "parent", "log_dir", "reused_from"]
"""Columns a run's result adds (besides its metrics)."""


def json_key(value: Any) -> str:
    """A hashable canonical form of a swept value, for grouping: equal JSON values give equal keys.

    Types stay apart as in the sweep's run ids (``1``, ``1.0``, ``True`` and ``"1"`` are four
    values); lists and dicts, which pandas cannot group on, become their canonical JSON.

    Example::

        >>> json_key([1, {"b": None, "a": 2.5}]), json_key(True) == json_key(1)
        ('[1,{"a":2.5,"b":null}]', False)
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=json_key)
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    return repr(value)


def _value_ranks(values: pd.Series) -> pd.Series:
    """Sort ranks of a column's values: by value when they are all numbers (or all strings, or all
    booleans), else in order of first appearance (the sweep's grid order)."""
    keys = values.map(json_key)
    first: dict[str, Any] = {}
    for key, value in zip(keys, values, strict=True):
        first.setdefault(key, value)
    items = list(first.values())
    order: list[str] = list(first)
    if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in items):
        order = sorted(first, key=lambda k: (math.isnan(float(first[k])), float(first[k])))
    elif all(isinstance(v, str) for v in items) or all(isinstance(v, (bool, np.bool_)) for v in items):
        order = sorted(first, key=lambda k: first[k])
    rank = {k: i for i, k in enumerate(order)}
    return keys.map(rank)


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
    # swept values of any JSON type: group on their canonical JSON, show the values themselves
    hashed = [f"__json_key__{b}" for b in by]
    for name, column in zip(hashed, by, strict=True):
        ok[name] = ok[column].map(json_key)
    windows = ["baseline", "window", "window_start", "window_end"]
    keys = by + windows
    rows, group_keys = [], []
    for key, group in ok.groupby(hashed + windows, dropna=False, sort=False):
        values = pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(dtype=float)
        n = len(values)
        sem = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        mean = float(values.mean()) if n else math.nan
        shown = {b: group[b].iloc[0] for b in by}
        rows.append({**shown, **dict(zip(windows, key[len(by):], strict=True)), "mean": mean, "sem": sem,
                     "n_seeds": n})
        group_keys.append(key[:len(by)])
    out = pd.DataFrame(rows, columns=keys + ["mean", "sem", "n_seeds"])
    base = {k: row for k, (_, row) in zip(group_keys, out.iterrows(), strict=True) if row["baseline"]}
    drops, errors = [], []
    for k, (_, row) in zip(group_keys, out.iterrows(), strict=True):
        ref = base.get(k)
        if ref is None:
            drops.append(math.nan)
            errors.append(math.nan)
            continue
        drops.append(float(ref["mean"] - row["mean"]))
        errors.append(0.0 if row["baseline"] else float(math.sqrt(ref["sem"] ** 2 + row["sem"] ** 2)))
    out["drop"] = drops
    out["drop_sem"] = errors
    ranks = [f"__rank__{b}" for b in by]
    for name, column in zip(ranks, by, strict=True):
        out[name] = _value_ranks(out[column]) if len(out) else pd.Series(dtype=int)
    out = out.sort_values(ranks + ["baseline", "window_start", "window_end"],
                          ascending=[True] * len(by) + [False, True, True], kind="stable")
    out = out.drop(columns=ranks).reset_index(drop=True)
    out.attrs["metric"] = metric
    return out

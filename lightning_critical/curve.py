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
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

RUN_COLUMNS = ["run_id", "label", "window", "window_start", "window_end", "unit", "baseline", "seed",
               "deficit_seed"]
"""Columns that describe a run of a sweep table."""
RESULT_COLUMNS = ["status", "error", "audit", "branch_refused", "seconds", "epochs", "epochs_trained", "branch_epoch",
                  "parent", "log_dir", "reused_from"]
"""Columns a run's result adds (besides its metrics)."""


COUNT_COLUMNS = ["n", "n_failed", "n_nonfinite"]
"""Per group of :func:`summarize`: runs in it, runs not ``"ok"`` (failed or not finished), ok runs whose
metric is NaN or infinite. ``n_seeds = n - n_failed - n_nonfinite`` values are averaged."""


def _finite_values(group: pd.DataFrame, metric: str) -> tuple[np.ndarray, dict[str, int]]:
    """The finite metric values of a group's ok runs, and how many runs it has, failed, or gave non-finite."""
    ok = group["status"] == "ok"
    values = pd.to_numeric(group.loc[ok, metric], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(values)
    counts = {"n": len(group), "n_failed": int((~ok).sum()), "n_nonfinite": int((~finite).sum())}
    return values[finite], counts

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


def _deficit_params(table: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The ``by`` columns that reach only the deficit: ``attrs["deficit_params"]`` (from the sweep), else the
    columns missing in every baseline row and given in every other row (a table that lost its attrs)."""
    if "deficit_params" in table.attrs:
        return [b for b in by if b in table.attrs["deficit_params"]]
    base = table["baseline"].astype(bool)
    if not base.any() or base.all():
        return []
    return [b for b in by if table.loc[base, b].isna().all() and table.loc[~base, b].notna().all()]


def paired_effect(wide: pd.DataFrame, better: Any, worse: Any) -> dict[str, float]:
    """``wide[better] - wide[worse]`` paired over seeds (rows): mean, its standard error, seeds and ``z = mean / sem``.

    ``wide`` is a metric as a (seed x window position) matrix, e.g. a ``pivot_table`` of a sweep
    table; the early-versus-late effect of a critical-period study, in paired standard errors.
    A seed missing either value is left out; a missing column gives NaN, not an error.

    Example::

        >>> wide = pd.DataFrame({0: [0.1, 0.3], 6: [0.6, 0.7]}, index=[0, 1])  # seed x onset
        >>> {k: round(v, 3) for k, v in paired_effect(wide, 6, 0).items()}
        {'difference': 0.45, 'sem': 0.05, 'n_seeds': 2, 'z': 9.0}
    """
    wide = wide.reindex(columns=list(dict.fromkeys([better, worse])))  # one column when better is worse
    diff = (wide[better] - wide[worse]).dropna()
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    sem = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"difference": mean, "sem": sem, "n_seeds": n, "z": mean / sem if sem > 0 else math.nan}


def summarize(table: pd.DataFrame, metric: str | None = None, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard error and number of seeds per window (and swept values), with the drop versus the baseline.

    Means and errors are over the runs with ``status == "ok"`` and a finite metric (``n_seeds``);
    the others are counted, never dropped silently: ``n`` runs per group, ``n_failed`` not ok
    (failed or not finished), ``n_nonfinite`` ok with a NaN or infinite metric (a window whose runs
    all failed is a row with a NaN mean). ``drop = baseline mean - mean`` (positive when the
    deficit lowers the metric), ``drop_sem`` its standard error (the two means' errors added in
    quadrature); the baseline is the no-deficit run with the same swept values, except values that
    reach only the deficit (``table.attrs["deficit_params"]``, e.g. ``deficit.factor``; missing in
    the baseline rows): one baseline row serves every one of their values.

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
        >>> t.loc[3, "acc"] = float("nan")  # a diverged seed: flagged, not averaged away
        >>> summarize(t, "acc")[["window", "n_seeds", "n", "n_failed", "n_nonfinite"]].values.tolist()
        [['none', 2, 2, 0, 0], ['[0, 5) epochs', 1, 2, 0, 1]]
    """
    metric = metric or (table.attrs.get("metrics") or [None])[0]
    if metric is None or metric not in table.columns:
        known = table.attrs.get("metrics") or [c for c in table.columns if c not in RUN_COLUMNS + RESULT_COLUMNS]
        raise ValueError(f"metric={metric!r} is not a column of the sweep table; choose one of {known}.")
    by = list(table.attrs.get("params", []) if by is None else by)
    # swept values of any JSON type: group on their canonical JSON, show the values themselves
    grouped = table.copy()
    hashed = [f"__json_key__{b}" for b in by]
    for name, column in zip(hashed, by, strict=True):
        grouped[name] = grouped[column].map(json_key)
    windows = ["baseline", "window", "window_start", "window_end"]
    keys = by + windows
    rows, group_keys = [], []
    # every run, whatever its status: failed and non-finite runs are counted, not lost
    for key, group in grouped.groupby(hashed + windows, dropna=False, sort=False):
        values, counts = _finite_values(group, metric)
        n = len(values)
        sem = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        mean = float(values.mean()) if n else math.nan
        shown = {b: group[b].iloc[0] for b in by}
        rows.append({**shown, **dict(zip(windows, key[len(by):], strict=True)), "mean": mean, "sem": sem,
                     "n_seeds": n, **counts})
        group_keys.append(key[:len(by)])
    out = pd.DataFrame(rows, columns=keys + ["mean", "sem", "n_seeds", *COUNT_COLUMNS])
    shared = _deficit_params(table, by)
    keep = [i for i, b in enumerate(by) if b not in shared]  # a baseline serves every value of the shared
    base = {tuple(k[i] for i in keep): row for k, (_, row) in zip(group_keys, out.iterrows(), strict=True)
            if row["baseline"]}
    drops, errors = [], []
    for k, (_, row) in zip(group_keys, out.iterrows(), strict=True):
        ref = base.get(tuple(k[i] for i in keep))
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
    first = [r for r, b in zip(ranks, by, strict=True) if b not in shared]
    later = [r for r, b in zip(ranks, by, strict=True) if b in shared]  # after the baseline that serves them
    out = out.sort_values(first + ["baseline"] + later + ["window_start", "window_end"],
                          ascending=[True] * len(first) + [False] + [True] * (len(later) + 2), kind="stable")
    out = out.drop(columns=ranks).reset_index(drop=True)
    out.attrs.update(metric=metric, **_protocol(table))
    out.attrs["x"] = default_x(out)
    out.attrs["deficit_params"] = shared
    return out


def _protocol(table: pd.DataFrame) -> dict[str, Any]:
    """What a sweep table says about its protocol: grid kind, what its windows hold, their unit."""
    units = table.loc[~table["baseline"].astype(bool), "unit"] if "unit" in table.columns else pd.Series(dtype=object)
    return {"kind": table.attrs.get("kind"), "intervention": table.attrs.get("intervention"),
            "unit": table.attrs.get("unit", units.dropna().iloc[0] if units.notna().any() else "epoch")}


X_CHOICES: tuple[str, ...] = ("window_end", "window_start")
"""The x axes of a curve: when the window ends (removal curves) or starts (sliding curves)."""


def default_x(table: pd.DataFrame) -> str:
    """``"window_end"`` for a removal grid, ``"window_start"`` for a sliding one; else from the windows.

    Example::

        >>> t = pd.DataFrame({"baseline": [True, False], "window_start": [np.nan, 0.0]})
        >>> default_x(t), default_x(t.assign(window_start=[np.nan, 5.0]))
        ('window_end', 'window_start')
    """
    kind = table.attrs.get("kind")
    if kind in ("removal", "sliding"):
        return "window_end" if kind == "removal" else "window_start"
    starts = pd.to_numeric(table.loc[~table["baseline"].astype(bool), "window_start"], errors="coerce").dropna()
    return "window_end" if len(starts) and (starts == 0).all() else "window_start"


@dataclass(frozen=True)
class CurveText:
    """The words of a curve, from its protocol: ``axis`` (the x label), ``curve`` and ``baseline`` (legend
    entries) and ``versus`` (what the metric is plotted against, for a title)."""

    axis: str
    curve: str
    baseline: str
    versus: str


_WORDS = {  # intervention -> (removal axis, removal curve, sliding curve, its onset, no-intervention entry)
    "deficit": ("deficit removed at {u} T", "deficit in [0, T)", "deficit in [k, k + {w})", "deficit onset k",
                "no deficit"),
    "task switch": ("task switched at {u} T", "task switch at T", "switched task in [k, k + {w})",
                    "switch onset k", "no task switch"),
}


def curve_text(summary: pd.DataFrame, x: str | None = None) -> CurveText:
    """What ``x`` means for this curve: "deficit removed at epoch T", "task switched at epoch T", "deficit onset k".

    ``summary`` is :func:`summarize`'s table (or a sweep table): its ``attrs`` say what the windows
    hold (``intervention``: ``"deficit"`` or ``"task switch"``, written by the sweep; else the
    neutral "intervention") and the grid (``kind``); a grid whose windows all start at 0 read
    at their end is a removal curve, one of a single window length read at its start a sliding one.

    Example::

        >>> t = pd.DataFrame({"baseline": [True, False, False], "window_start": [np.nan, 0.0, 0.0],
        ...                   "window_end": [np.nan, 5.0, 10.0]})
        >>> t.attrs.update(kind="removal", intervention="task switch")
        >>> curve_text(t)
        CurveText(axis='task switched at epoch T', curve='task switch at T', baseline='no task switch', \
versus='switch time T (removal)')
    """
    x = x or default_x(summary)
    what = summary.attrs.get("intervention") or "intervention"
    unit = summary.attrs.get("unit") or "epoch"
    windows = summary[~summary["baseline"].astype(bool)]
    lengths = (windows["window_end"] - windows["window_start"]).dropna().unique()
    removal_axis, removal, sliding, onset, none = _WORDS.get(what, (
        f"{what} ends at {{u}} T", f"{what} in [0, T)", f"{what} in [k, k + {{w}})", f"{what} onset k", f"no {what}"))
    if x == "window_end" and len(windows) and (windows["window_start"] == 0).all():
        end = "switch time T" if what == "task switch" else f"{what} end T"
        return CurveText(removal_axis.format(u=unit), removal, none, f"{end} (removal)")
    if x == "window_start" and len(lengths) == 1:
        w = f"{lengths[0]:g}"
        return CurveText(f"{onset} ({unit}; window length {w})", sliding.format(w=w), none,
                         f"{onset} (sliding window, length {w})")
    place = "end" if x == "window_end" else "start"
    return CurveText(f"{what} window {place} ({unit})", what, none, f"{what} window {place}")

"""The sweep's tidy table: one row per run, built from the runs and their result records (pandas only).

Its summary over seeds (the critical-period curve) is :func:`lightning_critical.curve.summarize`.

Rows come in *plan order*: the grid order of ``lc.sweep.run`` (windows, then swept values,
then seeds, as the call listed them). Every call that trains runs records its three axes
(:func:`plan_axes`); :func:`order_records` merges the calls' axes (a value new in a later call
goes right after the value it follows in that call, e.g. seeds ``[0]`` then ``[0, 1]`` give
``0, 1``; windows ``[baseline, w0-2]`` then ``[baseline, w0-1]`` give ``baseline, w0-1, w0-2``)
and sorts the rows by them. Rows of directories written before plans were recorded keep file order.

Metric names and swept parameter names are columns of the same table: names that would
overwrite another column are refused (:func:`check_columns` before training,
:func:`refuse_colliding_metrics` for names only a run reveals).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from lightning_critical.curve import RESULT_COLUMNS, RUN_COLUMNS, json_key
from lightning_critical.sweep.spec import RunSpec, canonical_json

AXES = ("windows", "params", "seeds")


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

    A swept value that reaches only the deficit (``deficit.factor``, see
    :mod:`lightning_critical.sweep.params`) is missing (NaN) in the baseline rows: one baseline
    run per seed serves every value. Those names are ``table.attrs["deficit_params"]``, which
    :func:`~lightning_critical.curve.summarize` reads.

    ``records`` are result records (or run fields with ``status="pending"``).
    """
    records = list(records)
    rows = []
    param_names: list[str] = list(params or [])
    metric_names: list[str] = list(metrics or [])
    renamed: set[str] = set()
    for record in records:
        row = {k: record.get(k) for k in RUN_COLUMNS}
        for key, value in (record.get("params") or {}).items():
            row[key] = value
            if key not in param_names:
                param_names.append(key)
        reserved = set(table_columns(record.get("params") or {}))
        for key, value in (record.get("metrics") or {}).items():
            if key in reserved:  # stored by an older version: keep both, under another name
                renamed.add(key)
                key = f"metric:{key}"
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
    for name in param_names:  # 1, 1.0 and True are different runs: keep them apart (pandas would merge them)
        values = [row.get(name) for row in rows]
        plain = [v for v in values if isinstance(v, (bool, int, float, str)) and v == v]  # v == v: not NaN
        if len({json_key(v) for v in plain}) != len(set(plain)):
            table[name] = pd.Series(values, index=table.index, dtype=object)
    table.attrs["params"] = param_names
    table.attrs["deficit_params"] = _baseline_free(records, param_names)
    for name in table.attrs["deficit_params"]:  # missing in the baseline rows: NaN / <NA>, integers kept integers
        present = [row[name] for row in rows if name in row]
        if table[name].dtype == object:
            table[name] = table[name].where(table[name].notna(), pd.NA)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            table[name] = table[name].astype("Int64")
    table.attrs["metrics"] = metric_names
    if renamed:
        warnings.warn(f"metrics {sorted(renamed)} are named like columns of the sweep table; they are shown as "
                      f"{[f'metric:{k}' for k in sorted(renamed)]}.", stacklevel=2)
    return table


def _baseline_free(records: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """The swept names no baseline record has (values that reach only the deficit), when there is a baseline."""
    baselines = [set(r.get("params") or {}) for r in records if r.get("baseline")]
    return [n for n in names if baselines and not any(n in b for b in baselines)]


# -- names ---------------------------------------------------------------------------------
def table_columns(params: Iterable[str] = ()) -> list[str]:
    """The columns a metric may not be named: the run and result columns and the swept parameters.

    Example::

        >>> "seed" in table_columns() and "lr" in table_columns(["lr"])
        True
    """
    return list(dict.fromkeys([*RUN_COLUMNS, *RESULT_COLUMNS, *params]))


def check_columns(params: Sequence[str], metrics: Sequence[str]) -> None:
    """Refuse swept parameters or metric names that would overwrite another column of the table.

    Example::

        >>> check_columns(["lr"], ["val_acc"])
        >>> check_columns(["lr"], ["lr"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: metrics ['lr'] are named like columns of the sweep table...
    """
    fixed = table_columns()
    bad = [p for p in params if p in fixed]
    if bad:
        raise ValueError(
            f"params {bad} are named like columns of the sweep table, whose values they would overwrite; the "
            f"reserved names are {fixed}. Give the factory argument another name (e.g. wrap the factory)."
        )
    bad = [m for m in metrics if m in table_columns(params)]
    if bad:
        raise ValueError(
            f"metrics {bad} are named like columns of the sweep table, whose values they would overwrite; the "
            f"reserved names are {table_columns(params)}. Log the metric under another name, or read it with "
            "a function (trainer, module) -> {'new_name': value}."
        )


def refuse_colliding_metrics(record: dict[str, Any]) -> None:
    """Turn a result whose metrics are named like table columns into a failed record that stops the sweep.

    For metrics only a run reveals (functions ``(trainer, module) -> dict``); names given as
    strings were refused before training by :func:`check_columns`.

    Example::

        >>> r = {"run_id": "a", "status": "ok", "params": {"lr": 0.1}, "metrics": {"lr": 1.0, "acc": 0.5}}
        >>> refuse_colliding_metrics(r)
        >>> r["status"], r["fatal"], r["metrics"]
        ('failed', True, {})
    """
    reserved = table_columns(record.get("params") or {})
    bad = sorted(k for k in (record.get("metrics") or {}) if k in reserved)
    if not bad:
        return
    record.update(
        status="failed", fatal=True, metrics={}, epochs_trained=0,
        error=(f"metrics: a metric function returned {bad}, named like columns of the sweep table (whose values "
               f"they would overwrite); the reserved names are {reserved}. Return them under other names."),
    )


# -- plan order ----------------------------------------------------------------------------
def _grid_keys(record: dict[str, Any]) -> tuple[str, str, Any]:
    """A record's place on the three axes: its window entry (windows and length), swept values, seed."""
    return (canonical_json([record.get("window"), record.get("epochs")]),
            canonical_json(record.get("params") or {}), record.get("seed"))


def plan_axes(fields: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The window, swept-values and seed axes of runs listed in grid order (for ``Store.note_plan``).

    Example::

        >>> runs = [{"window": w, "epochs": 2, "params": {}, "seed": s} for w in ("none", "[0, 1)") for s in (3, 1)]
        >>> plan_axes(runs)["seeds"]
        [3, 1]
    """
    axes: list[dict[Any, None]] = [{}, {}, {}]
    for record in fields:
        for axis, key in zip(axes, _grid_keys(record), strict=True):
            axis.setdefault(key, None)
    return {name: list(axis) for name, axis in zip(AXES, axes, strict=True)}


def _merge(orders: Iterable[Sequence[Any]]) -> list[Any]:
    """One order of every value: a value new in a later order goes right after its nearest predecessor there
    (else right before its nearest successor, else at the end)."""
    merged: list[Any] = []
    for order in orders:
        for i, value in enumerate(order):
            if value in merged:
                continue
            before = next((v for v in reversed(order[:i]) if v in merged), None)
            after = next((v for v in order[i + 1:] if v in merged), None)
            if before is not None:
                merged.insert(merged.index(before) + 1, value)
            elif after is not None:
                merged.insert(merged.index(after), value)
            else:
                merged.append(value)
    return merged


def order_records(records: Sequence[dict[str, Any]], plans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` in plan order (see the module docstring); records no plan places come last, in their order.

    Example::

        >>> recs = [{"window": "none", "epochs": 2, "params": {}, "seed": s} for s in (1, 0)]  # in file order
        >>> plan = plan_axes(recs[::-1])  # the call listed seed 0 first
        >>> [r["seed"] for r in order_records(recs, [plan])]
        [0, 1]
    """
    index = []
    for name in AXES:
        merged = _merge([_hashable(p.get(name) or []) for p in plans])
        index.append({value: i for i, value in enumerate(merged)})

    def position(item: tuple[int, dict[str, Any]]) -> tuple[int, ...]:
        i, record = item
        keys = [_hashable([k])[0] for k in _grid_keys(record)]
        places = [idx.get(k) for idx, k in zip(index, keys, strict=True)]
        if any(p is None for p in places):
            return (1, 0, 0, 0, i)
        return (0, *[int(p) for p in places if p is not None], i)

    return [record for _, record in sorted(enumerate(records), key=position)]


def _hashable(values: Sequence[Any]) -> list[Any]:
    return [v if isinstance(v, (str, int, float, type(None))) else canonical_json(v) for v in values]

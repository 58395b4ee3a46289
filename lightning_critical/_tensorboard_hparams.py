"""TensorBoard's HParams view of a sweep: one session file per run, one experiment at the sweep's root.

TensorBoard's HParams dashboard takes its columns from *one* experiment summary (the first it
finds in the log directory, whichever run holds it) and, whatever order that summary lists them
in, sorts them by ``differs`` (true first), then by **name**; the dashboard then shows the first
five hparam columns and the first five metric columns, and hides the rest behind check boxes.
Each run writing its own experiment (what ``TensorBoardLogger.log_hyperparams`` does) therefore
shows whichever run TensorBoard reads first (at sweep scale: a baseline, without the deficits'
columns), alphabetically (``baseline``, ``branch_epoch``, ``epochs``, ...).

So a sweep's runs write their session alone (:func:`write_run_session`: session start, the
``final/<name>`` metrics as scalars, session end, the run's custom-scalars layout; no experiment)
into a small file of their own, :data:`SESSION_FILE`, and once every run has finished
:func:`complete_sweep` gives the sweep one view, reading those files only:

* the **columns**, in the order :func:`column_order` gives (the sweep's axes first: window
  start and end, seed, swept values; the deficits' and tasks' descriptions; ``model/<name>``;
  the sweep's bookkeeping last), are named ``"<position> <key>"`` (e.g. ``"03 seed"``) so that
  TensorBoard's sort by name keeps that order; the dashboard shows the key itself (the column's
  display name), and downloads (CSV, JSON) use it too. Only the axes are marked ``differs``:
  they are the columns shown by default;
* **every run has every column**: a key a run lacks (the baseline has no deficit) reads
  ``"none"`` (``-1`` in a numeric column), so filtering and sorting see every run;
* one **experiment** at the sweep's root (:data:`SWEEP_FILE` in ``<out>/tensorboard``) lists the
  columns and the metrics (in the runs' order).

Every file is replaced whole (TensorBoard keeps the first summary of a tag in a run directory),
so calling :func:`complete_sweep` again after more runs is safe; a TensorBoard already running
shows the new columns once restarted.
"""

from __future__ import annotations

import glob
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning_critical._tensorboard_layout import CONFIG_TAG as LAYOUT_TAG

SESSION_FILE = "events.out.tfevents.9999999999.hparams-session"
"""A sweep run's HParams session (name sorting after the run's own event files: a running TensorBoard reads it)."""

SWEEP_FILE = "events.out.tfevents.0000000000.sweep"
"""The sweep's experiment (its columns) and custom-scalars layout, in ``<out>/tensorboard``."""

NONE = "none"

Value = bool | int | float | str


def column_order(keys: Iterable[str], lead: Sequence[str], last: Sequence[str]) -> list[str]:
    """``keys`` in the order the HParams table shows them.

    ``lead`` (in their order), then whatever is not a lead, a ``model/`` key or ``last``
    (``window``, the deficits' and tasks' descriptions, other callbacks': by name), then
    ``model/<name>`` (by name), then ``last`` (in their order).

    Example::

        >>> column_order(["run_id", "model/lr", "deficit/freeze/a/kind", "seed", "window_end", "window_start"],
        ...              lead=["window_start", "window_end", "seed"], last=["run_id"])
        ['window_start', 'window_end', 'seed', 'deficit/freeze/a/kind', 'model/lr', 'run_id']
    """
    keys = list(dict.fromkeys(keys))
    head = [k for k in lead if k in keys]
    tail = [k for k in last if k in keys and k not in head]
    middle = sorted(k for k in keys if k not in head and k not in tail and not k.startswith("model/"))
    model = sorted(k for k in keys if k.startswith("model/") and k not in head and k not in tail)
    return head + middle + model + tail


def column_names(columns: Sequence[str]) -> dict[str, str]:
    """``{key: name}``: each column's name in the sweep's view, ``"<position> <key>"``, sorting in ``columns``' order.

    Example::

        >>> column_names(["window_start", "seed"])
        {'window_start': '01 window_start', 'seed': '02 seed'}
    """
    width = max(2, len(str(len(columns))))
    return {key: f"{i:0{width}d} {key}" for i, key in enumerate(columns, 1)}


def key_of(name: str) -> str:
    """The key of a column named by :func:`column_names` (any other name is its own key).

    Example::

        >>> key_of("03 seed"), key_of("seed")
        ('seed', 'seed')
    """
    position, _, key = name.partition(" ")
    return key if position.isdigit() and key else name


# -- writing ------------------------------------------------------------------------------------
def _value(value: Value) -> Any:
    from google.protobuf import struct_pb2  # type: ignore[import-untyped]

    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


def _hparams_value(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata

    content = metadata.create_summary_metadata(data).plugin_data.content
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content))
    return Summary(value=[Summary.Value(tag=tag, metadata=smd)])


def _write_events(path: str, summaries: Iterable[tuple[int, Any]]) -> str:
    """Write ``(step, Summary)`` pairs as an event file at ``path``, replacing it whole."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    now = time.time()
    with open(tmp, "wb") as fh:
        writer = RecordWriter(fh)
        writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
        for step, summary in summaries:
            writer.write(event_pb2.Event(wall_time=now, step=step, summary=summary).SerializeToString())
        writer.flush()
    os.replace(tmp, path)
    return path


def write_run_session(log_dir: str, params: Mapping[str, Value], metrics: Mapping[str, float], step: int,
                      names: Mapping[str, str] | None = None, layout: Any = None) -> str:
    """Write one run's session into ``<log_dir>/SESSION_FILE`` (replaced whole): its start with ``params``,
    ``metrics`` as scalars at ``step``, its end. ``names``: ``{key: column name}`` (default: the keys);
    ``layout``: the run's custom-scalars layout ``Summary``, kept beside it so that the sweep reads
    small files only (:func:`~lightning_critical._tensorboard_layout.sweep_layout`)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    names = names or {}
    start = plugin_data_pb2.SessionStartInfo(group_name="", start_time_secs=time.time())
    for key, value in params.items():
        start.hparams[names.get(key, key)].CopyFrom(_value(value))
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    summaries = [(step, _hparams_value(metadata.SESSION_START_INFO_TAG,
                                       plugin_data_pb2.HParamsPluginData(session_start_info=start)))]
    summaries += [(step, Summary(value=[Summary.Value(tag=k, simple_value=float(v))])) for k, v in metrics.items()]
    summaries.append((step, _hparams_value(metadata.SESSION_END_INFO_TAG,
                                           plugin_data_pb2.HParamsPluginData(session_end_info=end))))
    if layout is not None:
        summaries.append((step, layout))
    return _write_events(os.path.join(log_dir, SESSION_FILE), summaries)


def read_run_session(log_dir: str) -> tuple[dict[str, Value], dict[str, float], int] | None:
    """What :func:`write_run_session` wrote in ``log_dir``: ``(params by key, metrics, step)``; ``None`` if nothing.

    (Its layout, if any: :func:`session_layout`.)
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    path = os.path.join(log_dir, SESSION_FILE)
    if not os.path.isfile(path):
        return None
    params: dict[str, Value] = {}
    metrics: dict[str, float] = {}
    step = 0
    for event in EventFileLoader(path).Load():
        for value in event.summary.value:
            if value.tag == metadata.SESSION_START_INFO_TAG:
                start = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                params = {key_of(k): getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
                step = event.step
            elif not value.tag.startswith("_hparams_/") and value.tag != LAYOUT_TAG:
                metrics[value.tag] = _scalar(value)
    return params, metrics, step


def session_layout(log_dir: str) -> Any | None:
    """The custom-scalars layout ``Summary`` kept in ``log_dir``'s :data:`SESSION_FILE`, or ``None``."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    path = os.path.join(log_dir, SESSION_FILE)
    found = None
    for raw in RawEventFileLoader(path).Load() if os.path.isfile(path) else []:
        event = event_pb2.Event.FromString(raw)  # as written: the loader would migrate the layout's tensor
        if any(v.tag == LAYOUT_TAG for v in event.summary.value):
            found = event.summary
    return found


def _scalar(value: Any) -> float:
    if value.HasField("tensor"):  # the loader migrates simple values to tensors
        from tensorboard.util import tensor_util

        return float(tensor_util.make_ndarray(value.tensor).item())
    return float(value.simple_value)


def experiment_summary(columns: Sequence[str], names: Mapping[str, str], values: Mapping[str, list[Value]],
                       lead: Sequence[str], metrics: Sequence[str]) -> Any:
    """The sweep's experiment: ``columns`` (named ``names``, shown as their key; ``lead`` marked ``differs``,
    the columns shown by default), each with its type and, for strings and booleans, its values; ``metrics``."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    infos = []
    for key in columns:
        seen = values.get(key, [])
        info = api_pb2.HParamInfo(name=names[key], display_name=key, differs=key in lead)
        if seen and all(isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_BOOL
        elif seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            info.type = api_pb2.DATA_TYPE_FLOAT64
        else:
            info.type = api_pb2.DATA_TYPE_STRING
        if info.type != api_pb2.DATA_TYPE_FLOAT64:
            distinct = sorted({str(v) for v in seen}) if info.type == api_pb2.DATA_TYPE_STRING else sorted(set(seen))
            info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[_value(v) for v in distinct]))
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m), display_name=m) for m in metrics],
    )
    return _hparams_value(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def complete_sweep(root: str, lead: Sequence[str], last: Sequence[str]) -> Any | None:
    """Give every run under ``root`` (a sweep's ``<out>/tensorboard``) every column, in order; return the
    sweep's experiment summary (``None`` if no run wrote a session), for :data:`SWEEP_FILE`.

    ``lead``: the sweep's axes (shown by default, in this order); ``last``: its bookkeeping.
    """
    sessions = {}
    for path in sorted(glob.glob(os.path.join(root, "*", SESSION_FILE))):
        found = read_run_session(os.path.dirname(path))
        if found is not None:
            sessions[os.path.dirname(path)] = found
    if not sessions:
        return None
    keys = [k for params, _, _ in sessions.values() for k in params]
    columns = column_order(keys, lead, last)
    names = column_names(columns)
    values: dict[str, list[Value]] = {}
    for params, _, _ in sessions.values():
        for key, value in params.items():
            values.setdefault(key, []).append(value)
    numeric = {k for k, seen in values.items() if all(_is_number(v) for v in seen)}
    for log_dir, (params, metrics, step) in sessions.items():
        full = {k: params.get(k, -1 if k in numeric else NONE) for k in columns}
        for key in set(full) - set(params):
            values[key].append(full[key])
        write_run_session(log_dir, full, metrics, step, names, session_layout(log_dir))
    metric_names = list(dict.fromkeys(m for _, metrics, _ in sessions.values() for m in metrics))
    return experiment_summary(columns, names, values, lead, metric_names)


def _is_number(value: Value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def write_sweep_file(root: str, summaries: Sequence[Any]) -> str | None:
    """Write ``summaries`` (the experiment, the layout) as :data:`SWEEP_FILE` in ``root``, replaced whole."""
    if not summaries:
        return None
    return _write_events(os.path.join(root, SWEEP_FILE), [(0, s) for s in summaries])

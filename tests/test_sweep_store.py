"""The sweep's store and table on ordinary real-world input: strict JSON, torn lines, a lock on out,
plan order, metric names that collide with columns, swept values of any JSON type, safe labels."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import SWEEP_CPU as CPU
from conftest import map_norms, pathway_data, pathway_model, read_tensorboard

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical._tensorboard_hparams import key_of
from lightning_critical.sweep.spec import RunSpec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# -- factories (module level: importable from a second process and from a YAML config) ------
def freeze_b(window):
    return lc.PathwayDeficit("b", window, mode="freeze")


def pathway_lr(seed, lr=0.05):
    return lc.models.MultiPathwayLinearNet(depth=2, width=12, lr=lr, seed=seed)


def pathway_kwargs(seed, **kwargs):
    return pathway_model(seed)


def pathway_sizes(seed, sizes, opts=None):
    """Keeps what it was given, then changes its list argument (as careless user code might)."""
    module = pathway_model(seed)
    module.seen = (json.dumps(sizes), json.dumps(opts))
    sizes.append(99)
    return module


def seen(trainer, module):
    return {"n_sizes": float(len(json.loads(module.seen[0]))), **map_norms(trainer, module)}


def odd_metrics(trainer, module):
    return {"nan_metric": math.nan, "up": math.inf, "down": -math.inf, "fine": 1.5}


def _sweep(out, **kw):
    args: dict[str, Any] = dict(
        model=pathway_model, datamodule=pathway_data, deficit=freeze_b, windows=lc.sweep.removal([1, 2]),
        metrics=map_norms, trainer={"max_epochs": 3, **CPU}, out=str(out), backend="serial",
        tensorboard=False, plot=False, progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


def _strict(path):
    """Every line of ``path`` parsed as strict JSON (NaN / Infinity refused)."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    with open(path, "rb") as fh:
        return [json.loads(line, parse_constant=refuse) for line in fh]


# -- 1. valid JSON only ----------------------------------------------------------------------
def test_nonfinite_metrics_are_strict_json_and_read_back_as_numbers(tmp_path):
    table = _sweep(tmp_path, metrics=[odd_metrics], windows=lc.sweep.removal([1]))
    lines = _strict(tmp_path / "results.jsonl")
    assert len(lines) == 2
    assert lines[0]["metrics"]["nan_metric"] is None and lines[0]["nonfinite"]["/metrics/up"] == "inf"
    for t in (table, lc.sweep.load(tmp_path)):
        assert t.nan_metric.isna().all() and (t.up == math.inf).all() and (t.down == -math.inf).all()
        assert (t.fine == 1.5).all() and "nonfinite" not in t.columns


# -- 2. torn last line: repaired, never glued ------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "sweep"
    return out, _sweep(out)


@pytest.mark.parametrize("cut", ["one_byte", "half", "all_but_brace", "all_but_newline"])
def test_a_torn_last_line_is_moved_aside_and_the_next_sweep_appends_cleanly(tmp_path, finished, cut, capsys):
    source, reference = finished
    out = tmp_path / "sweep"
    shutil.copytree(source, out)
    path = out / "results.jsonl"
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:]
    keep = {"one_byte": 1, "half": len(last) // 2, "all_but_brace": len(last) - 2,
            "all_but_newline": len(last) - 1}[cut]
    path.write_bytes(data[:start + keep])  # a crash mid-write
    torn_id = json.loads(last)["run_id"]
    capsys.readouterr()
    table = _sweep(out, seeds=[0, 1])  # a real call that appends (seed 1 is new)
    lines = _strict(path)
    assert (table.status == "ok").all() and len(table) == 6
    loaded = lc.sweep.load(out)
    assert (loaded.status == "ok").all() and len(loaded) == 6
    again = loaded[loaded.seed == 0].set_index("run_id")
    assert again.loc[torn_id, "norm_b"] == reference.set_index("run_id").loc[torn_id, "norm_b"]
    torn = out / "results.jsonl.torn"
    if cut == "all_but_newline":  # a whole record that only lost its newline is kept, not retrained
        assert not torn.exists() and len(lines) == 6
    else:
        assert torn.read_bytes() == last[:keep] + b"\n"
        assert "cut short" in capsys.readouterr().err
        assert len(lines) == 6 and [r["run_id"] for r in lines].count(torn_id) == 1  # retrained once


def test_a_record_glued_to_a_fragment_by_an_older_version_is_read(tmp_path, finished):
    source, reference = finished
    lines = (source / "results.jsonl").read_bytes().splitlines(keepends=True)
    out = tmp_path / "sweep"
    shutil.copytree(source, out)
    (out / "results.jsonl").write_bytes(lines[0] + lines[1][:40] + lines[2])  # what main's append produced
    loaded = lc.sweep.load(out)
    assert sorted(loaded.run_id) == sorted([json.loads(lines[0])["run_id"], json.loads(lines[2])["run_id"]])


# -- 3. one live sweep per out ---------------------------------------------------------------
class Gate(pl.Callback):
    """Holds the first run at its first epoch until ``release`` exists (at most 120 s)."""

    def __init__(self, started, release):
        self.started, self.release = started, release

    def on_train_epoch_start(self, trainer, pl_module):
        if os.path.exists(self.started):
            return
        open(self.started, "w").close()
        deadline = time.time() + 120
        while not os.path.exists(self.release) and time.time() < deadline:
            time.sleep(0.05)


def gated(started, release):
    return lambda: [Gate(started, release)]


def hold(out, started, release):
    """Entry point of the second process: a real sweep on ``out`` that waits at its first epoch."""
    _sweep(out, callbacks=gated(started, release))


def _start_holder(tmp_path, out):
    started, release = tmp_path / "started", tmp_path / "release"
    code = f"import test_sweep_store as t; t.hold({str(out)!r}, {str(started)!r}, {str(release)!r})"
    package = os.path.dirname(os.path.dirname(lc.__file__))  # the code under test, wherever it is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package, HERE])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=HERE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not started.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    return proc


def test_a_second_sweep_on_a_live_out_is_refused_and_a_killed_owner_is_taken_over(tmp_path, capsys):
    out = tmp_path / "sweep"
    proc = _start_holder(tmp_path, out)
    try:
        began = time.perf_counter()
        with pytest.raises(RuntimeError, match=rf"in use by a live sweep \(pid {proc.pid} on host "
                                               rf"{re.escape(socket.gethostname())}(.|\n)*choose another out="):
            _sweep(out)
        assert time.perf_counter() - began < 5  # refused at once, nothing trained
        assert not (out / "results.jsonl").exists()
        assert lc.sweep.load(out).empty  # reading needs no lock
    finally:
        proc.send_signal(signal.SIGKILL)  # the owner dies without cleaning up
        proc.wait()
    assert (out / ".lock").exists()
    capsys.readouterr()
    table = _sweep(out)
    assert (table.status == "ok").all() and len(table) == 3
    assert f"took over a stale lock on out={str(out)!r} (pid {proc.pid} on host" in capsys.readouterr().err
    assert not (out / ".lock").exists()


def test_a_stale_lock_file_is_taken_over_with_a_notice(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": "node-17", "started": "2026-01-01"}))
    table = _sweep(out, windows=lc.sweep.removal([1]))
    assert (table.status == "ok").all()
    assert "took over a stale lock" in capsys.readouterr().err
    assert not (out / ".lock").exists()


class Interrupt(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        raise KeyboardInterrupt


def test_the_lock_is_released_on_errors_ctrl_c_and_bad_arguments(tmp_path):
    from lightning_critical.sweep.lock import SweepLock

    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="not in trainer.callback_metrics"):
        _sweep(out, metrics="no_such_metric")
    with pytest.raises(KeyboardInterrupt):
        _sweep(out, callbacks=lambda: [Interrupt()])
    assert not (out / ".lock").exists()
    with SweepLock(out):  # free again
        pass
    fresh = tmp_path / "never"
    with pytest.raises(ValueError, match="seeds"):
        _sweep(fresh, seeds=[])
    assert not fresh.exists()  # a refused call leaves no directory behind


# -- 4. load() in plan order -----------------------------------------------------------------
def test_load_returns_rows_in_the_grid_order_of_the_calls(tmp_path):
    out = tmp_path / "sweep"
    _sweep(out, windows=lc.sweep.removal([2]), seeds=[1])
    second = _sweep(out, windows=lc.sweep.removal([1, 2]), seeds=[0, 1])
    assert lc.sweep.load(out).run_id.tolist() == second.run_id.tolist()
    _sweep(out, windows=lc.sweep.removal([1, 2]), seeds=[2])  # a later call with one more seed
    labels = lc.sweep.load(out).label.tolist()
    expected = [f"{w}_seed{s}" for w in ("baseline", "w0-1", "w0-2") for s in (0, 1, 2)]
    assert labels == expected


# -- 5. metric names that collide with table columns -----------------------------------------
@pytest.mark.parametrize("name", ["seed", "status", "lr"])
def test_a_metric_named_like_a_column_is_refused_before_training(tmp_path, name):
    with pytest.raises(ValueError, match=rf"metrics \['{name}'\] are named like columns(.|\n)*'window_start'"):
        _sweep(tmp_path, model=pathway_lr, params={"lr": [0.05]}, metrics=[name])
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize("name", ["seed", "status", "lr"])
def test_a_metric_function_returning_a_column_name_stops_the_sweep(tmp_path, name):
    def clash(trainer, module):
        return {name: 1.0, "norm": 2.0}

    with pytest.raises(ValueError, match=rf"returned \['{name}'\], named like columns"):
        _sweep(tmp_path, model=pathway_lr, params={"lr": [0.05, 0.1]}, metrics=[clash])
    records = _strict(tmp_path / "results.jsonl")
    assert len(records) == 1 and records[0]["status"] == "failed" and records[0]["metrics"] == {}
    table = lc.sweep.load(tmp_path)
    assert table.lr.tolist()[0] in (0.05, 0.1) and table.status.tolist() == ["failed"]  # the swept value, intact


@pytest.mark.parametrize("name", ["status", "label"])
def test_a_swept_parameter_named_like_a_column_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match=rf"params \['{name}'\] are named like columns"):
        _sweep(tmp_path, model=pathway_kwargs, params={name: ["a", "b"]})
    assert not (tmp_path / "results.jsonl").exists()


# -- 6. swept values of any JSON type --------------------------------------------------------
def test_list_dict_and_none_values_through_table_summary_plot_hparams_and_resume(tmp_path):
    params = {"sizes": [[1, 2], [3]], "opts": [{"a": 1, "b": [None]}, None]}
    table = _sweep(tmp_path, model=pathway_sizes, params=params, metrics=seen, windows=lc.sweep.removal([1]),
                   tensorboard=True, plot=True)
    assert len(table) == 8 and (table.status == "ok").all()
    assert table.n_sizes.tolist() == [len(s) for s in table.sizes]  # every run got its own list, unchanged
    assert table.sizes.tolist()[:4] == [[1, 2], [3], [1, 2], [3]]
    assert table.opts.tolist()[:4] == [{"a": 1, "b": [None]}] * 2 + [None] * 2
    summary = lc.sweep.summarize(table, "norm_b")
    assert len(summary) == 8 and summary.n_seeds.tolist() == [1] * 8
    assert summary[~summary.baseline]["drop"].notna().all()  # each window found its own baseline
    assert [(s, o) for s, o in zip(summary.sizes, summary.opts, strict=True)][::2] == [
        ([1, 2], {"a": 1, "b": [None]}), ([3], {"a": 1, "b": [None]}), ([1, 2], None), ([3], None)]
    fig = lc.plots.plot_critical_period_curve(table, "norm_b")
    legend = fig.axes[0].get_legend_handles_labels()[1]
    assert "deficit in [0, T) (opts={'a': 1, 'b': [None]}, sizes=[1, 2])" in legend
    assert os.path.getsize(tmp_path / "critical_period.png") > 10_000
    _, hp = _hparams(table.log_dir.iloc[0])
    assert (hp["sizes"], hp["opts"]) == ("[1,2]", '{"a":1,"b":[null]}')
    again = _sweep(tmp_path, model=pathway_sizes, params=params, metrics=seen, windows=lc.sweep.removal([1]),
                   tensorboard=True, plot=False)
    assert len(_strict(tmp_path / "results.jsonl")) == 8  # all reused
    assert again.norm_b.tolist() == table.norm_b.tolist()
    loaded = lc.sweep.load(tmp_path)
    assert loaded.sizes.tolist() == table.sizes.tolist() and loaded.opts.tolist() == table.opts.tolist()


def _hparams(log_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = read_tensorboard(log_dir)
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return acc, {key_of(k): getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def test_values_of_mixed_types_in_one_parameter_stay_apart(tmp_path):
    values = [1, True, 1.0, "1", None]
    table = _sweep(tmp_path, model=pathway_kwargs, params={"x": values}, windows=lc.sweep.removal([1]))
    assert len(table) == 10 and (table.status == "ok").all()
    base = table[table.baseline]
    assert [(type(v), v) for v in base.x] == [(type(v), v) for v in values]
    summary = lc.sweep.summarize(table, "norm_b")
    assert len(summary) == 10 and (summary.n_seeds == 1).all()
    assert [(type(v), v) for v in summary[summary.baseline].x] == [(type(v), v) for v in values]


def test_a_factory_that_changes_its_list_argument_changes_no_other_run(tmp_path):
    table = _sweep(tmp_path, model=pathway_sizes, params={"sizes": [[1, 2]]}, metrics=seen, seeds=[0, 1],
                   windows=lc.sweep.removal([1]))
    assert table.n_sizes.tolist() == [2.0] * 4 and table.sizes.tolist() == [[1, 2]] * 4


def dmf_tagged(seed, tag):
    return lc.models.DeepMatrixFactorization(size=10, depth=2, lr=0.5, seed=seed)


def pretrain_until(window):
    return lc.TaskSwitch({window.start: "pretrain", window.end: "target"})


def test_the_ensemble_runner_takes_list_values(tmp_path):
    import functools

    table = lc.sweep.run(
        dmf_tagged, functools.partial(lc.data.MatrixCompletionDataModule, size=10, n_observed=40,
                                      tasks={"target": 1, "pretrain": 3}),
        deficit=pretrain_until, windows=lc.sweep.removal([100], epochs_after=100), params={"tag": [[1], [2, 3]]},
        metrics=["test_loss"], trainer={}, runner=lc.sweep.FactorizationEnsembleRunner(), out=str(tmp_path),
        backend="serial", tensorboard=False, plot=False, progress=False)
    assert (table.status == "ok").all() and table.tag.tolist() == [[1], [2, 3], [1], [2, 3]]
    loss = table.test_loss.tolist()
    assert loss[0] == loss[1] and loss[2] == loss[3] != loss[0]  # the tag changes nothing, the window does
    assert len(lc.sweep.summarize(table)) == 4


def test_the_cli_sweeps_list_values_from_yaml(tmp_path, capsys):
    from lightning_critical.cli import main

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "study": {"model": "test_sweep_store.pathway_sizes", "datamodule": "conftest.pathway_data",
                  "deficit": "test_sweep_store.freeze_b", "windows": {"removal": [1]},
                  "params": {"sizes": [[1, 2], [3]]}, "metrics": ["test_sweep_store.seen"],
                  "trainer": {"max_epochs": 2, **CPU}},
        "execution": {"backend": "serial"}, "output": {"tensorboard": False}}))
    assert main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.sizes.tolist() == ["[1, 2]", "[1, 2]", "[3]", "[3]"] and (summary.n_seeds == 1).all()
    assert os.path.getsize(tmp_path / "out" / "critical_period.png") > 10_000
    assert "4 runs (0 failed)" in capsys.readouterr().out


def test_dicts_need_string_keys_and_objects_stay_refused():
    from lightning_critical.sweep.params import check_params

    assert check_params({"opts": [{"a": [1, None]}]}) == [(("opts", {"a": [1, None]}),)]
    with pytest.raises(ValueError, match=r"params\['opts'\].*needs string keys.*not 1"):
        check_params({"opts": [{1: "a"}]})
    with pytest.raises(ValueError, match=r"params\['opts'\] value .* not object"):
        check_params({"opts": [object()]})


# -- 7. labels are safe file names -----------------------------------------------------------
SAFE = re.compile(r"[A-Za-z0-9.+\-_=~]+")


@pytest.mark.parametrize("value", ["a/b", "../..", "..", "x" * 500, "学习", "", " ", [0.1] * 200,
                                   {"path": "/etc/passwd"}, None, -1.5, float("inf")])
def test_a_label_is_a_safe_file_name_whatever_the_value(value):
    for name in ("v", "../../name", "a/b"):
        label = RunSpec((), 0, ((name, value),)).label()
        assert SAFE.fullmatch(label) and len(label) <= 120 and not label.endswith("."), label
        assert label not in (".", "..")
    assert RunSpec((), 0, (("v", -1.5),)).label() != RunSpec((), 0, (("v", 1.5),)).label()


def test_long_values_that_share_a_prefix_get_different_labels():
    a, b = ("x" * 300 + "a"), ("x" * 300 + "b")
    assert RunSpec((), 0, (("v", a),)).label() != RunSpec((), 0, (("v", b),)).label()


def test_labels_stay_distinct_directories_inside_out(tmp_path):
    values = ["A", "a", "a b", "a-b", "", "x", "x" * 300, "../up", "学习", "日本"]
    table = _sweep(tmp_path, model=pathway_kwargs, params=[{"../../v": v} for v in values],
                   windows=lc.sweep.removal([1]), trainer={"max_epochs": 2, **CPU}, tensorboard=True, save_model=True)
    assert (table.status == "ok").all() and len(table) == 20
    labels = table.label.tolist()
    assert len({label.casefold() for label in labels}) == 20  # unique even on a case-insensitive file system
    for label, log_dir in zip(labels, table.log_dir, strict=True):
        assert SAFE.fullmatch(label) and len(label) <= 127
        assert os.path.dirname(log_dir) == os.path.join(str(tmp_path), "tensorboard") and os.path.isdir(log_dir)
    assert sorted(os.listdir(tmp_path / "models")) == sorted(f"{label}.pt" for label in labels)


def test_nonfinite_swept_values_are_strict_json_and_group_apart(tmp_path):
    table = _sweep(tmp_path, model=pathway_kwargs, params={"max_norm": [math.nan, math.inf, 1.0, 2]},
                   windows=lc.sweep.removal([1]))
    assert (table.status == "ok").all() and len(_strict(tmp_path / "results.jsonl")) == 8
    loaded = lc.sweep.load(tmp_path)
    assert loaded.max_norm.tolist()[1:4] == [math.inf, 1.0, 2.0] and math.isnan(loaded.max_norm[0])
    summary = lc.sweep.summarize(loaded, "norm_b")
    assert len(summary) == 8 and (summary.n_seeds == 1).all() and summary["drop"].notna().all()
    assert str(loaded.max_norm.dtype) == "float64"  # distinct numbers keep a numeric column


def test_without_flock_the_lock_file_alone_decides(tmp_path, monkeypatch, capsys):
    """A file system that refuses flock (e.g. Lustre without -o flock): the pid and host in the file decide."""
    import errno

    from lightning_critical.sweep import lock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", no_flock)
    path = tmp_path / ".lock"
    here = socket.gethostname()
    path.write_text(json.dumps({"pid": os.getppid(), "host": here, "started": "x"}))  # alive on this host
    with pytest.raises(lock.SweepLockedError, match=f"pid {os.getppid()} on host {re.escape(here)}"):
        lock.SweepLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": 4242, "host": "node-17", "started": "x"}))  # cannot be checked from here
    with pytest.raises(lock.SweepLockedError, match="pid 4242 on host node-17"):
        lock.SweepLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": 2**22 + 12345, "host": here, "started": "x"}))  # gone from this host
    with lock.SweepLock(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(lock.SweepLockedError, match=f"pid {os.getpid()}"):
            lock.SweepLock(tmp_path).acquire()  # a second sweep of this very process
    err = capsys.readouterr().err
    assert "does not support flock" in err and "took over a stale lock" in err
    assert not path.exists()

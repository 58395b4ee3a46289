"""Backends: local processes and any concurrent.futures.Executor give the serial backend's table."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time

import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl

CPU = {"accelerator": "cpu", "devices": 1}


def cnn_model(seed):
    return lc.models.SmallCNN(1, 10, channels=(4, 8), lr=0.05, lr_decay=0.8, seed=seed)


def cnn_data():
    return lc.data.DigitsDataModule(batch_size=16, subset=64, val_fraction=0.25)


# Set in the test process and inherited by the workers it starts. A metric must be a function of the
# training (the audit compares a branched run's metrics with its from-scratch twin's, which may run in
# another worker): whether the run trained in a worker is, its process id is not.
MAIN_PID = int(os.environ.setdefault("LC_TEST_MAIN_PID", str(os.getpid())))


def threads_used(trainer, module):
    return {"threads": torch.get_num_threads(), "in_worker": float(os.getpid() != MAIN_PID)}


class WaitForFile(pl.Callback):
    """Blocks at the start of an epoch until ``path`` exists (the test fails by timeout otherwise)."""

    def __init__(self, path, epoch):
        self.path, self.epoch = path, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != self.epoch:
            return
        deadline = time.monotonic() + 300
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.path} never appeared: the child did not start while its parent trained")
            time.sleep(0.02)


class TouchFile(pl.Callback):
    def __init__(self, path):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        open(self.path, "w").close()


class BlurWithHandshake:
    """The deficit of each window: blur, and the longest run waits for the shortest to start."""

    def __init__(self, marker):
        self.marker = marker

    def __call__(self, window):
        callbacks: list[pl.Callback] = [lc.InputDeficit("blur", window=window, factor=4)]
        if window.end == 3:
            callbacks.append(WaitForFile(self.marker, epoch=3))
        if window.end == 1:
            callbacks.append(TouchFile(self.marker))
        return callbacks


def _sweep(tmp_path, name, backend, **kw):
    args = dict(model=cnn_model, datamodule=cnn_data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
                windows=lc.sweep.removal([1, 2]), metrics=["val_loss", threads_used], trainer={"max_epochs": 3, **CPU},
                out=str(tmp_path / name), backend=backend, save_model=True, tensorboard=False, plot=False,
                progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


def _same_results(a, b, metrics=("val_loss",)):
    assert (a["status"] == "ok").all() and (b["status"] == "ok").all(), (a["error"].tolist(), b["error"].tolist())
    assert list(a["run_id"]) == list(b["run_id"])
    for metric in metrics:
        assert a[metric].tolist() == b[metric].tolist()
    for label in a["label"]:
        ma = torch.load(os.path.join(a.attrs["out"], "models", f"{label}.pt"))
        mb = torch.load(os.path.join(b.attrs["out"], "models", f"{label}.pt"))
        assert all(torch.equal(ma[k], mb[k]) for k in ma), label


def test_process_backend_gives_the_serial_table_with_the_same_threads_per_run(tmp_path):
    serial = _sweep(tmp_path, "serial", "serial", threads_per_run=2)
    process = _sweep(tmp_path, "process", "process", workers=2, threads_per_run=2)
    _same_results(serial, process, ("val_loss", "threads"))
    assert set(serial["threads"]) == {2}
    assert set(process["in_worker"]) == {1.0} and set(serial["in_worker"]) == {0.0}  # ran in worker processes
    assert process["parent"].notna().any()  # and shared prefixes across them


def test_any_executor_runs_the_sweep_and_children_start_while_their_parent_trains(tmp_path):
    # The [0, 3) run trains the shared blur epochs; at epoch 3 it waits until the [0, 1) run, which
    # branches from its epoch-1 checkpoint, has started: if children only started after their parent
    # finished, the parent would time out and fail.
    marker = str(tmp_path / "child-started")
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        table = _sweep(tmp_path, "executor", pool, deficit=BlurWithHandshake(marker),
                       windows=lc.sweep.removal([1, 3]), trainer={"max_epochs": 5, **CPU})
    assert (table["status"] == "ok").all(), table["error"].tolist()
    child = table[table.window_end == 1].iloc[0]
    parent = table[table.window_end == 3].iloc[0]
    assert child["parent"] == parent["run_id"] and child["branch_epoch"] == 1
    # the handshake does not touch training: the same runs trained one by one give the same losses
    serial = _sweep(tmp_path, "serial", "serial", windows=lc.sweep.removal([1, 3]), trainer={"max_epochs": 5, **CPU},
                    share_prefixes=False)
    assert table["val_loss"].tolist() == serial["val_loss"].tolist()


class Job:
    """A cluster-style job: done() and result(), not a concurrent.futures.Future (like submitit's)."""

    def __init__(self, fn, args):
        try:
            self._result, self._error = fn(*args), None
        except Exception as err:
            self._result, self._error = None, err

    def done(self):
        return True

    def result(self):
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self):
        return False


class InlineJobExecutor:
    """Runs each submitted function at once and returns a Job (the submitit interface, without SLURM)."""

    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        return Job(fn, args)


def test_executors_returning_cluster_style_jobs_are_polled(tmp_path):
    executor = InlineJobExecutor()
    table = _sweep(tmp_path, "jobs", executor)
    serial = _sweep(tmp_path, "serial", "serial")
    assert executor.submitted == 4  # 3 runs and the audit's from-scratch twin of the branched one
    assert table.audit.dropna().tolist() == ["equal"]
    _same_results(table, serial)


def test_a_thread_pool_is_refused(tmp_path):
    match = "threads share this process's random states"
    with cf.ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match=match):
        _sweep(tmp_path, "threads", pool)


def test_unpicklable_factories_are_refused_before_training_for_worker_backends(tmp_path, monkeypatch):
    import pickle

    import lightning_critical.sweep.units as units

    monkeypatch.setattr(units, "dumps", pickle.dumps)  # as without cloudpickle
    with pytest.raises(TypeError, match="model=.*cannot be sent to the process backend"):
        _sweep(tmp_path, "x", "process", workers=2, model=lambda seed: cnn_model(seed))
    assert not (tmp_path / "x" / "results.jsonl").exists()

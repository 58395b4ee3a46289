"""The Ray backend on a real local Ray (2 CPUs): the serial table, shared prefixes, dead workers, clean shutdown."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import pytest

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep.backends import ray_available

CPU = {"accelerator": "cpu", "devices": 1}
needs_ray = pytest.mark.skipif(not ray_available(), reason="Ray is not installed (the ray extra)")


def cnn_model(seed):
    return lc.models.SmallCNN(1, 10, channels=(4, 8), lr=0.05, lr_decay=0.8, seed=seed)


def cnn_data():
    return lc.data.DigitsDataModule(batch_size=16, subset=64, val_fraction=0.25)


# Set in the test process and inherited by Ray's workers. A metric must be a function of the training (the
# audit compares a branched run's metrics with its from-scratch twin's, which may run in another worker):
# whether the run trained in a worker is, its process id is not.
MAIN_PID = int(os.environ.setdefault("LC_TEST_MAIN_PID", str(os.getpid())))


def where(trainer, module):
    return {"in_worker": float(os.getpid() != MAIN_PID)}


class DieAtEpoch(pl.Callback):
    """Kills its worker process at the start of an epoch (a segfault, the OOM killer...); with
    ``once``, only the first time (it leaves a marker file), so Ray's retry then succeeds."""

    def __init__(self, epoch, once=None):
        self.epoch, self.once = epoch, once

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch != self.epoch:
            return
        if self.once is not None:
            if os.path.exists(self.once):
                return
            open(self.once, "w").close()
        os._exit(3)


class BlurOrDie:
    """Blur in every window; the [0, 1) run dies once at epoch 2, the [0, 2) run dies at epoch 2 every time."""

    def __init__(self, marker):
        self.marker = marker

    def __call__(self, window):
        die = {1: DieAtEpoch(2, once=self.marker), 2: DieAtEpoch(2)}[window.end]
        return [lc.InputDeficit("blur", window=window, factor=4), die]


def _sweep(out, backend, **kw):
    args = dict(model=cnn_model, datamodule=cnn_data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
                windows=lc.sweep.removal([1, 2]), metrics=["val_loss", "val_acc", where],
                trainer={"max_epochs": 3, **CPU}, seeds=[0, 1], out=str(out), backend=backend, tensorboard=False,
                plot=False, progress=False)
    args.update(kw)
    return lc.sweep.run(**args)


def _descendants(root):
    """Pids of every live (non-zombie) process below ``root``, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


class Watch:
    """Records every process below this one while a block runs (Ray's daemons and workers)."""

    def __enter__(self):
        self.before = _descendants(os.getpid())  # e.g. multiprocessing's resource tracker, from earlier tests
        self.seen, self._stop = set(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.seen |= _descendants(os.getpid()) - self.before
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def alive_after(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            alive = self.seen & _descendants(os.getpid())
            if not alive or time.monotonic() > deadline:
                return {pid: _command(pid) for pid in alive}
            time.sleep(0.2)


def _command(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


@needs_ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ray_gives_the_serial_table_shares_prefixes_and_leaves_no_process(tmp_path):
    import ray

    serial = _sweep(tmp_path / "serial", "serial")
    assert not ray.is_initialized()
    with Watch() as watch:
        table = _sweep(tmp_path / "ray", "ray", workers=2)
    assert (table["status"] == "ok").all(), table["error"].tolist()
    # bitwise the same runs, trained the same number of epochs, sharing the same prefixes
    assert table["run_id"].tolist() == serial["run_id"].tolist()
    for column in ("val_loss", "val_acc", "epochs_trained", "branch_epoch"):
        assert table[column].tolist() == serial[column].tolist(), column
    assert table["parent"].notna().sum() == 2  # [0, 1) branches from [0, 2) after 1 epoch, for each seed
    assert table.attrs["epochs_trained"] == serial.attrs["epochs_trained"] == 2 * (3 + 3 + 2)
    # in Ray's worker processes, and the Ray this sweep started is gone with all its processes
    assert set(table["in_worker"]) == {1.0} and set(serial["in_worker"]) == {0.0}
    assert not ray.is_initialized()
    assert watch.seen, "no Ray process was ever seen: the test watched nothing"
    assert watch.alive_after(30) == {}


@needs_ray
def test_a_ray_the_caller_started_is_used_and_runs_whose_worker_dies_are_retried(tmp_path):
    import ray

    serial = _sweep(tmp_path / "serial", "serial", seeds=[0])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        table = _sweep(tmp_path / "out", "ray", deficit=BlurOrDie(str(tmp_path / "died-once")), seeds=[0],
                       backend_options={"max_retries": 1})
        assert ray.is_initialized()  # the caller's Ray is left running
    finally:
        ray.shutdown()
    status = dict(zip(table["window_end"].fillna(-1), table["status"], strict=True))
    assert status == {-1: "ok", 1: "ok", 2: "failed"}, table["error"].tolist()
    # killed once, retried by Ray: the same run as if nothing had happened
    assert os.path.exists(tmp_path / "died-once")
    ok = table["status"] == "ok"
    assert table.loc[ok, "val_loss"].tolist() == serial.loc[ok, "val_loss"].tolist()
    assert set(table.loc[ok, "in_worker"]) == {1.0}
    # killed on every attempt: recorded as failed (after max_retries) and the sweep went on
    error = table.loc[table["window_end"] == 2, "error"].iloc[0]
    assert error.startswith("the backend could not run it: WorkerCrashedError"), error


def test_bad_ray_options_and_a_missing_ray_are_clear_errors_before_training(tmp_path, monkeypatch):
    for options, message in (
        ({"num_gpu": 1}, r"backend_options=\['num_gpu'\] are not options of backend='ray'; valid options: \['address'"),
        ({"num_gpus": -0.5}, r"backend_options\['num_gpus'\]=-0.5 is not valid: it must be a finite number >= 0"),
        ({"max_retries": 1.5}, r"backend_options\['max_retries'\]=1.5 must be an integer >= 0"),
        ({"address": ""}, r"backend_options\['address'\]='' is not valid"),
        ({"runtime_env": ["pip"]}, r"backend_options\['runtime_env'\]=\['pip'\] is not valid: give a dict"),
    ):
        if not ray_available():
            break
        with pytest.raises(ValueError, match=message):
            _sweep(tmp_path / "out", "ray", backend_options=options)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    missing = r'backend="ray" needs Ray, which is not installed: pip install "lightning-critical\[ray\]"'
    with pytest.raises(ImportError, match=missing):
        _sweep(tmp_path / "out", "ray")
    assert not os.path.exists(tmp_path / "out" / "sweep.json")

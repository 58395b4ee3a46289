"""Fail fast and name the cause: unreachable backends, start-up errors, orphans, errors="raise", NaN runs.

Scripts that need a real ``__main__`` (the guard, a worker that fails while starting, a parent
killed with SIGKILL) run as subprocesses with a timeout, so a hang fails the test.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from typing import Any

import matplotlib
import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep.backends import ray_available
from lightning_critical.sweep.backends.workers import is_guarded
from lightning_critical.sweep.failures import FailedRunsWarning, RunFailed

matplotlib.use("Agg")
CPU = {"accelerator": "cpu", "devices": 1}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lc.__file__)))


def tiny_model(seed):
    return lc.models.SmallCNN(1, 10, channels=(2, 4), lr=0.05, seed=seed)


def tiny_data():
    return lc.data.DigitsDataModule(batch_size=32, subset=64, val_fraction=0.25)


class MyError(ValueError):
    """A user's own exception type: errors="raise" must give it back as itself."""


class NeedsTwoArgs(ValueError):
    """Cannot be unpickled (its __init__ needs two arguments; pickle passes the message only)."""

    def __init__(self, lr, why):
        super().__init__(f"lr={lr}: {why}")
        self.lr = lr


class Raise(pl.Callback):
    def __init__(self, kind):
        self.kind = kind

    def on_train_epoch_start(self, trainer, pl_module):
        raise MyError("the loss diverged at lr=5") if self.kind == "my" else NeedsTwoArgs(5, "the loss diverged")


class BlurThenRaise:
    """The deficit of each window: blur, and the run raises ``kind`` when it starts training."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, window):
        return [lc.InputDeficit("blur", window=window, factor=4), Raise(self.kind)]


def _sweep(out, **kw):
    args: dict[str, Any] = dict(
        model=tiny_model, datamodule=tiny_data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
        windows=lc.sweep.removal([1]), metrics="val_loss", trainer={"max_epochs": 1, **CPU}, out=str(out),
        backend="serial", tensorboard=False, plot=False, progress=False,
        preflight=False)  # runs here fail on purpose when training starts; the trial fit would refuse them first
    args.update(kw)
    return lc.sweep.run(**args)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _python(script, *args, timeout=120):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=os.path.dirname(script))
    return done, time.monotonic() - start


# -- 1. unreachable backends -------------------------------------------------------------------
@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (the ray extra)")
@pytest.mark.parametrize("address, error, message", [
    pytest.param("127.0.0.1:{port}", ConnectionError, "cannot be reached: a TCP connection to 127.0.0.1:{port}",
                 id="ray-gcs-port-nothing-listens"),
    pytest.param("ray://127.0.0.1:{port}", ConnectionError, "cannot be reached: a TCP connection to 127.0.0.1:{port}",
                 id="ray-client-port-nothing-listens"),
    pytest.param("head-node", ValueError, "is not a Ray address: give 'host:port'", id="ray-address-without-port"),
    pytest.param("http://127.0.0.1:8265", ValueError, "is not a Ray address", id="ray-dashboard-url"),
    pytest.param("127.0.0.1:99999", ValueError, "is not a Ray address", id="ray-port-out-of-range"),
])
def test_an_unreachable_ray_address_is_refused_within_seconds_naming_the_argument(tmp_path, address, error, message):
    port = _free_port()
    address, message = address.format(port=port), message.format(port=port)
    start = time.monotonic()
    with pytest.raises(error) as info:
        _sweep(tmp_path / "out", backend="ray", backend_options={"address": address})
    assert time.monotonic() - start < 5
    text = str(info.value)
    assert f"backend_options['address']={address!r}" in text and message in text
    assert "ray start --head" in text or "leave it out (None)" in text  # what to do
    assert not (tmp_path / "out").exists()  # refused before anything was written or trained


def test_a_shut_down_executor_is_refused_before_training(tmp_path):
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pass
    with pytest.raises(ValueError, match=r"backend=ProcessPoolExecutor is already shut down .*inside the executor's"):
        _sweep(tmp_path / "out", backend=pool)
    assert not (tmp_path / "out").exists()


# -- 2. worker start-up errors -----------------------------------------------------------------
SCRIPT_HEAD = """
    import sys
    import lightning_critical as lc

    def model(seed):
        return lc.models.SmallCNN(1, 10, channels=(2, 4), seed=seed)

    def data():
        return lc.data.DigitsDataModule(batch_size=32, subset=64, val_fraction=0.25)

    def main():
        return lc.sweep.run(model, data, deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
                            windows=lc.sweep.removal([1]), metrics="val_loss",
                            trainer={"max_epochs": 1, "accelerator": "cpu"}, out=sys.argv[1],
                            backend="process", workers=2, tensorboard=False, plot=False, progress=False)
"""


def test_a_script_without_the_main_guard_is_refused_before_any_worker_starts(tmp_path):
    script = _script(tmp_path, "study.py", SCRIPT_HEAD + "\n    table = main()\n")
    done, seconds = _python(script, str(tmp_path / "out"))
    assert done.returncode != 0
    assert "was reached from module-level code of" in done.stderr and "study.py (line 17)" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert "worker process died" not in done.stderr
    assert not (tmp_path / "out").exists()  # before training, before the store
    assert seconds < 60, seconds  # importing torch and Lightning once; no worker spawned


@pytest.mark.parametrize("source, line, guarded", [
    ("main()\n", 1, False),
    ("if __name__ == '__main__':\n    main()\n", 2, True),
    ("if '__main__' == __name__:\n    main()\n", 2, True),
    ("if __name__ != '__main__':\n    pass\nelse:\n    main()\n", 4, True),
    ("try:\n    if __name__ == '__main__' and ok:\n        main()\nfinally:\n    pass\n", 3, True),
    ("if __name__ == '__main__':\n    pass\nmain()\n", 3, False),
    ("if debug:\n    main()\n", 2, False),
], ids=["bare-call", "guarded", "guard-reversed", "guard-in-else-of-not-equal", "guard-nested-in-try-with-and",
        "call-after-the-guard", "other-if"])
def test_guard_detection(source, line, guarded):
    assert is_guarded(source, line) is guarded


def test_a_worker_that_fails_while_starting_stops_the_sweep_with_that_error(tmp_path):
    body = SCRIPT_HEAD + """
    if __name__ == "__mp_main__":  # only in the workers, as a missing file or variable would
        import lightning_critical.sweep
        raise RuntimeError("settings.yaml is missing in the worker")

    if __name__ == "__main__":
        try:
            main()
        except Exception as err:
            print("RAISED", type(err).__name__)
            print(err)
        print("TABLE", lc.sweep.load(sys.argv[1])["error"].tolist())
    """
    script = _script(tmp_path, "study.py", body)
    done, seconds = _python(script, str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "RAISED SweepAborted" in out
    assert "failed while starting, before it ran any run: RuntimeError: settings.yaml is missing" in out
    assert 'study.py", line 19' in out  # the traceback of the user's line, not multiprocessing's
    table = out.split("TABLE", 1)[1]
    assert "settings.yaml is missing in the worker" in table and "worker process died" not in table
    assert seconds < 90, seconds  # stopped at the first start-up failure: no retry of every run one by one


def _forget_path(path):
    """Initializer of a worker whose environment lacks a folder the parent has (another node, another venv)."""
    while path in sys.path:
        sys.path.remove(path)


def test_a_factory_module_the_worker_cannot_import_is_reported_as_that_import_error(tmp_path, monkeypatch):
    folder = tmp_path / "only_here"
    folder.mkdir()
    (folder / "ff_user_models.py").write_text(
        "import lightning_critical as lc\n\n\ndef model(seed):\n"
        "    return lc.models.SmallCNN(1, 10, channels=(2, 4), seed=seed)\n")
    monkeypatch.syspath_prepend(str(folder))
    import ff_user_models  # type: ignore[import-not-found]

    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=context, initializer=_forget_path, initargs=(str(folder),)) as pool:
        with pytest.raises(ModuleNotFoundError, match="No module named 'ff_user_models'"):
            _sweep(tmp_path / "out", model=ff_user_models.model, backend=pool, errors="raise")
    errors = lc.sweep.load(tmp_path / "out")["error"].tolist()
    assert errors and all("ModuleNotFoundError: No module named 'ff_user_models'" in e for e in errors), errors
    assert not any("died" in e for e in errors)


# -- 3. no orphans -----------------------------------------------------------------------------
def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_parent_killed_by_sigkill(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    body = """
    import multiprocessing
    import os
    import sys
    import time
    import lightning_critical as lc
    from lightning_critical._namespace import pl


    class Hang(pl.Callback):
        def on_train_start(self, trainer, module):
            if multiprocessing.parent_process() is None:
                return  # a check in the sweep's own process (a pre-flight trial fit): only the workers hang
            open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
            time.sleep(300)


    if __name__ == "__main__":
        lc.sweep.run(lambda seed: lc.models.SmallCNN(1, 10, channels=(2, 4), seed=seed),
                     lambda: lc.data.DigitsDataModule(batch_size=32, subset=64, val_fraction=0.25),
                     deficit=lc.InputDeficit("blur", window=(0, 1), factor=4), windows=lc.sweep.removal([1]),
                     metrics="val_loss", callbacks=lambda: [Hang()], trainer={"max_epochs": 1, "accelerator": "cpu"},
                     out=sys.argv[1], backend="process", workers=2, share_prefixes=False, tensorboard=False,
                     plot=False, progress=False)
    """
    script = _script(tmp_path, "study.py", body)
    env = {**os.environ, "PYTHONPATH": ROOT}
    parent = subprocess.Popen([sys.executable, script, str(tmp_path / "out"), str(pids)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            workers = [int(p) for p in os.listdir(pids)]
            time.sleep(0.1)
        assert len(workers) == 2, f"the workers never started training (parent exit code {parent.poll()})"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in workers if _alive(p)] == []
    finally:
        for pid in [parent.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- 4. errors="raise" gives the run's own exception -------------------------------------------
@pytest.mark.parametrize("backend, kind", [
    ("serial", "my"), ("serial", "two-args"), ("executor", "two-args"),
], ids=["serial-own-type", "serial-unpicklable", "process-pool-unpicklable"])
def test_errors_raise_gives_the_runs_own_exception_type(tmp_path, backend, kind):
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) if backend == "executor" else None
    chosen = pool or backend
    expected = MyError if kind == "my" else NeedsTwoArgs
    try:
        with pytest.raises(expected) as info:
            _sweep(tmp_path / "out", deficit=BlurThenRaise(kind), backend=chosen, workers=2, errors="raise")
    finally:
        if pool is not None:
            pool.shutdown()
    err = info.value
    assert "the loss diverged" in str(err)
    if backend == "serial":
        assert type(err) is expected and err.__traceback__ is not None  # the very exception, with its frames
    elif kind == "my":
        assert type(err) is MyError
        notes = getattr(err, "__notes__", [])
        assert any("Traceback where the run executed" in n for n in notes)  # the worker's traceback text
    else:  # could not be unpickled: a RunFailed that still is the user's type
        assert isinstance(err, RunFailed) and err.type_name == f"{__name__}.NeedsTwoArgs"
        assert "raise MyError" in (err.traceback or "") and str(err) == "lr=5: the loss diverged"
    table = lc.sweep.load(tmp_path / "out")
    assert table.set_index("window").status.to_dict() == {"none": "ok", "[0, 1) epochs": "failed"}


def test_errors_raise_gives_a_class_of_the_main_script_back_as_itself_from_worker_processes(tmp_path):
    body = SCRIPT_HEAD + """
    from lightning_critical._namespace import pl


    class Diverged(ValueError):
        pass


    class Boom(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            raise Diverged("loss is nan at lr=5")


    def deficit(window):
        return [lc.InputDeficit("blur", window=window, factor=4), Boom()]


    if __name__ == "__main__":
        try:
            lc.sweep.run(model, data, deficit=deficit, windows=lc.sweep.removal([1]), metrics="val_loss",
                         trainer={"max_epochs": 1, "accelerator": "cpu"}, out=sys.argv[1], backend="process",
                         workers=2, tensorboard=False, plot=False, progress=False, errors="raise", preflight=False)
        except Diverged as err:
            print("CAUGHT", type(err) is Diverged, err)
            print("NOTES", getattr(err, "__notes__", []))
    """
    done, _ = _python(_script(tmp_path, "study.py", body), str(tmp_path / "out"))
    assert "CAUGHT True loss is nan at lr=5" in done.stdout, (done.stdout[-2000:], done.stderr[-3000:])
    assert "Traceback where the run executed" in done.stdout and "in on_train_epoch_start" in done.stdout


def test_a_thread_pool_is_refused_before_training_rather_than_raising_differently(tmp_path):
    with cf.ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="threads share this process's random"):
        _sweep(tmp_path / "out", backend=pool, errors="raise")
    assert not (tmp_path / "out").exists()


# -- 5. NaN and failed runs are counted and marked, never averaged away -------------------------
def nan_for_seed_1(trainer, module):
    return {"score": math.nan if torch.initial_seed() == 1 and trainer.current_epoch == 1 else 1.0}


class FailSeed2:
    def __call__(self, window):
        callbacks: list[pl.Callback] = [lc.InputDeficit("blur", window=window, factor=4)]
        if torch.initial_seed() == 2:
            callbacks.append(Raise("my"))
        return callbacks


def test_failed_and_nan_runs_are_counted_in_the_summary_and_marked_in_the_figure(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = _sweep(tmp_path / "out", deficit=FailSeed2(), metrics=nan_for_seed_1, seeds=[0, 1, 2], plot=True)
    # seed 1 gives NaN in every run; seed 2 fails in its window run (its baseline has no deficit)
    assert table["status"].tolist() == ["ok", "ok", "ok", "ok", "ok", "failed"]
    summary = lc.sweep.summarize(table, "score")
    counts = summary.set_index("window")[["n", "n_seeds", "n_failed", "n_nonfinite"]]
    assert counts.loc["none"].tolist() == [3, 2, 0, 1]
    assert counts.loc["[0, 1) epochs"].tolist() == [3, 1, 1, 1]
    assert summary["mean"].tolist() == [1.0, 1.0]  # over the finite ok runs only, and the summary says so
    messages = [str(w.message) for w in caught if issubclass(w.category, FailedRunsWarning)]
    assert len(messages) == 1 and "1 of 6 runs failed (first: w0-1_seed2: MyError: the loss diverged" in messages[0]
    assert "2 finished runs gave a NaN or infinite score" in messages[0]
    assert (tmp_path / "out" / "critical_period.png").stat().st_size > 0
    fig = lc.plots.plot_critical_period_curve(table, "score")
    legend_box = fig.axes[0].get_legend()
    assert legend_box is not None
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert "3 runs failed or NaN (1 in the baseline): not in the means" in legend
    assert "1-2 seeds" in fig.axes[0].get_title()


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (the ray extra)")
def test_errors_raise_gives_the_runs_own_exception_type_on_ray(tmp_path):
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        with pytest.raises(MyError, match="the loss diverged at lr=5") as info:
            _sweep(tmp_path / "out", deficit=BlurThenRaise("my"), backend="ray", errors="raise")
    finally:
        ray.shutdown()
    assert type(info.value) is MyError
    assert lc.sweep.load(tmp_path / "out").set_index("window").status.to_dict() == {
        "none": "ok", "[0, 1) epochs": "failed"}

"""Local worker processes: start-up, parent watching, and naming why one died.

* **The ``__main__`` guard.** Spawned workers import the caller's script again; a script that
  calls ``lc.sweep.run`` outside ``if __name__ == "__main__":`` would start the sweep again in
  every worker. :func:`check_main_guard` finds the script's module-level line that led to the
  call (from the call stack) and refuses it before anything starts, naming the line.
* **Start-up failures as themselves.** Anything else that fails while a worker starts (the
  script raising when imported again, a failing initializer) is written by the worker to a
  report directory the pool's owner gave it (through :data:`REPORT_ENV`), and
  :func:`explain_death` turns a broken pool into that error, or into the exit code or signal of
  the worker that died (``SIGKILL``: often the out-of-memory killer), instead of a guess.
* **No orphans.** :func:`init_worker` makes every worker die with its parent (Linux:
  ``PR_SET_PDEATHSIG``; everywhere: a daemon thread polling the parent's pid), so a sweep killed
  with ``SIGKILL`` leaves no worker training on.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from types import FrameType, TracebackType
from typing import Any

REPORT_ENV = "LIGHTNING_CRITICAL_WORKER_REPORTS"
"""Directory where a starting worker writes why it failed (``<pid>.err``) or that it is ready (``<pid>.ready``)."""

PARENT_POLL_SECONDS = 0.5


class WorkerStartupError(RuntimeError):
    """A worker process failed while starting, before it ran any run: no run can succeed on this backend."""


class WorkerDied(BrokenProcessPool):
    """A worker process died while it ran a run; the message says how (exit code or signal)."""


# -- the __main__ guard ---------------------------------------------------------------------
def _guard_polarity(test: ast.expr) -> bool | None:
    """True when ``test`` holds only in the main script (``__name__ == "__main__"``), False for ``!=``."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return True if any(_guard_polarity(v) is True for v in test.values) else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    sides = [test.left, test.comparators[0]]
    names = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    if not (names and main):
        return None
    if isinstance(test.ops[0], ast.Eq):
        return True
    return False if isinstance(test.ops[0], ast.NotEq) else None


def _spans(statements: list[ast.stmt], line: int) -> bool:
    return any(s.lineno <= line <= (s.end_lineno or s.lineno) for s in statements)


def is_guarded(source: str, line: int) -> bool:
    """Whether ``line`` of a module's ``source`` runs only when the module is the main script.

    Example::

        >>> is_guarded("import x\\nx.run()\\n", 2)
        False
        >>> is_guarded("import x\\nif __name__ == '__main__':\\n    x.run()\\n", 3)
        True
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If):
            polarity = _guard_polarity(node.test)
            if polarity is True and _spans(node.body, line) or polarity is False and _spans(node.orelse, line):
                return True
    return False


def _main_module_frame(frame: FrameType | None) -> FrameType | None:
    """The frame running the main script's module-level code, if the call came from there."""
    main = sys.modules.get("__main__")
    if main is None or not getattr(main, "__file__", None):
        return None  # an interactive session or a notebook: workers do not import it again
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            return frame
        frame = frame.f_back
    return None


def unguarded_main_line() -> tuple[str, int] | None:
    """``(script, line)`` when the current call comes from the main script's module level outside the guard."""
    frame = _main_module_frame(sys._getframe(1))
    if frame is None:
        return None
    path, line = frame.f_code.co_filename, frame.f_lineno
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
        guarded = is_guarded(source, line)
    except (OSError, SyntaxError, ValueError):
        return None  # no source to read: nothing certain to say
    return None if guarded else (path, line)


def imports_main(backend: Any) -> bool:
    """Whether ``backend``'s workers import the main script again (spawned or forkserver processes).

    Example::

        >>> from lightning_critical.sweep.backends import ProcessBackend, SerialBackend
        >>> imports_main(ProcessBackend(2)), imports_main(SerialBackend())
        (True, False)
    """
    if getattr(backend, "name", None) == "process":
        return True
    context = getattr(getattr(backend, "executor", None), "_mp_context", None)
    method = context.get_start_method() if context is not None else None
    return method in ("spawn", "forkserver")


def check_main_guard(backend: Any) -> None:
    """Refuse, before anything starts, a sweep reached from a script's unguarded module level (module docstring).

    Also refused: a sweep started while this process is itself a worker starting up (it is importing
    the script), which no reading of the script's source can see (e.g. a script given on stdin).
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "lc.sweep.run was called while a worker process was starting: in a script, call it under "
            "`if __name__ == '__main__':` (worker processes import the script), or use backend='serial'."
        )
    if not imports_main(backend):
        return
    found = unguarded_main_line()
    if found is None:
        return
    path, line = found
    raise RuntimeError(
        f"lc.sweep.run(backend={backend.name!r}) was reached from module-level code of {path} (line {line}), "
        "outside `if __name__ == \"__main__\":`. Worker processes are spawned and import that script again, so "
        "every worker would start the sweep again. Move the call under the guard:\n\n"
        "    if __name__ == \"__main__\":\n        main()\n\nor use backend='serial'."
    )


# -- start-up reports ---------------------------------------------------------------------
def _report_path(kind: str, pid: int | None = None) -> str | None:
    folder = os.environ.get(REPORT_ENV)
    return os.path.join(folder, f"{pid or os.getpid()}.{kind}") if folder else None


def _write(path: str | None, text: str) -> None:
    if path is None:
        return
    try:
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # the report directory is gone (the pool's owner closed it): nothing to tell


def _report_startup_failure(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    report = traceback.TracebackException(kind, value, tb)
    # the user's frames, not multiprocessing's and runpy's machinery around the script's import
    report.stack = traceback.StackSummary.from_list(
        [f for f in report.stack if "multiprocessing" not in f.filename and not f.filename.startswith("<")])
    _write(_report_path("err"), "".join(report.format()))
    sys.__excepthook__(kind, value, tb)


def install_startup_report() -> None:
    """In a worker that is still starting (importing the main script again), report an uncaught error."""
    if os.environ.get(REPORT_ENV) and getattr(multiprocessing.current_process(), "_inheriting", False):
        sys.excepthook = _report_startup_failure


def read_startup_failure(folder: str | None) -> str | None:
    """The traceback a worker wrote while starting, if any."""
    if not folder or not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder)):
        if name.endswith(".err"):
            try:
                with open(os.path.join(folder, name)) as fh:
                    return fh.read().strip()
            except OSError:
                continue
    return None


# -- in the worker ----------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us when the parent dies
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
            pass
    if os.getppid() != parent:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:  # everywhere: poll (the kernel's signal can miss, e.g. a parent thread that exited)
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="lightning-critical-parent-watch", daemon=True).start()


def init_worker(threads: int, parent: int | None = None) -> None:
    """Initializer of the process backend's workers: die with the parent, ignore Ctrl-C, limit threads, say ready."""
    ready = _report_path("ready")
    os.environ.pop(REPORT_ENV, None)  # the run's own subprocesses (e.g. loader workers) are not ours to report
    if sys.excepthook is _report_startup_failure:
        sys.excepthook = sys.__excepthook__  # started: later errors are the runs', reported in their records
    if parent is not None:
        _die_with_parent(parent)
    # The parent handles Ctrl-C and stops the workers; a worker must not die half-way through a write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)
    _write(ready, "")


# -- in the parent ------------------------------------------------------------------------------
def describe_exit(exitcode: int | None) -> str:
    """What a worker's exit code says.

    Example::

        >>> describe_exit(-9)
        'killed by signal SIGKILL (the out-of-memory killer, or another process)'
        >>> describe_exit(3)
        'exited with code 3 (os._exit or sys.exit in the run)'
    """
    if exitcode is None:
        return "stopped without an exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        why = " (the out-of-memory killer, or another process)" if name == "SIGKILL" else ""
        return f"killed by signal {name}{why}"
    return f"exited with code {exitcode} (os._exit or sys.exit in the run)"


def explain_death(err: BaseException, folder: str | None, processes: list[Any]) -> BaseException:
    """A broken pool's error, made specific: a start-up failure (:class:`WorkerStartupError`), or how a worker died."""
    report = read_startup_failure(folder)
    if report is not None:
        last = report.splitlines()[-1] if report else "?"
        return WorkerStartupError(
            f"a worker process failed while starting, before it ran any run: {last}\n\n{report}\n\n"
            "Spawned workers import the main script again: everything at its module level runs in every worker "
            "(put the sweep under `if __name__ == \"__main__\":`), or use backend='serial'."
        )
    # the pool terminates the others (SIGTERM) once one died: the culprit is among the rest
    dead = sorted((p for p in processes if p.exitcode not in (None, 0)), key=lambda p: p.exitcode == -signal.SIGTERM)
    ready = {int(n.split(".")[0]) for n in os.listdir(folder) if n.endswith(".ready")} if folder and os.path.isdir(
        folder) else set()
    unready = [p for p in dead if p.pid not in ready and p.exitcode > 0]
    if unready and folder is not None:
        return WorkerStartupError(
            f"a worker process {describe_exit(unready[0].exitcode)} while starting, before it ran any run "
            "(its error, if any, is printed above on stderr). Spawned workers import the main script again: "
            "everything at its module level runs in every worker; or use backend='serial'."
        )
    if dead:
        return WorkerDied(f"its worker process died: {describe_exit(dead[0].exitcode)}")
    return err


install_startup_report()

"""A failed run's own exception, carried back to ``lc.sweep.run(errors="raise")`` from any backend.

A run that raises is recorded as ``status="failed"``; with ``errors="raise"`` the sweep then
re-raises that run's exception, of the same type whatever the backend (serial, local
processes, Ray, a ``concurrent.futures.Executor``). :class:`CarriedError` is what travels: in
this process it is the exception itself (with its traceback); pickled to cross a process it
becomes the exception's pickle (plain, else cloudpickle, so classes defined in the main script
come back as themselves), plus its type's name, message and traceback text for when that
pickle cannot be loaded back. Then :func:`materialize` gives a :class:`RunFailed` that still
subclasses the original type when that type can be imported here (``except MyError`` keeps
working), else a plain :class:`RunFailed`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import traceback
from typing import Any


class RunFailed(RuntimeError):
    """A run of the sweep failed and its own exception could not be brought back as it was.

    ``type_name`` is the original exception's type (``module.QualName``) and ``traceback`` its
    traceback text, as formatted where the run executed. When that type can be imported, the
    exception raised is of a subclass of both it and :class:`RunFailed`.

    Example::

        >>> err = RunFailed("run w0-2_seed0 failed", type_name="mylib.Boom", traceback="Traceback ...")
        >>> isinstance(err, RuntimeError), err.type_name
        (True, 'mylib.Boom')
    """

    def __init__(self, message: str, type_name: str | None = None, traceback: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback = traceback


def _round_trip(err: BaseException) -> bytes | None:
    """``err`` pickled (plain pickle, else cloudpickle) if it loads back, else ``None``."""
    dumpers: list[Any] = [pickle.dumps]
    try:
        import cloudpickle

        dumpers.append(cloudpickle.dumps)
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    for dump in dumpers:
        try:
            data = dump(err)
            pickle.loads(data)
            return data
        except Exception:
            continue
    return None


def _import_type(module: str, qualname: str) -> type | None:
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return None
    return obj if isinstance(obj, type) and issubclass(obj, Exception) else None


def rebuild(module: str, qualname: str, message: str, text: str) -> RunFailed:
    """A :class:`RunFailed` for an exception that could not be unpickled, subclassing its type when possible.

    Example::

        >>> err = rebuild("builtins", "KeyError", "'lr'", "Traceback ...")
        >>> isinstance(err, KeyError), isinstance(err, RunFailed), str(err)
        (True, True, "'lr'")
    """
    name = f"{module}.{qualname}"
    original = _import_type(module, qualname)
    if original is not None and not issubclass(original, RunFailed):
        try:
            # the original's __init__ / __str__ may need arguments we do not have: use RunFailed's
            cls: type[RunFailed] = type(original.__name__, (original, RunFailed), {
                "__module__": original.__module__, "__qualname__": original.__qualname__,
                "__init__": RunFailed.__init__, "__str__": BaseException.__str__,
                "__doc__": f"{name}, as raised by a run of the sweep (it could not be unpickled).",
            })
            return cls(message, name, text)
        except TypeError:  # incompatible bases (instance layouts): fall back
            pass
    return RunFailed(f"{name}: {message}", name, text)


def _unpack(data: bytes | None, module: str, qualname: str, message: str, text: str) -> CarriedError:
    if data is not None:
        try:
            err = pickle.loads(data)
        except Exception:
            pass  # e.g. its class exists only where the run executed
        else:
            add_note = getattr(err, "add_note", None)
            if add_note is not None and text:  # a pickled exception has lost its traceback: keep its text
                add_note(f"Traceback where the run executed:\n{text.rstrip()}")
            return CarriedError(err)
    return CarriedError(rebuild(module, qualname, message, text))


class CarriedError:
    """A failed run's exception, on its way to the sweep's process (see the module docstring)."""

    def __init__(self, err: BaseException, text: str | None = None) -> None:
        self.err = err
        self.text = text

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        err = self.err
        text = self.text or "".join(traceback.format_exception(type(err), err, err.__traceback__))
        data = _round_trip(err)
        cls = type(err)
        return _unpack, (data, cls.__module__, cls.__qualname__, str(err), text)


def carry(err: BaseException, label: str | None = None) -> CarriedError:
    """Wrap the exception of a failed run (called where it was raised) so that it can come back as itself."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    add_note = getattr(err, "add_note", None)  # Python >= 3.11
    if add_note is not None and label is not None:
        add_note(f"(raised by run {label} of the sweep, in process {os.getpid()})")
    if err.__traceback__ is not None:
        traceback.clear_frames(err.__traceback__)  # keep where it failed, free the run's model and data
    return CarriedError(err, text)


def materialize(carried: Any) -> BaseException:
    """The exception to raise for a failed run's carried exception (or an exception itself).

    Example (in this process the very exception comes back; pickled, one of the same type)::

        >>> carried = carry(KeyError("lr"), label="w0-2_seed0")
        >>> materialize(carried) is carried.err, type(materialize(pickle.loads(pickle.dumps(carried))))
        (True, <class 'KeyError'>)
    """
    if isinstance(carried, CarriedError):
        return carried.err
    if isinstance(carried, BaseException):
        return carried
    return RunFailed(f"a run failed with {carried!r}")


class FailedRunsWarning(UserWarning):
    """Some runs of a sweep failed or gave a NaN / infinite metric (their rows say which and why)."""


def failure_report(table: Any) -> str | None:
    """One paragraph on a sweep table's failed runs and non-finite metrics, or ``None`` when there are none.

    Example::

        >>> import pandas as pd
        >>> t = pd.DataFrame({"label": ["a", "b", "c"], "status": ["ok", "failed", "ok"],
        ...                   "error": [None, "ValueError: bad lr\\nTraceback...", None],
        ...                   "acc": [0.5, None, float("nan")]})
        >>> t.attrs["metrics"] = ["acc"]
        >>> print(failure_report(t))
        1 of 3 runs failed (first: b: ValueError: bad lr); 1 finished run gave a NaN or infinite acc (c). ...
    """
    import numpy as np
    import pandas as pd

    parts = []
    failed = table[table["status"] != "ok"]
    if len(failed):
        error = str(failed["error"].iloc[0] or failed["status"].iloc[0]).strip().splitlines()[0]
        parts.append(f"{len(failed)} of {len(table)} runs failed (first: {failed['label'].iloc[0]}: {error})")
    ok = table[table["status"] == "ok"]
    for metric in table.attrs.get("metrics") or []:
        if metric not in ok.columns:
            continue
        values = pd.to_numeric(ok[metric], errors="coerce").to_numpy(dtype=float)
        bad = ok["label"][~np.isfinite(values)].tolist()
        if bad:
            shown = ", ".join(map(str, bad[:3])) + (", ..." if len(bad) > 3 else "")
            parts.append(f"{len(bad)} finished run{'s' if len(bad) != 1 else ''} gave a NaN or infinite "
                         f"{metric} ({shown})")
    if not parts:
        return None
    return ("; ".join(parts) + ". They are left out of the means: lc.sweep.summarize counts them (n_failed, "
            "n_nonfinite) and the figure marks their windows; the table's status and error columns say why.")

"""A sweep runner that trains every run of one seed as one vectorized factorization ensemble.

:class:`FactorizationEnsembleRunner` plugs the
:class:`~lightning_critical.models.FactorizationEnsemble` into :func:`lightning_critical.sweep.run`
(the runner contract is in :mod:`lightning_critical.sweep.runners`; it trains under the same
run envelope as every runner, :func:`~lightning_critical.sweep.runners.base.envelope`). The sweep is written as
for any model: the model factory returns a :class:`~lightning_critical.models.DeepMatrixFactorization`,
the datamodule factory a datamodule with tasks (e.g. ``MatrixCompletionDataModule``, on the task
trained outside the windows), and the deficit puts each window on another task with a
:class:`~lightning_critical.TaskSwitch` (e.g. ``TaskSwitch({w.start: "pretrain", w.end: "target"})``).
One Lightning fit per run would train them one by one; this runner builds one ensemble per
seed and swept values, one member per window, and drives each member with its run's
``TaskSwitch`` schedule. Members share their weights until their schedules part, so the
common pre-training trains once, and each step updates all live members as batched matrix
products. The rows equal those of the default runner up to float32 rounding, and bitwise those
of the ensemble built by hand (``tests/test_sweep_runners.py``).

An epoch of the sweep is one full-batch SGD step (the datamodule serves one batch); the
runner groups ``sgd_steps_per_epoch`` of them per Lightning step (default: the largest divisor,
up to 1000, of every switch time and run length). Metrics are read by name from
``FactorizationEnsemble.final_metrics()``: ``test_loss``, ``train_loss``, ``sgd_steps``,
``singular_values/0``... (``singular_values/<i>`` is NaN where the matrix has fewer than
``i + 1`` singular values).
``threads_per_run`` and the ``trainer`` arguments (e.g. ``accelerator``) apply to the ensemble's one fit.

**Per-run logs.** Each member's records (taken after every Lightning step: ``test_loss``,
``train_loss``, ``task``, ``singular_values``) are written as its run's history file,
:data:`HISTORY_FILE` in the monitors' long format (target ``"W"``, the run's end-to-end map;
``step`` the SGD steps done; read it with :func:`lightning_critical.history.read_history`),
in the run's own directory: ``<out>/tensorboard/<label>`` when the sweep writes TensorBoard
logs (``tensorboard=True``, or ``None``: this runner supports it), else ``<out>/runs/<label>``.
The record's ``log_dir`` (a column of the table) names that directory, so the trajectories are
a function of the table. With TensorBoard the same records are scalars there (``test_loss``,
``train_loss``, ``task``, ``singular_values/<i>`` at their SGD step) with the run's HParams
session (its window, seed, swept values; its finite final metrics as ``final/<name>``). Every
run's directory also holds its ``schedule.json`` (:mod:`lightning_critical.schedule_file`: its
task switches in SGD steps), so ``lc.plots.load_run`` and ``lightning-critical plot`` mark them.

Example (three switch epochs, one ensemble)::

    >>> import functools, tempfile, lightning_critical as lc
    >>> def pretrain_until(window):  # the window trains on "pretrain", the rest on the datamodule's "target"
    ...     return lc.TaskSwitch({window.start: "pretrain", window.end: "target"})
    >>> table = lc.sweep.run(
    ...     functools.partial(lc.models.DeepMatrixFactorization, size=10, depth=2, lr=0.5),
    ...     functools.partial(lc.data.MatrixCompletionDataModule, size=10, n_observed=40,
    ...                       tasks={"target": 1, "pretrain": 3}),  # starts on its first task
    ...     deficit=pretrain_until, windows=lc.sweep.removal([100, 200], epochs_after=100),
    ...     metrics=["test_loss", "sgd_steps"], trainer={}, runner=lc.sweep.FactorizationEnsembleRunner(),
    ...     out=tempfile.mkdtemp(), backend="serial", tensorboard=False, plot=False)
    >>> table[["window", "sgd_steps", "status"]].values.tolist()
    [['none', 100.0, 'ok'], ['[0, 100) epochs', 200.0, 'ok'], ['[0, 200) epochs', 300.0, 'ok']]
    >>> from lightning_critical.history import read_history
    >>> hist = read_history(os.path.join(table["log_dir"][1], HISTORY_FILE))
    >>> hist.groupby("metric")["step"].max().to_dict()  # one record per 100 SGD steps, for 200 steps
    {'singular_values': 200, 'task': 200, 'test_loss': 200, 'train_loss': 200}
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical._checks import check_float_dtype, check_int
from lightning_critical._namespace import pl
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.history import History, Record
from lightning_critical.models.factorization_ensemble import FactorizationEnsemble
from lightning_critical.models.matrix_factorization import DeepMatrixFactorization
from lightning_critical.schedule import largest_common_divisor
from lightning_critical.schedule_file import switch_steps, write_schedule
from lightning_critical.sweep.build import build_datamodule, build_deficits, build_model
from lightning_critical.sweep.runners.base import envelope
from lightning_critical.sweep.runners.lightning import QUIET_TRAINER, hparams
from lightning_critical.sweep.spec import canonical_json

_SINGULAR_VALUE = re.compile(r"singular_values/(\d+)")
HISTORY_FILE = "ensemble_history.csv"
"""The name of each run's history file in its ``log_dir`` (see the module docstring)."""


class FactorizationEnsembleRunner:
    """Train all runs of one seed and swept values as one :class:`~lightning_critical.models.FactorizationEnsemble`.

    Args:
        sgd_steps_per_epoch: SGD steps per Lightning step (default: the largest divisor, up to
            1000, of every switch time and run length); must divide all of them.
        initial_task: the task all members start on (members whose schedule starts elsewhere
            fork at once); default: the task most members start on.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        top_k: singular values recorded per member (metrics ``singular_values/0`` ...
            ``singular_values/<top_k - 1>``).

    Raises:
        ValueError / TypeError: bad arguments; when a run is trained, a deficit that is not a
            ``TaskSwitch`` in epochs, or a model that is not a ``DeepMatrixFactorization``
            (recorded as the runs' errors).

    Example::

        >>> FactorizationEnsembleRunner(sgd_steps_per_epoch=100).name
        'factorization_ensemble'
    """

    name = "factorization_ensemble"
    shares_prefixes = False  # members share their common prefix inside the ensemble
    # one vectorized model: no per-run callbacks, tests or saved models; per-run logs written from the records
    supports: frozenset[str] = frozenset({"tensorboard"})

    def __init__(self, sgd_steps_per_epoch: int | None = None, initial_task: str | None = None,
                 dtype: torch.dtype = torch.float32, top_k: int = 10) -> None:
        self.sgd_steps_per_epoch = check_int("sgd_steps_per_epoch", sgd_steps_per_epoch, low=1, allow_none=True)
        if initial_task is not None and (not isinstance(initial_task, str) or not initial_task):
            raise ValueError(f"initial_task={initial_task!r} is not valid: give a task name or None.")
        self.initial_task = initial_task
        self.dtype = check_float_dtype("dtype", dtype)
        self.top_k = check_int("top_k", top_k, low=1)

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        """One batch per seed and swept values (in the order given), the longest first."""
        groups: dict[Any, list[Any]] = {}
        for task in tasks:
            key = canonical_json({"seed": task.run.seed, "params": task.run.encode()["params"]})  # lists: unhashable
            groups.setdefault(key, []).append(task)
        return sorted(groups.values(), key=lambda g: -sum(t.epochs for t in g))

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]:
        """One record per task, all trained as one ensemble under the run envelope."""
        return envelope(list(tasks), self._train)

    def _train(self, tasks: list[Any]) -> list[dict[str, Any]]:
        """The fields of each task's record: its metrics and log directory, or a fatal error naming what the
        ensemble produced."""
        ensemble, schedules = self._fit(tasks)
        rows = ensemble.final_metrics().to_dict("records")
        out = [self._fields(task.spec.metrics, row) for task, row in zip(tasks, rows, strict=True)]
        for member, (task, fields) in enumerate(zip(tasks, out, strict=True)):
            log_dir = write_logs(task, ensemble.member_records(member), fields.get("metrics", {}))
            write_schedule(log_dir, _schedule_file(task, ensemble.task_names, schedules[member]))
            fields["log_dir"] = log_dir
        return out

    def _fields(self, metrics: list[Any], row: dict[str, Any]) -> dict[str, Any]:
        """One member's record fields from its row of ``final_metrics()``."""
        for name in metrics:  # singular values a small matrix does not have: NaN
            match = _SINGULAR_VALUE.fullmatch(name) if isinstance(name, str) else None
            if match and name not in row:
                row[name] = float("nan") if int(match.group(1)) < self.top_k else None
        missing = [m for m in metrics if not isinstance(m, str) or row.get(m) is None]
        if missing:
            produced = sorted(k for k in row if k not in ("member", "task"))
            error = (f"metrics: {missing} are not results of the factorization ensemble; it produced {produced}. "
                     "Name some of them (functions of the trainer are not supported by this runner).")
            return {"status": "failed", "error": error, "fatal": True}
        return {"metrics": {m: float(row[m]) for m in metrics}, "global_step": int(row["sgd_steps"])}

    # -- one ensemble ----------------------------------------------------------------------
    def _fit(self, tasks: list[Any]) -> tuple[FactorizationEnsemble, list[dict[int, str]]]:
        """The ensemble of ``tasks``, trained, and each member's ``{SGD step: task}`` schedule."""
        spec, first = tasks[0].spec, tasks[0].run
        pl.seed_everything(first.seed, verbose=False)
        model = build_model(spec, first)
        if not isinstance(model, DeepMatrixFactorization):
            raise TypeError(f"the model factory returned {type(model).__name__}; FactorizationEnsembleRunner "
                            "trains DeepMatrixFactorization models (use the default runner for others).")
        dm = build_datamodule(spec, first)
        if dm is None or not hasattr(dm, "observations"):
            raise TypeError("FactorizationEnsembleRunner needs a datamodule with tasks, observations(name) and "
                            "ground_truth(name), e.g. lc.data.MatrixCompletionDataModule.")
        base = dm.task
        schedules = [self._schedule(spec, task, base, TaskSwitch) for task in tasks]
        initial = self.initial_task or collections.Counter(s[0] for s in schedules).most_common(1)[0][0]
        times = [t for s in schedules for t in s] + [task.epochs for task in tasks]
        k = self.sgd_steps_per_epoch or largest_common_divisor(times)
        bad = sorted({t for t in times if t % k})
        if bad:
            raise ValueError(f"sgd_steps_per_epoch={k} must divide every switch time and run length; it does not "
                             f"divide {bad}.")
        ensemble = FactorizationEnsemble(model, dm, [task.epochs for task in tasks], sgd_steps_per_epoch=k,
                                         initial_task=initial, top_k=self.top_k, dtype=self.dtype)
        switches = []
        for member, schedule in zip(ensemble.members, schedules, strict=True):
            chunks = {t // k: name for t, name in schedule.items() if not (t == 0 and name == initial)}
            if chunks:
                switches.append(TaskSwitch(chunks, unit="epoch", target=member))
        kwargs = {**QUIET_TRAINER, **{key: v for key, v in spec.trainer.items() if key != "logger"}}
        kwargs.update(max_epochs=ensemble.max_epochs, callbacks=switches, logger=False, enable_checkpointing=False)
        pl.Trainer(**kwargs).fit(ensemble, datamodule=dm)
        return ensemble, schedules

    @staticmethod
    def _schedule(spec: Any, task: Any, base: str, task_switch: Any) -> dict[int, str]:
        """The member's ``{time: task}``, starting at time 0, from its run's ``TaskSwitch`` deficits."""
        schedule: dict[int, str] = {}
        for callback in build_deficits(spec, task.run):
            if not isinstance(callback, task_switch) or callback.unit != "epoch":
                raise TypeError(
                    f"deficit {type(callback).__name__} is not valid for FactorizationEnsembleRunner: give TaskSwitch "
                    "callbacks in epochs (e.g. lambda w: lc.TaskSwitch({w.start: 'pretrain', w.end: 'target'})).")
            if 0 not in callback.schedule and 0 not in schedule:
                schedule[0] = callback.initial or base
            schedule.update(callback.schedule)
        schedule.setdefault(0, base)
        return dict(sorted(schedule.items()))


def write_logs(task: Any, records: list[Record], final: dict[str, float]) -> str:
    """Write one member's ``records`` as its run's history file (and TensorBoard logs); return its directory.

    The directory is the task's ``log_dir`` when the sweep writes TensorBoard logs, else
    ``<out>/runs/<label>``; a retried run starts it afresh. ``final``: the run's final metrics
    (the HParams session's ``final/<name>``; none for a failed run).
    """
    log_dir = task.log_dir or os.path.join(task.out, "runs", task.label)
    if task.log_dir is not None and os.path.isdir(log_dir):
        shutil.rmtree(log_dir)  # a retried run starts a clean log
    # the run's own target: "W", its end-to-end map (the ensemble calls it "member<k>")
    own = [(step, epoch, "W", metric, index, value) for step, epoch, _, metric, index, value in records]
    history, path = History(), os.path.join(log_dir, HISTORY_FILE)
    history.start(path + ".tmp", from_step=0)  # written whole, then moved: a reader never sees half a file
    history.extend(own)
    history.close()
    os.replace(path + ".tmp", path)
    if task.log_dir is not None:
        _tensorboard(task, own, final)
    return log_dir


def _tensorboard(task: Any, records: list[Record], final: dict[str, float]) -> None:
    """The member's records as TensorBoard scalars at their SGD step, and its HParams session."""
    logger = pl.loggers.TensorBoardLogger(os.path.dirname(task.log_dir), name=os.path.basename(task.log_dir),
                                          version="", default_hp_metric=False)
    by_step: dict[int, dict[str, float]] = {}
    for step, _, _, metric, index, value in records:
        by_step.setdefault(step, {})[metric if index < 0 else f"{metric}/{index}"] = value
    for step, scalars in by_step.items():
        logger.log_metrics(scalars, step=step)
    logger.log_hyperparams(hparams(task), {f"final/{k}": v for k, v in final.items() if math.isfinite(v)})
    logger.finalize("success")


def _schedule_file(task: Any, names: Sequence[str], schedule: dict[int, str]) -> dict[str, Any]:
    """The run's ``schedule.json`` (:mod:`lightning_critical.schedule_file`): its task switches, in SGD steps."""
    steps = switch_steps(schedule, "epoch", None, 1, last_step=task.epochs)
    entry = {"target": "datamodule", "tasks": list(names), "unit": "epoch", "initial": schedule[0],
             "schedule": [{"at": t, "task": name} for t, name in schedule.items() if t > 0],
             "steps": [list(s) for s in steps or ()]}
    return {"global_step": task.epochs, "epochs": task.epochs, "steps_per_epoch": 1, "seed": task.run.seed,
            "deficits": [], "tasks": [entry], "run": hparams(task)}

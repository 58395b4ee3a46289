"""The default runner: one ``pl.Trainer`` fit of a fresh model per run, shared prefixes branched from checkpoints.

:class:`LightningRunner` trains each task of a job under the run envelope
(:func:`~lightning_critical.sweep.runners.base.envelope`) with :func:`fit`: seed, build the
run's objects, fit (from a branch checkpoint when the plan says so: :mod:`.branching`), test,
measure, log. A subclass may wrap or replace ``run``; the sweep calls it for every job.

* **Every run is seeded** with ``pl.seed_everything(seed)`` before its factories are called,
  and runs with ``torch.set_num_threads(threads_per_run)`` whatever the backend.
* **Loggers.** Each run logs to its own ``TensorBoardLogger`` (``<out>/tensorboard/<label>``,
  no ``hp_metric``); at the end it logs its window, seed, swept values and each deficit's kind,
  target and window as hparams with its final metrics (``final/<name>``) as hparam metrics.
  A branched run logs from its branch step on; the engine copies the parent's records before
  that step into its directory once both have finished (:mod:`lightning_critical.sweep.logs`),
  so every run shows its whole run.

Example::

    >>> LightningRunner().batches(["a", "b"])
    [['a'], ['b']]
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_critical import views
from lightning_critical._lightning import log_every_n_steps
from lightning_critical._namespace import pl
from lightning_critical.sweep import audit
from lightning_critical.sweep.build import build_callbacks, build_datamodule, build_deficits, build_model, deficit_seed
from lightning_critical.sweep.runners.base import RUNNER_OPTIONS, BranchRefused, MetricNotFound, Task, envelope
from lightning_critical.sweep.runners.branching import length as branch_length
from lightning_critical.sweep.runners.branching.checkpoint import Branching
from lightning_critical.sweep.spec import canonical_json, describe

QUIET_TRAINER: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""Trainer defaults of every sweep run (any of them can be overridden in ``trainer=``)."""

RESERVED_TRAINER = ("callbacks", "default_root_dir")
"""Trainer arguments the sweep owns (``logger`` may be ``True`` / ``False``; checkpointing and hparams
autologging are set by the sweep: branch points are its only checkpoints unless ``callbacks`` adds a
``ModelCheckpoint``)."""


class LightningRunner:
    """The default runner: one ``pl.Trainer`` fit per run, shared prefixes branched from checkpoints.

    ``run(tasks)`` trains each task under the run envelope with :func:`fit` and returns one
    record per task. Subclass it to change what a run does (e.g. wrap ``super().run(tasks)``
    and edit the records): the sweep calls ``run`` for every job.

    Example::

        >>> runner = LightningRunner()
        >>> runner.name, runner.shares_prefixes, runner.batches(["a", "b"])
        ('lightning', True, [['a'], ['b']])
    """

    name = "lightning"
    shares_prefixes = True
    supports = RUNNER_OPTIONS

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        """One job per run, in the order given (the plan's: a parent before the runs that branch from it)."""
        return [[t] for t in tasks]

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]:
        """One record per task: each trained by :func:`fit` under the run envelope."""
        return [envelope(task, fit) for task in tasks]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


def read_metrics(metrics: Any, trainer: pl.Trainer, module: pl.LightningModule,
                 produced: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The final metrics of a finished run.

    Names are read from ``produced`` (default ``trainer.callback_metrics``); functions return dicts.
    """
    produced = dict(trainer.callback_metrics if produced is None else produced)
    values: dict[str, float] = {}
    for metric in metrics:
        if isinstance(metric, str):
            if metric not in produced:
                every, steps = log_every_n_steps(trainer), trainer.global_step
                short = (f" The run took {steps} optimizer steps, fewer than log_every_n_steps={every}: a metric "
                         "logged only on logging steps was never logged; pass trainer={'log_every_n_steps': 1}."
                         if steps < every else "")
                raise MetricNotFound(
                    f"metrics: {metric!r} is not in trainer.callback_metrics; this run produced {sorted(produced)}. "
                    f"Use one of those names, or a function (trainer, module) -> dict of numbers.{short}"
                )
            values[metric] = float(produced[metric])
        else:
            out = metric(trainer, module)
            if not isinstance(out, Mapping):
                raise TypeError(
                    f"metric function {describe(metric)} returned {type(out).__name__}, not a dict of numbers.")
            for key, value in out.items():
                if hasattr(value, "item"):
                    value = value.item()
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise TypeError(f"metric function {describe(metric)} returned {key}={value!r}, not a number.")
                values[str(key)] = float(value)
    return values


SWEEP_AXES = ("window_start", "window_end", "seed")
"""The HParams columns a sweep's view leads with (then the swept values): see :func:`hparams_columns`."""

SWEEP_BOOKKEEPING = ("window", "unit", "baseline", "sweep", "epochs", "run_id", "branch_epoch")
"""The HParams columns a sweep's view ends with."""


def hparams_columns(params: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(lead, last)`` of :func:`lightning_critical.views.finish_sweep` for a sweep of the swept ``params``.

    Example::

        >>> hparams_columns(["lr"])[0]
        ['window_start', 'window_end', 'seed', 'lr']
    """
    return [*SWEEP_AXES, *params], list(SWEEP_BOOKKEEPING)


def hparams(task: Task) -> dict[str, Any]:
    """The values that tell one run from another, as TensorBoard hparams (window bounds -1 for the baseline).

    The run's view adds the module's hyperparameters (``model/<name>``) and the deficits' and
    tasks' descriptions; :func:`hparams_columns` orders them.
    """
    run = task.run
    windows = run.windows
    out: dict[str, Any] = {
        "window": " + ".join(str(w) for w in windows) if windows else "none",
        "window_start": windows[0].start if windows else -1,
        "window_end": (windows[-1].end if windows[-1].end is not None else task.epochs) if windows else -1,
        "unit": windows[0].unit if windows else "epoch",
        "baseline": run.baseline,
        "seed": run.seed,
        "epochs": task.epochs,
        "sweep": task.sweep_kind,
        "run_id": task.run_id,
        "branch_epoch": task.branch_epoch,
    }
    for key, value in run.params:
        out[key] = value if isinstance(value, (int, float, str, bool)) else canonical_json(value)
    return out


def fit(task: Task) -> dict[str, Any]:
    """Train one run in this process and return its fields (metrics, epochs trained, steps, deficit seed).

    Raises whatever the run raises (:func:`~lightning_critical.sweep.runners.base.envelope` makes
    it a record): :class:`BranchRefused` when a branched run cannot end as the same run trained
    from scratch, :class:`MetricNotFound` when a metric name is not among what it produced.
    """
    spec, run = task.spec, task.run
    log_dir = task.log_dir
    if log_dir is not None and os.path.isdir(log_dir):
        shutil.rmtree(log_dir)  # a retried run starts a clean log
    pl.seed_everything(run.seed, verbose=False)
    model = build_model(spec, run)
    datamodule = build_datamodule(spec, run)
    deficits = build_deficits(spec, run)
    branching = Branching(
        task.save_paths, info={"run_id": task.run_id, "label": task.label, "log_dir": log_dir},
        steps_per_epoch=spec.steps_per_epoch if run.windows and run.windows[0].unit == "step" else None,
        deficits=deficits,
    )
    callbacks = deficits + build_callbacks(spec, run) + [branching]
    logger: Any = False
    if log_dir is not None:
        logger = pl.loggers.TensorBoardLogger(os.path.dirname(log_dir), name=os.path.basename(log_dir), version="",
                                   default_hp_metric=False)
    trainer = _trainer(task, callbacks, logger)
    views.of(trainer).hold_session(sweep=True)  # one session per run, written below with the sweep's values
    data_kwargs: dict[str, Any] = {"datamodule": datamodule} if datamodule is not None else {}
    branch_step = _branch_step(task.resume_path) if task.resume_path is not None else 0
    _train(trainer, model, data_kwargs, task.resume_path, branching)
    produced = dict(trainer.callback_metrics)
    if spec.test:  # trainer.test replaces callback_metrics: keep the fit's too
        trainer.test(model, **data_kwargs, verbose=False)
        produced.update(trainer.callback_metrics)
    metrics = read_metrics(spec.metrics, trainer, model, produced)
    if task.audit_path is not None:
        audit.save_weights(task.audit_path, model, trainer)
    if logger:
        final = {f"final/{k}": v for k, v in metrics.items() if math.isfinite(v)}
        views.of(trainer).write_session(extra=hparams(task), metrics=final, sweep=True)
        logger.finalize("success")
    if spec.save_model:
        _save_model(model, os.path.join(task.out, "models", f"{task.label}.pt"))
    return {
        "metrics": metrics,
        "epochs_trained": int(trainer.current_epoch) - task.branch_epoch,
        "branch_step": branch_step,
        "global_step": int(trainer.global_step),
        "deficit_seed": deficit_seed(deficits),
    }


def _trainer(task: Task, callbacks: list[Any], logger: Any) -> pl.Trainer:
    """The run's ``Trainer``: the sweep's quiet defaults, the user's arguments, the sweep's own settings."""
    kwargs = {**QUIET_TRAINER, **{k: v for k, v in task.spec.trainer.items() if k != "logger"}}
    kwargs.update(
        max_epochs=task.epochs, callbacks=callbacks, logger=logger, enable_checkpointing=True,
        enable_autolog_hparams=False, default_root_dir=task.log_dir or os.path.join(task.out, "runs", task.label),
    )
    return branch_length.watch(pl.Trainer(**kwargs))  # notes user code that reads the run's length


def _train(trainer: pl.Trainer, model: Any, data_kwargs: dict[str, Any], resume_path: str | None,
           branching: Branching) -> None:
    """``trainer.fit``, from the branch checkpoint when there is one (a failure before the first step: refused)."""
    if resume_path is None:
        trainer.fit(model, **data_kwargs)
        return
    try:  # our own files: no need for weights_only's restrictions on what the user's hparams hold
        trainer.fit(model, **data_kwargs, ckpt_path=resume_path, weights_only=False)
    except Exception as err:
        if isinstance(err, BranchRefused) or branching.stepped:
            raise
        # e.g. a module whose structure the prefix changed (torch.nn.utils.prune): a run from scratch may not fail
        message = " ".join(str(err).split())
        raise BranchRefused(f"resuming from the branch checkpoint failed before the first step: "
                            f"{type(err).__name__}: {message[:200]}") from err


def _save_model(model: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _branch_step(resume_path: str) -> int:
    """The global step of a branch checkpoint (from its sidecar, else from the file itself)."""
    try:
        with open(resume_path[: -len(".ckpt")] + ".json") as fh:
            return int(json.load(fh)["step"])
    except (OSError, ValueError, KeyError):
        return int(torch.load(resume_path, map_location="cpu", weights_only=False).get("global_step", 0))

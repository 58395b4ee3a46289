"""Execute one run of a sweep in the current process: build, fit (maybe from a branch checkpoint), measure.

Design decisions that make a branched run bitwise equal to the same run trained from scratch
(on CPU), or refuse it (:class:`BranchRefused`: :func:`execute` returns ``status="refused"``
with the reason, and the scheduler trains the run from scratch):

* **Where branch checkpoints are taken.** :class:`Branching` is a Lightning ``Checkpoint``
  callback (so Lightning runs it after every other callback and after the LightningModule's
  ``on_train_epoch_end``, like ``ModelCheckpoint``) and saves with ``trainer.save_checkpoint``
  in ``on_train_epoch_end`` of the epoch before the branch, after that epoch's validation.
  Lightning resumes such a checkpoint at the start of the next epoch (model, optimizers,
  schedulers, loop counters, every callback's ``state_dict``). A run about to stop
  (``trainer.should_stop``, e.g. a user ``EarlyStopping``) writes none: its children start
  from an earlier branch or from scratch. Files are written to a temporary name and renamed,
  so a checkpoint that exists is complete.
* **Global random states.** ``Branching.state_dict`` stores the torch (CPU and CUDA), numpy
  and Python states as tensors and plain values; ``load_state_dict`` restores them while
  Lightning restores the checkpoint, before the next epoch's data iterator is created.
  Hooks that run once per ``fit`` (``on_fit_start``, ``on_train_start``) must not draw from
  any generator for the equality to hold (a draw from a carried generator there is refused).
* **Everything else the parent carries across the branch point**
  (:mod:`~lightning_critical.sweep.branch_state`): generator objects of the model,
  datamodule, callbacks, deficits and train / val loaders (restored before their first draw),
  plain attributes the parent changed during the prefix, the files a ``ModelCheckpoint``
  tracks. Refused: state it cannot carry (a callback without ``state_dict`` whose tensors
  changed, persistent loader workers, a rebuilt loader holding a generator, ``ReduceLROnPlateau``).
* **Branch compatibility.** Each run fingerprints what it configures for itself (trainer
  limits, attributes of model, datamodule and callbacks before any restore, optimizers and
  schedulers as ``configure_optimizers`` built them, loader settings); a child whose
  fingerprint differs from its parent's (a schedule built from ``max_epochs``) is refused
  before its first step.
* **Whatever is not carried is compared** (:mod:`~lightning_critical.sweep.branch_digest`):
  the parent digests what no checkpoint holds (non-persistent buffers, tensor attributes of
  any size, ``hparams`` entries, plain attributes including private names, of the model and its
  submodules, the datamodule and user callbacks) at the branch point; the child digests the same
  after restoring and after its module's ``on_train_start`` (before any epoch hook and step), and
  is refused naming the entries that differ (``model._epochs_done``, ``model.mask (tensor)``).
* **Runs of different lengths**: the sweep's ``Trainer`` notes reads of ``max_epochs`` /
  ``estimated_stepping_batches`` by user code (:mod:`~lightning_critical.sweep.branch_length`);
  a child of another length than a parent whose prefix read them, or whose parent changed its
  own ``fit_loop.max_epochs``, is refused. A child that fails while resuming its checkpoint
  (before its first step: e.g. a module pruned during the prefix) is refused, not failed.
* **Every run is seeded** with ``pl.seed_everything(seed)`` before its factories are called,
  and runs with ``torch.set_num_threads(threads_per_run)`` whatever the backend.
* **Loggers.** Each run logs to its own ``TensorBoardLogger`` (``<out>/tensorboard/<label>``,
  no ``hp_metric``); at the end it logs its window, seed, swept values and each deficit's kind,
  target and window as hparams with its final metrics (``final/<name>``) as hparam metrics.
  A branched run logs from its branch step on; the engine copies the parent's records before
  that step into its directory once both have finished (:mod:`lightning_critical.sweep.logs`),
  so every run shows its whole run.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import override

from lightning_critical import _lightning, views
from lightning_critical._namespace import pl
from lightning_critical.sweep import audit, branch_length, rng
from lightning_critical.sweep.branch_state import BranchRefused, Lineage, place_checkpoint_files
from lightning_critical.sweep.build import build_callbacks, build_datamodule, build_deficits, build_model, deficit_seed
from lightning_critical.sweep.isolation import isolated, quiet
from lightning_critical.sweep.spec import RunSpec, SweepSpec, canonical_json, describe

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


class MetricNotFound(ValueError):
    """A metric named in ``metrics=`` is not among the run's ``trainer.callback_metrics``."""


@dataclass
class Task:
    """Everything a worker needs to execute one run (picklable when the spec is)."""

    spec: SweepSpec
    run: RunSpec
    run_id: str
    label: str
    out: str
    epochs: int
    branch_epoch: int = 0
    resume_path: str | None = None
    save_paths: dict[int, str] | None = None
    parent: str | None = None
    sweep_kind: str = "explicit"
    audit_path: str | None = None  # the exactness audit: write the final weights there

    @property
    def log_dir(self) -> str | None:
        return os.path.join(self.out, "tensorboard", self.label) if self.spec.tensorboard else None


class Branching(pl.callbacks.Checkpoint):
    """Saves the branch checkpoints of a run and carries every random state and decision through them.

    Args:
        save_paths: ``{epochs_done: path}``: after that many epochs, write a checkpoint to ``path``.
        info: extra fields for the ``<path>.json`` written next to each checkpoint.
        steps_per_epoch: the epoch length the plan assumed (step windows), checked at train start.
        deficits: the sweep's deficit callbacks of this run (left out of the branch comparison:
            they differ by window by design).

    A run resumed from a branch checkpoint raises :class:`BranchRefused` before its first step
    when it would not end as the same run trained from scratch (see
    :mod:`lightning_critical.sweep.branch_state`).
    """

    def __init__(self, save_paths: Mapping[int, str] | None = None, info: dict[str, Any] | None = None,
                 steps_per_epoch: int | None = None, deficits: Sequence[Any] = ()) -> None:
        self.save_paths = dict(save_paths or {})
        self.info = dict(info or {})
        self.steps_per_epoch = steps_per_epoch
        self.restored = False
        self.stepped = False  # a training step started (before it, any failure of a branched run is a refusal)
        self.lineage = Lineage({id(self), *(id(d) for d in deficits)}, deficits=tuple(id(d) for d in deficits))
        self._trainer: Any = None
        self._saving = False

    @property
    @override
    def state_key(self) -> str:
        return "lightning_critical.sweep.Branching"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer  # Lightning calls every callback's setup before it restores a checkpoint
        self.lineage.setup(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng.capture()}
        if self._saving:
            state["branch"] = self.lineage.capture(self._trainer)
        return state

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # before any callback's load_state_dict: a ModelCheckpoint then restores a state pointing at its own files
        branch = ((checkpoint.get("callbacks") or {}).get(self.state_key) or {}).get("branch")
        if branch:
            place_checkpoint_files(trainer, branch.get("model_checkpoints", []), checkpoint)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            rng.restore(state_dict["rng"])
            self.restored = True
        if "branch" not in state_dict:
            raise BranchRefused("the checkpoint carries no branch state (written by an older version of this package)")
        self.lineage.load(self._trainer, state_dict["branch"])

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # optimizers and schedulers exist as configured; Lightning restores their states after this hook
        self.lineage.fit_start(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.save_paths or self.restored) and self.steps_per_epoch is not None:
            actual = _lightning.steps_per_epoch(trainer)
            if actual != self.steps_per_epoch:
                raise ValueError(
                    f"steps_per_epoch={self.steps_per_epoch} was given to lc.sweep.run but this run takes {actual} "
                    "optimizer steps per epoch; give the right value "
                    "(or None: step windows then do not share prefixes)."
                )
        self.lineage.train_start(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.stepped = True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        done = trainer.current_epoch + 1
        path = self.save_paths.get(done)
        if path is None or trainer.sanity_checking or trainer.should_stop:
            return  # a run about to stop hands out no branch: its children would train on where it stops
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        self._saving = True
        try:
            trainer.save_checkpoint(tmp)  # every rank calls it; the strategy writes once
        finally:
            self._saving = False
        if not trainer.is_global_zero:
            return
        info = {**self.info, "epoch": done, "step": int(trainer.global_step)}
        sidecar = path[: -len(".ckpt")] + ".json"
        with open(sidecar + ".tmp", "w") as fh:
            fh.write(canonical_json(info))
        os.replace(sidecar + ".tmp", sidecar)
        os.replace(tmp, path)  # the sidecar first: a checkpoint that exists is complete and described

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.lineage.teardown(trainer)


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
                raise MetricNotFound(
                    f"metrics: {metric!r} is not in trainer.callback_metrics; this run produced {sorted(produced)}. "
                    "Use one of those names, or a function (trainer, module) -> dict of numbers."
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


def hparams(task: Task) -> dict[str, Any]:
    """The values that tell one run from another, as TensorBoard hparams (window bounds -1 for the baseline)."""
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


def execute(task: Any) -> Any:
    """Train one run and return its result record (a failure is returned as ``status="failed"``, not raised).

    A failed record carries the exception under ``"exception"`` (when it
    can be pickled) for ``lc.sweep.run(errors="raise")``; the store never sees it.
    ``KeyboardInterrupt`` (or Lightning's exit after one) propagates as ``KeyboardInterrupt``.
    """
    spec = task.spec
    start = time.perf_counter()
    record: dict[str, Any] = {
        "run_id": task.run_id, "label": task.label, "status": "failed", "error": None, "metrics": {},
        "epochs": task.epochs, "branch_epoch": task.branch_epoch, "parent": task.parent, "branch_step": 0,
        "epochs_trained": 0, "log_dir": task.log_dir, "pid": os.getpid(),
    }
    with isolated(spec.threads_per_run), quiet():
        try:
            record.update(_fit(task))
            record["status"] = "ok"
        except (KeyboardInterrupt, SystemExit) as err:
            raise KeyboardInterrupt(f"run {task.label} interrupted") from err
        except MetricNotFound as err:
            record["error"] = str(err)
            record["fatal"] = True
        except BranchRefused as err:  # the scheduler trains this run from scratch and records why
            record["status"] = "refused"
            record["refused"] = err.reason
            record["error"] = str(err)
        except Exception as err:
            record["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=12)}"
            record["exception"] = portable(err, task.label)
    record["seconds"] = time.perf_counter() - start
    return record


def portable(err: BaseException, label: str | None = None) -> Any:
    """``err`` as it can come back from a worker process as itself (:func:`lightning_critical.sweep.failures.carry`)."""
    from lightning_critical.sweep.failures import carry

    return carry(err, label)


def _fit(task: Task) -> dict[str, Any]:
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
    kwargs = {**QUIET_TRAINER, **{k: v for k, v in spec.trainer.items() if k != "logger"}}
    kwargs.update(
        max_epochs=task.epochs, callbacks=callbacks, logger=logger, enable_checkpointing=True,
        enable_autolog_hparams=False, default_root_dir=log_dir or os.path.join(task.out, "runs", task.label),
    )
    trainer = branch_length.watch(pl.Trainer(**kwargs))  # notes user code that reads the run's length
    views.of(trainer).hold_session()  # one session per run, written below with the sweep's values
    data_kwargs: dict[str, Any] = {"datamodule": datamodule} if datamodule is not None else {}
    branch_step = _branch_step(task.resume_path) if task.resume_path is not None else 0
    if task.resume_path is not None:
        try:  # our own files: no need for weights_only's restrictions on what the user's hparams hold
            trainer.fit(model, **data_kwargs, ckpt_path=task.resume_path, weights_only=False)
        except Exception as err:
            if isinstance(err, BranchRefused) or branching.stepped:
                raise
            # e.g. a module whose structure the prefix changed (torch.nn.utils.prune): a run from scratch may not fail
            message = " ".join(str(err).split())
            raise BranchRefused(f"resuming from the branch checkpoint failed before the first step: "
                                f"{type(err).__name__}: {message[:200]}") from err
    else:
        trainer.fit(model, **data_kwargs)
    produced = dict(trainer.callback_metrics)
    if spec.test:  # trainer.test replaces callback_metrics: keep the fit's too
        trainer.test(model, **data_kwargs, verbose=False)
        produced.update(trainer.callback_metrics)
    metrics = read_metrics(spec.metrics, trainer, model, produced)
    if task.audit_path is not None:
        audit.save_weights(task.audit_path, model, trainer)
    if logger:
        final = {f"final/{k}": v for k, v in metrics.items() if math.isfinite(v)}
        views.of(trainer).write_session(extra=hparams(task), metrics=final)
        logger.finalize("success")
    if spec.save_model:
        path = os.path.join(task.out, "models", f"{task.label}.pt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return {
        "metrics": metrics,
        "epochs_trained": int(trainer.current_epoch) - task.branch_epoch,
        "branch_step": branch_step,
        "global_step": int(trainer.global_step),
        "deficit_seed": deficit_seed(deficits),
    }


def _branch_step(resume_path: str) -> int:
    """The global step of a branch checkpoint (from its sidecar, else from the file itself)."""
    try:
        with open(resume_path[: -len(".ckpt")] + ".json") as fh:
            return int(json.load(fh)["step"])
    except (OSError, ValueError, KeyError):
        return int(torch.load(resume_path, map_location="cpu", weights_only=False).get("global_step", 0))

"""One sweep, in small steps: :func:`run_study` and the :class:`Session` it drives.

:func:`run_study` is the primary door into the engine (``lc.sweep.run`` is its convenience
form). It holds ``out``'s :class:`~lightning_critical.sweep.lock.SweepLock` and runs a
:class:`Session`, whose steps are, in order:

1. :meth:`Session.identify`: the runs, their ids and labels, and the sweep's identity (the first
   run's objects are built once, to catch wrong types and to put their code in the identity);
2. :meth:`Session.open_store` / :meth:`Session.choose_backend`: what is already done, and where
   the rest trains (the main guard and picklability checked for worker processes);
3. :meth:`Session.check_before_training`: the pre-flight (:mod:`lightning_critical.sweep.preflight`);
   steps 1 to 3 are :meth:`Session.prepare` (nothing trains; the CLI reports their errors in one line);
4. :meth:`Session.claim`: take the directory (or refuse a different sweep), say what is reused;
5. :meth:`Session.dispatch`: plan the prefix tree, build the jobs, run them on the backend;
6. :meth:`Session.table` / :meth:`Session.clean_up` / :meth:`Session.figure`: the tidy table, the
   failure warning and checkpoint clean-up, the critical-period figure.

Each call into another part of the engine sits in one small method: the spec
(:meth:`Session.make_spec`, :meth:`Session.build_first_run`), a job (:meth:`Session.make_task`,
:meth:`Session.make_job`) and the dispatcher (:meth:`Session.make_dispatcher`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical import _namespace, views
from lightning_critical._output import save_figure
from lightning_critical.plots.critical_period import plot_critical_period_curve
from lightning_critical.sweep import backends as _backends
from lightning_critical.sweep import failures as _failures
from lightning_critical.sweep import preflight as _preflight
from lightning_critical.sweep import units as _units
from lightning_critical.sweep.audit import Audit
from lightning_critical.sweep.backends import workers as _workers
from lightning_critical.sweep.build import build_callbacks, build_deficits, intervention
from lightning_critical.sweep.dispatcher import Dispatcher
from lightning_critical.sweep.lock import SweepLock
from lightning_critical.sweep.observers import standard_observers
from lightning_critical.sweep.params import runs_of
from lightning_critical.sweep.plan import Plan, PlanItem, make_plan, schedule_tokens
from lightning_critical.sweep.resume import report_reuse
from lightning_critical.sweep.runners import LightningRunner, Task
from lightning_critical.sweep.runners.isolation import isolated, quiet
from lightning_critical.sweep.runners.lightning import hparams_columns
from lightning_critical.sweep.spec import RunSpec, SweepSpec, identity_of, short_hash
from lightning_critical.sweep.store import IDENTITY, Store, SweepDirectoryError, Takeover
from lightning_critical.sweep.study import Execution, Output, Study, check_together
from lightning_critical.sweep.table import plan_axes, run_fields, to_table
from lightning_critical.sweep.units import Job, job_groups

__all__ = ["Session", "run_study", "totals"]


def run_study(study: Study, execution: Execution | None = None, output: Output | None = None) -> pd.DataFrame:
    """Run ``study`` where ``execution`` says and write what ``output`` says; one tidy row per run.

    The groups' fields are the keywords of :func:`lightning_critical.sweep.run` (see it for
    their meaning, the table and the errors): ``run_study(Study(model, ...), Execution(...),
    Output(...))`` and ``run(model, ..., **the same fields)`` give the same table.

    Example::

        >>> import tempfile, lightning_critical as lc
        >>> study = lc.sweep.Study(
        ...     lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
        ...     lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
        ...     deficit=lc.InputDeficit("blur", window=(0, 1), factor=4), windows=lc.sweep.removal([1]),
        ...     metrics="val_acc", trainer={"max_epochs": 2, "accelerator": "cpu"})
        >>> table = lc.sweep.run_study(study, lc.sweep.Execution(backend="serial"),
        ...                            lc.sweep.Output(out=tempfile.mkdtemp(), tensorboard=False, plot=False))
        >>> table[["window", "status", "epochs"]].values.tolist()
        [['none', 'ok', 2], ['[0, 1) epochs', 'ok', 2]]
    """
    session = Session(study, execution or Execution(), output or Output())
    with SweepLock(session.output.out):
        return session.run()


class Session:
    """One sweep of ``study`` (see the module for its steps); :meth:`run` does them all.

    The groups are checked again (a field may have changed since the group was made), with the
    checks that need two groups at once (:func:`~lightning_critical.sweep.study.check_together`).
    The steps may be taken one by one, e.g. to see a sweep's runs without training any:

        >>> import tempfile, lightning_critical as lc
        >>> study = lc.sweep.Study(
        ...     lc.models.MultiPathwayLinearNet, deficit=lambda window: lc.PathwayDeficit("b", window),
        ...     windows=lc.sweep.removal([1, 2]), metrics="train_loss", trainer={"max_epochs": 3}, seeds=[0, 1])
        >>> session = Session(study, Execution(backend="serial"), Output(out=tempfile.mkdtemp()))
        >>> session.identify()
        >>> [session.labels[rid] for rid in session.run_ids][:3]
        ['baseline_seed0', 'baseline_seed1', 'w0-1_seed0']
    """

    def __init__(self, study: Study, execution: Execution, output: Output) -> None:
        for group in (study, execution, output):
            group.check()
        self.study, self.execution, self.output = study, execution, output
        self.tensorboard = check_together(study, execution, output)
        self.runner = execution.training_runner
        self.grid, self.seeds, self.combos = study.grid, study.seed_list, study.combos
        self.metrics, self.trainer = study.metric_list, study.trainer_kwargs
        self.first: tuple[Any, Any] | None = None  # the first run's model and datamodule, until the pre-flight

    def run(self) -> pd.DataFrame:
        """Every step, in order (:meth:`prepare` unless done already); the table of this call's runs."""
        if not hasattr(self, "todo"):
            self.prepare()
        self.claim()
        if self.pending:
            self.dispatch()
        else:
            self.backend.close(cancel=False)
        table = self.table()
        self.clean_up(table)
        self.figure(table)
        if self.tensorboard:  # one HParams and Custom Scalars view of all the runs
            lead, last = hparams_columns([k for k, _ in self.combos[0]])
            views.finish_sweep(os.path.join(self.store.out, "tensorboard"), lead, last)
        return table

    def prepare(self) -> None:
        """The steps before anything trains or is written (their errors are bad input): 1 (unless done) to 3."""
        if not hasattr(self, "spec"):
            self.identify()
        self.open_store()
        self.choose_backend()
        self.check_before_training()

    # -- 1. the runs and the sweep's identity ----------------------------------------------
    def identify(self) -> None:
        """The spec, the runs in grid order, the identity, run ids, labels, lengths and table fields."""
        self.spec = self.make_spec()
        # one baseline per seed whatever the values that reach only the deficit; groups: the plan's sharing
        self.runs, groups = runs_of(self.grid, self.combos, self.seeds, self.study.deficit_params)
        built = self.build_first_run()  # the built classes' code joins the identity
        self.description = self.spec.describe(built, namespace=_namespace.NAME)
        self.identity = identity_of(self.description)
        self.run_ids = [r.run_id(self.identity) for r in self.runs]
        self.by_id = dict(zip(self.run_ids, self.runs, strict=True))
        self.groups = dict(zip(self.run_ids, groups, strict=True))
        self.labels = _labels(self.runs, self.run_ids)
        self.epochs = {rid: (r.max_epochs or self.spec.max_epochs) for rid, r in self.by_id.items()}
        self.fields = {rid: {**run_fields(r, rid, self.labels[rid], self.epochs[rid]), "sweep": self.identity}
                       for rid, r in self.by_id.items()}

    def make_spec(self) -> SweepSpec:
        """What trains a run, from the checked groups."""
        study, execution = self.study, self.execution
        return SweepSpec(
            model=study.model, datamodule=study.datamodule, deficit=study.deficit, callbacks=study.callbacks,
            trainer=self.trainer, metrics=tuple(self.metrics), test=bool(study.test),
            threads_per_run=execution.threads_per_run, steps_per_epoch=study.steps_per_epoch,
            share_prefixes=bool(execution.share_prefixes), save_model=bool(self.output.save_model),
            tensorboard=self.tensorboard,
            runner=None if type(self.runner) is LightningRunner else self.runner,  # a subclass is part of the identity
        )

    def build_first_run(self) -> dict[str, list[type]]:
        """Build one run's objects to catch wrong types before training; their classes per role.

        The model and datamodule are built for the pre-flight's run (the first with a deficit,
        seeded like a run) and kept for its trial fit, so the pre-flight does not build them again.
        """
        spec, runs = self.spec, self.runs
        trial_run = _preflight.trial_run(runs)
        with isolated(spec.threads_per_run), quiet():
            model, datamodule = _preflight.build_seeded(spec, trial_run)
            built = {"model": [type(model)], "datamodule": [type(datamodule)],
                     "callbacks": [type(c) for c in build_callbacks(spec, runs[0])]}
            with_window = next((r for r in runs if r.windows), None)
            if with_window is not None:
                built["deficit"] = [type(c) for c in build_deficits(spec, with_window)]
        self.first = (model, datamodule)
        return built

    # -- 2. what is done, and where the rest trains ----------------------------------------
    def open_store(self) -> None:
        """Open ``out`` and find the runs not finished yet (before claiming it)."""
        self.store = Store(os.fspath(self.output.out))
        latest = self.store.latest() if os.path.exists(os.path.join(self.store.out, IDENTITY)) else {}
        self.todo = self.pending = [rid for rid in self.run_ids if latest.get(rid, {}).get("status") != "ok"]

    def choose_backend(self) -> None:
        """Resolve the backend; for worker processes, check the main guard and that the spec pickles."""
        execution = self.execution
        workers = execution.workers or min(_backends.default_workers(), max(1, len(self.todo)))
        backend = execution.backend
        if backend == "process" and workers == 1:
            backend = "serial"  # one worker: no process to spawn, same results
        self.backend = _backends.resolve_backend(backend, workers, execution.threads_per_run,
                                                 dict(execution.backend_options or {}))
        if self.backend.needs_pickling:
            _workers.check_main_guard(self.backend)
            _check_picklable(self.spec, self.backend.name)

    # -- 3. the pre-flight --------------------------------------------------------------------
    def check_before_training(self) -> None:
        """The pre-flight (unless ``preflight=False``), on the first run's objects built by :meth:`identify`."""
        first, self.first = self.first, None
        if self.execution.preflight:
            _preflight.preflight(self.spec, self.runs, trial=bool(self.todo), first=first)
        if not self.runner.shares_prefixes and self.todo:  # the runner's refusals (batches) before out is claimed
            self.make_groups(self.make_plan())  # asked once: make_dispatcher gets the same jobs (job_groups's memo)

    # -- 4. the directory -------------------------------------------------------------------
    def claim(self) -> None:
        """Claim ``out`` for this identity, read what is done, set up the audit and say what is reused."""
        runs, run_ids, fields = self.runs, self.run_ids, self.fields

        def rekey(old_identity: str) -> dict[str, dict[str, Any]]:  # resume="reuse": old run id -> this run's fields
            return {r.run_id(old_identity): fields[rid] for r, rid in zip(runs, run_ids, strict=True)}

        takeover = _claim(self.store, self.identity, self.description, self.execution.resume, rekey)
        self.latest = self.store.latest()
        limit = self.execution.audit_limit if isinstance(self.runner, LightningRunner) else 0
        self.auditor = Audit(limit, self.store.out, self.latest)
        self.pending = [rid for rid in run_ids if self.latest.get(rid, {}).get("status") != "ok"]
        self.reuse_note = report_reuse(os.fspath(self.output.out), self.identity, len(runs), len(self.pending),
                                       takeover)

    # -- 5. plan, jobs, dispatch -----------------------------------------------------------
    def dispatch(self) -> None:
        """Plan the pending runs, run them on the backend, and raise a failure when ``errors="raise"``."""
        self.store.note_plan(plan_axes([self.fields[rid] for rid in self.run_ids]), self.identity)  # load()'s order
        self.plan = self.make_plan()
        dispatcher = self.make_dispatcher()
        with _namespace.exported():
            dispatcher.run()
        self.latest = self.store.latest()
        if self.execution.errors == "raise":
            _raise_first_failure(dispatcher, self.latest, self.run_ids)

    def make_plan(self) -> Plan:
        """The prefix tree of the pending runs (branching from checkpoints already in ``out``)."""
        items = []
        for rid in self.pending:
            r = self.by_id[rid]
            group = short_hash({"sweep": self.identity, "seed": r.seed, "params": dict(self.groups[rid])})
            steps = self.study.steps_per_epoch
            items.append(PlanItem(rid, group, self.epochs[rid], schedule_tokens(r.windows, self.epochs[rid], steps)))
        sharing = bool(self.execution.share_prefixes) and bool(self.runner.shares_prefixes)
        return make_plan(items, share_prefixes=sharing, available=self.store.available_checkpoints() if sharing else {})

    def make_task(self, node: Any) -> Task:
        """One plan node as a run's task (what a worker trains)."""
        store, rid = self.store, node.run_id
        return Task(
            self.spec, self.by_id[rid], rid, self.labels[rid], store.out, node.epochs, branch_epoch=node.branch_epoch,
            resume_path=store.checkpoint_path(node.resume_key) if node.resume_key else None,
            save_paths={k: store.checkpoint_path(key) for k, key in node.save_keys.items()},
            parent=node.parent, sweep_kind=self.grid.kind,
        )

    def make_groups(self, plan: Plan | None = None) -> list[list[str]]:
        """The runner's units of work (its ``batches`` of the tasks in grid order), as lists of run ids."""
        # plan order when sharing prefixes (a parent before its branches), else grid order (windows, params, seeds)
        position = {rid: i for i, rid in enumerate(self.run_ids)}
        nodes = list((plan or self.plan).nodes)
        if not self.runner.shares_prefixes:
            nodes.sort(key=lambda n: position[n.run_id])
        return job_groups(self.runner, [self.make_task(n) for n in nodes], vars(self).setdefault("jobs", {}))

    def make_job(self, nodes: list[Any]) -> Job:
        """The unit of work a backend runs, for every runner: ``runner.run`` of the tasks of ``nodes`` (built when
        submitted, so a retargeted node is honoured)."""
        return Job(self.runner, [self.make_task(n) for n in nodes])

    def make_dispatcher(self) -> Dispatcher:
        """The dispatcher of the plan on the backend, with the store writer, log stitcher, checkpoint collector
        and progress bar as its observers."""
        output = self.output
        log_dirs = {rid: (os.path.join(self.store.out, "tensorboard", self.labels[rid]) if self.tensorboard else None)
                    for rid in self.run_ids}
        observers = standard_observers(self.store, log_dirs, progress=self.execution.progress,
                                       keep_checkpoints=output.keep_checkpoints)
        return Dispatcher(self.plan, self.backend, self.make_job, store=self.store, fields=self.fields,
                          log_dirs=log_dirs, groups=self.make_groups(), audit=self.auditor, observers=observers)

    # -- 6. the table, clean-up and figure ---------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per run of this call, in grid order, with the totals, reuse and audit in ``attrs``."""
        records = [self.latest.get(rid, {**self.fields[rid], "status": "pending"}) for rid in self.run_ids]
        table = to_table(records, params=[k for k, _ in self.combos[0]], metrics=_metric_names(self.metrics, records))
        table.attrs.update(totals(table), sweep=self.identity, kind=self.grid.kind, out=self.store.out,
                           intervention=intervention(self.spec, self.runs),
                           **self.reuse_note, audit=self.auditor.summary(records, self.execution.verify))
        self.auditor.report(table.attrs["audit"])
        return table

    def clean_up(self, table: pd.DataFrame) -> None:
        """Warn about failed runs; remove the branch checkpoints once every run is done."""
        report = _failures.failure_report(table)
        if report is not None:
            warnings.warn(report, _failures.FailedRunsWarning, stacklevel=_user_stacklevel())
        if all(table["status"] == "ok") and not self.output.keep_checkpoints:
            self.store.remove_all_checkpoints()

    def figure(self, table: pd.DataFrame) -> None:
        """The critical-period curve of the first metric (or the one ``plot`` names), PNG and TensorBoard."""
        plot = self.output.plot
        if not (plot and (table["status"] == "ok").any() and table.attrs["metrics"]):
            return
        metric = plot if isinstance(plot, str) else table.attrs["metrics"][0]
        if metric in table.attrs["metrics"]:
            _write_figure(table, metric, self.store.out, self.tensorboard)
        else:
            warnings.warn(f"plot={plot!r} is not one of the sweep's metrics {table.attrs['metrics']}: "
                          "no figure written.", stacklevel=_user_stacklevel())


def totals(table: pd.DataFrame) -> dict[str, int]:
    """Epochs trained by the finished runs, and what training each from scratch would have cost."""
    ok = table[table["status"] == "ok"]
    return {
        "epochs_trained": int(pd.to_numeric(ok["epochs_trained"], errors="coerce").fillna(0).sum()),
        "epochs_independent": int(pd.to_numeric(ok["epochs"], errors="coerce").fillna(0).sum()),
    }


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the sweep package (the caller of ``run`` / ``run_study``)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith("lightning_critical.sweep"):
        frame, level = frame.f_back, level + 1
    return level


def _check_picklable(spec: SweepSpec, backend_name: str) -> None:
    for name in ("model", "datamodule", "deficit", "callbacks", "metrics", "trainer", "runner"):
        value = getattr(spec, name)
        try:
            _units.dumps(value)
        except Exception as err:
            raise TypeError(
                f"{name}={value!r} cannot be sent to the {backend_name} backend's worker processes "
                f"({type(err).__name__}: {err}). Define it at module level or with functools.partial "
                "(or install cloudpickle for lambdas), or use backend='serial'."
            ) from None


def _claim(store: Store, identity: str, description: dict[str, Any], resume: str,
           rekey: Callable[[str], Mapping[str, Mapping[str, Any]]]) -> Takeover | None:
    try:
        return store.claim(identity, description, resume=resume, rekey=rekey)
    except SweepDirectoryError:
        if not os.path.exists(os.path.join(store.out, IDENTITY)) or any(
                r.get("status") == "ok" for r in store.latest().values()):
            raise
        # only failed runs there (e.g. a metric name that did not exist): the corrected sweep takes over
        return store.claim(identity, description, resume="rerun")


def _raise_first_failure(dispatcher: Dispatcher, latest: Mapping[str, Mapping[str, Any]], run_ids: list[str]) -> None:
    """``errors="raise"``: the first failed run's own exception, else a RunFailed naming it."""
    if dispatcher.first_exception is not None:
        raise _failures.materialize(dispatcher.first_exception)
    failed = [latest[rid] for rid in run_ids if latest.get(rid, {}).get("status") == "failed"]
    if failed:
        raise _failures.RunFailed(f"run {failed[0].get('label')} failed: {failed[0].get('error')}")


def _labels(runs: list[RunSpec], run_ids: list[str]) -> dict[str, str]:
    labels = [r.label() for r in runs]
    folded = [label.casefold() for label in labels]  # "A" and "a" are one directory on macOS and Windows
    out = {}
    for label, fold, rid in zip(labels, folded, run_ids, strict=True):
        out[rid] = label if folded.count(fold) == 1 else f"{label}_{rid[:6]}"
    return out


def _metric_names(metrics: list[Any], records: list[dict[str, Any]]) -> list[str]:
    names = [m for m in metrics if isinstance(m, str)]
    found = (key for record in records for key in (record.get("metrics") or {}))
    return names + list(dict.fromkeys(k for k in found if k not in names))


def _write_figure(table: pd.DataFrame, metric: str, out: str, tensorboard: bool) -> None:
    values = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(values).any():
        return
    fig = plot_critical_period_curve(table, metric)
    save_figure(fig, os.path.join(out, "critical_period.png"))
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tensorboard", "summary"))
        writer.add_figure(f"critical_period/{metric}", fig, close=False)
        writer.close()

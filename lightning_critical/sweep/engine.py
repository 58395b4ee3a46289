"""``lc.sweep.run``: a whole critical-period study in one call, resumable, sharing prefixes, on any backend."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical import _namespace
from lightning_critical._checks import check_choice, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical._output import save_figure
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.plots.critical_period import plot_critical_period_curve
from lightning_critical.sweep import backends as _backends
from lightning_critical.sweep import failures as _failures
from lightning_critical.sweep import preflight as _preflight
from lightning_critical.sweep import units
from lightning_critical.sweep import workers as _workers
from lightning_critical.sweep.audit import Audit, check_verify
from lightning_critical.sweep.grids import WindowGrid, as_grid
from lightning_critical.sweep.lock import SweepLock
from lightning_critical.sweep.plan import PlanItem, make_plan, schedule_tokens
from lightning_critical.sweep.resume import report_reuse
from lightning_critical.sweep.runners import RUNNER_OPTIONS, LightningRunner, Task, check_runner
from lightning_critical.sweep.runners.isolation import isolated, quiet
from lightning_critical.sweep.runners.lightning import RESERVED_TRAINER
from lightning_critical.sweep.scheduler import Scheduler
from lightning_critical.sweep.spec import (
    RunSpec,
    SweepSpec,
    accepted_kwargs,
    check_params,
    describe,
    identity_of,
    short_hash,
)
from lightning_critical.sweep.store import IDENTITY, RESUME, Store, SweepDirectoryError, Takeover
from lightning_critical.sweep.table import check_columns, order_records, plan_axes, run_fields, to_table
from lightning_critical.sweep.units import Job, job_groups

MetricsArg = str | Callable[..., Mapping[str, float]] | Sequence[str | Callable[..., Mapping[str, float]]]


def _holding_the_lock(sweep: Callable[..., pd.DataFrame]) -> Callable[..., pd.DataFrame]:
    """Hold ``out``'s :class:`~lightning_critical.sweep.lock.SweepLock` for the whole call (one live sweep per out)."""
    signature = inspect.signature(sweep)

    @functools.wraps(sweep)
    def locked(*args: Any, **kwargs: Any) -> pd.DataFrame:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return sweep(*args, **kwargs)  # let the call raise its own TypeError
        bound.apply_defaults()
        with SweepLock(bound.arguments["out"]):
            return sweep(*args, **kwargs)

    return locked


@_holding_the_lock
def run(
    model: Callable[..., Any],
    datamodule: Callable[..., Any] | None = None,
    *,
    deficit: Any,
    windows: Any,
    metrics: MetricsArg,
    trainer: Mapping[str, Any],
    seeds: Sequence[int] = (0,),
    params: Any = None,
    callbacks: Callable[..., Any] | None = None,
    test: bool = False,
    out: str | os.PathLike = "outputs/sweep",
    backend: str | cf.Executor | Any = "process",
    workers: int | None = None,
    threads_per_run: int = 1,
    share_prefixes: bool = True,
    steps_per_epoch: int | None = None,
    progress: bool | None = None,
    save_model: bool = False,
    tensorboard: bool | None = None,
    plot: bool | str = True,
    keep_checkpoints: bool = False,
    backend_options: Mapping[str, Any] | None = None,
    runner: Any = None,
    errors: str = "record",
    preflight: bool = True,
    resume: str = "refuse",
    verify: bool | int | str = "first",
) -> pd.DataFrame:
    """Train ``model`` once per window x seed x swept values and return one tidy row per run.

    Every argument is checked before anything trains. Runs whose schedules agree up to epoch
    ``k`` share that prefix: it trains once and the others branch from its checkpoint, ending
    bitwise equal to a run trained from scratch on CPU, or refusing the branch before training
    (see :mod:`lightning_critical.sweep.runners.branching.state` for what is carried, compared and refused).
    Results are appended to ``<out>/results.jsonl`` as runs finish: calling ``run`` again with
    the same arguments skips finished runs and retries failed ones, and adding seeds, windows or
    swept values runs only the new runs.

    Args:
        model: factory of the ``LightningModule`` (a class or function), called with the
            arguments it names among ``seed`` and the swept ``params`` (keywords bound with
            ``functools.partial`` stay as bound: ``partial(DigitsDataModule, seed=0)`` keeps one split).
        datamodule: factory of the ``LightningDataModule`` (same rule), or ``None`` when the
            model has its own dataloaders.
        deficit: what to put in each window: a ``WindowedDeficit`` used as a template (e.g.
            ``lc.InputDeficit("blur", window=(0, 1))``, rebuilt for each run's window with
            ``with_window``), a callable ``window -> Callback | list[Callback]`` (e.g. returning a
            ``TaskSwitch``), or a list of these. Seed rule, the same for every form (and the
            CLI): a deficit draws with the run's seed unless ``seed=`` was fixed explicitly (given
            to its constructor, or bound by a ``functools.partial``); see
            :func:`~lightning_critical.sweep.spec.make_deficit`.
        windows: a grid from :func:`~lightning_critical.sweep.removal`,
            :func:`~lightning_critical.sweep.sliding` or :func:`~lightning_critical.sweep.windows`,
            or a list of windows; the no-deficit baseline is always included.
        metrics: final metrics: names in ``trainer.callback_metrics``, or functions
            ``(trainer, module) -> dict[str, float]``, or a list of both.
        trainer: ``pl.Trainer`` arguments; ``max_epochs`` is required (unless the grid sets
            every run's length). Quiet defaults (no progress bar, no model summary, no sanity
            check) apply unless given. The sweep owns ``callbacks`` and ``default_root_dir``, and
            sets ``logger`` (``False`` = ``tensorboard=False``) and checkpointing (branch points only).
        seeds: integer seeds; each run calls ``pl.seed_everything(seed)`` before its factories.
        params: other swept values: ``{"name": [values]}`` (cartesian product) or a list of
            dicts; each name must be an argument of a factory. They become table columns.
        callbacks: factory of extra callbacks (e.g. monitors), fresh for every run; a factory that
            names a ``windows`` argument also receives the run's windows (``()`` for the baseline),
            e.g. to overlay a theory that depends on them.
        test: also run ``trainer.test`` after training (for metrics such as ``test_acc``).
        out: the sweep's directory (results, per-run TensorBoard logs, checkpoints). One live
            sweep per directory: a second call on an ``out`` in use is refused at once, naming
            the owner's pid and host (:mod:`lightning_critical.sweep.lock`).
        backend: ``"process"`` (local worker processes, spawned), ``"serial"`` (this process),
            ``"ray"`` (``pip install "lightning-critical[ray]"``), or any
            ``concurrent.futures.Executor`` (e.g. ``submitit.AutoExecutor`` for SLURM; ``out``
            must then be on storage the workers share). Results are identical whatever the backend.
        workers: worker processes of ``"process"`` (default: one per core, at most one per run;
            with one worker the runs execute in this process).
        threads_per_run: intra-op threads of every run, whatever the backend.
        share_prefixes: ``False`` trains every run from scratch.
        steps_per_epoch: optimizer steps per epoch, if known; lets step-unit windows share
            prefixes (checked in every run).
        progress: a progress bar over runs (default: when stderr is a terminal).
        save_model: also write every run's final weights to ``<out>/models/<label>.pt``.
        tensorboard: per-run TensorBoard logs with hparams (window, seed, swept values) and
            final metrics, under ``<out>/tensorboard/<label>`` (default: when the runner supports it).
            ``callbacks``, ``test``, ``save_model`` and ``tensorboard`` are refused with a runner
            that does not honour them (its ``supports``), rather than ignored.
        plot: write the critical-period curve of the first metric (or of the metric named here) to
            ``<out>/critical_period.png`` and to TensorBoard (``<out>/tensorboard/summary``).
        keep_checkpoints: keep the branch checkpoints after their runs finished.
        backend_options: keyword arguments of the backend (e.g. Ray's resources).
        runner: what trains the runs (:mod:`lightning_critical.sweep.runners`): ``None`` fits one
            ``pl.Trainer`` per run; ``lc.sweep.FactorizationEnsembleRunner()`` trains all runs of
            one seed and swept values as one vectorized ensemble; or any object with the runner
            interface. The table, store, resume and summary are the same whatever the runner.
        errors: ``"record"`` (default): a run that raises is a ``"failed"`` row and the sweep goes
            on; ``"raise"``: after the sweep (finished runs saved), re-raise the first failed run's
            exception (for callers that need one run's result or an error, e.g. the bundled
            experiments).
        preflight: check before training what would otherwise fail or mislead only after it
            (:mod:`lightning_critical.sweep.preflight`): ``test=True`` without ``test_step`` or test
            dataloader, a deficit that ignores its window, and metric names, by a trial fit of one
            run for one training and one validation batch (isolated: it changes no run's numbers;
            skipped when every run has finished). ``False`` skips these checks (e.g. for a metric
            logged only later in training).
        resume: what to do when ``out`` holds results of a sweep whose identity differs (its
            arguments, the user code it ran, e.g. an edited model class, or the versions of torch,
            Lightning, numpy or this package): ``"refuse"`` (default) raises, listing what changed;
            ``"rerun"`` trains every run again (the old results are set aside in
            ``<out>/replaced/<old identity>/``); ``"reuse"`` keeps the old finished runs as this
            sweep's results (their rows say ``reused_from``; ``sweep.json`` records the takeover).
            Every call prints on stderr how many runs were already done and from where.
        verify: the exactness audit (:mod:`lightning_critical.sweep.audit`): retrain branched
            runs from scratch and compare final weights and metrics (bitwise on CPU, a relative
            tolerance on accelerators). ``"first"`` (default): the branched run most at risk,
            chosen from the plan: the deepest branch point, then a run whose length differs
            from its parent's, then grid order (the next in that order if it is refused or
            fails); an integer ``n``: the ``n`` most at risk; ``"all"``; ``False`` /
            ``"none"``: no audit. An audit done in an earlier call on the same ``out`` counts. A
            difference (a tensor or a metric: metrics must be functions of the training) stops
            sharing for the rest of the sweep, the audited row takes the from-scratch results,
            and a warning names the run and the difference.

    Returns:
        A ``DataFrame`` with one row per run of this call, in grid order: run_id, label, window,
        window_start, window_end (NaN for the baseline), unit, baseline, seed, deficit_seed (the
        seed its deficits drew with; ``<NA>`` for the baseline), the swept values,
        the metrics, status (``"ok"`` / ``"failed"``), error, audit (``None``, ``"equal"`` or
        ``"differs: ..."``), branch_refused (why a run that could have branched trained from
        scratch), seconds, epochs, epochs_trained (after the branch point), branch_epoch,
        parent, log_dir, reused_from. ``table.attrs`` holds ``epochs_trained`` and
        ``epochs_independent`` (what training every run from scratch would cost), ``runs_done``
        (runs of this call already done before it: reused), ``runs_to_train``, ``reused_from``
        (the identity whose results were taken over, or ``None``) and ``audit`` (runs audited,
        passed, seconds spent, whether sharing stopped). :func:`~lightning_critical.sweep.summarize`
        adds means, standard errors and drops versus the baseline.

    Raises:
        ValueError / TypeError: bad arguments, before any training (the message names the
            argument and what is valid); an out directory holding a different sweep; a metric
            name the pre-flight trial fit (or, with ``preflight=False``, the first finished run)
            did not produce (the message lists what it produced).
        lightning_critical.sweep.preflight.PreflightError: the pre-flight trial fit raised (its
            exception is the cause), before any run trained.
        ImportError: ``backend="ray"`` without Ray installed.
        KeyboardInterrupt: on Ctrl-C, after stopping the workers (finished runs are saved).

    Example (a tiny removal sweep of a blur deficit on the bundled digits CNN)::

        >>> import tempfile, lightning_critical as lc
        >>> table = lc.sweep.run(
        ...     lambda seed: lc.models.SmallCNN(channels=(4, 8), seed=seed),
        ...     lambda: lc.data.DigitsDataModule(subset=64, batch_size=32),
        ...     deficit=lc.InputDeficit("blur", window=(0, 1), factor=4),
        ...     windows=lc.sweep.removal([1]), metrics="val_acc", trainer={"max_epochs": 2, "accelerator": "cpu"},
        ...     out=tempfile.mkdtemp(), backend="serial", tensorboard=False, plot=False)
        >>> table[["window", "status", "epochs", "epochs_trained"]].values.tolist()
        [['none', 'ok', 2, 2], ['[0, 1) epochs', 'ok', 2, 2]]
    """
    runner = check_runner(runner)
    check_choice("errors", errors, ("record", "raise"))
    check_choice("resume", resume, RESUME, extra=" (what to do with results of a sweep whose identity differs)")
    audit_limit = check_verify(verify)
    supported = getattr(runner, "supports", RUNNER_OPTIONS)
    if tensorboard is None:
        tensorboard = "tensorboard" in supported
    asked = {"callbacks": callbacks is not None, "test": bool(test), "save_model": bool(save_model),
             "tensorboard": bool(tensorboard)}
    refused = [name for name, on in asked.items() if on and name not in supported]
    if refused:
        raise ValueError(f"runner {runner.name!r} does not support {refused} (it would ignore them silently); "
                         f"it supports {sorted(supported)}. Leave them out, or use the default Lightning runner.")
    grid = as_grid(windows)
    seed_list = _check_seeds(seeds)
    combos = check_params(params)
    metric_list = _check_metrics(metrics)
    check_columns(sorted({k for combo in combos for k, _ in combo}), [m for m in metric_list if isinstance(m, str)])
    trainer_kwargs = _check_trainer(trainer, grid)
    if trainer_kwargs.get("logger") is False:
        tensorboard = False
    threads = check_int("threads_per_run", threads_per_run, low=1)
    check_int("workers", workers, low=1, allow_none=True)
    check_int("steps_per_epoch", steps_per_epoch, low=1, allow_none=True)
    _check_windows_fit(grid, trainer_kwargs["max_epochs"], steps_per_epoch)  # _check_trainer sets it
    if isinstance(plot, str) and all(isinstance(m, str) for m in metric_list):
        check_choice("plot", plot, metric_list, extra=" (the sweep's metrics) or True / False")
    _check_callables(model, datamodule, deficit, callbacks)
    spec = SweepSpec(
        model=model, datamodule=datamodule, deficit=deficit, callbacks=callbacks, trainer=trainer_kwargs,
        metrics=tuple(metric_list), test=bool(test), threads_per_run=threads, steps_per_epoch=steps_per_epoch,
        save_model=bool(save_model), tensorboard=bool(tensorboard),
        runner=None if type(runner) is LightningRunner else runner,  # a subclass is part of the identity
    )
    runs = [RunSpec(entry.windows, seed, combo, entry.max_epochs)
            for entry in grid for combo in combos for seed in seed_list]
    _check_params_used(spec, combos)
    description = spec.describe(_check_builds(spec, runs))  # the built classes' code is part of the identity
    identity = identity_of(description)
    run_ids = [r.run_id(identity) for r in runs]
    labels = _labels(runs, run_ids)
    epochs = {rid: (r.max_epochs or spec.max_epochs) for r, rid in zip(runs, run_ids, strict=True)}

    store = Store(os.fspath(out))
    latest = store.latest() if os.path.exists(os.path.join(store.out, IDENTITY)) else {}
    todo = [i for i, rid in enumerate(run_ids) if latest.get(rid, {}).get("status") != "ok"]
    n_workers = workers or min(_backends.default_workers(), max(1, len(todo)))
    if backend == "process" and n_workers == 1:
        backend = "serial"  # one worker: no process to spawn, same results
    chosen = _backends.resolve_backend(backend, n_workers, threads, dict(backend_options or {}))
    if chosen.needs_pickling:
        _workers.check_main_guard(chosen)
        _check_picklable(spec, chosen.name)
    if preflight:
        _preflight.preflight(spec, runs, trial=bool(todo))
    fields = {rid: {**run_fields(r, rid, labels[rid], epochs[rid]), "sweep": identity}
              for r, rid in zip(runs, run_ids, strict=True)}

    def rekey(old_identity: str) -> dict[str, dict[str, Any]]:  # resume="reuse": old run id -> this run's fields
        return {r.run_id(old_identity): fields[rid] for r, rid in zip(runs, run_ids, strict=True)}

    takeover = _claim(store, identity, description, resume, rekey)
    latest = store.latest()
    auditor = Audit(audit_limit if isinstance(runner, LightningRunner) else 0, store.out, latest)
    pending = [i for i in range(len(runs)) if latest.get(run_ids[i], {}).get("status") != "ok"]
    reuse_note = report_reuse(os.fspath(out), identity, len(runs), len(pending), takeover)
    if pending:
        store.note_plan(plan_axes([fields[rid] for rid in run_ids]), identity)  # load() returns rows in this order
        items = []
        for i in pending:
            r, rid = runs[i], run_ids[i]
            group = short_hash({"sweep": identity, "seed": r.seed, "params": r.encode()["params"]})
            items.append(PlanItem(rid, group, epochs[rid], schedule_tokens(r.windows, epochs[rid], steps_per_epoch)))
        sharing = bool(share_prefixes) and bool(runner.shares_prefixes)
        plan = make_plan(items, share_prefixes=sharing, available=store.available_checkpoints() if sharing else {})
        by_id = {rid: r for r, rid in zip(runs, run_ids, strict=True)}
        kind = grid.kind
        log_dirs = {rid: (os.path.join(store.out, "tensorboard", labels[rid]) if tensorboard else None)
                    for rid in run_ids}

        def make_task(node: Any) -> Task:
            return Task(
                spec, by_id[node.run_id], node.run_id, labels[node.run_id], store.out, node.epochs,
                branch_epoch=node.branch_epoch,
                resume_path=store.checkpoint_path(node.resume_key) if node.resume_key else None,
                save_paths={k: store.checkpoint_path(key) for k, key in node.save_keys.items()},
                parent=node.parent, sweep_kind=kind,
            )

        # plan order when sharing prefixes (a parent before its branches), else grid order (windows, params, seeds)
        position = {rid: i for i, rid in enumerate(run_ids)}
        order = plan.nodes if runner.shares_prefixes else sorted(plan.nodes, key=lambda n: position[n.run_id])
        batches = job_groups(runner, [make_task(n) for n in order])

        def make_job(nodes: list[Any]) -> Job:  # every unit of work: the runner's run(tasks), default runner too
            return Job(runner, [make_task(n) for n in nodes])

        scheduler = Scheduler(plan, make_job, store, chosen, fields, log_dirs, progress, keep_checkpoints,
                              batches=batches, audit=auditor)
        with _namespace.exported():
            scheduler.run()
        latest = store.latest()
        if errors == "raise" and scheduler.first_exception is not None:
            raise _failures.materialize(scheduler.first_exception)
        if errors == "raise":
            failed = [latest[rid] for rid in run_ids if latest.get(rid, {}).get("status") == "failed"]
            if failed:
                raise _failures.RunFailed(f"run {failed[0].get('label')} failed: {failed[0].get('error')}")
    else:
        chosen.close(cancel=False)

    records = [latest.get(rid, {**fields[rid], "status": "pending"}) for rid in run_ids]
    table = to_table(records, params=[k for k, _ in combos[0]], metrics=_metric_names(metric_list, records))
    table.attrs.update(_totals(table), sweep=identity, kind=grid.kind, out=store.out, **reuse_note,
                       audit=auditor.summary(records, verify))
    auditor.report(table.attrs["audit"])
    report = _failures.failure_report(table)
    if report is not None:
        warnings.warn(report, _failures.FailedRunsWarning, stacklevel=2)
    if all(table["status"] == "ok") and not keep_checkpoints:
        store.remove_all_checkpoints()
    if plot and (table["status"] == "ok").any() and table.attrs["metrics"]:
        metric = plot if isinstance(plot, str) else table.attrs["metrics"][0]
        if metric in table.attrs["metrics"]:
            _write_figure(table, metric, store.out, tensorboard)
        else:
            warnings.warn(
                f"plot={plot!r} is not one of the sweep's metrics {table.attrs['metrics']}: no figure written.",
                stacklevel=2)
    return table


def load(out: str | os.PathLike) -> pd.DataFrame:
    """The table of every run recorded in a sweep directory (the latest result of each run), in plan order.

    Plan order is the grid order of the calls that trained the runs (windows, swept values,
    seeds; see :mod:`lightning_critical.sweep.table`). Needs no lock: it can read a sweep
    while another process runs it.

    Example::

        >>> import tempfile
        >>> load(tempfile.mkdtemp()).empty
        True
    """
    store = Store(os.fspath(out))
    records = list(store.latest().values())
    records = order_records(records, store.plans({str(r.get("sweep")) for r in records}))
    table = to_table(records)
    table.attrs.update(_totals(table), out=store.out)
    return table


# -- checks (all before any training) ------------------------------------------------------
def _check_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) and not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds={seeds!r} is not valid: give a list of integer seeds, e.g. seeds=[0, 1, 2].")
    values = list(seeds)
    if not values:
        raise ValueError("seeds=[] is empty: give at least one integer seed.")
    out = [check_seed(f"seeds[{i}]", s) for i, s in enumerate(values)]
    repeated = sorted({s for s in out if out.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds={values!r} repeats {repeated}: give each seed once.")
    return out


def _check_metrics(metrics: Any) -> list[Any]:
    items = [metrics] if isinstance(metrics, str) or callable(metrics) else metrics
    if isinstance(items, (bytes, Mapping)) or not isinstance(items, Sequence) or not items:
        raise ValueError(
            f"metrics={metrics!r} is not valid: give a metric name (from trainer.callback_metrics), a function "
            "(trainer, module) -> dict, or a non-empty list of them."
        )
    for item in items:
        if not (isinstance(item, str) and item) and not callable(item):
            raise ValueError(
                f"metrics entry {item!r} is not valid: give a name or a function (trainer, module) -> dict.")
    return list(items)


def _check_trainer(trainer: Any, grid: WindowGrid) -> dict[str, Any]:
    if not isinstance(trainer, Mapping):
        raise ValueError(
            f"trainer={trainer!r} is not valid: give a dict of pl.Trainer arguments, e.g. {{'max_epochs': 20}}.")
    kwargs = dict(trainer)
    reserved = [k for k in RESERVED_TRAINER if k in kwargs]
    if reserved:
        raise ValueError(
            f"trainer= may not set {reserved}: the sweep owns them (pass extra callbacks with callbacks=; "
            "every run writes under <out>)."
        )
    check_choice("trainer['logger']", kwargs.get("logger", True), (True, False),
                 extra=" (every run logs to its own TensorBoard directory under <out>/tensorboard; "
                       "or pass tensorboard=False)")
    for key in ("enable_checkpointing", "enable_autolog_hparams"):
        kwargs.pop(key, None)  # set by the sweep (branch checkpoints; hparams logged once at the end)
    for key in ("max_steps", "max_time"):
        if kwargs.get(key) not in (None, -1):
            raise ValueError(f"trainer[{key!r}]={kwargs[key]!r} is not supported by sweeps: give max_epochs.")
    if "max_epochs" in kwargs:
        kwargs["max_epochs"] = check_int("trainer['max_epochs']", kwargs["max_epochs"], low=1)
    elif any(e.max_epochs is None for e in grid):
        raise ValueError("trainer= needs max_epochs (how long every run trains), e.g. trainer={'max_epochs': 20}.")
    else:
        kwargs["max_epochs"] = max(e.max_epochs for e in grid)
    return kwargs


def _check_windows_fit(grid: WindowGrid, max_epochs: int, steps_per_epoch: int | None) -> None:
    for entry in grid:
        epochs = entry.max_epochs or max_epochs
        for w in entry.windows:
            if w.unit == "epoch":
                limit, what = epochs, f"max_epochs={epochs}"
            elif steps_per_epoch is not None:
                limit, what = epochs * steps_per_epoch, f"the run's {epochs * steps_per_epoch} steps"
            else:
                continue
            if w.start >= limit or (w.end is not None and w.end > limit):
                raise ValueError(
                    f"window {w} does not fit in training ({what}): every window must end by the end of training. "
                    "Raise max_epochs or drop the window."
                )


def _check_callables(model: Any, datamodule: Any, deficit: Any, callbacks: Any) -> None:
    if not callable(model) or _is_instance_of_lightning(model):
        raise TypeError(
            f"model={model!r} is not valid: give a factory (a LightningModule class or a function returning one), "
            "not a model instance: every run builds a fresh model."
        )
    if datamodule is not None and (not callable(datamodule) or _is_instance_of_lightning(datamodule)):
        raise TypeError(
            f"datamodule={datamodule!r} is not valid: give a factory (a LightningDataModule class or a function "
            "returning one), or None."
        )
    makers = deficit if isinstance(deficit, (list, tuple)) else [deficit]
    if not makers:
        raise ValueError("deficit=[] is empty: give the deficit to place in each window.")
    for maker in makers:
        if not isinstance(maker, WindowedDeficit) and not callable(maker):
            raise TypeError(
                f"deficit={maker!r} is not valid: give a WindowedDeficit (e.g. lc.InputDeficit('blur', window=(0, 1)), "
                "used as a template), a callable window -> Callback | list[Callback], or a list of these."
            )
    if callbacks is not None and (not callable(callbacks) or isinstance(callbacks, (list, tuple))):
        raise TypeError(
            f"callbacks={callbacks!r} is not valid: give a factory returning a list of callbacks "
            "(e.g. lambda: [lc.SpectralMonitor()]), so every run gets fresh ones."
        )


def _is_instance_of_lightning(obj: Any) -> bool:
    return isinstance(obj, (pl.LightningModule, pl.LightningDataModule))


def _check_params_used(spec: SweepSpec, combos: list[Any]) -> None:
    names = {k for combo in combos for k, _ in combo}
    factories = [f for f in (spec.model, spec.datamodule, spec.callbacks) if f is not None]
    makers = spec.deficit if isinstance(spec.deficit, (list, tuple)) else [spec.deficit]
    factories += [m for m in makers if callable(m)]
    for name in sorted(names):
        if not any(name in accepted_kwargs(f, {name: None}) for f in factories):
            raise ValueError(
                f"params[{name!r}] is not an argument of any factory (model {describe(spec.model)}, datamodule "
                f"{describe(spec.datamodule)}, deficit, callbacks): a swept value must reach the run."
            )


def _check_picklable(spec: SweepSpec, backend_name: str) -> None:
    for name in ("model", "datamodule", "deficit", "callbacks", "metrics", "trainer", "runner"):
        value = getattr(spec, name)
        try:
            units.dumps(value)
        except Exception as err:
            raise TypeError(
                f"{name}={value!r} cannot be sent to the {backend_name} backend's worker processes "
                f"({type(err).__name__}: {err}). Define it at module level or with functools.partial "
                "(or install cloudpickle for lambdas), or use backend='serial'."
            ) from None


def _check_builds(spec: SweepSpec, runs: list[RunSpec]) -> dict[str, list[type]]:
    """Build the first run's model, datamodule, deficits and callbacks once, to catch wrong types before training.

    Returns the built objects' classes per role (their code joins the sweep's identity).
    """
    with isolated(spec.threads_per_run), quiet():
        built = {"model": [type(spec.build_model(runs[0]))],
                 "datamodule": [type(spec.build_datamodule(runs[0]))],
                 "callbacks": [type(c) for c in spec.build_callbacks(runs[0])]}
        with_window = next((r for r in runs if r.windows), None)
        if with_window is not None:
            built["deficit"] = [type(c) for c in spec.build_deficits(with_window)]
    return built


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


def _labels(runs: list[RunSpec], run_ids: list[str]) -> dict[str, str]:
    labels = [r.label() for r in runs]
    folded = [label.casefold() for label in labels]  # "A" and "a" are one directory on macOS and Windows
    out = {}
    for label, fold, rid in zip(labels, folded, run_ids, strict=True):
        out[rid] = label if folded.count(fold) == 1 else f"{label}_{rid[:6]}"
    return out


def _metric_names(metrics: list[Any], records: list[dict[str, Any]]) -> list[str]:
    names = [m for m in metrics if isinstance(m, str)]
    for record in records:
        for key in (record.get("metrics") or {}):
            if key not in names:
                names.append(key)
    return names


def _totals(table: pd.DataFrame) -> dict[str, int]:
    ok = table[table["status"] == "ok"]
    return {
        "epochs_trained": int(pd.to_numeric(ok["epochs_trained"], errors="coerce").fillna(0).sum()),
        "epochs_independent": int(pd.to_numeric(ok["epochs"], errors="coerce").fillna(0).sum()),
    }


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

"""``lc.sweep.run``: a whole critical-period study in one call, resumable, sharing prefixes, on any backend.

``run`` is the convenience form of :func:`~lightning_critical.sweep.session.run_study`: its
keywords are the fields of the option groups :class:`~lightning_critical.sweep.study.Study`,
:class:`~lightning_critical.sweep.study.Execution` and :class:`~lightning_critical.sweep.study.Output`,
which it builds (checking every argument) and hands to ``run_study``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from lightning_critical.sweep.session import run_study, totals
from lightning_critical.sweep.store import Store
from lightning_critical.sweep.study import Execution, MetricsArg, Output, Study
from lightning_critical.sweep.table import order_records, to_table


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

    The same sweep in option groups: ``lc.sweep.run_study(lc.sweep.Study(model, datamodule,
    deficit=..., windows=..., metrics=..., trainer=..., seeds=..., params=..., callbacks=..., test=...,
    steps_per_epoch=...), lc.sweep.Execution(backend=..., workers=..., threads_per_run=...,
    share_prefixes=..., backend_options=..., runner=..., errors=..., preflight=..., resume=...,
    verify=..., progress=...), lc.sweep.Output(out=..., save_model=..., tensorboard=..., plot=...,
    keep_checkpoints=...))`` (:mod:`lightning_critical.sweep.study`). The groups are checked when
    made; ``run`` builds them from its keywords.

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
            :func:`~lightning_critical.sweep.build.make_deficit`.
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
            dicts; each name must be an argument of a factory, or ``deficit.<argument>``
            (``deficit.<index>.<argument>`` in a list) for an argument of a template deficit, e.g.
            ``{"deficit.factor": [2, 4]}`` (:mod:`lightning_critical.sweep.params`). They become
            table columns. A value that reaches only the deficit leaves the baseline unchanged:
            it trains once per seed, its row ``<NA>`` in that column.
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
    study = Study(model, datamodule, deficit=deficit, windows=windows, metrics=metrics, trainer=trainer, seeds=seeds,
                  params=params, callbacks=callbacks, test=test, steps_per_epoch=steps_per_epoch)
    execution = Execution(backend=backend, workers=workers, threads_per_run=threads_per_run,
                          share_prefixes=share_prefixes, backend_options=backend_options, runner=runner, errors=errors,
                          preflight=preflight, resume=resume, verify=verify, progress=progress)
    output = Output(out=out, save_model=save_model, tensorboard=tensorboard, plot=plot,
                    keep_checkpoints=keep_checkpoints)
    return run_study(study, execution, output)


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
    table.attrs.update(totals(table), out=store.out)
    return table

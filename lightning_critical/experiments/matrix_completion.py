"""Deep matrix completion with a task switch: the transfer critical period (paper, Fig. 6).

Pre-train a depth-``N`` factorization on a rank-``pretrain_rank`` completion task, switch to a
rank-``target_rank`` task observed at the same positions at ``switch_epoch``, train
``continue_epochs`` more, and report the final test loss on the target. Depth 1 does not care
when the switch comes; deeper nets pre-trained too long never recover.

Every sweep is the :class:`~lightning_critical.sweep.Study` of
:func:`~lightning_critical.experiments.matrix_completion_study.switch_sweep_study` run by
:func:`lightning_critical.sweep.run_study` and read back by :func:`switch_table`. It trains
*one* :class:`~lightning_critical.models.factorization_ensemble.FactorizationEnsemble` per seed
and swept value, whose members are the switch epochs of the grid: they share the pre-training trunk, fork at
their switch (driven by one public :class:`~lightning_critical.TaskSwitch` per member) and run
batched, many SGD steps per Lightning step. The result equals one run per switch epoch
(``tests/test_matrix_completion_sweep.py`` checks it against sequential Trainer runs).

An "epoch" here is one full-batch SGD step, as in the paper. A switch at epoch ``T`` means
``T`` steps on the pre-training task, then ``continue_epochs`` steps on the target (the paper's
script takes one more pre-training step, ``T + 1``; the difference is invisible in the figure).

The per-record history (:func:`matrix_completion_trajectories`) is read back from the same
table: the ensemble runner writes each run's records into its ``log_dir``
(:func:`switch_history`).

This module runs the studies and returns tables; the theory is :func:`lightning_critical.theory.switch_theory`,
the figures are :mod:`lightning_critical.plots.matrix_completion`, files are written by
:mod:`lightning_critical._output` and the command line is ``lightning-critical matrix-completion``
(:mod:`lightning_critical.cli`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch

from lightning_critical._checks import check_choice, check_int
from lightning_critical._output import write_outputs
from lightning_critical.experiments._sweep_dir import sweep_dir
from lightning_critical.experiments.matrix_completion_study import (
    PAPER_DEPTHS,
    PAPER_SWITCH_EPOCHS,
    SWEEP_DEFAULTS,
    SWEEP_PARAMETERS,
    build_switch_ensemble,
    check_arguments,
    completion_data,
    pretrain_until,
    switch_sweep_execution,
    switch_sweep_study,
)
from lightning_critical.history import read_history
from lightning_critical.plots.matrix_completion import plot_critical_period, plot_singular_value_trajectories
from lightning_critical.schedule import largest_common_divisor
from lightning_critical.sweep import Output, run_study
from lightning_critical.sweep.runners.ensemble import HISTORY_FILE

__all__ = [
    "PAPER_DEPTHS", "PAPER_SWITCH_EPOCHS", "SWEEP_PARAMETERS", "build_switch_ensemble", "completion_data",
    "matrix_completion_parameter_sweep", "matrix_completion_sweep", "matrix_completion_table",
    "matrix_completion_trajectories", "pretrain_until", "reproduce_figure", "switch_history", "switch_table",
]


def matrix_completion_sweep(
    depth: int = 3,
    switch_epochs: Sequence[int] = PAPER_SWITCH_EPOCHS,
    continue_epochs: int = 30000,
    size: int = 100,
    n_observed: int = 2000,
    pretrain_rank: int = 10,
    target_rank: int = 5,
    init_scale: float = 1e-3,
    lr: float = 0.2,
    seed: int = 0,
    *,
    init: str = "gaussian",
    pretrain_observed: int | None = None,
    sgd_steps_per_epoch: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    logger: Any = False,
    num_threads: int | None = 1,
    return_history: bool = False,
    accelerator: str = "auto",
    out: str | os.PathLike | None = None,
    tensorboard: bool = False,
) -> Any:
    """Final target test loss against switch epoch, all switch epochs trained as one ensemble.

    :func:`~lightning_critical.experiments.matrix_completion_study.switch_sweep_study` through
    :func:`lightning_critical.sweep.run_study`, read back by :func:`switch_table` (and the
    history by :func:`switch_history`, from each run's history file named in the table).

    Args:
        depth: number of factors (1, 2, 3 in the paper).
        switch_epochs: epochs (full-batch SGD steps) of pre-training before the switch.
        continue_epochs: epochs on the target task after the switch.
        size, n_observed: ``size x size`` matrices, ``n_observed`` observed positions.
        pretrain_rank, target_rank: ranks of the pre-training and target ground truths.
        init_scale, lr, seed, init: as in :class:`~lightning_critical.models.DeepMatrixFactorization`.
        pretrain_observed: if given, the "fewer examples" deficit replaces the pre-training
            task: pre-train on the first ``pretrain_observed`` observations of the target
            (``pretrain_rank`` is then unused).
        sgd_steps_per_epoch: SGD steps per Lightning step (default: the largest divisor of all
            times up to 1000).
        dtype: float32 (default) or float64.
        progress: the sweep's progress bar.
        logger: deprecated (the engine owns the loggers: use ``out`` and ``tensorboard=True``).
            A Lightning logger given here still receives every member's test loss
            (``test_loss/member<k>``, ``k`` the position in ``switch_epochs``), replayed from the
            runs' histories after the sweep at their SGD step, with a ``DeprecationWarning``.
        num_threads: torch intra-op threads while training (restored afterwards); ``None``
            keeps the current setting. One thread is the robust choice for these small
            matrices; run several sweeps in parallel processes to use more cores.
        return_history: also return the per-record history (test/train loss, task, singular values).
        accelerator: where to train, as in ``pl.Trainer`` (one device); ``"auto"`` leaves the
            choice to Lightning (``PL_TRAINER_ACCELERATOR``, else the best available device).
        out: keep the sweep's directory there (each run's history file and logs, resumable);
            by default a temporary one, removed on return.
        tensorboard: write each run's records as TensorBoard scalars under
            ``<out>/tensorboard/<run label>`` (needs ``out``).

    Returns:
        ``DataFrame`` with one row per switch epoch: ``depth, switch_epoch, test_loss,
        train_loss, sgd_steps, singular_values/0 ... singular_values/9`` (the final singular
        values) and the sweep's settings; with ``return_history`` a pair ``(results, history)``
        where the history is the ensemble's records in the monitors' long format, one member per
        switch epoch: ``depth, switch_epoch, step, metric, index, value`` with ``step`` the SGD
        steps (epochs) done and ``metric`` one of ``test_loss``, ``train_loss``, ``task`` (the
        index of the task trained, in the datamodule's ``tasks``) and ``singular_values``.

    Raises:
        ValueError: for any invalid argument, before training.

    Example::

        >>> df = matrix_completion_sweep(depth=1, switch_epochs=[0, 200], continue_epochs=200,
        ...                              size=10, n_observed=40, pretrain_rank=3, target_rank=1, lr=5.0)
        >>> list(df.columns[:3]), len(df)
        (['depth', 'switch_epoch', 'test_loss'], 2)
    """
    job: dict[str, Any] = dict(depth=depth, switch_epochs=list(switch_epochs), continue_epochs=continue_epochs,
                               size=size, n_observed=n_observed, pretrain_rank=pretrain_rank, target_rank=target_rank,
                               init_scale=init_scale, lr=lr, seed=seed, init=init, pretrain_observed=pretrain_observed,
                               sgd_steps_per_epoch=sgd_steps_per_epoch, dtype=dtype, num_threads=num_threads,
                               accelerator=accelerator)
    k = check_arguments(job)
    if tensorboard and out is None:
        raise ValueError("tensorboard=True needs out=<directory>: the logs are written there (the default "
                         "directory is temporary).")
    replay = logger not in (False, None)
    if replay:
        warnings.warn("matrix_completion_sweep(logger=...) is deprecated: the sweep's engine owns the loggers; pass "
                      "out=<directory>, tensorboard=True for every run's logs, or return_history=True. The logger "
                      "gets the members' test losses replayed from the runs' histories.", DeprecationWarning,
                      stacklevel=2)
    execution = switch_sweep_execution(1, 1, k, dtype, num_threads, progress)
    with sweep_dir(out) as directory:
        table = run_study(switch_sweep_study(**job), execution,
                          Output(out=directory, tensorboard=bool(tensorboard), plot=False))
        results = switch_table(table, None, [job]).drop(columns="seconds")
        history = switch_history(table, job) if return_history or replay else None
    if replay:
        replay_test_losses(logger, history, job["switch_epochs"])
    return (results, history) if return_history else results


def switch_history(table: pd.DataFrame, job: dict[str, Any]) -> pd.DataFrame:
    """The history of one switch sweep (``job``: its arguments) read back from its ``table``.

    Each run's records are its history file in its ``log_dir``
    (:data:`~lightning_critical.sweep.runners.ensemble.HISTORY_FILE`); they are stacked in the
    order the ensemble took them (by step, then switch epoch in ``switch_epochs`` order) in the
    columns of :func:`matrix_completion_sweep`'s history: ``depth, switch_epoch, step, metric,
    index, value``.
    """
    rows = _rows_by_switch(table[table["seed"] == job["seed"]])
    frames = []
    for member, switch in enumerate(job["switch_epochs"]):
        frame = read_history(os.path.join(str(rows.loc[switch, "log_dir"]), HISTORY_FILE))
        frames.append(frame.assign(member=member, switch_epoch=switch, taken=range(len(frame))))
    hist = pd.concat(frames, ignore_index=True).sort_values(["step", "member", "taken"], ignore_index=True)
    switch_epoch = hist.pop("switch_epoch")
    hist.insert(0, "switch_epoch", switch_epoch)
    hist.insert(0, "depth", job["depth"])
    # a Lightning epoch of the ensemble is a chunk of SGD steps; the paper's epochs are the steps
    return hist.drop(columns=["member", "taken", "target", "epoch"])


def replay_test_losses(logger: Any, history: pd.DataFrame, switch_epochs: Sequence[int]) -> None:
    """Log every member's ``test_loss/member<k>`` of ``history`` to ``logger`` (the deprecated ``logger=``)."""
    members = {switch: k for k, switch in enumerate(switch_epochs)}
    losses = history[history["metric"] == "test_loss"]
    for step, rows in losses.groupby("step", sort=True):
        logger.log_metrics({f"test_loss/member{members[s]}": float(v)
                            for s, v in zip(rows["switch_epoch"], rows["value"], strict=True)}, step=int(step))
    logger.save()
    logger.finalize("success")


def matrix_completion_parameter_sweep(
    parameter: str, values: Iterable[Any], processes: int = 1, *, out: str | os.PathLike | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Run :func:`matrix_completion_sweep` for each value of one parameter and stack the tables.

    ``parameter`` is one of :data:`SWEEP_PARAMETERS`: ``"pretrain_rank"`` (the rank sweep),
    ``"pretrain_observed"`` (the number-of-observations sweep), ``"init_scale"``, ``"depth"``...
    The result has the same columns as one sweep (the parameter's own column tells the runs
    apart) plus ``seconds``, the wall time of each value's sweep.

    It is :func:`~lightning_critical.experiments.matrix_completion_study.switch_sweep_study`
    through :func:`lightning_critical.sweep.run_study` (the switch epochs x the values, one
    vectorized ensemble per value), read back by :func:`switch_table`. ``processes > 1`` trains
    that many values at once in the engine's worker processes (each single-threaded, one per
    core is best); the results are identical to ``processes=1``. ``out``: keep the sweep's
    directory there (resumable: finished values are not retrained); by default a temporary
    one. Other keywords: those of :func:`matrix_completion_sweep` (``progress``, ``logger``,
    ``return_history`` and ``tensorboard`` are not available here).

    Example::

        >>> df = matrix_completion_parameter_sweep("pretrain_rank", [1, 3], depth=1,
        ...     switch_epochs=[0], continue_epochs=100, size=10, n_observed=40, target_rank=1, lr=5.0)
        >>> sorted(df["pretrain_rank"])
        [1, 3]
    """
    check_choice("parameter", parameter, SWEEP_PARAMETERS)
    if parameter in kwargs:
        raise ValueError(f"{parameter!r} is swept; do not also pass it as a keyword.")
    values = list(values)
    if not values:
        raise ValueError(f"values for {parameter!r} are empty.")
    check_int("processes", processes, 1)
    unknown = sorted(set(kwargs) - set(SWEEP_DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown} are not arguments of the parameter sweep; valid: {sorted(SWEEP_DEFAULTS)}.")
    jobs = [{**SWEEP_DEFAULTS, **kwargs, parameter: v} for v in values]
    for job in jobs:  # every value's arguments are checked before anything trains
        check_arguments(job)
    fixed = jobs[0]
    study = switch_sweep_study(parameter, values, **kwargs)
    execution = switch_sweep_execution(processes, len(values), fixed["sgd_steps_per_epoch"], fixed["dtype"],
                                       fixed["num_threads"])
    with sweep_dir(out) as directory:
        table = run_study(study, execution, Output(out=directory, tensorboard=False, plot=False))
    return switch_table(table, parameter, jobs)


def switch_table(table: pd.DataFrame, parameter: str | None, jobs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows of a switch study's ``table`` in the columns of :func:`matrix_completion_sweep`, plus ``seconds``.

    One block per job (the sweep's arguments for one value of ``parameter``), one row per switch
    epoch in the order of its ``switch_epochs``; the baseline row is the switch at epoch 0, left
    out unless ``switch_epochs`` holds 0.
    """
    frames = []
    for job in jobs:
        column = "seed" if parameter in (None, "seed") else parameter
        rows = _rows_by_switch(table[table[column] == job[column]]).loc[list(job["switch_epochs"])]
        frames.append(_switch_frame(rows, job, table.attrs["metrics"]).assign(seconds=float(rows["seconds"].iloc[0])))
    return pd.concat(frames, ignore_index=True)


def _rows_by_switch(rows: pd.DataFrame) -> pd.DataFrame:
    """One value's rows indexed by their switch epoch (the baseline's is 0)."""
    switch = [0 if b else int(e) for b, e in zip(rows["baseline"], rows["window_end"], strict=True)]
    return rows.set_axis(pd.Index(switch, name="switch_epoch"))


def _switch_frame(rows: pd.DataFrame, job: dict[str, Any], metrics: list[str]) -> pd.DataFrame:
    """One value's rows in the columns of :func:`matrix_completion_sweep`."""
    frame = pd.DataFrame({
        "depth": job["depth"],
        "switch_epoch": [0 if b else int(e) for b, e in zip(rows["baseline"], rows["window_end"], strict=True)],
        "test_loss": rows["test_loss"].astype(float).to_numpy(),
        "train_loss": rows["train_loss"].astype(float).to_numpy(),
        "sgd_steps": rows["sgd_steps"].astype("int64").to_numpy(),
    })
    for name in metrics[3:]:
        frame[name] = rows[name].astype(float).to_numpy()
    for key, value in _settings(job).items():
        frame[key] = value
    return frame


def _settings(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "pretrain_rank": job["pretrain_rank"] if job["pretrain_observed"] is None else job["target_rank"],
        **{key: job[key] for key in ("target_rank", "n_observed", "pretrain_observed", "init_scale", "lr", "seed",
                                     "size", "init", "continue_epochs")},
    }


def matrix_completion_table(
    depths: Sequence[int] = PAPER_DEPTHS,
    switch_epochs: Sequence[int] = PAPER_SWITCH_EPOCHS,
    continue_epochs: int = 30000,
    processes: int | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """The table behind the paper's matrix-completion figure: one switch sweep per depth, stacked.

    Columns as in :func:`matrix_completion_parameter_sweep` (``seconds`` included); draw it with
    :func:`lightning_critical.plots.plot_critical_period`.

    ``processes``: how many depths train at once (default: one per CPU core, at most one per depth).
    """
    if processes is None:
        processes = max(1, min(len(depths), os.cpu_count() or 1))
    return matrix_completion_parameter_sweep(
        "depth", depths, processes=processes, switch_epochs=switch_epochs, continue_epochs=continue_epochs, **kwargs
    )


def matrix_completion_trajectories(
    depth: int = 3,
    switch_epochs: Sequence[int] = (5000, 40000),
    continue_epochs: int = 30000,
    record_every: int = 500,
    **kwargs: Any,
) -> pd.DataFrame:
    """Test loss and top singular values of ``W`` every ``record_every`` epochs around each switch.

    Returns the history table of :func:`matrix_completion_sweep` (long format: ``depth,
    switch_epoch, step, metric, index, value``).
    """
    _, hist = matrix_completion_sweep(
        depth, switch_epochs, continue_epochs, sgd_steps_per_epoch=record_every, return_history=True, **kwargs
    )
    return hist


def reproduce_figure(
    out_dir: str = "outputs/matrix_completion",
    depths: Sequence[int] = PAPER_DEPTHS,
    switch_epochs: Sequence[int] = PAPER_SWITCH_EPOCHS,
    continue_epochs: int = 30000,
    trajectories: Sequence[int] | None = None,
    verbose: bool = True,
    processes: int | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Train the figure's sweeps and write ``matrix_completion.csv`` / ``.png`` into ``out_dir``.

    ``trajectories``: switch epochs whose test-loss and singular-value trajectories (deepest
    depth, recorded every few hundred epochs) are written as ``singular_values.csv`` / ``.png``.
    ``processes``: see :func:`matrix_completion_table`. ``kwargs`` go to
    :func:`matrix_completion_sweep`. Returns ``{kind: path}``.
    """
    say = print if verbose else (lambda *a, **k: None)
    start = time.perf_counter()
    results = matrix_completion_table(depths, switch_epochs, continue_epochs, processes=processes, **kwargs)
    for depth, seconds in results.groupby("depth")["seconds"].first().items():
        say(f"depth {depth}: trained {len(switch_epochs)} switch epochs in {seconds:.1f} s", flush=True)
    say(f"figure trained in {time.perf_counter() - start:.1f} s", flush=True)
    # written before the trajectories train: the figure's hours are safe on disk if they fail
    paths = write_outputs(out_dir, tables={"csv": ("matrix_completion.csv", results)},
                          figures={"png": ("matrix_completion.png", plot_critical_period(results))})
    say(results.pivot(index="switch_epoch", columns="depth", values="test_loss").round(4).to_string())
    if trajectories:
        every = largest_common_divisor(list(trajectories) + [continue_epochs], cap=500)
        hist = matrix_completion_trajectories(max(depths), trajectories, continue_epochs, record_every=every, **kwargs)
        paths.update(write_outputs(
            out_dir, tables={"trajectories_csv": ("singular_values.csv", hist)},
            figures={"trajectories_png": ("singular_values.png", plot_singular_value_trajectories(hist))},
        ))
    for key, path in paths.items():
        say(f"wrote {key}: {path}")
    return paths

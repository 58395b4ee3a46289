"""Deep matrix completion with a task switch: the transfer critical period (paper, Fig. 6).

Pre-train a depth-``N`` factorization on a rank-``pretrain_rank`` completion task, switch to a
rank-``target_rank`` task observed at the same positions at ``switch_epoch``, train
``continue_epochs`` more, and report the final test loss on the target. Depth 1 does not care
when the switch comes; deeper nets pre-trained too long never recover.

Every sweep trains *one* :class:`~lightning_critical.models.factorization_ensemble.FactorizationEnsemble`
whose members are the switch epochs of the grid: they share the pre-training trunk, fork at
their switch (driven by one public :class:`~lightning_critical.TaskSwitch` per member) and run
batched, many SGD steps per Lightning step. The result equals one run per switch epoch
(``tests/test_matrix_completion_sweep.py`` checks it against sequential Trainer runs).

An "epoch" here is one full-batch SGD step, as in the paper. A switch at epoch ``T`` means
``T`` steps on the pre-training task, then ``continue_epochs`` steps on the target (the paper's
script takes one more pre-training step, ``T + 1``; the difference is invisible in the figure).

This module builds and trains the sweeps and returns tables; the parameter sweeps run on
:func:`lightning_critical.sweep.run`, the theory is :func:`lightning_critical.theory.switch_theory`,
the figures are :mod:`lightning_critical.plots.matrix_completion`, files are written by
:mod:`lightning_critical._output` and the command line is ``lightning-critical matrix-completion``
(:mod:`lightning_critical.cli`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch

from lightning_critical import sweep
from lightning_critical._checks import check_choice, check_int
from lightning_critical._namespace import pl
from lightning_critical._output import write_outputs
from lightning_critical.data.matrix_completion import MatrixCompletionDataModule
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.experiments._accelerator import accelerator_kwargs
from lightning_critical.models.factorization_ensemble import FactorizationEnsemble
from lightning_critical.models.matrix_factorization import INITS, DeepMatrixFactorization
from lightning_critical.plots.matrix_completion import plot_critical_period, plot_singular_value_trajectories
from lightning_critical.schedule import Window, largest_common_divisor
from lightning_critical.sweep import GridEntry, WindowGrid

PAPER_SWITCH_EPOCHS: tuple[int, ...] = (0, 1000, 5000, 10000, 20000, 40000, 60000, 80000, 100000)
PAPER_DEPTHS: tuple[int, ...] = (1, 2, 3)
SWEEP_PARAMETERS: tuple[str, ...] = (
    "depth", "pretrain_rank", "target_rank", "n_observed", "pretrain_observed", "init_scale", "lr", "seed", "size",
)


def _check_switch_sweep(
    depth: int, switch: list[int], continue_epochs: int, size: int, n_observed: int, pretrain_rank: int,
    target_rank: int, init: str, pretrain_observed: int | None, sgd_steps_per_epoch: int | None,
) -> int:
    """Check the arguments of one switch sweep (before any training); return the SGD steps per Lightning step."""
    check_int("depth", depth, 1)
    check_int("size", size, 1)
    check_int("n_observed", n_observed, 1, size * size)
    check_int("continue_epochs", continue_epochs, 1)
    check_int("target_rank", target_rank, 1, size)
    if not switch:
        raise ValueError("switch_epochs is empty; give at least one epoch.")
    for t in switch:
        check_int("switch epoch", t, 0)
    if len(set(switch)) != len(switch):
        raise ValueError(f"switch_epochs={switch} has duplicates.")
    check_choice("init", init, INITS)
    if pretrain_observed is None:
        check_int("pretrain_rank", pretrain_rank, 1, size)
    else:
        check_int("pretrain_observed", pretrain_observed, 1, n_observed)
    if sgd_steps_per_epoch is None:
        k = largest_common_divisor(switch + [continue_epochs])
    else:
        k = check_int("sgd_steps_per_epoch", sgd_steps_per_epoch, 1)
    if any(t % k for t in switch + [continue_epochs]):
        raise ValueError(
            f"sgd_steps_per_epoch={k} must divide every switch epoch {switch} and continue_epochs={continue_epochs}."
        )
    return k


def _tasks(pretrain_rank: int, target_rank: int, pretrain_observed: int | None) -> dict[str, Any]:
    if pretrain_observed is None:
        return {"pretrain": {"rank": pretrain_rank}, "target": {"rank": target_rank}}
    # The "fewer examples" deficit: pre-train on a subset of the target's own observations.
    return {"target": {"rank": target_rank}, "pretrain": {"subset_of": "target", "n_observed": pretrain_observed}}


def completion_data(
    size: int = 100, n_observed: int = 2000, pretrain_rank: int = 10, target_rank: int = 5,
    pretrain_observed: int | None = None, seed: int = 0,
) -> MatrixCompletionDataModule:
    """The datamodule of a switch sweep, on the ``"target"`` task (what trains outside the deficit windows).

    The deficit of :func:`pretrain_until` puts a window on ``"pretrain"``. Arguments as in
    :func:`matrix_completion_sweep`.

    Example::

        >>> completion_data(size=10, n_observed=40, pretrain_rank=3, target_rank=1).task
        'target'
    """
    dm = MatrixCompletionDataModule(size=size, n_observed=n_observed,
                                    tasks=_tasks(pretrain_rank, target_rank, pretrain_observed), seed=seed)
    dm.set_task("target")
    return dm


def pretrain_until(window: Window) -> TaskSwitch:
    """The switch sweep's deficit: train on ``"pretrain"`` during ``window``, on ``"target"`` after it.

    Example::

        >>> pretrain_until(Window(0, 500)).schedule
        {0: 'pretrain', 500: 'target'}
    """
    schedule = {window.start: "pretrain"}
    if window.end is not None:
        schedule[window.end] = "target"
    return TaskSwitch(schedule, unit="epoch")


def build_switch_ensemble(
    depth: int,
    switch_epochs: Sequence[int],
    continue_epochs: int = 30000,
    size: int = 100,
    n_observed: int = 2000,
    pretrain_rank: int = 10,
    target_rank: int = 5,
    init_scale: float = 1e-3,
    lr: float = 0.2,
    seed: int = 0,
    init: str = "gaussian",
    pretrain_observed: int | None = None,
    sgd_steps_per_epoch: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[FactorizationEnsemble, MatrixCompletionDataModule, list[TaskSwitch]]:
    """The ensemble, datamodule and per-member ``TaskSwitch`` callbacks of one sweep.

    Arguments as in :func:`matrix_completion_sweep`. Fit with
    ``pl.Trainer(max_epochs=ensemble.max_epochs, callbacks=switches)``.
    """
    switch = list(switch_epochs)
    k = _check_switch_sweep(depth, switch, continue_epochs, size, n_observed, pretrain_rank, target_rank, init,
                            pretrain_observed, sgd_steps_per_epoch)
    tasks = _tasks(pretrain_rank, target_rank, pretrain_observed)
    dm = MatrixCompletionDataModule(size=size, n_observed=n_observed, tasks=tasks, seed=seed)
    model = DeepMatrixFactorization(size=size, depth=depth, init=init, init_scale=init_scale, lr=lr, seed=seed)
    ensemble = FactorizationEnsemble(
        model, dm, [t + continue_epochs for t in switch], sgd_steps_per_epoch=k, initial_task="pretrain", dtype=dtype
    )
    # one member per switch epoch, in order
    members = zip(switch, ensemble.members, strict=True)
    switches = [TaskSwitch({t // k: "target"}, unit="epoch", target=m) for t, m in members]
    return ensemble, dm, switches


def _fit(ensemble: FactorizationEnsemble, dm: MatrixCompletionDataModule, switches: list, progress: bool,
         logger: Any = False, num_threads: int | None = 1, accelerator: str = "auto") -> None:
    quiet = logging.getLogger(pl.__name__)
    level, threads = quiet.level, torch.get_num_threads()
    if not progress:
        quiet.setLevel(logging.ERROR)
    if num_threads:
        # The matrices are tiny: intra-op threads gain little and, on a busy machine, every
        # parallel region waits for a core (measured 100x slower on 2 shared cores).
        torch.set_num_threads(num_threads)
    try:
        trainer = pl.Trainer(
            max_epochs=ensemble.max_epochs, callbacks=switches, logger=logger, devices=1,
            **accelerator_kwargs(accelerator),
            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(ensemble, datamodule=dm)
    finally:
        quiet.setLevel(level)
        torch.set_num_threads(threads)


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
) -> Any:
    """Final target test loss against switch epoch, all switch epochs trained as one ensemble.

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
        progress: show Lightning's progress bar.
        logger: a Lightning logger for per-member test losses (default none).
        num_threads: torch intra-op threads while training (restored afterwards); ``None``
            keeps the current setting. One thread is the robust choice for these small
            matrices; run several sweeps in parallel processes to use more cores.
        return_history: also return the per-record history (test/train loss, task, singular values).
        accelerator: where to train, as in ``pl.Trainer`` (one device); ``"auto"`` leaves the
            choice to Lightning (``PL_TRAINER_ACCELERATOR``, else the best available device).

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
    switch = list(switch_epochs)
    ensemble, dm, switches = build_switch_ensemble(
        depth, switch, continue_epochs, size, n_observed, pretrain_rank, target_rank, init_scale, lr, seed,
        init, pretrain_observed, sgd_steps_per_epoch, dtype,
    )
    _fit(ensemble, dm, switches, progress, logger, num_threads, accelerator)
    settings = {
        "pretrain_rank": pretrain_rank if pretrain_observed is None else target_rank,
        "target_rank": target_rank, "n_observed": n_observed, "pretrain_observed": pretrain_observed,
        "init_scale": init_scale, "lr": lr, "seed": seed, "size": size, "init": init,
        "continue_epochs": continue_epochs,
    }
    res = ensemble.final_metrics()
    res.insert(0, "switch_epoch", [switch[m] for m in res["member"]])
    res.insert(0, "depth", depth)
    res = res.drop(columns=["member", "task"])
    cols = ["depth", "switch_epoch", "test_loss", "train_loss", "sgd_steps"]
    res = res[cols + [c for c in res.columns if c not in cols]]
    for key, value in settings.items():
        res[key] = value
    if not return_history:
        return res
    hist = ensemble.history()
    members = hist["target"].str.removeprefix("member").astype(int)
    hist.insert(0, "switch_epoch", [switch[m] for m in members])
    hist.insert(0, "depth", depth)
    # a Lightning epoch of the ensemble is a chunk of SGD steps; the paper's epochs are the steps
    return res, hist.drop(columns=["target", "epoch"])


def matrix_completion_parameter_sweep(
    parameter: str, values: Iterable[Any], processes: int = 1, *, out: str | os.PathLike | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Run :func:`matrix_completion_sweep` for each value of one parameter and stack the tables.

    ``parameter`` is one of :data:`SWEEP_PARAMETERS`: ``"pretrain_rank"`` (the rank sweep),
    ``"pretrain_observed"`` (the number-of-observations sweep), ``"init_scale"``, ``"depth"``...
    The result has the same columns as one sweep (the parameter's own column tells the runs
    apart) plus ``seconds``, the wall time of each value's sweep.

    It is one :func:`lightning_critical.sweep.run`: the grid is the switch epochs (a window of
    pre-training ``[0, T)`` per switch epoch ``T``) x the values, trained by the
    :class:`~lightning_critical.sweep.FactorizationEnsembleRunner` (one vectorized ensemble per
    value). ``processes > 1`` trains that many values at once in the engine's worker processes
    (each single-threaded, one per core is best); the results are identical to ``processes=1``.
    ``out``: keep the sweep's directory there (resumable: finished values are not retrained);
    by default a temporary one. Other keywords: those of :func:`matrix_completion_sweep`
    (``progress``, ``logger`` and ``return_history`` are not available here).

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
    unknown = sorted(set(kwargs) - set(_SWEEP_DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown} are not arguments of the parameter sweep; valid: {sorted(_SWEEP_DEFAULTS)}.")
    settings = [{**_SWEEP_DEFAULTS, **kwargs, parameter: v} for v in values]
    switch = list(settings[0]["switch_epochs"])
    for job in settings:  # every value's arguments are checked before anything trains
        _check_switch_sweep(job["depth"], switch, job["continue_epochs"], job["size"], job["n_observed"],
                            job["pretrain_rank"], job["target_rank"], job["init"], job["pretrain_observed"],
                            job["sgd_steps_per_epoch"])
    fixed = {k: v for k, v in settings[0].items() if k != parameter}
    model = functools.partial(DeepMatrixFactorization, **{k: fixed[k] for k in _MODEL_ARGS if k in fixed})
    data = functools.partial(completion_data, **{k: fixed[k] for k in _DATA_ARGS if k in fixed})
    grid = _switch_grid(switch, fixed["continue_epochs"])
    runner = sweep.FactorizationEnsembleRunner(sgd_steps_per_epoch=fixed["sgd_steps_per_epoch"],
                                               initial_task="pretrain", dtype=fixed["dtype"])
    sizes = values if parameter == "size" else [fixed["size"]]
    top_k = min(runner.top_k, max(sizes))  # a smaller matrix has fewer: NaN, as when its table is stacked
    metrics = ["test_loss", "train_loss", "sgd_steps"] + [f"singular_values/{i}" for i in range(top_k)]
    params = None if parameter == "seed" else {parameter: values}
    seeds = values if parameter == "seed" else [fixed["seed"]]
    with contextlib.ExitStack() as stack:
        directory = os.fspath(out) if out is not None else stack.enter_context(tempfile.TemporaryDirectory())
        table = sweep.run(
            model, data, deficit=pretrain_until, windows=grid, metrics=metrics, params=params, seeds=seeds,
            trainer={"devices": 1, **accelerator_kwargs(fixed["accelerator"])}, runner=runner, out=directory,
            backend="process" if processes > 1 else "serial", workers=min(processes, len(values)),
            threads_per_run=fixed["num_threads"] or torch.get_num_threads(), progress=False, tensorboard=False,
            plot=False, errors="raise",
        )
    frames = []
    for value, job in zip(values, settings, strict=True):
        rows = table[table["seed"] == value] if parameter == "seed" else table[table[parameter] == value]
        frames.append(_switch_frame(rows, job, metrics).assign(seconds=float(rows["seconds"].iloc[0])))
    return pd.concat(frames, ignore_index=True)


_SWEEP_DEFAULTS: dict[str, Any] = {
    "depth": 3, "switch_epochs": PAPER_SWITCH_EPOCHS, "continue_epochs": 30000, "size": 100, "n_observed": 2000,
    "pretrain_rank": 10, "target_rank": 5, "init_scale": 1e-3, "lr": 0.2, "seed": 0, "init": "gaussian",
    "pretrain_observed": None, "sgd_steps_per_epoch": None, "dtype": torch.float32, "num_threads": 1,
    "accelerator": "auto",
}
_MODEL_ARGS = ("size", "depth", "init", "init_scale", "lr")
_DATA_ARGS = ("size", "n_observed", "pretrain_rank", "target_rank", "pretrain_observed")


def _switch_grid(switch: Sequence[int], continue_epochs: int) -> Any:
    """One run per switch epoch, in the order given: pre-train during ``[0, T)``, then ``continue_epochs``."""
    entries = [GridEntry((Window(0, t),) if t > 0 else (), t + continue_epochs) for t in switch]
    return WindowGrid(tuple(entries), "removal")


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

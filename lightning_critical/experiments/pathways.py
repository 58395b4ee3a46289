"""Multi-pathway critical-period experiments: each a :class:`~lightning_critical.sweep.Study`, run, and read back.

Every SGD run goes through :func:`lightning_critical.sweep.run_study`: the studies of
:mod:`~lightning_critical.experiments.pathway_study` (the bundled model and datamodule
factories, a ``PathwayDeficit`` per window, a ``SpectralMonitor`` with the theory of the run's
window; quiet serial runs), and the functions of the table in
:mod:`~lightning_critical.experiments.pathway_tables` (trajectories from each run's monitor
history in its ``log_dir``, final mode strengths from the metric columns, the theory joined
once). The functions return tidy ``pandas`` tables (``measured`` is what the trained nets
show, ``theory`` what the pathway ODE predicts); figures live in :mod:`lightning_critical.plots`,
files are written by :mod:`lightning_critical._output`.

Logs are the engine's: with a ``save_dir`` it is the sweep's ``out``, and each run logs to
``<save_dir>/tensorboard/<run label>`` (e.g. ``w0-150_seed0``; the table's ``log_dir``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical._output import write_outputs
from lightning_critical.experiments._sweep_dir import sweep_dir
from lightning_critical.experiments.pathway_study import (
    build_pathway_model,
    bundled_execution,
    deficit_onset_study,
    fitted,
    initial_mode_strengths,
    pathway_deficit_study,
    pathway_theory,
)
from lightning_critical.experiments.pathway_tables import (
    PHASE_WINDOWS,
    onset_measured,
    onset_theory,
    onset_window,
    phase_trajectories,
    row_window,
    rows_by_window,
    task_singular_values,
    trajectory_frame,
)
from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits
from lightning_critical.sweep import Output, run_study

__all__ = [
    "PHASE_WINDOWS", "PUBLISHED_ONSETS", "PathwayRun", "build_pathway_model", "deficit_onset_sweep",
    "early_middle_late", "initial_mode_strengths", "pathway_deficit_run", "phase_trajectories", "reproduce",
]

PUBLISHED_ONSETS: dict[str, int] = {"early": 0, "middle": 400, "late": 750}
ONSET_SWEEP_DEPTHS: tuple[int, ...] = (1, 2, 3, 4, 6)
ONSET_SWEEP_SGD_ONSETS: tuple[int, ...] = (0, 300, 600, 900)

Progress = Callable[[str], None]
"""Called with one line of text per finished training run (e.g. ``print``)."""


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


@dataclass
class PathwayRun:
    """The result of one run: mode strengths over training, measured (SGD) and theory side by side.

    ``frame`` columns: step, pathway, mode, measured, singular_value, theory (``theory`` is NaN
    for deficits without a theory, e.g. ``"noise"``). ``log_dir`` is the run's log directory
    under ``save_dir`` (``None`` without ``save_dir``).
    """

    frame: pd.DataFrame
    theory: np.ndarray | None
    singular_values: np.ndarray
    log_dir: str | None
    seconds: float


_RUN_DEFAULTS: dict[str, Any] = dict(
    depth=4, max_epochs=1000, mode="freeze", deprived="b", width=100, lr=0.01, init_scale=0.01, init_noise=0.1,
    nonlinearity=None, seed=0, every_n_steps=10, init_noise_draw="per_unit", independent_noise=False,
    accelerator="auto",
)


def _trajectory_runs(windows: Mapping[str, tuple[int, int] | None], save_dir: str | None,
                     args: Mapping[str, Any]) -> dict[str, PathwayRun]:
    """Train one run per labelled window (one study, one ``run_study``); per label its :class:`PathwayRun`."""
    model_args = {k: v for k, v in args.items() if k not in ("max_epochs", "mode", "deprived", "seed", "every_n_steps",
                                                            "accelerator")}
    theory = pathway_theory(args["max_epochs"], args["mode"], args["deprived"], args["seed"], **model_args)
    study = pathway_deficit_study(list(windows.values()), **args)
    runs = {}
    with sweep_dir(save_dir) as out:
        rows = rows_by_window(run_study(study, bundled_execution(), Output(out=out, plot=False)))
        for label, window in windows.items():
            w = fitted(window, args["max_epochs"])
            row, ws = rows[w], ((w,) if w is not None else ())
            runs[label] = PathwayRun(
                trajectory_frame(row["log_dir"], theory, ws), theory.trajectory(ws) if theory is not None else None,
                task_singular_values(theory), row["log_dir"] if save_dir is not None else None, float(row["seconds"]))
    return runs


def _run_args(function: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(_RUN_DEFAULTS))
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword arguments {unknown}; valid: {sorted(_RUN_DEFAULTS)}.")
    return {**_RUN_DEFAULTS, **kwargs}


def pathway_deficit_run(
    window: tuple[int, int] | None = (0, 150),
    depth: int = 4,
    max_epochs: int = 1000,
    mode: str = "freeze",
    deprived: str = "b",
    width: int = 100,
    lr: float = 0.01,
    init_scale: float = 0.01,
    init_noise: float = 0.1,
    nonlinearity: str | None = None,
    seed: int = 0,
    every_n_steps: int = 10,
    save_dir: str | None = None,
    name: str = "run",
    *,
    init_noise_draw: str = "per_unit",
    independent_noise: bool = False,
    accelerator: str = "auto",
) -> PathwayRun:
    """Train the bundled two-pathway net with one pathway deprived during ``window`` (epochs).

    The run is :func:`~lightning_critical.experiments.pathway_study.pathway_deficit_study`
    through :func:`lightning_critical.sweep.run_study` (serial; its grid's no-deficit
    baseline trains too, sharing the clean epochs before the window). The theory
    (:func:`lightning_critical.theory.pathway_dynamics`, exact for linear pathways from the
    aligned init) is computed from the model's measured ``K(0)`` and handed to the monitor, so
    TensorBoard overlays SGD and theory. ``window=None`` trains without deficit. With
    ``save_dir`` the sweep's directory is ``<save_dir>/<name>`` and ``log_dir`` the run's
    TensorBoard directory in it. ``init_noise_draw`` and ``independent_noise`` go to the model
    (``"per_mode"`` reproduces the numbers published by this package before the paper's exact
    init became the default).

    ``accelerator``: where to train, as in ``pl.Trainer`` (one device). ``"auto"`` leaves the
    choice to Lightning, so ``PL_TRAINER_ACCELERATOR`` still applies; on the CPU the results
    do not depend on this argument. The theory is computed in float64 on the CPU from the
    model's ``K(0)`` before training, wherever the model then trains.

    Example::

        >>> run = pathway_deficit_run((0, 20), depth=2, width=16, max_epochs=40, every_n_steps=20)
        >>> sorted(run.frame.columns)
        ['measured', 'mode', 'pathway', 'singular_value', 'step', 'theory']
    """
    start = time.perf_counter()
    args = dict(depth=depth, max_epochs=max_epochs, mode=mode, deprived=deprived, width=width, lr=lr,
                init_scale=init_scale, init_noise=init_noise, nonlinearity=nonlinearity, seed=seed,
                every_n_steps=every_n_steps, init_noise_draw=init_noise_draw, independent_noise=independent_noise,
                accelerator=accelerator)
    run = _trajectory_runs({name: window}, os.path.join(save_dir, name) if save_dir else None, args)[name]
    run.seconds = time.perf_counter() - start
    return run


def early_middle_late(
    onsets: dict[str, int] = PUBLISHED_ONSETS, length: int = 150, save_dir: str | None = None,
    progress: Progress | None = None, **kwargs: Any
) -> pd.DataFrame:
    """The published early / middle / late deficit runs; one tidy table.

    The runs are one :func:`lightning_critical.sweep.run_study` of
    :func:`~lightning_critical.experiments.pathway_study.pathway_deficit_study` (serial): runs
    whose deficits start later share their clean epochs (the middle and late runs train the
    first 400 once; bitwise the same as separate runs). ``kwargs`` are those of
    :func:`pathway_deficit_run`. With ``save_dir`` (the sweep's directory), each run logs to
    ``<save_dir>/tensorboard/<run label>`` (``w0-150_seed0``, ...). Columns: those of
    :class:`PathwayRun` plus label, onset, length, depth and deficit (the mode). ``progress``
    is called with one line per run once they have trained.
    """
    args = _run_args("early_middle_late", kwargs)
    runs = _trajectory_runs({label: (onset, onset + length) for label, onset in onsets.items()}, save_dir, args)
    frames = []
    for label, onset in onsets.items():
        _report(progress, f"{label} deficit, epochs [{onset}, {onset + length}): {runs[label].seconds:.1f} s")
        frames.append(runs[label].frame.assign(label=label, onset=onset, length=length, depth=args["depth"],
                                               deficit=args["mode"]))
    return pd.concat(frames, ignore_index=True)


def deficit_onset_sweep(
    depths: Sequence[int] = ONSET_SWEEP_DEPTHS,
    onsets: Sequence[int] = tuple(range(0, 901, 50)),
    length: int = 150,
    sgd_onsets: Sequence[int] = ONSET_SWEEP_SGD_ONSETS,
    max_epochs: int = 1000,
    deprived: str = "b",
    mode: str = "freeze",
    accelerator: str = "auto",
    progress: Progress | None = None,
    save_dir: str | None = None,
    **model_kwargs: Any,
) -> pd.DataFrame:
    """Final share of every mode held by the deprived pathway, against deficit onset and depth.

    Theory on the whole ``onsets`` grid, SGD (real Trainer runs) at ``sgd_onsets``: one
    :func:`lightning_critical.sweep.run_study` of
    :func:`~lightning_critical.experiments.pathway_study.deficit_onset_study` over the onsets x
    depths, whose runs share their clean epochs before each onset (trained once, then branched;
    bitwise equal to separate runs). ``model_kwargs`` (width, lr, init_scale, init_noise,
    init_noise_draw, independent_noise, seed) go to the bundled net; ``accelerator`` as in
    :func:`pathway_deficit_run`. A window that would run past ``max_epochs`` ends there (the
    theory treats it the same way). ``save_dir``: keep the sweep's directory there (default: a
    temporary one). ``progress`` is called with one line per SGD run once they have trained.
    Columns: depth, onset, mode, singular_value, share, source (``"theory"`` or
    ``"measured"``: the trained nets).
    """
    seed = model_kwargs.pop("seed", 0)
    theory = [onset_theory(d, onsets, length, max_epochs, deprived, mode, seed, **model_kwargs) for d in depths]
    measured = [pd.DataFrame()] * len(depths)
    if sgd_onsets and depths:
        study = deficit_onset_study(depths, sgd_onsets, length, max_epochs=max_epochs, deprived=deprived, mode=mode,
                                    seed=seed, accelerator=accelerator, **model_kwargs)
        with sweep_dir(save_dir) as out:
            table = run_study(study, bundled_execution(), Output(out=out, tensorboard=False, plot=False))
        _report_onsets(progress, table, sgd_onsets, length, max_epochs)
        shares = onset_measured(table, sgd_onsets, length, max_epochs, deprived)
        measured = [shares[shares.depth == d] for d in depths]
    parts = [part for pair in zip(theory, measured, strict=True) for part in pair if len(part)]
    return pd.concat(parts, ignore_index=True)


def _report_onsets(progress: Progress | None, table: pd.DataFrame, onsets: Sequence[int], length: int,
                   max_epochs: int) -> None:
    seconds = {(int(row["depth"]), row_window(row)): float(row["seconds"]) for _, row in table.iterrows()}
    for depth in dict.fromkeys(int(d) for d in table["depth"]):
        for onset in onsets:
            w = onset_window(onset, length, max_epochs)
            what = f"deficit epochs [{w.start}, {int(w.stop)})" if w is not None else f"onset {onset}: no deficit"
            _report(progress, f"onset sweep, depth {depth}, {what}: {seconds[(depth, w)]:.1f} s")


def reproduce(
    out_dir: str = "outputs/multipathway", quick: bool = False, accelerator: str = "auto",
    progress: Progress | None = None,
) -> dict[str, str]:
    """The flagship demo: TensorBoard logs, CSV tables and the three PNG figures in ``out_dir``.

    Returns the paths written. ``quick`` shrinks the sweeps (for tests). ``accelerator``: as
    in :func:`pathway_deficit_run`. ``progress`` (e.g. ``print``) gets a line when the work
    starts, one per finished training run (``[k/n] ..., elapsed``) and one per stage.
    ``out_dir`` is the early / middle / late sweep's directory (its runs log to
    ``<out_dir>/tensorboard``), ``<out_dir>/onset_sweep`` the onset sweep's; calling it again
    reuses the finished runs of the same settings.
    """
    os.makedirs(out_dir, exist_ok=True)
    depths, sgd_onsets = ((1, 2, 4), (0,)) if quick else (ONSET_SWEEP_DEPTHS, ONSET_SWEEP_SGD_ONSETS)
    sweep_kwargs: dict[str, Any] = dict(depths=depths, sgd_onsets=sgd_onsets)
    if quick:
        sweep_kwargs["onsets"] = (0, 300, 600, 900)
    total = len(PUBLISHED_ONSETS) + len(depths) * len(sgd_onsets)
    start = time.perf_counter()
    done = 0

    def one_run(message: str) -> None:
        nonlocal done
        done += 1
        _report(progress, f"[{done:>2}/{total}] {message}  ({time.perf_counter() - start:.0f} s elapsed)")

    _report(progress, f"Training {total} deep linear networks: {len(PUBLISHED_ONSETS)} early/middle/late deficit "
                      f"runs, then {total - len(PUBLISHED_ONSETS)} for the onset sweep (depths {list(depths)}).")
    runs = early_middle_late(save_dir=out_dir, accelerator=accelerator, progress=one_run)
    onsets = deficit_onset_sweep(accelerator=accelerator, progress=one_run,
                                 save_dir=os.path.join(out_dir, "onset_sweep"), **sweep_kwargs)
    _report(progress, "Phase-portrait theory, tables and figures ...")
    phases = phase_trajectories()
    paths = {"tensorboard": os.path.join(out_dir, "tensorboard")}
    paths.update(write_outputs(
        out_dir,
        tables={"trajectories_csv": ("trajectories.csv", runs), "onset_sweep_csv": ("onset_sweep.csv", onsets),
                "phase_csv": ("phase.csv", phases)},
        figures={"trajectories_png": ("trajectories.png", plot_deficit_trajectories(runs)),
                 "onset_sweep_png": ("onset_sweep.png", plot_deprived_share(onsets)),
                 "phase_png": ("phase.png", plot_phase_portraits(phases, measured=runs))},
    ))
    _report(progress, f"Done in {time.perf_counter() - start:.0f} s.")
    return paths

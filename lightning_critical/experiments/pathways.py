"""Multi-pathway critical-period experiments, built only on the public API.

Each function trains with ordinary ``pl.Trainer`` runs (bundled model + datamodule + public
callbacks) and returns tidy ``pandas`` tables; figures live in :mod:`lightning_critical.plots`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lightning_critical._namespace import pl
from lightning_critical.data import HierarchicalDataModule
from lightning_critical.deficits import PathwayDeficit
from lightning_critical.experiments._accelerator import accelerator_kwargs
from lightning_critical.models import MultiPathwayLinearNet
from lightning_critical.monitors import SpectralMonitor
from lightning_critical.schedule import Window
from lightning_critical.spectral import mode_strengths
from lightning_critical.theory import deprived_share, pathway_dynamics

PUBLISHED_ONSETS: dict[str, int] = {"early": 0, "middle": 400, "late": 750}
PHASE_WINDOWS: dict[str, tuple[int, int]] = {"early": (0, 150), "late": (750, 900)}
"""The deficit windows of the phase portraits (:func:`phase_trajectories`), in epochs."""
ONSET_SWEEP_DEPTHS: tuple[int, ...] = (1, 2, 3, 4, 6)
ONSET_SWEEP_SGD_ONSETS: tuple[int, ...] = (0, 300, 600, 900)

Progress = Callable[[str], None]
"""Called with one line of text after each finished training run (e.g. ``print``)."""


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


@dataclass
class PathwayRun:
    """The result of one run: mode strengths over training, SGD and theory side by side.

    ``frame`` columns: step, pathway, mode, singular_value, sgd, theory (``theory`` is NaN
    for deficits without a theory, e.g. ``"noise"``). ``log_dir`` is the TensorBoard run
    directory (``None`` without logger).
    """

    frame: pd.DataFrame
    theory: np.ndarray | None
    singular_values: np.ndarray
    log_dir: str | None
    seconds: float


def initial_mode_strengths(model: MultiPathwayLinearNet, datamodule: HierarchicalDataModule) -> np.ndarray:
    """``K[p, a]`` of an (initialised) model, shape ``(P, M)``."""
    u, _, v = datamodule.task_basis()
    maps = model.end_to_end_maps()
    # .cpu(): the maps live where the weights do (a GPU after training there).
    return np.stack([mode_strengths(maps[p], u, v, dtype=None).double().cpu().numpy() for p in model.pathways])


def build_pathway_model(**model_kwargs: Any) -> tuple[HierarchicalDataModule, MultiPathwayLinearNet]:
    """The default hierarchical task and a ``MultiPathwayLinearNet`` initialised on its basis."""
    dm = HierarchicalDataModule()
    model = MultiPathwayLinearNet(in_features=dm.in_features, out_features=dm.out_features,
                                  task_basis=dm.task_basis(), **model_kwargs)
    return dm, model


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

    The theory (:func:`lightning_critical.theory.pathway_dynamics`, exact for linear
    pathways from the aligned init) is computed from the model's measured ``K(0)`` and
    handed to the monitor, so TensorBoard overlays SGD and theory. ``window=None`` trains
    without deficit. With ``save_dir`` the run logs to ``<save_dir>/<name>``.
    ``init_noise_draw`` and ``independent_noise`` go to the model (``"per_mode"`` reproduces
    the numbers published by this package before the paper's exact init became the default).

    ``accelerator``: where to train, as in ``pl.Trainer`` (one device). ``"auto"`` leaves the
    choice to Lightning, so ``PL_TRAINER_ACCELERATOR`` still applies; on the CPU the results
    do not depend on this argument. The theory is computed in float64 on the CPU from the
    model's ``K(0)`` before training, wherever the model then trains.

    Example::

        >>> run = pathway_deficit_run((0, 20), depth=2, width=16, max_epochs=40, every_n_steps=20)
        >>> sorted(run.frame.columns)
        ['mode', 'pathway', 'sgd', 'singular_value', 'step', 'theory']
    """
    start = time.perf_counter()
    dm, model = build_pathway_model(depth=depth, width=width, lr=lr, init_scale=init_scale, init_noise=init_noise,
                                    init_noise_draw=init_noise_draw, independent_noise=independent_noise,
                                    nonlinearity=nonlinearity, seed=seed)
    s = dm.task_basis()[1]
    names = list(model.pathways)
    if deprived not in names:
        raise ValueError(f"deprived={deprived!r} is not a pathway; choose one of {names}.")
    callbacks: list[pl.Callback] = []
    theory = None
    if window is not None:
        callbacks.append(PathwayDeficit(deprived, window=Window.coerce(window), mode=mode))
    if nonlinearity is None and mode in ("freeze", "silence"):
        deficits = {names.index(deprived): [window]} if window is not None else {}
        theory = pathway_dynamics(s.numpy(), depth, initial_mode_strengths(model, dm), lr, max_epochs,
                                  deficits=deficits, mode=mode)
    monitor = SpectralMonitor(
        targets="maps", every_n_steps=every_n_steps, metrics=("singular_values", "mode_strength", "effective_rank"),
        theory={"mode_strength": {p: theory[:, i] for i, p in enumerate(names)}} if theory is not None else None,
        history_file="spectral_history.csv" if save_dir else None,
    )
    callbacks.append(monitor)
    logger = pl.loggers.TensorBoardLogger(save_dir, name=name, version="") if save_dir else False
    trainer = pl.Trainer(
        max_epochs=max_epochs, callbacks=callbacks, logger=logger, devices=1, **accelerator_kwargs(accelerator),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, log_every_n_steps=max(1, every_n_steps),
    )
    trainer.fit(model, dm)
    records = monitor.to_frame()
    k = records[records.metric == "mode_strength"].rename(
        columns={"target": "pathway", "index": "mode", "value": "sgd"}
    )
    k = k[["step", "pathway", "mode", "sgd"]].reset_index(drop=True)
    k["singular_value"] = s.numpy()[k["mode"].to_numpy()]
    if theory is not None:
        k["theory"] = theory[k["step"].to_numpy(), [names.index(p) for p in k["pathway"]], k["mode"].to_numpy()]
    else:
        k["theory"] = np.nan
    log_dir = logger.log_dir if isinstance(logger, pl.loggers.TensorBoardLogger) else None
    return PathwayRun(k, theory, s.numpy(), log_dir, time.perf_counter() - start)


def early_middle_late(
    onsets: dict[str, int] = PUBLISHED_ONSETS, length: int = 150, save_dir: str | None = None,
    progress: Progress | None = None, **kwargs: Any
) -> pd.DataFrame:
    """The published early / middle / late deficit runs; one tidy table.

    Columns: those of :class:`PathwayRun` plus label, onset, length, depth and deficit (the mode).
    ``progress`` is called with one line per finished run.
    """
    frames = []
    for label, onset in onsets.items():
        run = pathway_deficit_run((onset, onset + length), save_dir=save_dir, name=label, **kwargs)
        _report(progress, f"{label} deficit, epochs [{onset}, {onset + length}): {run.seconds:.1f} s")
        frames.append(run.frame.assign(label=label, onset=onset, length=length, depth=kwargs.get("depth", 4),
                                       deficit=kwargs.get("mode", "freeze")))
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
    **model_kwargs: Any,
) -> pd.DataFrame:
    """Final share of every mode held by the deprived pathway, against deficit onset and depth.

    Theory on the whole ``onsets`` grid, SGD (real Trainer runs) at ``sgd_onsets``; a window
    that would run past ``max_epochs`` ends there (the theory treats it the same way).
    ``model_kwargs`` (width, lr, init_scale, init_noise, init_noise_draw, independent_noise,
    seed) go to the bundled net; ``accelerator`` as in :func:`pathway_deficit_run`;
    ``progress`` is called with one line per finished SGD run. Columns: depth, onset, mode,
    singular_value, share, source (``"theory"`` or ``"sgd"``).
    """
    rows: list[dict[str, Any]] = []
    lr = model_kwargs.get("lr", 0.01)
    for depth in depths:
        dm, model = build_pathway_model(depth=depth, **model_kwargs)
        names = list(model.pathways)
        if deprived not in names:
            raise ValueError(f"deprived={deprived!r} is not a pathway; choose one of {names}.")
        index = names.index(deprived)
        k0 = initial_mode_strengths(model, dm)
        s = dm.task_basis()[1].numpy()
        for onset in onsets:
            traj = pathway_dynamics(
                s, depth, k0, lr, max_epochs, deficits={index: [(onset, onset + length)]}, mode=mode
            )
            share = deprived_share(traj[-1], index)
            rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a], source="theory")
                        for a in range(len(s)))
        for onset in sgd_onsets:
            # Clipped at the end of training: the same run, without a "cut short" warning.
            window = (onset, min(onset + length, max_epochs))
            run = pathway_deficit_run(window, depth=depth, max_epochs=max_epochs, mode=mode,
                                      every_n_steps=max_epochs, deprived=deprived, accelerator=accelerator,
                                      **model_kwargs)
            _report(progress, f"onset sweep, depth {depth}, deficit epochs [{window[0]}, {window[1]}): "
                              f"{run.seconds:.1f} s")
            final = run.frame[run.frame.step == run.frame.step.max()]
            k = final.pivot_table(index="pathway", columns="mode", values="sgd")
            share = (k.loc[deprived] / k.sum(axis=0)).to_numpy()
            rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a], source="sgd")
                        for a in range(len(s)))
    return pd.DataFrame(rows)


def phase_trajectories(
    depths: Sequence[int] = (1, 2, 4),
    windows: Mapping[str, tuple[int, int]] | None = None,
    mode: int = 0,
    max_epochs: int = 1000,
    lr: float = 0.01,
    init_scale: float = 0.01,
    **model_kwargs: Any,
) -> pd.DataFrame:
    """Theory trajectories of ``(K_a, K_b)`` on one mode, for phase portraits.

    Each depth starts from the ``K(0)`` of the bundled net built with ``init_scale`` and
    ``model_kwargs`` (init_noise, init_noise_draw, independent_noise, width, seed), i.e. where
    the SGD runs of :func:`early_middle_late` start. Columns: depth, label, step, k_a, k_b,
    mode, singular_value, deprived (whether the update at that step is inside the window).
    ``windows``: label -> ``(start, end)`` deficit of pathway ``b`` (default :data:`PHASE_WINDOWS`).
    """
    if windows is None:
        windows = PHASE_WINDOWS
    s = HierarchicalDataModule().task_basis()[1].numpy()
    rows = []
    for depth in depths:
        dm, model = build_pathway_model(depth=depth, lr=lr, init_scale=init_scale, **model_kwargs)
        k0 = initial_mode_strengths(model, dm)
        for label, (start, end) in windows.items():
            traj = pathway_dynamics(s, depth, k0, lr, max_epochs, deficits={1: [(start, end)]})
            steps = np.arange(max_epochs + 1)
            rows.append(pd.DataFrame(dict(
                depth=depth, label=label, step=steps, k_a=traj[:, 0, mode], k_b=traj[:, 1, mode],
                mode=mode, singular_value=s[mode], deprived=(steps >= start) & (steps < end),
            )))
    return pd.concat(rows, ignore_index=True)


def reproduce(
    out_dir: str = "outputs/multipathway", quick: bool = False, accelerator: str = "auto",
    progress: Progress | None = None,
) -> dict[str, str]:
    """The flagship demo: TensorBoard logs, CSV tables and the three PNG figures in ``out_dir``.

    Returns the paths written. ``quick`` shrinks the sweeps (for tests). ``accelerator``: as
    in :func:`pathway_deficit_run`. ``progress`` (e.g. ``print``) gets a line when the work
    starts, one per finished training run (``[k/n] ..., elapsed``) and one per stage.
    """
    from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits

    os.makedirs(out_dir, exist_ok=True)
    tb_dir = os.path.join(out_dir, "tensorboard")
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
    runs = early_middle_late(save_dir=tb_dir, accelerator=accelerator, progress=one_run)
    sweep = deficit_onset_sweep(accelerator=accelerator, progress=one_run, **sweep_kwargs)
    _report(progress, "Phase-portrait theory, tables and figures ...")
    phases = phase_trajectories()
    paths = {"tensorboard": tb_dir}
    for key, table in (("trajectories_csv", runs), ("onset_sweep_csv", sweep), ("phase_csv", phases)):
        paths[key] = os.path.join(out_dir, f"{key[:-4]}.csv")
        table.to_csv(paths[key], index=False)
    for key, fig in (("trajectories_png", plot_deficit_trajectories(runs)),
                     ("onset_sweep_png", plot_deprived_share(sweep)),
                     ("phase_png", plot_phase_portraits(phases, sgd=runs))):
        paths[key] = os.path.join(out_dir, f"{key[:-4]}.png")
        fig.savefig(paths[key], dpi=130, bbox_inches="tight")
    _report(progress, f"Done in {time.perf_counter() - start:.0f} s.")
    return paths

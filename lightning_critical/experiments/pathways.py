"""Multi-pathway critical-period experiments, built only on the public API.

Every SGD run goes through the sweep engine (:func:`lightning_critical.sweep.run`: the bundled
model and datamodule factories, a ``PathwayDeficit`` per window, a ``SpectralMonitor`` with the
run's theory; quiet serial Trainer runs). The trajectories are read back from each run's
monitor history file, the final mode strengths from the engine's results table. The functions
return tidy ``pandas`` tables (``measured`` is what the trained nets show, ``theory`` what
the pathway ODE predicts); figures live in :mod:`lightning_critical.plots`, files are written
by :mod:`lightning_critical._output`.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_critical import sweep
from lightning_critical._checks import check_choice
from lightning_critical._namespace import pl
from lightning_critical._output import write_outputs
from lightning_critical.data import HierarchicalDataModule
from lightning_critical.deficits import PathwayDeficit
from lightning_critical.experiments._accelerator import accelerator_kwargs
from lightning_critical.history import read_history
from lightning_critical.models import MultiPathwayLinearNet
from lightning_critical.monitors import SpectralMonitor
from lightning_critical.plots.pathways import plot_deficit_trajectories, plot_deprived_share, plot_phase_portraits
from lightning_critical.protocols import end_to_end_maps, find_task_basis
from lightning_critical.schedule import Window
from lightning_critical.spectral import join_theory, mode_strengths
from lightning_critical.sweep import GridEntry, WindowGrid
from lightning_critical.theory import deprived_share, pathway_dynamics

PUBLISHED_ONSETS: dict[str, int] = {"early": 0, "middle": 400, "late": 750}
PHASE_WINDOWS: dict[str, tuple[int, int]] = {"early": (0, 150), "late": (750, 900)}
"""The deficit windows of the phase portraits (:func:`phase_trajectories`), in epochs."""
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

    The run is one :func:`lightning_critical.sweep.run` (one grid point, serial). The theory
    (:func:`lightning_critical.theory.pathway_dynamics`, exact for linear pathways from the
    aligned init) is computed from the model's measured ``K(0)`` and handed to the monitor, so
    TensorBoard overlays SGD and theory. ``window=None`` trains without deficit. With
    ``save_dir`` the run's logs end up in ``<save_dir>/<name>``.
    ``init_noise_draw`` and ``independent_noise`` go to the model (``"per_mode"`` reproduces
    the numbers published by this package before the paper's exact init became the default).

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
    model_kwargs = dict(depth=depth, width=width, lr=lr, init_scale=init_scale, init_noise=init_noise,
                        init_noise_draw=init_noise_draw, independent_noise=independent_noise,
                        nonlinearity=nonlinearity)
    runs = _trajectory_runs({name: window}, max_epochs, mode, deprived, every_n_steps, save_dir, seed, accelerator,
                            model_kwargs)
    frame, theory, s, log_dir, _ = runs[name]
    return PathwayRun(frame, theory, s, log_dir, time.perf_counter() - start)


def early_middle_late(
    onsets: dict[str, int] = PUBLISHED_ONSETS, length: int = 150, save_dir: str | None = None,
    progress: Progress | None = None, **kwargs: Any
) -> pd.DataFrame:
    """The published early / middle / late deficit runs; one tidy table.

    The runs are one :func:`lightning_critical.sweep.run` over the windows (serial): runs whose
    deficits start later share their clean epochs (the middle and late runs train the first 400
    once; bitwise the same as separate runs). ``kwargs`` are those of :func:`pathway_deficit_run`.
    With ``save_dir``, run ``label`` logs to ``<save_dir>/<label>``. Columns: those of
    :class:`PathwayRun` plus label, onset, length, depth and deficit (the mode). ``progress`` is
    called with one line per run once they have trained.
    """
    unknown = sorted(set(kwargs) - set(_RUN_DEFAULTS))
    if unknown:
        raise TypeError(f"early_middle_late() got unexpected keyword arguments {unknown}; valid: "
                        f"{sorted(_RUN_DEFAULTS)}.")
    args = {**_RUN_DEFAULTS, **kwargs}
    model_kwargs = {k: args[k] for k in _MODEL_KEYS}
    windows = {label: (onset, onset + length) for label, onset in onsets.items()}
    runs = _trajectory_runs(windows, args["max_epochs"], args["mode"], args["deprived"], args["every_n_steps"],
                            save_dir, args["seed"], args["accelerator"], model_kwargs)
    frames = []
    for label, onset in onsets.items():
        _report(progress, f"{label} deficit, epochs [{onset}, {onset + length}): {runs[label][4]:.1f} s")
        frames.append(runs[label][0].assign(label=label, onset=onset, length=length, depth=kwargs.get("depth", 4),
                                            deficit=kwargs.get("mode", "freeze")))
    return pd.concat(frames, ignore_index=True)


_RUN_DEFAULTS: dict[str, Any] = dict(
    depth=4, max_epochs=1000, mode="freeze", deprived="b", width=100, lr=0.01, init_scale=0.01, init_noise=0.1,
    nonlinearity=None, seed=0, every_n_steps=10, init_noise_draw="per_unit", independent_noise=False,
    accelerator="auto",
)
_MODEL_KEYS = ("depth", "width", "lr", "init_scale", "init_noise", "init_noise_draw", "independent_noise",
               "nonlinearity")
_HISTORY_FILE = "spectral_history.csv"


def pathway_net(seed: int = 0, **model_kwargs: Any) -> MultiPathwayLinearNet:
    """The sweep's model factory: :func:`build_pathway_model`'s net (initialised on the default task's basis)."""
    return build_pathway_model(seed=seed, **model_kwargs)[1]


def hierarchical_data() -> HierarchicalDataModule:
    """The sweep's datamodule factory: the default hierarchical task (the same for every seed)."""
    return HierarchicalDataModule()


def trajectory_monitor(windows: tuple[Window, ...], every_n_steps: int,
                       theories: Mapping[Any, Mapping[str, np.ndarray]]) -> list[pl.Callback]:
    """The sweep's callbacks: a ``SpectralMonitor`` of the pathway maps, with the theory of the run's window."""
    theory = theories.get(_window_key(windows))
    return [SpectralMonitor(
        targets="maps", every_n_steps=every_n_steps, metrics=("singular_values", "mode_strength", "effective_rank"),
        theory={"mode_strength": dict(theory)} if theory is not None else None, history_file=_HISTORY_FILE,
    )]


def final_mode_strengths(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float]:
    """The sweep's metric: ``K[p, a]`` of the trained net as ``K/<pathway>/<mode>`` (what the monitor would record)."""
    basis = find_task_basis(module, getattr(trainer, "datamodule", None))
    if basis is None:
        raise ValueError("final_mode_strengths needs a task basis (task_basis() on the model or the datamodule).")
    u, _, v = basis
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, matrix in end_to_end_maps(module).items():
            out.update({f"K/{name}/{a}": k for a, k in enumerate(mode_strengths(matrix, u, v).tolist())})
    return out


def _window_key(windows: Sequence[Window]) -> tuple[int, int] | None:
    return (windows[0].start, int(windows[0].stop)) if windows else None


def _key_of(window: Window | None) -> tuple[int, int] | None:
    return _window_key((window,) if window is not None else ())


def _fitted(window: tuple[int, int], max_epochs: int) -> Window:
    """The window as the sweep trains it: cut at the end of training (the epochs after it never come)."""
    return Window(window[0], min(window[1], max_epochs))


def _grid(windows: Sequence[Window | None]) -> Any:
    """Exactly these runs (``None``: no deficit), without the sweep's extra baseline."""
    return WindowGrid(tuple(GridEntry((w,) if w is not None else ()) for w in windows), "explicit")


def _sweep_args(model_kwargs: Mapping[str, Any], max_epochs: int, mode: str, deprived: str, every_n_steps: int,
                accelerator: str) -> dict[str, Any]:
    """What every bundled pathway sweep shares: model, data, deficit, quiet serial Trainer runs."""
    return dict(
        model=functools.partial(pathway_net, **model_kwargs), datamodule=hierarchical_data,
        deficit=PathwayDeficit(deprived, window=(0, 1), mode=mode),
        trainer={"max_epochs": max_epochs, "devices": 1, "log_every_n_steps": max(1, every_n_steps),
                 **accelerator_kwargs(accelerator)},
        backend="serial", threads_per_run=torch.get_num_threads(), progress=False, plot=False, errors="raise",
    )


def _check_deprived(model: MultiPathwayLinearNet, deprived: str) -> list[str]:
    names = list(model.pathways)
    check_choice("deprived", deprived, names)
    return names


def _trajectory_runs(
    windows: Mapping[str, tuple[int, int] | None], max_epochs: int, mode: str, deprived: str, every_n_steps: int,
    save_dir: str | None, seed: int, accelerator: str, model_kwargs: Mapping[str, Any],
) -> dict[str, tuple[pd.DataFrame, np.ndarray | None, np.ndarray, str | None, float]]:
    """Train one run per window (one sweep); per name: (frame, theory, singular values, log dir, seconds)."""
    dm, model = build_pathway_model(seed=seed, **model_kwargs)
    s = dm.task_basis()[1].numpy()
    names = _check_deprived(model, deprived)
    theories: dict[Any, dict[str, np.ndarray]] = {}
    full: dict[Any, np.ndarray | None] = {}
    fitted = {label: (_fitted(w, max_epochs) if w is not None else None) for label, w in windows.items()}
    if model_kwargs.get("nonlinearity") is None and mode in ("freeze", "silence"):
        k0 = initial_mode_strengths(model, dm)
        for label, w in windows.items():
            deficits = {names.index(deprived): [w]} if w is not None else {}
            traj = pathway_dynamics(s, model_kwargs["depth"], k0, model_kwargs["lr"], max_epochs, deficits=deficits,
                                    mode=mode)
            full[label] = traj
            theories[_key_of(fitted[label])] = {
                p: traj[:, i] for i, p in enumerate(names)}
    unique = list(dict.fromkeys(fitted.values()))
    with tempfile.TemporaryDirectory() as out:
        table = sweep.run(
            **_sweep_args(model_kwargs, max_epochs, mode, deprived, every_n_steps, accelerator),
            windows=_grid(unique), metrics=final_mode_strengths, seeds=[seed],
            callbacks=functools.partial(trajectory_monitor, every_n_steps=every_n_steps, theories=theories),
            out=out,
        )
        logs = {_key_of(w): d for w, d in zip(unique, table["log_dir"], strict=True)}
        seconds = {_key_of(w): float(t) for w, t in zip(unique, table["seconds"], strict=True)}
        results = {}
        for label in windows:
            key = _key_of(fitted[label])
            frame = _trajectory_frame(read_history(os.path.join(logs[key], _HISTORY_FILE)), s, full.get(label), names)
            log_dir = None
            if save_dir is not None:
                log_dir = os.path.join(save_dir, label)
                shutil.copytree(logs[key], log_dir, dirs_exist_ok=True)
            results[label] = (frame, full.get(label), s, log_dir, seconds[key])
    return results


def _trajectory_frame(records: pd.DataFrame, s: np.ndarray, theory: np.ndarray | None,
                      names: list[str]) -> pd.DataFrame:
    by_pathway = {} if theory is None else {p: theory[:, i] for i, p in enumerate(names)}
    k = join_theory(records[records.metric == "mode_strength"], {"mode_strength": by_pathway})
    k = k.rename(columns={"target": "pathway", "index": "mode", "value": "measured"})
    k = k[["step", "pathway", "mode", "measured", "theory"]].reset_index(drop=True)
    k.insert(4, "singular_value", s[k["mode"].to_numpy()])
    return k


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

    Theory on the whole ``onsets`` grid, SGD (real Trainer runs) at ``sgd_onsets``: one
    :func:`lightning_critical.sweep.run` over the onsets x depths, whose runs share their clean
    epochs before each onset (trained once, then branched; bitwise equal to separate runs).
    ``model_kwargs`` (width, lr, init_scale, init_noise, init_noise_draw, independent_noise,
    seed) go to the bundled net; ``accelerator`` as in :func:`pathway_deficit_run`. A window
    that would run past ``max_epochs`` ends there (the theory treats it the same way).
    ``progress`` is called with one line per SGD run once they have trained. Columns: depth,
    onset, mode, singular_value, share, source (``"theory"`` or ``"measured"``: the trained nets).
    """
    lr = model_kwargs.get("lr", 0.01)
    seed = model_kwargs.pop("seed", 0)
    theory_rows: dict[int, list[dict[str, Any]]] = {}
    singular: dict[int, np.ndarray] = {}
    for depth in depths:
        dm, model = build_pathway_model(depth=depth, seed=seed, **model_kwargs)
        names = _check_deprived(model, deprived)
        index = names.index(deprived)
        k0 = initial_mode_strengths(model, dm)
        s = singular[depth] = dm.task_basis()[1].numpy()
        rows = theory_rows[depth] = []
        for onset in onsets:
            traj = pathway_dynamics(
                s, depth, k0, lr, max_epochs, deficits={index: [(onset, onset + length)]}, mode=mode
            )
            share = deprived_share(traj[-1], index)
            rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a], source="theory")
                        for a in range(len(s)))
    # Every SGD point, all depths, in one sweep; an onset past the end of training trains without deficit.
    fitted = {onset: (_fitted((onset, onset + length), max_epochs) if onset < max_epochs else None)
              for onset in sgd_onsets}
    final: dict[tuple[int, Any], dict[str, float]] = {}
    took: dict[tuple[int, Any], float] = {}
    if fitted and depths:
        unique = list(dict.fromkeys(fitted.values()))
        with tempfile.TemporaryDirectory() as out:
            table = sweep.run(
                **_sweep_args({k: v for k, v in model_kwargs.items() if k != "depth"}, max_epochs, mode, deprived,
                              max_epochs, accelerator),
                windows=_grid(unique), metrics=final_mode_strengths, seeds=[seed], params={"depth": list(depths)},
                out=out, tensorboard=False,
            )
        for _, row in table.iterrows():
            window = None if row["baseline"] else Window(int(row["window_start"]), int(row["window_end"]))
            final[(int(row["depth"]), window)] = {k: row[k] for k in table.attrs["metrics"]}
            took[(int(row["depth"]), window)] = float(row["seconds"])
    for depth in depths:
        for onset in sgd_onsets:
            w = fitted[onset]
            what = f"deficit epochs [{w.start}, {int(w.stop)})" if w is not None else f"onset {onset}: no deficit"
            _report(progress, f"onset sweep, depth {depth}, {what}: {took[(depth, w)]:.1f} s")
    out_rows: list[dict[str, Any]] = []
    for depth in depths:
        out_rows.extend(theory_rows[depth])
        s = singular[depth]
        for onset in sgd_onsets:
            metrics = final[(depth, fitted[onset])]
            k = pd.DataFrame([{"pathway": key.split("/")[1], "mode": int(key.split("/")[2]), "measured": value}
                              for key, value in metrics.items()]).pivot_table(index="pathway", columns="mode",
                                                                              values="measured")
            share = (k.loc[deprived] / k.sum(axis=0)).to_numpy()
            out_rows.extend(dict(depth=depth, onset=onset, mode=a, singular_value=s[a], share=share[a],
                                 source="measured") for a in range(len(s)))
    return pd.DataFrame(out_rows)


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
    onsets = deficit_onset_sweep(accelerator=accelerator, progress=one_run, **sweep_kwargs)
    _report(progress, "Phase-portrait theory, tables and figures ...")
    phases = phase_trajectories()
    paths = {"tensorboard": tb_dir}
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

"""What the multi-pathway experiments train, as :class:`~lightning_critical.sweep.Study` objects.

The bundled two-pathway net on the default hierarchical task, a ``PathwayDeficit`` in each
window, the final mode strengths as the metric and, for the trajectory runs, a
``SpectralMonitor`` overlaying the pathway ODE's prediction of the run's window. The studies
are ordinary: ``lc.sweep.run_study(study, bundled_execution(), Output(out=...))`` trains them,
and :mod:`lightning_critical.experiments.pathway_tables` turns the table into the
experiments' tidy results.

Example::

    >>> study = pathway_deficit_study([(0, 20), (40, 60)], depth=2, width=8, max_epochs=50)
    >>> [e.label() for e in study.windows], study.trainer["max_epochs"]
    (['baseline', 'w0-20', 'w40-50'], 50)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_critical._checks import check_choice
from lightning_critical._namespace import pl
from lightning_critical.data import HierarchicalDataModule
from lightning_critical.deficits import PathwayDeficit
from lightning_critical.experiments._accelerator import accelerator_kwargs
from lightning_critical.models import MultiPathwayLinearNet
from lightning_critical.monitors import SpectralMonitor
from lightning_critical.protocols import end_to_end_maps, find_task_basis
from lightning_critical.schedule import Window
from lightning_critical.spectral import mode_strengths
from lightning_critical.sweep import Execution, Study
from lightning_critical.sweep import windows as window_grid
from lightning_critical.theory import pathway_dynamics

HISTORY_FILE = "spectral_history.csv"
"""The monitor's history file, in each run's log directory (where the trajectories are read from)."""

WindowArg = tuple[int, int] | None
"""A deficit window ``(start, end)`` in epochs, or ``None`` for no deficit."""


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


def pathway_net(seed: int = 0, **model_kwargs: Any) -> MultiPathwayLinearNet:
    """The studies' model factory: :func:`build_pathway_model`'s net (initialised on the default task's basis)."""
    return build_pathway_model(seed=seed, **model_kwargs)[1]


def hierarchical_data() -> HierarchicalDataModule:
    """The studies' datamodule factory: the default hierarchical task (the same for every seed)."""
    return HierarchicalDataModule()


def final_mode_strengths(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, float]:
    """The studies' metric: ``K[p, a]`` of the trained net as ``K/<pathway>/<mode>`` (what the monitor would record)."""
    basis = find_task_basis(module, getattr(trainer, "datamodule", None))
    if basis is None:
        raise ValueError("final_mode_strengths needs a task basis (task_basis() on the model or the datamodule).")
    u, _, v = basis
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, matrix in end_to_end_maps(module).items():
            out.update({f"K/{name}/{a}": k for a, k in enumerate(mode_strengths(matrix, u, v).tolist())})
    return out


@dataclass(frozen=True)
class PathwayTheory:
    """The pathway ODE (:func:`~lightning_critical.theory.pathway_dynamics`) of one net, a function of a run's windows.

    Exact for linear pathways from the aligned init; ``initial`` is the net's measured ``K(0)``
    (float64, on the CPU), so the theory does not depend on where the net then trains.
    """

    singular_values: np.ndarray
    depth: int
    initial: np.ndarray
    lr: float
    max_epochs: int
    mode: str
    deprived: int
    pathways: tuple[str, ...]

    def trajectory(self, windows: Sequence[Window]) -> np.ndarray:
        """``K`` after each step, shape ``(max_epochs + 1, P, M)``, the deprived pathway's deficit in ``windows``."""
        deficits = {self.deprived: [(w.start, int(w.stop)) for w in windows]} if windows else {}
        return pathway_dynamics(self.singular_values, self.depth, self.initial, self.lr, self.max_epochs,
                                deficits=deficits, mode=self.mode)

    def by_pathway(self, windows: Sequence[Window]) -> dict[str, np.ndarray]:
        """:meth:`trajectory` per pathway name (what ``SpectralMonitor(theory=...)`` and ``join_theory`` take)."""
        k = self.trajectory(windows)
        return {p: k[:, i] for i, p in enumerate(self.pathways)}


def pathway_theory(max_epochs: int, mode: str, deprived: str, seed: int = 0,
                   **model_kwargs: Any) -> PathwayTheory | None:
    """The theory of the net built with ``model_kwargs`` and ``seed``; ``None`` where there is none.

    Nonlinear nets and deficits other than ``"freeze"`` / ``"silence"`` have no exact theory.
    Raises ``ValueError`` for a ``deprived`` pathway the net does not have.
    """
    dm, model = build_pathway_model(seed=seed, **model_kwargs)
    names = list(model.pathways)
    check_choice("deprived", deprived, names)
    if model_kwargs.get("nonlinearity") is not None or mode not in ("freeze", "silence"):
        return None
    return PathwayTheory(dm.task_basis()[1].numpy(), model_kwargs.get("depth", 4), initial_mode_strengths(model, dm),
                         model_kwargs.get("lr", 0.01), max_epochs, mode, names.index(deprived), tuple(names))


def trajectory_monitor(windows: tuple[Window, ...], every_n_steps: int,
                       theory: PathwayTheory | None) -> list[pl.Callback]:
    """The studies' callbacks: a ``SpectralMonitor`` of the pathway maps, overlaying the theory of the run's windows."""
    return [SpectralMonitor(
        targets="maps", every_n_steps=every_n_steps, metrics=("singular_values", "mode_strength", "effective_rank"),
        theory={"mode_strength": theory.by_pathway(windows)} if theory is not None else None,
        history_file=HISTORY_FILE,
    )]


def fitted(window: WindowArg, max_epochs: int) -> Window | None:
    """The window as a run trains it: cut at the end of training (``None``: no deficit, also for a start past it)."""
    if window is None or window[0] >= max_epochs:
        return None
    return Window(window[0], min(window[1], max_epochs))


def bundled_execution() -> Execution:
    """How the bundled experiments train: serially in this process, on its threads, quietly, raising a failed run."""
    return Execution(backend="serial", threads_per_run=torch.get_num_threads(), progress=False, errors="raise",
                     resume="rerun")


def _study(windows: Sequence[Window | None], max_epochs: int, mode: str, deprived: str, log_every: int,
           accelerator: str, seed: int, model_kwargs: dict[str, Any], **fields: Any) -> Study:
    """The study's fields shared by both experiments; ``fields``: the others (callbacks, params)."""
    grid = window_grid([(w.start, int(w.stop)) if w is not None else None for w in dict.fromkeys(windows)])
    return Study(
        model=functools.partial(pathway_net, **model_kwargs), datamodule=hierarchical_data,
        deficit=PathwayDeficit(deprived, window=(0, 1), mode=mode), windows=grid, metrics=final_mode_strengths,
        trainer={"max_epochs": max_epochs, "devices": 1, "log_every_n_steps": max(1, log_every),
                 **accelerator_kwargs(accelerator)},
        seeds=[seed], **fields,
    )


def pathway_deficit_study(windows: Sequence[WindowArg], *, max_epochs: int = 1000, mode: str = "freeze",
                          deprived: str = "b", every_n_steps: int = 10, seed: int = 0, accelerator: str = "auto",
                          **model_kwargs: Any) -> Study:
    """One run per deficit window of the bundled net, each recording its mode strengths against the theory.

    ``windows``: ``(start, end)`` epochs of the deficit of pathway ``deprived`` (``None``: no
    deficit); a window past ``max_epochs`` ends there. ``model_kwargs`` (depth, width, lr,
    init_scale, init_noise, init_noise_draw, independent_noise, nonlinearity) go to the net.
    The study's grid holds the no-deficit baseline too (every sweep's does). Each run's log
    directory holds the monitor's :data:`HISTORY_FILE`.
    """
    theory = pathway_theory(max_epochs, mode, deprived, seed, **model_kwargs)
    monitor = functools.partial(trajectory_monitor, every_n_steps=every_n_steps, theory=theory)
    return _study([fitted(w, max_epochs) for w in windows], max_epochs, mode, deprived, every_n_steps, accelerator,
                  seed, model_kwargs, callbacks=monitor)


def deficit_onset_study(depths: Sequence[int], onsets: Sequence[int], length: int = 150, *, max_epochs: int = 1000,
                        deprived: str = "b", mode: str = "freeze", seed: int = 0, accelerator: str = "auto",
                        **model_kwargs: Any) -> Study:
    """The SGD points of the onset sweep: a deficit ``[onset, onset + length)`` per onset, x ``depths``.

    An onset at or past ``max_epochs`` is the no-deficit run. Runs whose deficits start later
    share their clean epochs. ``model_kwargs``: as in :func:`pathway_deficit_study` (not depth).
    """
    for depth in depths:
        pathway_theory(max_epochs, mode, deprived, seed, depth=depth, **model_kwargs)  # checks deprived
    return _study([fitted((t, t + length), max_epochs) for t in onsets], max_epochs, mode, deprived, max_epochs,
                  accelerator, seed, model_kwargs, params={"depth": list(depths)})

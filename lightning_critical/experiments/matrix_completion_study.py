"""What the matrix-completion experiments train: a switch sweep as a :class:`~lightning_critical.sweep.Study`.

A depth-``N`` factorization pre-trained on ``"pretrain"`` during ``[0, T)`` (the deficit
window, a :class:`~lightning_critical.TaskSwitch` from :func:`pretrain_until`), then
``continue_epochs`` on ``"target"``: the removal grid ``lc.sweep.removal(switch_epochs,
epochs_after=continue_epochs)``, whose baseline is the switch at epoch 0. The runs train as
one vectorized ensemble per seed and swept value (:func:`switch_sweep_execution`'s
:class:`~lightning_critical.sweep.FactorizationEnsembleRunner`). An "epoch" is one
full-batch SGD step, as in the paper.

Example::

    >>> study = switch_sweep_study("depth", [1, 2], switch_epochs=[0, 200], continue_epochs=200, size=10,
    ...                            n_observed=40, pretrain_rank=3, target_rank=1)
    >>> [e.label() for e in study.windows], study.params
    (['baseline', 'w0-200'], {'depth': [1, 2]})
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical._checks import check_choice, check_int
from lightning_critical.data.matrix_completion import MatrixCompletionDataModule
from lightning_critical.deficits.task_switch import TaskSwitch
from lightning_critical.experiments._accelerator import accelerator_kwargs
from lightning_critical.models.factorization_ensemble import FactorizationEnsemble
from lightning_critical.models.matrix_factorization import INITS, DeepMatrixFactorization
from lightning_critical.schedule import Window, largest_common_divisor
from lightning_critical.sweep import Execution, FactorizationEnsembleRunner, Study, removal

PAPER_SWITCH_EPOCHS: tuple[int, ...] = (0, 1000, 5000, 10000, 20000, 40000, 60000, 80000, 100000)
PAPER_DEPTHS: tuple[int, ...] = (1, 2, 3)
SWEEP_PARAMETERS: tuple[str, ...] = (
    "depth", "pretrain_rank", "target_rank", "n_observed", "pretrain_observed", "init_scale", "lr", "seed", "size",
)
SWEEP_DEFAULTS: dict[str, Any] = {
    "depth": 3, "switch_epochs": PAPER_SWITCH_EPOCHS, "continue_epochs": 30000, "size": 100, "n_observed": 2000,
    "pretrain_rank": 10, "target_rank": 5, "init_scale": 1e-3, "lr": 0.2, "seed": 0, "init": "gaussian",
    "pretrain_observed": None, "sgd_steps_per_epoch": None, "dtype": torch.float32, "num_threads": 1,
    "accelerator": "auto",
}
"""The arguments of one switch sweep and their defaults (the paper's setting)."""
_MODEL_ARGS = ("size", "depth", "init", "init_scale", "lr")
_DATA_ARGS = ("size", "n_observed", "pretrain_rank", "target_rank", "pretrain_observed")


def check_switch_sweep(
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


def check_arguments(job: dict[str, Any]) -> int:
    """:func:`check_switch_sweep` of one sweep's arguments (a dictionary with the keys of :data:`SWEEP_DEFAULTS`)."""
    return check_switch_sweep(job["depth"], list(job["switch_epochs"]), job["continue_epochs"], job["size"],
                              job["n_observed"], job["pretrain_rank"], job["target_rank"], job["init"],
                              job["pretrain_observed"], job["sgd_steps_per_epoch"])


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
    :func:`~lightning_critical.experiments.matrix_completion_sweep`.

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


def switch_sweep_study(parameter: str | None = None, values: Sequence[Any] = (), **kwargs: Any) -> Study:
    """The switch sweep of :data:`SWEEP_DEFAULTS` updated by ``kwargs``, over ``values`` of ``parameter`` if given.

    One run per switch epoch (its pre-training is the deficit window ``[0, T)``; ``T = 0`` is the
    baseline, which the grid holds whether or not ``switch_epochs`` names it) x the values.
    The metrics are the ensemble's ``test_loss``, ``train_loss``, ``sgd_steps`` and
    ``singular_values/<i>``. ``kwargs``: those of :data:`SWEEP_DEFAULTS`; how the runs
    train (runner, threads, dtype) is :func:`switch_sweep_execution`'s.
    """
    fixed = {**SWEEP_DEFAULTS, **kwargs}
    sizes = list(values) if parameter == "size" else [fixed["size"]]
    top_k = min(FactorizationEnsembleRunner().top_k, max(sizes))  # a smaller matrix has fewer: NaN
    return Study(
        model=functools.partial(DeepMatrixFactorization, **{k: fixed[k] for k in _MODEL_ARGS if k != parameter}),
        datamodule=functools.partial(completion_data, **{k: fixed[k] for k in _DATA_ARGS if k != parameter}),
        deficit=pretrain_until,
        windows=removal(fixed["switch_epochs"], epochs_after=fixed["continue_epochs"]),
        metrics=["test_loss", "train_loss", "sgd_steps"] + [f"singular_values/{i}" for i in range(top_k)],
        trainer={"devices": 1, **accelerator_kwargs(fixed["accelerator"])},
        seeds=list(values) if parameter == "seed" else [fixed["seed"]],
        params={parameter: list(values)} if parameter not in (None, "seed") else None,
    )


def switch_sweep_execution(processes: int = 1, values: int = 1, sgd_steps_per_epoch: int | None = None,
                           dtype: torch.dtype = torch.float32, num_threads: int | None = 1,
                           progress: bool = False) -> Execution:
    """How a switch sweep trains: one ensemble per value, ``processes`` of them at once, ``num_threads`` each."""
    runner = FactorizationEnsembleRunner(sgd_steps_per_epoch=sgd_steps_per_epoch, initial_task="pretrain",
                                         dtype=dtype)
    return Execution(backend="process" if processes > 1 else "serial", workers=min(processes, values),
                     threads_per_run=num_threads or torch.get_num_threads(), runner=runner, progress=progress,
                     errors="raise")


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
    """The ensemble, datamodule and per-member ``TaskSwitch`` callbacks of one sweep, built by hand.

    What the ``FactorizationEnsembleRunner`` builds from :func:`switch_sweep_study`, for tests of
    the ensemble (the sweeps themselves run through the engine). Arguments as in
    :func:`~lightning_critical.experiments.matrix_completion_sweep`. Fit with
    ``pl.Trainer(max_epochs=ensemble.max_epochs, callbacks=switches)``.
    """
    switch = list(switch_epochs)
    k = check_switch_sweep(depth, switch, continue_epochs, size, n_observed, pretrain_rank, target_rank, init,
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

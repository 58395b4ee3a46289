"""Ready-made final metrics for sweeps: functions ``(trainer, module) -> dict[str, float]``.

``mode_strength_share`` reads a deep linear model's task modes; the reliance factories
(``ablation_reliance``, ``relative_source_variance``, ``fisher_share``) return such functions
for any model with two or more input sources or pathways (:mod:`lightning_critical.reliance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical.protocols import end_to_end_maps, find_task_basis
from lightning_critical.reliance.ablation import MetricFn
from lightning_critical.reliance.sources import SourcesLike
from lightning_critical.reliance.summary import Reliance
from lightning_critical.spectral import mode_strengths


def mode_strength_share(trainer: Any, module: Any) -> dict[str, float]:
    """Each pathway's share of every task mode's strength, ``K[p, a] / sum_q K[q, a]``, as ``share/<p>/<a>``.

    Needs a model with ``end_to_end_maps()`` and a task basis (the model's or the datamodule's
    ``task_basis()``), e.g. ``lc.models.MultiPathwayLinearNet``: the critical-period measure
    of Kleinman, Achille & Soatto (how much of each mode the deprived pathway ends with).

    Example::

        >>> import lightning_critical as lc
        >>> dm = lc.data.HierarchicalDataModule()
        >>> net = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis())
        >>> round(mode_strength_share(None, net)["share/a/0"], 3)
        0.5
    """
    maps = end_to_end_maps(module)
    basis = find_task_basis(module, getattr(trainer, "datamodule", None))
    if not maps or basis is None:
        raise ValueError(
            "mode_strength_share needs a model with end_to_end_maps() and a task basis (task_basis() on the model "
            "or the datamodule), e.g. lc.models.MultiPathwayLinearNet."
        )
    u, _, v = basis
    strengths = {name: mode_strengths(m, u, v).double() for name, m in maps.items()}
    total = sum(strengths.values(), torch.zeros((), dtype=torch.float64))
    return {f"share/{name}/{a}": float(k[a] / total[a]) for name, k in strengths.items() for a in range(k.numel())}


# -- reliance on sources / pathways (any model; lightning_critical.reliance) ---------------------
def ablation_reliance(sources: SourcesLike = None, dataloader: str = "val", replace: str = "shuffle",
                      metric: str | MetricFn = "accuracy", max_examples: int = 512, seed: int = 0) -> Reliance:
    """A final metric: each source's ablation reliance, ``reliance/ablation/<source>``, and the metric without it.

    ``reliance_s = (acc_intact - acc_without_s) / (acc_intact - chance)`` for accuracy (0: the
    source is not used; 1: the network falls to chance without it), ``(L_without - L_intact) /
    L_without`` for a loss; see :mod:`lightning_critical.reliance.ablation`. Also gives
    ``reliance/<metric>/intact`` and ``reliance/<metric>/without/<source>``.

    Example::

        >>> import lightning_critical as lc
        >>> metric = ablation_reliance(sources=["a", "b"], dataloader="val")
        >>> metric.measures, metric.dataloader
        (('ablation',), 'val')
        >>> # lc.sweep.run(..., metrics=["val_acc", metric])
    """
    return Reliance(measures=("ablation",), sources=sources, dataloader=dataloader, replace=replace, metric=metric,
                    max_examples=max_examples, seed=seed)


def relative_source_variance(layer: str | None = None, sources: SourcesLike = None, pair: Sequence[str] | None = None,
                             dataloader: str = "val", max_examples: int = 256, fixed: int = 32,
                             threshold: float = 0.9) -> Reliance:
    """A final metric: the RSV summary of ``layer``'s units: ``reliance/rsv/mean``, ``/<a>``, ``/<b>``, ``/dead``.

    ``reliance/rsv/<a>`` is the fraction of units with ``RSV > threshold`` (driven by ``a``
    only; Kleinman, Achille & Soatto, CVPR 2023); see :mod:`lightning_critical.reliance.variance`.

    Example::

        >>> relative_source_variance(layer="fusion").measures
        ('rsv',)
    """
    return Reliance(measures=("rsv",), sources=sources, pair=pair, layer=layer, dataloader=dataloader,
                    max_examples=max_examples, fixed=fixed, threshold=threshold)


def fisher_share(pathways: Sequence[str] | None = None, dataloader: str = "val", likelihood: str = "categorical",
                 max_examples: int = 256, seed: int = 0) -> Reliance:
    """A final metric: each pathway's share of the Fisher trace, ``reliance/fisher_share/<pathway>``.

    ``likelihood="gaussian"`` for regression outputs (``MultiPathwayLinearNet``); see
    :mod:`lightning_critical.reliance.fisher_share`.

    Example::

        >>> fisher_share(likelihood="gaussian", dataloader="train").measures
        ('fisher_share',)
    """
    return Reliance(measures=("fisher_share",), sources=None if pathways is None else list(pathways),
                    dataloader=dataloader, likelihood=likelihood, max_examples=max_examples, seed=seed)

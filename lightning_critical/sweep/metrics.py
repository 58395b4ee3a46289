"""Ready-made final metrics for sweeps: functions ``(trainer, module) -> dict[str, float]``."""

from __future__ import annotations

from typing import Any

import torch

from lightning_critical.protocols import end_to_end_maps, find_task_basis
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

"""``analyze()``: the spectral metrics of every weight matrix of a model as one table, in one call."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from lightning_critical._checks import check_choice
from lightning_critical.spectral.formulas import power_law_fit
from lightning_critical.spectral.matrices import Patterns, conv_taps, find_weight_matrices
from lightning_critical.spectral.metrics import check_metrics, scalar_metric_names, scalar_metrics
from lightning_critical.spectral.svd import singular_values

CONV_VIEWS: tuple[str, ...] = ("flatten", "taps")


def analyze(
    module: nn.Module,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    metrics: Sequence[str] | None = None,
    conv: str = "flatten",
    method: str = "auto",
    dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Spectral metrics of every weight matrix of ``module`` in one call, one row per matrix.

    Like weightwatcher's ``analyze()``, with the targets, matrix views and metrics of
    :class:`~lightning_critical.SpectralMonitor` (which tracks the same metrics over training):
    rows in module order (that of ``named_parameters()``; a tied weight appears once), columns
    ``target``, ``rows``, ``cols`` (the matrix shape), ``taps`` (matrices pooled into the row's
    spectrum: 1 unless ``conv="taps"``), one column per metric and, when ``alpha`` is computed,
    the fit's ``xmin``, ``ks_distance`` and ``tail_size`` (eigenvalues ``>= xmin``). Formulas in
    :mod:`lightning_critical.spectral.metrics`; spectra as :func:`singular_values` computes them (``method``,
    ``dtype``).

    Args:
        module: any ``nn.Module``.
        include, exclude: names or globs of targets, as in :func:`find_weight_matrices`.
        metrics: scalar metric names (default: every registered one,
            :func:`~lightning_critical.spectral.metrics.scalar_metric_names`).
        conv: ``"flatten"`` (default; the monitor's view, ``(out, in/groups * prod(kernel))``)
            or ``"taps"``, weightwatcher's convention for ``nn.Conv1d/2d/3d``: the spectrum is
            the union of the spectra of the ``prod(kernel)`` matrices ``(out, in/groups)``, one
            per kernel position, and ``rows``/``cols`` give that matrix's shape (weightwatcher
            also rescales conv weights by a constant, which moves its norms, not ``alpha``).
        method: see :func:`singular_values`.
        dtype: computation dtype (default float32, float64 for float64 weights).

    Raises:
        ValueError: for an unknown or non-scalar metric, an unknown ``conv``, or ``include`` /
            ``exclude`` patterns that leave no matrix.

    Example::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        >>> table = analyze(net, metrics=["alpha", "numerical_rank"])
        >>> table[["target", "rows", "cols", "numerical_rank"]].values.tolist()
        [['0.weight', 128, 64, 64], ['2.weight', 10, 128, 10]]
        >>> bool(table.alpha.notna().all())
        True
    """
    scalars = scalar_metric_names()
    names = scalars if metrics is None else check_metrics(metrics, "metrics")
    not_scalar = [m for m in names if m not in scalars]
    if not_scalar:
        raise ValueError(f"metrics={list(names)!r} is not valid: {not_scalar} are not scalar metrics; "
                         f"analyze() computes {scalars}.")
    check_choice("conv", conv, CONV_VIEWS)
    targets = find_weight_matrices(module, include, exclude)
    if not targets and (include is not None or exclude is not None):
        raise ValueError(f"include={include!r}, exclude={exclude!r} leave no weight matrix of "
                         f"{type(module).__name__}; available: {sorted(find_weight_matrices(module))[:40]}.")
    taps = conv_taps(module) if conv == "taps" else {}
    mats: dict[str, Tensor] = {}
    pooled: dict[str, list[str]] = {}
    for target, mat in targets.items():
        if target in taps:
            keys = [f"{target}[{t}]" for t in range(taps[target].shape[0])]
            mats.update(zip(keys, taps[target], strict=True))
            pooled[target] = keys
        else:
            mats[target], pooled[target] = mat, [target]
    spectra = singular_values(mats, dtype=dtype, method=method)
    fitted = "alpha" in names or "alpha_weighted" in names
    rows = []
    for target, keys in pooled.items():
        s = spectra[keys[0]][0] if len(keys) == 1 else torch.cat([spectra[k][0] for k in keys]).sort(descending=True)[0]
        shape = tuple(mats[keys[0]].shape)
        fit = power_law_fit(s, shape) if fitted else None
        row: dict[str, object] = {"target": target, "rows": shape[0], "cols": shape[1], "taps": len(keys)}
        row.update(scalar_metrics(s, names, shape, fit=fit))
        if fit is not None:
            row.update(xmin=fit.xmin, ks_distance=fit.ks_distance, tail_size=fit.tail_size)
        rows.append(row)
    columns = ["target", "rows", "cols", "taps", *names] + (["xmin", "ks_distance", "tail_size"] if fitted else [])
    table = pd.DataFrame(rows, columns=columns)
    if "numerical_rank" in names:
        table["numerical_rank"] = table["numerical_rank"].astype(int)
    return table


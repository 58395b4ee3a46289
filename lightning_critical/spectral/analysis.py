"""``analyze()``: the spectral metrics of every weight matrix of a model as one table, in one call."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from lightning_critical._checks import check_choice
from lightning_critical.spectral.formulas import power_law_fit
from lightning_critical.spectral.matrices import Patterns, conv_taps, conv_views, find_weight_matrices
from lightning_critical.spectral.metrics import check_metrics, scalar_metric_names, scalar_metrics
from lightning_critical.spectral.svd import singular_values

CONV_VIEWS: tuple[str, ...] = ("taps", "flatten")
"""``analyze(conv=...)`` choices; the first, weightwatcher's convention, is the default."""

WEIGHTWATCHER_CONV = "taps"
"""The conv view that equals weightwatcher's (``pool=True``, its default) for ``nn.Conv2d``."""


def analyze(
    module: nn.Module,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    metrics: Sequence[str] | None = None,
    conv: str = "taps",
    method: str = "auto",
    dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Spectral metrics of every weight matrix of ``module`` in one call, one row per matrix.

    Like weightwatcher's ``analyze()``, with the targets and metrics of
    :class:`~lightning_critical.SpectralMonitor` (which tracks the same metrics over training):
    rows in module order (that of ``named_parameters()``; a tied weight appears once), columns
    ``target``, ``rows``, ``cols`` (the matrix shape), ``taps`` (matrices pooled into the row's
    spectrum: more than 1 only for a convolution under ``conv="taps"``), ``conv`` (the view a
    convolution weight was read with, ``"taps"`` or ``"flatten"``; missing (NaN) for other rows),
    one column per metric and, when ``alpha`` is computed, the fit's ``xmin``, ``ks_distance``
    and ``tail_size`` (eigenvalues ``>= xmin``). ``table.attrs["conv"]`` is the ``conv``
    argument and ``table.attrs["weightwatcher_conv"]`` whether it is weightwatcher's
    convention. Formulas in :mod:`lightning_critical.spectral.metrics`; spectra as
    :func:`singular_values` computes them (``method``, ``dtype``). A complex weight's spectrum
    is that of the complex matrix (never of its real part).

    Convolutions: the default ``conv="taps"`` is weightwatcher's convention (its ``analyze()``
    with ``pool=True``, the default): an ``nn.Conv2d`` weight ``(out, in, kh, kw)`` is read as
    the ``kh * kw`` matrices ``(out, in)``, one per kernel position, whose eigenvalues are pooled
    into one ESD, so ``alpha`` equals weightwatcher's. ``conv="flatten"`` reads it as the one
    matrix ``(out, in/groups * prod(kernel))``, the view :class:`~lightning_critical.SpectralMonitor`
    tracks; its ``alpha`` can differ from weightwatcher's by several units.

    Args:
        module: any ``nn.Module``.
        include, exclude: names or globs of targets, as in :func:`find_weight_matrices`.
        metrics: scalar metric names (default: every registered one,
            :func:`~lightning_critical.spectral.metrics.scalar_metric_names`).
        conv: ``"taps"`` (default; for ``nn.Conv1d/2d/3d``: the union of the spectra of the
            ``prod(kernel)`` matrices ``(out, in/groups)``, and ``rows``/``cols`` give that
            matrix's shape; weightwatcher also multiplies Conv2d weights by ``sqrt(1/2)``, which
            moves its norms by ``log10(2)``, not ``alpha``) or ``"flatten"`` (the monitor's view).
            ``nn.ConvTranspose*`` weights are always flattened.
        method: see :func:`singular_values`.
        dtype: computation precision (default float32, float64 for float64 / complex128 weights;
            complex weights are computed in the complex type of that precision).

    Raises:
        ValueError: for an unknown or non-scalar metric, an unknown ``conv``, or ``include`` /
            ``exclude`` patterns that leave no matrix.

    Example::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 10))
        >>> table = analyze(net, metrics=["alpha", "numerical_rank"])
        >>> table[["target", "rows", "cols", "taps", "numerical_rank"]].values.tolist()
        [['0.weight', 8, 3, 9, 27], ['2.weight', 10, 8, 1, 8]]
        >>> table.conv[0], table.attrs["conv"], table.attrs["weightwatcher_conv"], bool(table.alpha.notna().all())
        ('taps', 'taps', True, True)
    """
    names = _check_arguments(metrics, conv)
    targets = find_weight_matrices(module, include, exclude)
    if not targets and (include is not None or exclude is not None):
        raise ValueError(f"include={include!r}, exclude={exclude!r} leave no weight matrix of "
                         f"{type(module).__name__}; available: {sorted(find_weight_matrices(module))[:40]}.")
    mats, pooled = _matrices(module, targets, conv)
    spectra = singular_values(mats, dtype=dtype, method=method)
    fitted = "alpha" in names or "alpha_weighted" in names
    views = conv_views(module, conv)
    rows = []
    for target, keys in pooled.items():
        s = spectra[keys[0]][0] if len(keys) == 1 else torch.cat([spectra[k][0] for k in keys]).sort(descending=True)[0]
        shape = tuple(mats[keys[0]].shape)
        fit = power_law_fit(s, shape) if fitted else None
        row: dict[str, object] = {"target": target, "rows": shape[0], "cols": shape[1], "taps": len(keys),
                                  "conv": views.get(target)}
        row.update(scalar_metrics(s, names, shape, fit=fit))
        if fit is not None:
            row.update(xmin=fit.xmin, ks_distance=fit.ks_distance, tail_size=fit.tail_size)
        rows.append(row)
    fit_columns = ["xmin", "ks_distance", "tail_size"] if fitted else []
    columns = ["target", "rows", "cols", "taps", "conv", *names, *fit_columns]
    table = pd.DataFrame(rows, columns=columns)
    if "numerical_rank" in names:
        table["numerical_rank"] = table["numerical_rank"].astype(int)
    table.attrs.update(conv=conv, weightwatcher_conv=conv == WEIGHTWATCHER_CONV)
    return table


def _check_arguments(metrics: Sequence[str] | None, conv: str) -> tuple[str, ...]:
    """The metric names to compute; raise for a non-scalar metric or an unknown ``conv``."""
    scalars = scalar_metric_names()
    names = scalars if metrics is None else check_metrics(metrics, "metrics")
    not_scalar = [m for m in names if m not in scalars]
    if not_scalar:
        raise ValueError(f"metrics={list(names)!r} is not valid: {not_scalar} are not scalar metrics; "
                         f"analyze() computes {scalars}.")
    check_choice("conv", conv, CONV_VIEWS)
    return tuple(names)


def _matrices(
    module: nn.Module, targets: dict[str, Tensor], conv: str
) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """The matrices to decompose (a conv weight's taps under ``conv="taps"``) and, per target,
    the keys of the matrices pooled into its spectrum."""
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
    return mats, pooled


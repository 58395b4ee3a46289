"""Spectral metrics: one registry that knows every metric's formula and what it needs.

Plain torch and numpy, no Lightning. Each metric is a :class:`Metric` in :data:`REGISTRY`: its
name, its formula and whether that formula needs every singular value (``full_spectrum``) or is
still exact from the leading ones (what a ``top_k`` monitor may record). Most formulas are
functions of a :class:`Spectrum` (the singular values with the matrix shape); two metrics take
other inputs: ``mode_strength`` the matrix and a task basis, ``subspace_drift`` the leading
left singular vectors of two records. Adding a metric is one :func:`register_metric` call (the
built-in ones below are registered the same way, at the end of this module); the monitors and
:func:`~lightning_critical.spectral.analyze` ask the registry, nothing else lists metrics.

Metric formulas, with ``s_1 >= s_2 >= ... >= 0`` the singular values of the matrix:

=======================  ====================================================================
``singular_values``      all of them (or the ``top_k`` largest), one record per index
``spectral_norm``        ``s_1``
``frobenius_norm``       ``sqrt(sum s_i^2)``
``nuclear_norm``         ``sum s_i``
``stable_rank``          ``sum s_i^2 / s_1^2``
``effective_rank``       ``exp(-sum p_i log p_i)`` with ``p_i = s_i / sum s_j`` (Roy & Vetterli 2007)
``participation_ratio``  ``(sum s_i^2)^2 / sum s_i^4``
``condition_number``     ``s_1 / s_r`` with ``s_r`` the smallest singular value above
                         ``max(m, n) * eps(dtype) * s_1`` (finite: numerically-zero values are
                         ignored; ``1`` for a zero matrix)
``log_norm``             ``log10(sum s_i^2)`` (weightwatcher's ``log_norm``: ``log10`` of the squared
                         Frobenius norm)
``log_spectral_norm``    ``log10(s_1^2)`` (weightwatcher's ``log_spectral_norm``; its
                         ``spectral_norm`` column is ``s_1^2``, our ``spectral_norm ** 2``)
``alpha``                exponent of the power-law tail of the ESD ``{s_i^2}``, maximum likelihood at
                         the KS-optimal ``xmin`` as weightwatcher fits it (:mod:`lightning_critical.spectral.esd`);
                         the numerically-zero values (those counted out of ``numerical_rank``) are
                         left out; NaN with fewer than two others
``alpha_weighted``       ``alpha * log10(s_1^2)``
``mp_soft_rank``         ``lambda_+ / s_1^2`` with ``lambda_+`` the Marchenko-Pastur bulk edge fitted
                         from the median of ``{s_i^2}`` (:func:`lightning_critical.spectral.esd.mp_soft_rank`):
                         about 1 for a random matrix, smaller as learned directions leave the bulk
``numerical_rank``       number of ``s_i > max(m, n) * eps(dtype) * s_1`` (``numpy.linalg.matrix_rank``'s
                         tolerance, ``eps`` of the spectrum's dtype: float32 for float32 weights)
``subspace_drift``       ``1 - ||U_prev^T U_now||_F^2 / k`` for the top-``k`` left singular
                         vectors: 0 if the subspace did not move, 1 if it became orthogonal
``mode_strength``        ``K_a = u_a^T W v_a`` for a task basis ``(U, S, V)``
=======================  ====================================================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_critical.spectral.esd import PowerLawFit, mp_soft_rank
from lightning_critical.spectral.formulas import fit_numpy, mode_strengths, rank_tolerance, subspace_drift

INPUTS: tuple[str, ...] = ("spectrum", "basis", "vectors")
"""What a formula takes: a :class:`Spectrum`; ``(matrix, U, V)`` of a task basis; ``(U_prev, U_now)``."""


@dataclass(frozen=True)
class Metric:
    """One spectral metric: ``formula`` and what it needs.

    Attributes:
        name: the metric's name in records, tables and logger tags.
        formula: for ``needs="spectrum"``, a function of a :class:`Spectrum` returning a float
            (or, with ``vector``, a 1-D sequence: one record per index).
        full_spectrum: whether the formula needs every singular value; such a metric is refused
            with ``top_k`` (a truncated spectrum would silently give another number).
        vector: one value per index (``index`` 0, 1, ...) instead of one scalar (``index`` -1).
        needs: one of :data:`INPUTS`.
    """

    name: str
    formula: Callable[..., Any]
    full_spectrum: bool
    vector: bool = False
    needs: str = "spectrum"

    @property
    def is_scalar(self) -> bool:
        """A scalar computed from the singular values (what :func:`scalar_metrics` and ``analyze`` give)."""
        return self.needs == "spectrum" and not self.vector


REGISTRY: dict[str, Metric] = {}
"""Every known metric by name, built-in ones first, in the order they were registered."""
_BUILT_IN: set[str] = set()


class Spectrum:
    """The singular values of one matrix, with what formulas derive from them (computed once, on demand).

    ``values`` are the singular values, descending, as float64 numpy; ``dtype`` is the torch dtype
    they were computed in (it sets the numerical-rank tolerance). ``entries`` is the matrix itself,
    given when the spectrum is truncated (``top_k``): the Frobenius norm is then exact from it.

    Example::

        >>> sp = Spectrum(torch.tensor([3.0, 4.0]).sort(descending=True).values, (2, 2))
        >>> sp.top, sp.sum_squares, sp.frobenius_norm
        (4.0, 25.0, 5.0)
    """

    def __init__(
        self, values: Tensor, shape: Sequence[int], entries: Tensor | None = None, fit: PowerLawFit | None = None
    ) -> None:
        # One transfer, then float64 numpy: far less per-call overhead than torch ops on short vectors.
        self.values: np.ndarray = values.detach().to("cpu", torch.float64).numpy()
        self.dtype = values.dtype
        self.shape = tuple(shape)
        self.entries = entries
        self._fit = fit

    @functools.cached_property
    def top(self) -> float:
        """``s_1`` (0 for an empty spectrum)."""
        return float(self.values[0]) if self.values.size else 0.0

    @functools.cached_property
    def squares(self) -> np.ndarray:
        """The ESD ``s_i^2``."""
        return self.values * self.values

    @functools.cached_property
    def sum_squares(self) -> float:
        """``sum s_i^2`` of the values held."""
        return float(self.squares.sum())

    @functools.cached_property
    def frobenius_norm(self) -> float:
        """``||W||_F``: from ``entries`` when given (exact under ``top_k``), else ``sqrt(sum s_i^2)``."""
        if self.entries is not None:
            entries = self.entries.detach()
            dtype = self.dtype.to_complex() if entries.is_complex() else self.dtype  # keep the imaginary part
            return float(torch.linalg.matrix_norm(entries.to(dtype)))
        return math.sqrt(self.sum_squares)

    @property
    def frobenius_squared(self) -> float:
        """``||W||_F^2`` (see :attr:`frobenius_norm`)."""
        return self.frobenius_norm**2 if self.entries is not None else self.sum_squares

    @functools.cached_property
    def rank_tolerance(self) -> float:
        """Singular values at or below this times ``s_1`` count as zero (``numpy.linalg.matrix_rank``)."""
        return rank_tolerance(self.dtype, self.shape)

    @functools.cached_property
    def fit(self) -> PowerLawFit:
        """The power-law fit of the ESD's tail (see :func:`power_law_fit`)."""
        return self._fit if self._fit is not None else fit_numpy(self.values, self.rank_tolerance)


def register_metric(name: str, formula: Callable[[Spectrum], Any], full_spectrum: bool = True,
                    vector: bool = False) -> Metric:
    """Make ``name`` a spectral metric that monitors and :func:`~lightning_critical.spectral.analyze` compute.

    Args:
        name: a new metric name (it becomes the ``metric`` column and the logger tag ``<name>/<target>``).
        formula: a function of a :class:`Spectrum` returning a float (a 1-D sequence with ``vector``).
        full_spectrum: whether the formula needs every singular value (the default, the safe
            choice): a monitor with ``top_k`` then refuses the metric instead of computing it
            from the leading values only. Declare ``False`` only if the formula is exact from the
            ``top_k`` largest values.
        vector: one record per index (``index`` 0, 1, ...; the first ``log_top_k`` are logged).

    The registry belongs to the process: register at the top level of the module that defines
    your model or script, so that sweep workers (processes, Ray) importing it know the metric.

    Raises:
        ValueError: for a name already registered or not a non-empty string, or a formula that
            is not callable.

    Example::

        >>> import torch
        >>> from lightning_critical import spectral
        >>> spectral.register_metric("top_gap", lambda sp: float(sp.values[0] - sp.values[1])).full_spectrum
        True
        >>> spectral.scalar_metrics(torch.tensor([3.0, 1.0]), ["top_gap"], (2, 2))
        {'top_gap': 2.0}
        >>> spectral.unregister_metric("top_gap")
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name={name!r} is not valid: give a non-empty metric name without '/'.")
    if name in REGISTRY:
        raise ValueError(f"name={name!r} is not valid: metric {name!r} is already registered; choose another name.")
    if not callable(formula):
        raise ValueError(f"formula={formula!r} is not valid: give a function of a Spectrum.")
    metric = Metric(name, formula, full_spectrum=bool(full_spectrum), vector=bool(vector))
    REGISTRY[name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Forget a metric added by :func:`register_metric` (built-in metrics stay).

    Raises:
        ValueError: for a built-in or unknown metric.
    """
    if name in _BUILT_IN or name not in REGISTRY:
        raise ValueError(f"name={name!r} is not valid: only metrics added by register_metric can be removed; "
                         f"added: {sorted(set(REGISTRY) - _BUILT_IN)}.")
    del REGISTRY[name]


def user_metrics(names: Iterable[str]) -> dict[str, Metric]:
    """The registered (not built-in) metrics among ``names``: what a monitor carries with it."""
    return {name: REGISTRY[name] for name in names if name in REGISTRY and name not in _BUILT_IN}


def metric_names() -> tuple[str, ...]:
    """Every registered metric name: :data:`METRICS`, then those added by :func:`register_metric`."""
    return tuple(REGISTRY)


def scalar_metric_names() -> tuple[str, ...]:
    """The registered scalar metrics computed from singular values (what ``analyze()`` tabulates)."""
    return tuple(name for name, metric in REGISTRY.items() if metric.is_scalar)


def needs_full_spectrum(name: str) -> bool:
    """Whether the metric ``name`` needs every singular value (refused with ``top_k``)."""
    return REGISTRY[name].full_spectrum


def check_metrics(metrics: Iterable[str], name: str = "metrics") -> tuple[str, ...]:
    """Validate metric names (argument ``name``), keeping their order.

    A single string counts as one metric. The ``ValueError`` names the argument and the bad
    metric and lists the valid ones; an empty selection and repeated names are refused too.

    Example::

        >>> check_metrics(["stable_rank", "singular_values"])
        ('stable_rank', 'singular_values')
        >>> check_metrics(["rank"])  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: metrics=['rank'] is not valid: metric 'rank' is not known; choose from ('singular_values',
        'mode_strength', 'spectral_norm', 'frobenius_norm', 'nuclear_norm', 'stable_rank', 'effective_rank',
        'participation_ratio', 'condition_number', 'log_norm', 'log_spectral_norm', 'alpha', 'alpha_weighted',
        'mp_soft_rank', 'numerical_rank', 'subspace_drift').
    """
    known = metric_names()
    if isinstance(metrics, str):
        out: tuple = (metrics,)
    else:
        try:
            out = tuple(metrics)
        except TypeError:
            raise ValueError(f"{name}={metrics!r} is not valid: give metric names from {known}.") from None
    if not out:
        raise ValueError(f"{name}={metrics!r} is empty: give at least one metric from {known}.")
    for m in out:
        if not isinstance(m, str) or m not in REGISTRY:
            raise ValueError(f"{name}={metrics!r} is not valid: metric {m!r} is not known; choose from {known}.")
    repeated = sorted({m for m in out if out.count(m) > 1})
    if repeated:
        raise ValueError(f"{name}={metrics!r} is not valid: {repeated} listed more than once.")
    return out


def scalar_metrics(
    s: Tensor, names: Iterable[str], shape: Sequence[int], fit: PowerLawFit | None = None,
    entries: Tensor | None = None,
) -> dict[str, float]:
    """The scalar spectral metrics of one matrix from its singular values ``s`` (descending).

    ``shape`` is the matrix shape (used for the numerical-rank tolerance of
    ``condition_number``, ``numerical_rank`` and ``alpha``, and the aspect ratio of
    ``mp_soft_rank``). ``fit`` is the spectrum's :func:`power_law_fit` when the caller already
    has it (``alpha``, ``alpha_weighted``). ``entries``: the matrix, for a truncated ``s`` (the
    Frobenius norm and stable rank are then exact from it). See the module docstring for the formulas.

    Example::

        >>> m = scalar_metrics(torch.tensor([2.0, 2.0]), ["stable_rank", "effective_rank"], (2, 2))
        >>> round(m["stable_rank"], 6), round(m["effective_rank"], 6)
        (2.0, 2.0)
        >>> scalar_metrics(torch.tensor([10.0, 1.0, 0.0]), ["log_spectral_norm", "numerical_rank"], (3, 3))
        {'log_spectral_norm': 2.0, 'numerical_rank': 2.0}
    """
    spectrum = Spectrum(s, shape, entries=entries, fit=fit)
    out: dict[str, float] = {}
    for name in names:
        metric = REGISTRY.get(name)
        if metric is None or not metric.is_scalar:
            raise ValueError(f"{name!r} is not a scalar spectral metric; choose from {scalar_metric_names()}.")
        out[name] = metric.formula(spectrum)
    return out


# -- the built-in formulas -------------------------------------------------------------------
def _effective_rank(sp: Spectrum) -> float:
    total = float(sp.values.sum())
    if total <= 0:
        return 0.0
    p = sp.values[sp.values > 0] / total
    return math.exp(-float((p * np.log(p)).sum()))


def _participation_ratio(sp: Spectrum) -> float:
    quad = float((sp.squares * sp.squares).sum())
    return sp.sum_squares**2 / quad if quad > 0 else 0.0


def _condition_number(sp: Spectrum) -> float:
    if sp.top <= 0:
        return 1.0
    kept = sp.values[sp.values > sp.rank_tolerance * sp.top]
    return sp.top / float(kept[-1])


def _numerical_rank(sp: Spectrum) -> float:
    return float(np.count_nonzero(sp.values > sp.rank_tolerance * sp.top)) if sp.top > 0 else 0.0


def _register_built_in(name: str, formula: Callable[..., Any], full_spectrum: bool, vector: bool = False,
                       needs: str = "spectrum") -> None:
    REGISTRY[name] = Metric(name, formula, full_spectrum=full_spectrum, vector=vector, needs=needs)
    _BUILT_IN.add(name)


# Registration order is the order of METRICS (and of error messages that list the metrics).
_register_built_in("singular_values", lambda sp: sp.values, full_spectrum=False, vector=True)
_register_built_in("mode_strength", mode_strengths, full_spectrum=False, vector=True, needs="basis")
_register_built_in("spectral_norm", lambda sp: sp.top, full_spectrum=False)
_register_built_in("frobenius_norm", lambda sp: sp.frobenius_norm, full_spectrum=False)
_register_built_in("nuclear_norm", lambda sp: float(sp.values.sum()), full_spectrum=True)
_register_built_in("stable_rank", lambda sp: sp.frobenius_squared / sp.top**2 if sp.top > 0 else 0.0,
                   full_spectrum=False)
_register_built_in("effective_rank", _effective_rank, full_spectrum=True)
_register_built_in("participation_ratio", _participation_ratio, full_spectrum=True)
_register_built_in("condition_number", _condition_number, full_spectrum=True)
_register_built_in("log_norm", lambda sp: math.log10(sp.sum_squares) if sp.sum_squares > 0 else -math.inf,
                   full_spectrum=True)
_register_built_in("log_spectral_norm", lambda sp: math.log10(sp.top**2) if sp.top > 0 else -math.inf,
                   full_spectrum=False)
_register_built_in("alpha", lambda sp: sp.fit.alpha, full_spectrum=True)
_register_built_in("alpha_weighted", lambda sp: sp.fit.alpha * math.log10(sp.top**2) if sp.top > 0 else math.nan,
                   full_spectrum=True)
_register_built_in("mp_soft_rank", lambda sp: mp_soft_rank(sp.squares, sp.shape), full_spectrum=True)
_register_built_in("numerical_rank", _numerical_rank, full_spectrum=True)
_register_built_in("subspace_drift", subspace_drift, full_spectrum=False, needs="vectors")

METRICS: tuple[str, ...] = metric_names()
"""The built-in metrics (:func:`metric_names` adds those registered later)."""
SCALAR_METRICS: tuple[str, ...] = scalar_metric_names()
"""The built-in scalar metrics of the singular values."""
VECTOR_METRICS: tuple[str, ...] = tuple(name for name in METRICS if name not in SCALAR_METRICS)
"""The built-in metrics that are not scalars of the singular values."""

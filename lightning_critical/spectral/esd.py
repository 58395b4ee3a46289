"""Laws of a weight matrix's empirical spectral density (ESD): power-law tail and Marchenko-Pastur bulk.

Plain numpy, no Lightning, no torch; the metrics ``alpha`` and ``mp_soft_rank`` of
:mod:`lightning_critical.spectral.metrics` are built on it. The ESD of an ``m x n`` matrix ``W``
is the set of the eigenvalues ``lambda_i = s_i^2`` of ``W^T W`` (or ``W W^T``, whichever is smaller), ``s_i`` its
singular values, unnormalised, as weightwatcher (Martin & Mahoney 2021) takes it; for a complex
``W``, of ``W^H W``: still real and non-negative (complex input to these functions is refused).

**Power-law tail** (:func:`fit_power_law`): the density of the largest eigenvalues is fitted by
``p(x) ~ x^(-alpha)`` for ``x >= xmin``, by maximum likelihood with the ``xmin`` that minimises
the Kolmogorov-Smirnov distance (Clauset, Shalizi & Newman 2009), the rule weightwatcher 0.7
applies by default. With ``x_1 <= ... <= x_N`` the positive eigenvalues sorted, every ``x_i``
but the largest is a candidate ``xmin``; its tail ``x_i..x_N`` has ``n = N - i + 1`` values,

* ``alpha_i = 1 + n / sum_{j >= i} log(x_j / x_i)`` (the continuous maximum-likelihood estimate),
* ``D_i = max_{j >= i} | 1 - (x_j / x_i)^(1 - alpha_i) - (j - i) / n |`` (KS distance between the
  fitted power law's CDF and the tail's empirical CDF, taken just below each point as
  weightwatcher does; ``D_i = 1`` when ``alpha_i <= 1``),

and the fit is the candidate with the smallest ``D_i`` (the first on ties). For fewer than
``SMALL_SAMPLE`` (20) eigenvalues weightwatcher switches to a small-sample rule, reproduced too:
only tails of at least ``SMALL_SAMPLE_MIN_TAIL`` (8) values are candidates and ``alpha_i`` uses
``n - 1`` in place of ``n`` (bias-corrected); the smallest ``D_i`` still wins (weightwatcher
0.7.7 also computes ``D_i - 0.868 / sqrt(n)`` for this case, but then selects by ``D_i``), and
when no tail qualifies the whole ESD is the tail. Ties in the data (a tail whose values are all
equal) make a candidate invalid; fewer than two positive eigenvalues give NaN.

**Marchenko-Pastur bulk** (:func:`mp_soft_rank`): for an ``n x m`` matrix (``n >= m``, aspect
ratio ``beta = m / n``) with i.i.d. entries of variance ``sigma^2``, the eigenvalues of
``W^T W / n`` follow the Marchenko-Pastur law on
``[sigma^2 (1 - sqrt(beta))^2, sigma^2 (1 + sqrt(beta))^2]``. The bulk scale is fitted from the
median of the ESD (robust to the few large eigenvalues that learning pulls out of the bulk;
Gavish & Donoho 2014): ``n sigma^2 = median(lambda) / mu_beta``, with ``mu_beta`` the median of
the unit-variance law (:func:`marchenko_pastur_median`). The bulk edge is then
``lambda_+ = n sigma^2 (1 + sqrt(beta))^2`` and the MP soft rank (Martin & Mahoney 2021) is
``lambda_+ / lambda_max``: about 1 for a random matrix (its largest eigenvalue sits at the bulk
edge, up to finite-size fluctuations that can put the ratio slightly above 1), towards 0 as
learned directions stand out of the bulk. weightwatcher (``mp_fit=True``) fits ``sigma`` to a
kernel density estimate of the ESD instead, so its values differ.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from lightning_critical._checks import check_float

SMALL_SAMPLE = 20  # below this many eigenvalues, weightwatcher's small-sample rule
SMALL_SAMPLE_MIN_TAIL = 8  # the shortest tail the small-sample rule considers
_CHUNK_ROWS = 32  # candidates evaluated at once: small chunks stay in cache and skip most of the lower triangle


def real_values(eigenvalues: ArrayLike) -> np.ndarray:
    """``eigenvalues`` as a float64 array; complex input is refused (an ESD is real: ``s_i^2``
    of the complex matrix's singular values), never cut to its real part."""
    arr = np.asarray(eigenvalues)
    if np.iscomplexobj(arr):
        raise ValueError(f"eigenvalues have dtype {arr.dtype}: an ESD is real (the squared singular values "
                         "of the matrix, complex or not); pass s**2 with s = torch.linalg.svdvals(W).")
    return arr.astype(np.float64, copy=False)


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law fit of an ESD's tail: exponent, lower bound, KS distance and tail size."""

    alpha: float
    xmin: float
    ks_distance: float
    tail_size: int


NO_FIT = PowerLawFit(alpha=math.nan, xmin=math.nan, ks_distance=math.nan, tail_size=0)


def fit_power_law(eigenvalues: ArrayLike) -> PowerLawFit:
    """Power-law fit of the tail of an ESD by maximum likelihood at the KS-optimal ``xmin``.

    ``eigenvalues`` are the ESD (``s^2``, any order); non-positive values are left out (the
    caller decides which values count as zero). The rule is in the module docstring. Costs
    ``O(N^2)`` for ``N`` eigenvalues, vectorised (about 10 ms for ``N = 1000``).

    Example::

        >>> rng = np.random.default_rng(0)
        >>> x = (1 - rng.random(2000)) ** (-1 / 1.5)  # exact power law, alpha = 2.5, xmin = 1
        >>> fit = fit_power_law(x)
        >>> round(fit.alpha, 1), fit.tail_size > 500
        (2.5, True)
    """
    x = real_values(eigenvalues).ravel()
    if not np.isfinite(x).all():
        return NO_FIT
    x = np.sort(x[x > 0])
    if x.size < 2:
        return NO_FIT
    log_x = np.log(x)
    big_n = x.size
    small = big_n < SMALL_SAMPLE
    candidates = np.arange(big_n - 1)
    n = (big_n - candidates).astype(np.float64)
    # sum_{j >= i} log(x_j / x_i), from suffix sums of log x
    suffix = np.cumsum(log_x[::-1])[::-1]
    spread = suffix[:-1] - n * log_x[:-1]
    valid = spread > (1e-12 if small else 0.0)
    if small:
        valid &= n >= SMALL_SAMPLE_MIN_TAIL
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + np.where(valid, (n - 1.0 if small else n) / spread, np.nan)
    distances = np.ones(big_n - 1)
    fits = valid & (alphas > 1.0)
    distances[fits] = _ks_distances(log_x, candidates[fits], alphas[fits])
    if not valid.any():
        return _whole_esd_fit(x, log_x) if small else NO_FIT
    # weightwatcher keeps D = 1 for an exponent <= 1; invalid candidates never win
    best = int(np.argmin(np.where(valid, distances, np.inf)))
    return PowerLawFit(
        alpha=float(alphas[best]), xmin=float(x[best]), ks_distance=float(distances[best]), tail_size=int(n[best])
    )


def _whole_esd_fit(x: np.ndarray, log_x: np.ndarray) -> PowerLawFit:
    """Small-sample fallback: the whole ESD as the tail (bias-corrected exponent)."""
    n = x.size
    spread = float(log_x.sum() - n * log_x[0])
    if spread <= 1e-12:
        return NO_FIT
    alpha = 1.0 + (n - 1.0) / spread
    distance = float(_ks_distances(log_x, np.array([0]), np.array([alpha]))[0]) if alpha > 1 else 1.0
    return PowerLawFit(alpha=alpha, xmin=float(x[0]), ks_distance=distance, tail_size=n)


def _ks_distances(log_x: np.ndarray, starts: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``D_i`` for the candidate tails starting at ``starts`` (ascending) with exponents ``alphas``.

    Evaluated in chunks of a few candidates (in cache): a rectangle of the points past every
    candidate's start, with no mask, and the small triangle before the chunk's last start."""
    big_n = log_x.size
    out = np.empty(starts.size)
    for lo in range(0, starts.size, _CHUNK_ROWS):
        i = starts[lo : lo + _CHUNK_ROWS, None]
        slope = 1.0 - alphas[lo : lo + _CHUNK_ROWS, None]
        n = (big_n - i).astype(np.float64)
        first, last = int(i[0, 0]), int(i[-1, 0])
        # minus the gap: (x_j / x_i)^(1 - alpha) - 1 + (j - i) / n, for points j >= every start
        gap = np.expm1(slope * (log_x[last:] - log_x[i]))
        gap += (np.arange(last, big_n) - i) / n
        distance = np.maximum(gap.max(axis=1), -gap.min(axis=1))
        if last > first:  # points between the chunk's first and last starts count for some rows only
            j = np.arange(first, last)[None, :]
            part = np.expm1(slope * np.maximum(log_x[first:last] - log_x[i], 0.0)) + (j - i) / n
            distance = np.maximum(distance, np.where(j >= i, np.abs(part), 0.0).max(axis=1))
        out[lo : lo + _CHUNK_ROWS] = distance
    return out


@functools.lru_cache(maxsize=256)
def marchenko_pastur_median(beta: float) -> float:
    """Median of the unit-variance Marchenko-Pastur law with aspect ratio ``beta`` in ``(0, 1]``.

    The law of the eigenvalues of ``W^T W / n`` for an ``n x m`` matrix with i.i.d. unit-variance
    entries as ``m, n -> inf`` with ``m / n -> beta``; density
    ``sqrt((b - x)(x - a)) / (2 pi beta x)`` on ``[a, b] = [(1 - sqrt(beta))^2, (1 + sqrt(beta))^2]``.
    Computed by Gauss-Legendre quadrature in the angle ``x = 1 + beta + 2 sqrt(beta) cos(phi)``
    (a smooth integrand) and bisection, to about ``1e-12``.

    Example::

        >>> round(marchenko_pastur_median(1.0), 4)
        0.6528
    """
    check_float("beta", beta, low=0, low_inclusive=False, high=1)
    c, r = 1.0 + beta, 2.0 * math.sqrt(beta)
    nodes, weights = np.polynomial.legendre.leggauss(96)

    def mass_above(phi: float) -> float:
        # P(x > c + r cos(phi)) = integral over [0, phi] of r^2 sin^2 / (2 pi beta (c + r cos))
        t = 0.5 * phi * (nodes + 1.0)
        return float(0.5 * phi * (weights * r * r * np.sin(t) ** 2 / (c + r * np.cos(t))).sum() / (2 * math.pi * beta))

    lo, hi = 0.0, math.pi  # mass_above grows from 0 (phi = 0, x = b) to 1 (phi = pi, x = a)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mass_above(mid) < 0.5 else (lo, mid)
    return c + r * math.cos(0.5 * (lo + hi))


def mp_soft_rank(eigenvalues: ArrayLike, shape: tuple[int, ...]) -> float:
    """``lambda_+ / lambda_max``, the Marchenko-Pastur bulk edge fitted from the ESD's median over
    its largest eigenvalue, for the ESD (``s^2``, all ``min(shape)`` of them) of a matrix of
    ``shape``; 0 for a zero matrix. Formula in the module docstring.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> s = np.linalg.svd(rng.standard_normal((1000, 500)), compute_uv=False)
        >>> abs(mp_soft_rank(s**2, (1000, 500)) - 1) < 0.05  # a random matrix: about 1
        True
    """
    lam = real_values(eigenvalues).ravel()
    if lam.size == 0:
        return math.nan
    top = float(lam.max())
    if top <= 0:
        return 0.0
    beta = min(shape) / max(shape)
    edge = float(np.median(lam)) * (1.0 + math.sqrt(beta)) ** 2 / marchenko_pastur_median(beta)
    return edge / top

"""The spectral formulas that take more than the singular values: matrices, bases, singular vectors.

Plain torch and numpy, no Lightning. The registry of metrics
(:mod:`lightning_critical.spectral.metrics`) registers :func:`mode_strengths` (metric
``mode_strength``) and :func:`subspace_drift` (metric ``subspace_drift``) from here, and its
:class:`~lightning_critical.spectral.metrics.Spectrum` uses :func:`rank_tolerance` and the
power-law fit (metric ``alpha``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightning_critical.spectral.esd import NO_FIT, PowerLawFit, fit_power_law
from lightning_critical.spectral.svd import compute_dtype


def rank_tolerance(dtype: torch.dtype, shape: Sequence[int]) -> float:
    """Singular values at or below this times ``s_1`` count as zero (``numpy.linalg.matrix_rank``)."""
    return max(shape) * torch.finfo(dtype).eps if len(shape) else 0.0


def fit_numpy(v: np.ndarray, tol: float) -> PowerLawFit:
    if not v.size or v[0] <= 0:
        return NO_FIT
    return fit_power_law(v[v > tol * v[0]] ** 2)


def power_law_fit(s: Tensor, shape: Sequence[int]) -> PowerLawFit:
    """Power-law fit of the tail of the ESD ``{s_i^2}`` of a matrix of ``shape`` (metric ``alpha``).

    Numerically-zero singular values (at or below ``max(m, n) * eps(dtype) * s_1``) are left
    out; the fit is :func:`lightning_critical.spectral.esd.fit_power_law`. Singular values are
    real: a complex ``s`` (not a spectrum) is refused rather than cut to its real part.

    Example::

        >>> fit = power_law_fit(torch.tensor([3.0, 2.0, 1.0, 0.0]), (4, 4))
        >>> fit.tail_size, round(fit.alpha, 3)
        (3, 1.558)
    """
    if s.is_complex():
        raise ValueError(f"s has dtype {s.dtype}: singular values are real; pass the spectrum "
                         "(e.g. torch.linalg.svdvals of the complex matrix), not the matrix's entries.")
    v = s.detach().to("cpu", torch.float64).numpy()
    return fit_numpy(v, rank_tolerance(s.dtype, shape))


def subspace_drift(u_prev: Tensor, u_now: Tensor) -> float:
    """``1 - ||U_prev^H U_now||_F^2 / k`` between two orthonormal ``(m, k)`` bases
    (``^H``: conjugate transpose; ``^T`` for real bases).

    Example::

        >>> e = torch.eye(3)
        >>> subspace_drift(e[:, :1], e[:, :1]), subspace_drift(e[:, :1], e[:, 1:2])
        (0.0, 1.0)
    """
    k = min(u_prev.shape[1], u_now.shape[1])
    if k == 0:
        return 0.0
    overlap = u_prev[:, :k].mH.to(u_now.dtype) @ u_now[:, :k]
    return float(1.0 - overlap.abs().square().sum() / k)


def mode_strengths(
    matrix: Tensor, u: Tensor, v: Tensor, dtype: torch.dtype | None = None, name: str = "the map"
) -> Tensor:
    """``K_a = u_a^T W v_a`` for each column pair of the task basis ``U`` (out x r), ``V`` (in x r).

    Raises:
        ValueError: when the basis does not fit the matrix, or for a complex matrix (its
            ``K_a`` would be complex; mode strengths are defined for real maps).

    Example::

        >>> mode_strengths(torch.diag(torch.tensor([3.0, 1.0])), torch.eye(2), torch.eye(2)).tolist()
        [3.0, 1.0]
    """
    check_basis_fits(tuple(matrix.shape), u, v)
    if matrix.is_complex():
        raise ValueError(f"mode_strength of {name}: the matrix is complex ({matrix.dtype}); mode strengths "
                         "u_a^T W v_a are defined for real maps. Leave mode_strength out of the metrics.")
    cdtype = compute_dtype(matrix, dtype)
    with torch.no_grad():
        w = matrix.detach().to(cdtype)
        uu = u.detach().to(device=w.device, dtype=cdtype)
        vv = v.detach().to(device=w.device, dtype=cdtype)
        return ((uu.T @ w) * vv.T).sum(dim=1)


def check_basis_fits(shape: tuple[int, ...], u: Tensor, v: Tensor, what: str = "map") -> None:
    """Raise a ``ValueError`` if a task basis ``U`` (out x r), ``V`` (in x r) does not fit ``shape``."""
    if u.dim() != 2 or v.dim() != 2 or u.shape[0] != shape[0] or v.shape[0] != shape[1] or u.shape[1] != v.shape[1]:
        raise ValueError(
            f"task basis with U of shape {tuple(u.shape)} and V of shape {tuple(v.shape)} does not fit "
            f"the {what} of shape {tuple(shape)}: need U (out={shape[0]} x r) and V (in={shape[1]} x r)."
        )

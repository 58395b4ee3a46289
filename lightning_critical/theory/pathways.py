"""Mode-strength dynamics of multi-pathway deep linear networks (numpy/scipy, no Lightning).

Setting (DESIGN.md section 5): ``P`` pathways of depth ``D`` whose outputs are summed, trained
by full-batch gradient descent on ``0.5 * ||Y - sum_p Omega_p X||_F^2`` with whitened inputs,
from a balanced initialisation aligned with the task's singular modes. Every layer of pathway
``p`` then carries the same per-mode strength ``q_{p,a}``, the map's mode strength is
``K_{p,a} = q_{p,a}^D`` and one gradient step is exactly

    q_{p,a} <- q_{p,a} + lr * q_{p,a}^(D-1) * (s_a - sum_r K_{r,a}),

the discrete map implemented by :func:`pathway_dynamics`; its continuous-time limit is
``dK/dt = D K^(2 - 2/D) (s_a - sum_r K_r)`` (:func:`pathway_flow`, :func:`pathway_ode`).

Deficits: during a ``freeze`` window the deprived pathway's ``q`` is held but its ``K`` still
counts in the sum (it still feeds the output); during ``silence`` it is held and left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
from scipy.integrate import solve_ivp

from lightning_critical._checks import check_choice, check_int

DEFICIT_MODES: tuple[str, ...] = ("freeze", "silence")

DeficitKey: TypeAlias = int | tuple[int, int]
"""A pathway index, or ``(pathway, mode)`` for a single-mode lesion."""
DeficitWindow: TypeAlias = tuple[float, float | None] | tuple[float, float | None, str]
"""``(start, end)`` or ``(start, end, "freeze" | "silence")``; ``end=None`` never ends."""
# Mapping is invariant in its key: a dict built with only int (or only tuple) keys is a
# Mapping[int, ...] (Mapping[tuple[int, int], ...]), not a Mapping[DeficitKey, ...].
Deficits: TypeAlias = (
    Mapping[int, Sequence[DeficitWindow]]
    | Mapping[tuple[int, int], Sequence[DeficitWindow]]
    | Mapping[DeficitKey, Sequence[DeficitWindow]]
)


def _initial_strengths(k0: npt.ArrayLike, n_pathways: int, n_modes: int) -> np.ndarray:
    k = np.asarray(k0, dtype=float)
    if k.ndim == 0:
        k = np.full((n_pathways, n_modes), float(k))
    elif k.ndim == 1:
        if k.shape[0] != n_modes:
            raise ValueError(f"k0 has {k.shape[0]} entries but there are {n_modes} singular values.")
        k = np.tile(k, (n_pathways, 1))
    elif k.shape != (n_pathways, n_modes):
        raise ValueError(f"k0 of shape {k.shape} must be a scalar, ({n_modes},) or ({n_pathways}, {n_modes}).")
    if np.any(k <= 0):
        raise ValueError("k0 must be positive: the balanced aligned dynamics start from small positive strengths.")
    return k


def _deficit_masks(
    deficits: Deficits | None, mode: str, n_pathways: int, n_modes: int, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (steps, P, M) masks: K[p, a] held during the update at step t, and left out of the sum."""
    held = np.zeros((steps, n_pathways, n_modes), dtype=bool)
    silenced = np.zeros_like(held)
    t = np.arange(steps)
    for key, windows in (deficits or {}).items():
        p, modes = (key[0], [key[1]]) if isinstance(key, tuple) else (key, list(range(n_modes)))
        # integers only: a bool would index the masks as a boolean array and deprive every pathway
        p = check_int("deficit pathway index", p, low=0, high=n_pathways - 1)
        modes = [check_int("deficit mode index", a, low=0, high=n_modes - 1) for a in modes]
        # A single-mode lesion removes the mode from the map: it behaves like "silence".
        default = "silence" if isinstance(key, tuple) else mode
        for window in windows:
            start, end, how = (*window, default) if len(window) == 2 else window
            end = np.inf if end is None else end
            check_choice("deficit mode", how, DEFICIT_MODES)
            if not end > start >= 0:
                raise ValueError(f"deficit window ({start}, {end}) must satisfy 0 <= start < end.")
            inside = (t >= start) & (t < end)
            for a in modes:
                held[inside, p, a] = True
                if how == "silence":
                    silenced[inside, p, a] = True
    return held, silenced


def pathway_dynamics(
    singular_values: npt.ArrayLike,
    depth: int,
    k0: npt.ArrayLike,
    lr: float,
    steps: int,
    deficits: Deficits | None = None,
    mode: str = "freeze",
    n_pathways: int = 2,
) -> np.ndarray:
    """Exact full-batch gradient-descent trajectory of every pathway's mode strengths.

    Args:
        singular_values: the task's singular values ``s_a``.
        depth: layers per pathway ``D >= 1``.
        k0: initial ``K_{p,a}`` (scalar, per mode, or ``(P, M)``); positive.
        lr: learning rate.
        steps: number of updates.
        deficits: ``{pathway: [(start, end), ...]}`` step windows in which that pathway is
            deprived, or ``{(pathway, mode): [...]}`` for a single mode (a mode lesion, which
            behaves like ``"silence"`` on that mode). ``end`` may be ``None`` (never ends); a
            window ``(start, end, "freeze" | "silence")`` overrides ``mode`` for itself.
        mode: ``"freeze"`` or ``"silence"`` (see the module docstring).
        n_pathways: ``P`` when ``k0`` does not fix it.

    Returns:
        ``K`` of shape ``(steps + 1, P, M)``; ``K[t]`` is the value after ``t`` updates.

    Example::

        >>> K = pathway_dynamics([2.0], depth=2, k0=0.01, lr=0.1, steps=500)
        >>> round(float(K[-1].sum()), 4)
        2.0
    """
    check_choice("mode", mode, DEFICIT_MODES)
    check_int("depth", depth)
    s = np.asarray(singular_values, dtype=float)
    k = np.asarray(k0, dtype=float)
    n_pathways = k.shape[0] if k.ndim == 2 else n_pathways
    k = _initial_strengths(k0, n_pathways, s.shape[0])
    held, silenced = _deficit_masks(deficits, mode, n_pathways, s.shape[0], steps)
    q = k ** (1.0 / depth)
    out = np.empty((steps + 1, n_pathways, s.shape[0]))
    out[0] = k
    for t in range(steps):
        strengths = q**depth
        error = s - np.where(silenced[t], 0.0, strengths).sum(axis=0)
        step = lr * q ** (depth - 1) * error
        q = q + np.where(held[t], 0.0, step)
        out[t + 1] = q**depth
    return out


def pathway_flow(k_a: np.ndarray, k_b: np.ndarray, s: float, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time velocity ``(dK_a/dt, dK_b/dt)`` of two pathways on one mode (phase portraits).

    ``dK/dt = D * K^(2 - 2/D) * (s - K_a - K_b)`` per unit learning-rate time; works on grids.
    """
    k_a, k_b = np.asarray(k_a, dtype=float), np.asarray(k_b, dtype=float)
    error = s - k_a - k_b
    power = 2.0 - 2.0 / depth
    return depth * np.abs(k_a) ** power * error, depth * np.abs(k_b) ** power * error


def pathway_ode(
    singular_values: npt.ArrayLike,
    depth: int,
    k0: npt.ArrayLike,
    times: npt.ArrayLike,
    deficits: Deficits | None = None,
    mode: str = "freeze",
    n_pathways: int = 2,
) -> np.ndarray:
    """Integrate the continuous-time ODE with scipy (time in units of ``1/lr``).

    Returns ``K`` of shape ``(len(times), P, M)``. Deficit windows are in the same time unit.
    """
    check_choice("mode", mode, DEFICIT_MODES)
    s = np.asarray(singular_values, dtype=float)
    k = np.asarray(k0, dtype=float)
    n_pathways = k.shape[0] if k.ndim == 2 else n_pathways
    k = _initial_strengths(k0, n_pathways, s.shape[0])
    shape = k.shape
    windows = []
    for key, spans in (deficits or {}).items():
        p, a = (key if isinstance(key, tuple) else (key, None))
        for span in spans:
            start, end, how = (*span, "silence" if a is not None else mode) if len(span) == 2 else span
            windows.append((p, a, start, np.inf if end is None else end, how))
    power = 2.0 - 2.0 / depth

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        kk = y.reshape(shape)
        held = np.zeros(shape, dtype=bool)
        silenced = np.zeros(shape, dtype=bool)
        for p, a, start, end, how in windows:
            if start <= t < end:
                held[p, slice(None) if a is None else a] = True
                silenced[p, slice(None) if a is None else a] |= how == "silence"
        counted = np.where(silenced, 0.0, kk)
        dk = depth * np.abs(kk) ** power * (s - counted.sum(axis=0))
        return np.where(held, 0.0, dk).ravel()

    t_eval = np.asarray(times, dtype=float)
    # Small steps so the solver does not jump over a deficit window's edges.
    max_step = (t_eval[-1] - t_eval[0]) / 2000 if windows else np.inf
    sol = solve_ivp(rhs, (t_eval[0], t_eval[-1]), k.ravel(), t_eval=t_eval, rtol=1e-8, atol=1e-10, max_step=max_step)
    return sol.y.T.reshape(len(t_eval), *shape)


def depth2_mode_strength(t: float | np.ndarray, s: float, u0: float, lr: float = 1.0) -> np.ndarray:
    """Saxe et al. (2014) closed form for one depth-2 mode from small init ``u0``.

    ``u(t) = s e^(2 s t / tau) / (e^(2 s t / tau) - 1 + s / u0)`` with ``tau = 1 / lr``;
    it solves ``tau du/dt = 2 u (s - u)``.

    Example::

        >>> round(float(depth2_mode_strength(0.0, s=3.0, u0=0.01)), 6)
        0.01
    """
    # Written with exp(-...) so that it stays finite after convergence.
    decay = np.exp(-2.0 * s * np.asarray(t, dtype=float) * lr)
    return s / (1.0 + (s / u0 - 1.0) * decay)


def deprived_share(strengths: np.ndarray, pathway: int) -> np.ndarray:
    """The fraction ``K_p / sum_r K_r`` of each mode held by ``pathway`` (last axis = modes)."""
    k = np.asarray(strengths, dtype=float)
    return k[..., pathway, :] / k.sum(axis=-2)

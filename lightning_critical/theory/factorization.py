"""Gradient-flow theory of deep matrix factorization (Arora, Cohen, Hu & Luo, NeurIPS 2019).

For a depth-``N`` factorization ``W = W_N ... W_1`` started balanced
(``W_{j+1}^T W_{j+1} = W_j W_j^T``, e.g. the ``"orthogonal"`` init), gradient flow on the
factors moves the end-to-end map as

    dW/dt = -sum_{j=1..N} (W W^T)^((j-1)/N) grad L(W) (W^T W)^((N-j)/N)

and, writing ``W = U S V^T``, its singular values and vectors as (their Theorem 3 / Lemma 2)

    d sigma_r/dt = -N (sigma_r^2)^(1 - 1/N) <grad L(W), u_r v_r^T>
    dU/dt = -U (H * [U^T G V S + S V^T G^T U]) - (I - U U^T) G V (S^2)^(1/2 - 1/N)
    dV/dt = -V (H * [V^T G^T U S + S U^T G V]) - (I - V V^T) G^T U (S^2)^(1/2 - 1/N)

with ``G = grad L(W)``, ``H[r, r'] = 1 / ((sigma_r'^2)^(1/N) - (sigma_r^2)^(1/N))`` off the
diagonal and 0 on it. Depth 1 is plain gradient descent (``H`` then equals the usual SVD
perturbation factor ``1 / (sigma_r'^2 - sigma_r^2)``).

:func:`integrate_factorization` integrates the flow with classical Runge-Kutta in the
end-to-end coordinates, where it has no singularity at repeated singular values, and reads
the singular values (and vectors) off ``W(t)``; the ``*_velocity`` functions give the
equations above at any point, and the tests check the two agree. Time ``t = lr * step``
matches SGD with learning rate ``lr``. Pure numpy: no Lightning, no torch.

Matrix-completion loss: ``L(W) = 0.5 * sum_ij weight_ij (W_ij - W*_ij)^2`` with ``weight``
the observation mask divided by the number of observations, so ``grad L = weight * W - target``
with ``target = weight * W*`` (see :func:`completion_loss_terms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_critical._checks import check_float, check_int


def completion_loss_terms(
    size: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, target)`` of ``0.5 * mean over observed (W_ij - value)^2`` (see module doc)."""
    rows, cols, values = np.asarray(rows), np.asarray(cols), np.asarray(values, dtype=np.float64)
    weight = np.zeros((size, size))
    weight[rows, cols] = 1.0 / len(values)
    target = np.zeros((size, size))
    target[rows, cols] = values / len(values)
    return weight, target


def _full_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    u, s, vh = np.linalg.svd(w, full_matrices=True)
    left = np.zeros(w.shape[0])
    right = np.zeros(w.shape[1])
    left[: s.size], right[: s.size] = s, s
    return u, vh.T, left, right


def end_to_end_velocity(w: np.ndarray, grad: np.ndarray, depth: int) -> np.ndarray:
    """``dW/dt`` of a balanced depth-``depth`` factorization under gradient flow."""
    if depth == 1:
        return -grad
    u, v, left, right = _full_svd(w)
    m = u.T @ grad @ v
    coeff = np.zeros_like(m)
    for j in range(1, depth + 1):
        coeff += np.outer(left ** (2.0 * (j - 1) / depth), right ** (2.0 * (depth - j) / depth))
    return -u @ (m * coeff) @ v.T


def singular_value_velocity(w: np.ndarray, grad: np.ndarray, depth: int) -> np.ndarray:
    """``d sigma_r / dt = -N (sigma_r^2)^(1 - 1/N) u_r^T G v_r`` for every singular value."""
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    projected = np.einsum("ir,ij,rj->r", u, grad, vh)
    return -depth * (s**2) ** (1.0 - 1.0 / depth) * projected


def singular_vector_velocity(w: np.ndarray, grad: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dU/dt, dV/dt)`` of the (thin) singular vectors, Arora et al.'s Lemma 2.

    Needs distinct non-zero singular values (the equations are singular otherwise).
    """
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    v = vh.T
    p = (s**2) ** (1.0 / depth)
    with np.errstate(divide="ignore"):
        h = 1.0 / (p[None, :] - p[:, None])
    np.fill_diagonal(h, 0.0)
    sm = np.diag(s)
    tail = np.diag((s**2) ** (0.5 - 1.0 / depth))
    du = -u @ (h * (u.T @ grad @ v @ sm + sm @ v.T @ grad.T @ u)) - (np.eye(len(u)) - u @ u.T) @ grad @ v @ tail
    dv = -v @ (h * (v.T @ grad.T @ u @ sm + sm @ u.T @ grad @ v)) - (np.eye(len(v)) - v @ v.T) @ grad.T @ u @ tail
    return du, dv


@dataclass
class FactorizationFlow:
    """Result of :func:`integrate_factorization`.

    ``steps`` (R,) are the SGD steps of the records, ``singular_values`` (R, k) the top ``k``
    singular values of ``W`` there, ``test_loss`` (R,) the mean squared error against the
    active segment's ground truth (NaN when none was given), ``final`` the last ``W``.
    """

    steps: np.ndarray
    singular_values: np.ndarray
    test_loss: np.ndarray
    final: np.ndarray
    lr: float
    depth: int
    maps: list = field(default_factory=list)

    def per_step(self, n_steps: int | None = None) -> np.ndarray:
        """Singular values at every SGD step ``0..n_steps`` (linear interpolation): the
        ``(n_steps + 1, k)`` array ``SpectralMonitor(theory=...)`` expects."""
        n_steps = int(self.steps[-1]) if n_steps is None else n_steps
        grid = np.arange(n_steps + 1)
        return np.stack(
            [np.interp(grid, self.steps, self.singular_values[:, i]) for i in range(self.singular_values.shape[1])],
            axis=1,
        )


def integrate_factorization(
    w0: np.ndarray,
    segments: Sequence[tuple[int, np.ndarray, np.ndarray]],
    depth: int,
    lr: float,
    stride: int = 10,
    top_k: int = 10,
    ground_truths: Sequence[np.ndarray] | None = None,
    keep_maps: bool = False,
) -> FactorizationFlow:
    """Integrate the end-to-end flow through a sequence of tasks (a task switch).

    Args:
        w0: the end-to-end map at initialization (balanced factors assumed).
        segments: ``[(n_steps, weight, target), ...]`` trained one after the other; e.g. the
            pre-training task for ``T`` steps, then the target for ``continue_epochs``.
        depth: number of factors ``N``.
        lr: SGD learning rate (``t = lr * step``).
        stride: SGD steps per Runge-Kutta step (records are taken every ``stride`` steps and
            at segment ends).
        top_k: number of singular values recorded.
        ground_truths: optional full ground truth per segment (one per segment), for the test loss.
        keep_maps: also keep ``W`` at every record (``FactorizationFlow.maps``).

    Raises:
        ValueError: for a bad depth, lr, stride or segment, or ``ground_truths`` of another
            length than ``segments``.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> truth = rng.standard_normal((6, 1)) @ rng.standard_normal((1, 6))
        >>> weight = np.full((6, 6), 1 / 36); target = weight * truth
        >>> flow = integrate_factorization(1e-3 * np.eye(6), [(3000, weight, target)], depth=2, lr=1.0)
        >>> bool(abs(flow.singular_values[-1, 0] - np.linalg.norm(truth, 2)) < 1e-2)
        True
    """
    check_int("depth", depth)
    check_float("lr", lr, low=0, low_inclusive=False)
    check_int("stride", stride)
    w = np.array(w0, dtype=np.float64)
    for i, (n, weight, target) in enumerate(segments):
        if not isinstance(n, (int, np.integer)) or n < 0 or np.shape(weight) != w.shape or np.shape(target) != w.shape:
            raise ValueError(
                f"segment {i}: need (n_steps >= 0, weight {w.shape}, target {w.shape}); got n_steps={n!r}."
            )
    truths = list(ground_truths) if ground_truths is not None else [None] * len(segments)
    if len(truths) != len(segments):
        # zip() below would otherwise stop at the shorter one and skip the remaining segments
        raise ValueError(f"ground_truths has {len(truths)} entries; need one per segment ({len(segments)}).")

    def field_(x: np.ndarray, weight: np.ndarray, target: np.ndarray) -> np.ndarray:
        return end_to_end_velocity(x, weight * x - target, depth)

    steps, svals, losses, maps = [], [], [], []

    def record(step: int, truth: np.ndarray | None) -> None:
        steps.append(step)
        svals.append(np.linalg.svd(w, compute_uv=False)[:top_k])
        losses.append(np.nan if truth is None else float(np.mean((w - truth) ** 2)))
        if keep_maps:
            maps.append(w.copy())

    step = 0
    record(0, truths[0] if truths else None)
    for (n, weight, target), truth in zip(segments, truths, strict=True):
        weight, target = np.asarray(weight, dtype=np.float64), np.asarray(target, dtype=np.float64)
        end = step + int(n)
        while step < end:
            h = min(stride, end - step)
            dt = lr * h
            k1 = field_(w, weight, target)
            k2 = field_(w + 0.5 * dt * k1, weight, target)
            k3 = field_(w + 0.5 * dt * k2, weight, target)
            k4 = field_(w + dt * k3, weight, target)
            w = w + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            step += h
            record(step, truth)
    return FactorizationFlow(
        np.asarray(steps), np.asarray(svals), np.asarray(losses), w, float(lr), depth, maps
    )


def _as_float64(array: Any) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or an array-like as a float64 numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def switch_theory(
    model: Any,
    datamodule: Any,
    schedule: Sequence[tuple[str, int]],
    stride: int = 10,
    top_k: int = 10,
) -> FactorizationFlow:
    """Gradient-flow prediction for ``model`` trained on ``datamodule``'s tasks in sequence.

    ``model``: a deep factorization with ``end_to_end()`` (its ``W`` now), ``depth`` and ``lr``
    (e.g. :class:`~lightning_critical.models.DeepMatrixFactorization`); ``datamodule``: the
    completion tasks, with ``size``, ``observations(name)`` (rows, columns, values) and
    ``ground_truth(name)`` (e.g. :class:`~lightning_critical.data.MatrixCompletionDataModule`).
    Both are read, never trained. ``schedule``: ``[(task_name, n_steps), ...]``, e.g.
    ``[("pretrain", T), ("target", 3000)]``. Returns a :class:`FactorizationFlow`; its
    ``per_step()`` is the ``theory`` array ``SpectralMonitor`` overlays on the measured
    singular values of ``end_to_end``. Exact for balanced (``init="orthogonal"``) factors.

    Example::

        >>> from lightning_critical.data import MatrixCompletionDataModule
        >>> from lightning_critical.models import DeepMatrixFactorization
        >>> dm = MatrixCompletionDataModule(size=8, n_observed=30, tasks={"pretrain": 2, "target": 1})
        >>> model = DeepMatrixFactorization(size=8, depth=2, init="orthogonal", init_scale=0.1, lr=1.0)
        >>> flow = switch_theory(model, dm, [("pretrain", 20), ("target", 20)], stride=5, top_k=3)
        >>> flow.per_step().shape
        (41, 3)
    """
    segments, truths = [], []
    for name, n_steps in schedule:
        rows, cols, values = datamodule.observations(name)
        weight, target = completion_loss_terms(datamodule.size, np.asarray(rows), np.asarray(cols),
                                               _as_float64(values))
        segments.append((int(n_steps), weight, target))
        truths.append(_as_float64(datamodule.ground_truth(name)))
    w0 = _as_float64(model.end_to_end())
    return integrate_factorization(
        w0, segments, model.depth, model.lr, stride=stride, top_k=top_k, ground_truths=truths
    )

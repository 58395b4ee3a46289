"""Deep linear matrix factorization ``W = W_N ... W_1`` for matrix completion (Arora et al. 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import MeanSquaredError

from lightning_critical._checks import check_choice, check_float, check_int
from lightning_critical._namespace import pl

INITS: tuple[str, ...] = ("gaussian", "orthogonal", "identity")


def init_factors(
    depth: int, size: int, width: int, init: str, init_scale: float, generator: torch.Generator | None = None
) -> list[Tensor]:
    """The factors ``[W_1, ..., W_N]`` of a deep factorization at initialization.

    ``gaussian``: i.i.d. N(0, std^2) with ``std = init_scale**(1/N) / sqrt(width)``, so the
    end-to-end map has Frobenius norm about ``init_scale * sqrt(size)``. ``orthogonal``: each
    factor is ``(init_scale * sqrt(width))**(1/N)`` times a (semi-)orthogonal matrix, which is
    exactly *balanced* (``W_{j+1}^T W_{j+1} = W_j W_j^T``) when ``width == size``; the theory in
    :mod:`lightning_critical.theory.factorization` assumes balance. ``identity``:
    ``init_scale**(1/N)`` times the identity.
    """
    check_choice("init", init, INITS)
    shapes = [(width if i < depth - 1 else size, size if i == 0 else width) for i in range(depth)]
    factors = []
    for out_dim, in_dim in shapes:
        w = torch.empty(out_dim, in_dim)
        if init == "gaussian":
            w.normal_(0.0, init_scale ** (1.0 / depth) / math.sqrt(width), generator=generator)
        elif init == "orthogonal":
            nn.init.orthogonal_(w, generator=generator)
            w.mul_((init_scale * math.sqrt(width)) ** (1.0 / depth))
        else:
            nn.init.eye_(w)
            w.mul_(init_scale ** (1.0 / depth))
        factors.append(w)
    return factors


class DeepMatrixFactorization(pl.LightningModule):
    """End-to-end map ``W = W_N ... W_1`` trained by full-batch SGD on observed entries.

    Train loss: ``0.5 * mean over observed (i, j) of (W_ij - W*_ij)^2``. Test loss: mean over
    *all* entries of ``(W - W*)^2`` against the active task's ground truth (the batch's
    ``"ground_truth"``), computed with torchmetrics and logged as ``test_loss`` every step.
    Batches are the dicts of :class:`~lightning_critical.data.MatrixCompletionDataModule`:
    ``rows``, ``cols``, ``values`` (and optionally ``ground_truth``).

    Protocols: ``end_to_end_maps()`` returns ``{"end_to_end": W}``.

    Args:
        size: ``W`` is ``size x size``.
        depth: number of factors ``N >= 1`` (1 is plain matrix completion).
        width: hidden width (default ``size``).
        init: ``"gaussian"`` (the paper's), ``"orthogonal"`` (balanced) or ``"identity"``.
        init_scale: scale of the end-to-end map at init (see :func:`init_factors`).
        lr: SGD learning rate.
        seed: seed of the initialization; ``None`` uses torch's global generator.

    Raises:
        ValueError: for a bad size, depth, width, init, init_scale or lr.

    Example::

        >>> model = DeepMatrixFactorization(size=10, depth=3, init_scale=1e-3, seed=0)
        >>> W = model.end_to_end_maps()["end_to_end"]; tuple(W.shape)
        (10, 10)
        >>> bool(W.norm() < 1e-2)
        True
    """

    def __init__(
        self,
        size: int = 100,
        depth: int = 3,
        width: int | None = None,
        init: str = "gaussian",
        init_scale: float = 1e-3,
        lr: float = 0.2,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        width = size if width is None else width
        for name, value in (("size", size), ("depth", depth), ("width", width)):
            check_int(name, value)
        check_choice("init", init, INITS)
        check_float("init_scale", init_scale, low=0, low_inclusive=False)
        check_float("lr", lr, low=0, low_inclusive=False)
        self.save_hyperparameters()
        self.size, self.depth, self.width, self.lr = size, depth, width, lr
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.factors = nn.ParameterList(
            nn.Parameter(w) for w in init_factors(depth, size, width, init, init_scale, generator)
        )
        self.test_mse = MeanSquaredError()

    def end_to_end(self) -> Tensor:
        """``W_N ... W_1`` (differentiable)."""
        w = self.factors[0]
        for factor in self.factors[1:]:
            w = factor @ w
        return w

    def end_to_end_maps(self) -> dict[str, Tensor]:
        """Protocol: the maps whose spectra monitors track."""
        return {"end_to_end": self.end_to_end()}

    def forward(self, rows: Tensor, cols: Tensor) -> Tensor:
        return self.end_to_end()[rows, cols]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        w = self.end_to_end()
        loss = 0.5 * (w[batch["rows"], batch["cols"]] - batch["values"]).pow(2).mean()
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        if "ground_truth" in batch:
            self.test_mse(w.detach().flatten(), batch["ground_truth"].flatten())
            self.log("test_loss", self.test_mse, on_step=True, on_epoch=False)
        return loss

    def test_loss(self, ground_truth: Tensor) -> float:
        """Mean squared error of ``W`` against ``ground_truth`` over all entries."""
        with torch.no_grad():
            return float((self.end_to_end() - ground_truth.to(self.device)).pow(2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

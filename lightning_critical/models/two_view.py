"""TwoViewNet: a two-source (multi-view) classifier whose view encoders are its pathways."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_critical._checks import check_float, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical.models._optim import sgd_with_decay


class _Hyperparameters(Protocol):
    """What ``self.hparams`` holds (read by attribute): the constructor's arguments."""

    view_shape: Sequence[int]
    hidden: int
    num_classes: int
    lr: float
    momentum: float
    weight_decay: float
    lr_decay: float


class TwoViewNet(pl.LightningModule):
    """Two view encoders (``pathways`` ``"a"`` and ``"b"``), a shared fusion layer and a linear head.

    ``forward(a, b)``: each view ``(N, *view_shape)`` is flattened and encoded by its own
    ``Linear + ReLU`` pathway; the two codes are concatenated and fused by ``fusion``
    (``Linear + ReLU``, ``hidden`` units: the representation whose units the relative source
    variance reads), then ``head`` gives the class logits. The nonlinear companion of
    ``MultiPathwayLinearNet`` for the multisensory critical period of Kleinman, Achille &
    Soatto (CVPR 2023): a ``PathwayDeficit("b", mode="noise")`` feeds noise to one view, and
    :mod:`lightning_critical.reliance` measures how much the trained net still uses it.
    Batches are ``(a, b, y)`` (e.g. :class:`~lightning_critical.data.TwoViewDigits`).
    Trained with SGD (momentum, weight decay) on cross-entropy; logs ``train_loss``,
    ``train_acc``, ``val_loss``, ``val_acc`` per epoch and ``test_acc``.

    Args:
        view_shape: the shape of one view without the batch dimension (default ``(1, 8, 4)``,
            half a digits image).
        hidden: width of each encoder and of the fusion layer.
        num_classes: output classes.
        lr, momentum, weight_decay: SGD settings. No weight decay by default: during a noise
            deficit it would shrink the deprived encoder for a reason other than competition
            (``PathwayDeficit`` warns), which could fake a critical period.
        lr_decay: the learning rate is multiplied by this after every epoch (1 = constant). An
            annealed rate is what closes the critical period: late in training the network is
            no longer plastic enough for a deficit to rewire it (Achille, Rovere & Soatto 2019).
        seed: seed of the initialisation (``None``: the global RNG).

    Example::

        >>> net = TwoViewNet(hidden=16, seed=0)
        >>> net(torch.rand(3, 1, 8, 4), torch.rand(3, 1, 8, 4)).shape, list(net.pathways)
        (torch.Size([3, 10]), ['a', 'b'])
    """

    def __init__(self, view_shape: Sequence[int] = (1, 8, 4), hidden: int = 64, num_classes: int = 10,
                 lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, lr_decay: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(view_shape, (tuple, list)) or not view_shape:
            raise ValueError(f"view_shape={view_shape!r} is not valid: give one view's shape, like (1, 8, 4).")
        for i, size in enumerate(view_shape):
            check_int(f"view_shape[{i}]", size)
        check_int("hidden", hidden)
        check_int("num_classes", num_classes, low=2)
        check_float("lr", lr, low=0, low_inclusive=False)
        check_float("momentum", momentum, low=0)
        check_float("weight_decay", weight_decay, low=0)
        check_float("lr_decay", lr_decay, low=0, low_inclusive=False, high=1)
        if seed is not None:
            check_seed("seed", seed)
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self._build()

    @property
    def _hp(self) -> _Hyperparameters:
        return cast(_Hyperparameters, self.hparams)

    def _build(self) -> None:
        hp = self._hp
        features = math.prod(hp.view_shape)
        self.pathways = nn.ModuleDict(
            {name: nn.Sequential(nn.Flatten(), nn.Linear(features, hp.hidden), nn.ReLU()) for name in ("a", "b")}
        )
        self.fusion = nn.Sequential(nn.Linear(2 * hp.hidden, hp.hidden), nn.ReLU())
        self.head = nn.Linear(hp.hidden, hp.num_classes)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.head(self.fusion(torch.cat([self.pathways["a"](a), self.pathways["b"](b)], dim=1)))

    def _step(self, batch: Any, stage: str) -> Tensor:
        a, b, y = batch
        logits = self(a, b)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", (logits.argmax(dim=1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self._hp
        return sgd_with_decay(self.parameters(), hp.lr, hp.momentum, hp.weight_decay, hp.lr_decay)

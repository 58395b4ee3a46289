"""SmallCNN: a compact image classifier (LightningModule) for critical-period experiments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_critical._checks import check_float, check_int, check_seed
from lightning_critical._namespace import pl
from lightning_critical.models._optim import sgd_with_decay


class _Hyperparameters(Protocol):
    """What ``self.hparams`` holds (an ``AttributeDict``, read by attribute): the constructor's arguments.

    Read through ``_hp`` rather than copied into attributes, so that changes to ``hparams``
    (a learning-rate finder, a user) still reach ``configure_optimizers`` as before.
    """

    in_channels: int
    num_classes: int
    channels: Sequence[int]
    lr: float
    momentum: float
    weight_decay: float
    lr_decay: float


class SmallCNN(pl.LightningModule):
    """Two 3x3 conv layers (ReLU, 2x2 max-pool after the first), adaptive 2x2 average pooling, a linear head.

    The adaptive pooling makes it accept any input size (so a ``"downsample"`` deficit
    works) while keeping coarse spatial layout. Trained with SGD + momentum and weight decay on cross-entropy; logs
    ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (per epoch) and ``test_acc``.

    Args:
        in_channels: image channels (1 for digits, 3 for CIFAR-10).
        num_classes: output classes.
        channels: widths of the two conv layers (a tuple or list of two integers).
        lr, momentum, weight_decay: SGD settings.
        lr_decay: the learning rate is multiplied by this after every epoch (1 = constant;
            the classic critical-period protocol anneals it exponentially, e.g. 0.97).
        seed: seed of the initialisation (``None``: the global RNG).

    Example::

        >>> net = SmallCNN(in_channels=1, num_classes=10, seed=0)
        >>> net(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_decay: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
            check_int(name, value)
        if not isinstance(channels, (tuple, list)) or len(channels) != 2:
            raise ValueError(f"channels={channels!r} is not valid: give the two conv widths, like (16, 32).")
        for i, width in enumerate(channels):
            check_int(f"channels[{i}]", width)
        check_float("lr", lr, low=0, low_inclusive=False)
        check_float("momentum", momentum, low=0)
        check_float("weight_decay", weight_decay, low=0)
        check_float("lr_decay", lr_decay, low=0, low_inclusive=False, high=1)
        if seed is not None:
            check_seed("seed", seed)
        self.save_hyperparameters()
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build()
        else:
            self._build()

    @property
    def _hp(self) -> _Hyperparameters:
        return cast(_Hyperparameters, self.hparams)

    def _build(self) -> None:
        hp = self._hp
        self.conv1 = nn.Conv2d(hp.in_channels, hp.channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(hp.channels[0], hp.channels[1], 3, padding=1)
        self.fc = nn.Linear(hp.channels[1] * 4, hp.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        if min(h.shape[-2:]) >= 2:
            h = F.max_pool2d(h, 2)
        h = F.relu(self.conv2(h))
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))

    def _step(self, batch: Any, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=not on_step)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)
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

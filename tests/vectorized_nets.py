"""The small digits MLP the vectorized runner's tests build their models from."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_critical._namespace import pl


class DigitsMLP(pl.LightningModule):
    """A 64-``hidden``-10 MLP on the flattened 8x8 digits; logs ``train_loss``, ``val_loss`` and ``val_acc``;
    SGD with momentum (subclasses set ``hidden`` and their own optimizers)."""

    hidden = 16

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(64, self.hidden), nn.Linear(self.hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(x.flatten(1))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

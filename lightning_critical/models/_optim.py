"""The optimizer of the bundled classifiers: SGD with momentum and weight decay, the learning rate
multiplied by ``lr_decay`` after every epoch (the protocol of Achille, Rovere & Soatto 2019)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def sgd_with_decay(parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float,
                   lr_decay: float) -> Any:
    """``configure_optimizers``' return value: the optimizer alone when ``lr_decay == 1``.

    Example::

        >>> net = torch.nn.Linear(2, 1)
        >>> sorted(sgd_with_decay(net.parameters(), 0.1, 0.9, 0.0, 0.5))
        ['lr_scheduler', 'optimizer']
    """
    opt = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if lr_decay == 1.0:
        return opt
    return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)}

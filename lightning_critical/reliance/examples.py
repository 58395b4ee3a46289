"""Gathering the examples a reliance measure runs on: model arguments and targets from batches (plain torch)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_critical._batch_spec import BatchSpec, forward_arguments
from lightning_critical._checks import check_int


def collect(batches: Iterable[Any], model: nn.Module, batch_spec: BatchSpec | None = None,
            max_examples: int = 512) -> tuple[tuple[Tensor, ...], Tensor]:
    """The model arguments and targets of the first ``max_examples`` examples of ``batches``, on the model's device.

    Batches are read with :class:`~lightning_critical.BatchSpec` (default: the model's
    ``forward`` arguments from the batch, the target its last element); see its docstring.

    Example::

        >>> from torch import nn
        >>> batches = [(torch.zeros(3, 2), torch.tensor([0, 1, 0]))] * 2
        >>> args, target = collect(batches, nn.Linear(2, 2), max_examples=4)
        >>> tuple(args[0].shape), target.tolist()
        ((4, 2), [0, 1, 0, 0])
    """
    check_int("max_examples", max_examples, low=2)
    spec = batch_spec or BatchSpec(owner="reliance")
    forward = forward_arguments(model)
    parts: list[tuple[Tensor, ...]] = []
    targets: list[Tensor] = []
    count = 0
    for batch in batches:
        args = tuple(spec.model_inputs(batch, forward))
        parts.append(args)
        targets.append(spec.target(batch))
        count += int(targets[-1].shape[0])
        if count >= max_examples:
            break
    if not parts:
        raise ValueError("reliance: the dataloader yielded no batch to measure on.")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    joined = tuple(torch.cat(column)[:max_examples].to(device) for column in zip(*parts, strict=True))
    return joined, torch.cat(targets)[:max_examples].to(device)

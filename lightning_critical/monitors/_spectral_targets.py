"""What the spectral monitor measures: a given task basis checked, the model's end-to-end maps probed.

:func:`probe_maps` runs the module's ``end_to_end_maps()`` inside
:func:`~lightning_critical.probing.probing` with every submodule in evaluation mode, so that
measuring leaves no trace on training (see :class:`~lightning_critical.SpectralMonitor`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_critical.monitors.base import probe_devices
from lightning_critical.probing import probing
from lightning_critical.protocols import TaskBasis, end_to_end_maps

__all__ = ["check_task_basis", "evaluation_mode", "probe_maps"]


def check_task_basis(value: Any) -> TaskBasis | None:
    """``None`` or ``(U, S, V)`` tensors with ``U`` (out x r), ``S`` (r,), ``V`` (in x r)."""
    if value is None:
        return None
    ok = (
        isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(t, Tensor) for t in value)
        and value[0].dim() == 2 and value[2].dim() == 2 and value[1].dim() == 1
        and value[0].shape[1] == value[2].shape[1] == value[1].shape[0]
    )
    if not ok:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in value] \
            if isinstance(value, (tuple, list)) else type(value).__name__
        raise ValueError(
            f"task_basis={shapes} is not valid: give (U, S, V) tensors with U (out x r), S (r,) and V (in x r), "
            "or None to use the module's / datamodule's task_basis()."
        )
    return (value[0], value[1], value[2])


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in evaluation mode, each one's own flag restored afterwards (a user may
    keep some submodules in eval mode while training; ``module.train()`` would undo that)."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def probe_maps(module: nn.Module) -> dict[str, Tensor]:
    """``end_to_end_maps()`` measured without touching training (see :class:`~lightning_critical.SpectralMonitor`)."""
    if not callable(getattr(module, "end_to_end_maps", None)):
        return {}
    with probing(probe_devices(module)), torch.no_grad(), evaluation_mode(module):
        return end_to_end_maps(module)

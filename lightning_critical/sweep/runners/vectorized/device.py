"""The device a vectorized job trains on: ``VectorizedRunner(device=...)`` or the sweep's ``trainer=`` accelerator.

``device=None`` (the default) follows the accelerator the default runner's ``Trainer`` would
use: ``trainer={"accelerator": "cpu"}`` trains on the CPU, ``"gpu"`` / ``"cuda"`` on the
current CUDA device, ``"auto"`` (Lightning's default) on CUDA when it is available, else on
the CPU. An explicit ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or a
``torch.device``) must agree with an explicit accelerator. The job's stacked parameters,
buffers, optimizer state, batches (moved before the input deficits apply, as Lightning moves a
batch before its callbacks see it), gates and exact-log replays all live on that device.

Example::

    >>> check_device("cuda:1"), check_device(None)
    ('cuda:1', None)
    >>> job_device("cpu", {"accelerator": "auto"})
    device(type='cpu')
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map

from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused

DEVICE_TYPES = ("cpu", "cuda")
"""The device types a vectorized job trains on."""

ACCELERATORS: dict[str, str | None] = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "auto": None}
"""``trainer=`` accelerators and the device type each one means (``None``: CUDA when available)."""


def check_device(device: Any) -> str | None:
    """``device`` validated, as a string (``VectorizedRunner``'s argument); ``None`` stays ``None``.

    Raises:
        ValueError: not a device of :data:`DEVICE_TYPES` (the message lists the valid values).
    """
    if device is None:
        return None
    valid = "give 'cpu', 'cuda', 'cuda:<index>', a torch.device of those, or None (the sweep's trainer accelerator)"
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device={device!r} is not valid: {valid}.")
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not valid: {valid}.") from err
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device={device!r} is not valid (type {parsed.type!r}): {valid}.")
    return str(parsed)


def job_device(device: str | None, trainer: dict[str, Any]) -> torch.device:
    """The device of a job: ``device`` (from :func:`check_device`) or the one ``trainer``'s accelerator means.

    Raises:
        VectorizedRefused: an accelerator it does not map, one that disagrees with ``device``,
            or CUDA asked for where none is available (an index beyond the devices).
    """
    accelerator = trainer.get("accelerator") or "auto"
    if not isinstance(accelerator, str) or accelerator not in ACCELERATORS:
        raise VectorizedRefused(f"trainer accelerator={accelerator!r} (it maps {sorted(ACCELERATORS)}; or give "
                                "VectorizedRunner(device=...))")
    wanted = ACCELERATORS[accelerator]
    if device is None:
        chosen = torch.device(wanted or ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        chosen = torch.device(device)
        if wanted is not None and chosen.type != wanted:
            raise VectorizedRefused(f"VectorizedRunner(device={device!r}) with trainer accelerator={accelerator!r} "
                                    "(they disagree: give one of them, or both naming one device type)")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index is not None and chosen.index >= count):
            raise VectorizedRefused(f"the device {str(chosen)!r}: this machine has {count} CUDA device(s)")
    return chosen


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a batch, a dict of gates: any nest of tensors) with its tensors on ``device`` (no copy if there).

    Example::

        >>> to_device([torch.zeros(2), 3], torch.device("cpu"))
        [tensor([0., 0.]), 3]
    """
    if isinstance(value, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.device == device for t in value):
        return value  # the usual batch already there: per member and step, so skip tree_map's cost
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)

"""Which optimizers decay a deficit's parameters, and the one warning that says so.

A pathway that is silenced (or fed noise, or has modes lesioned) gets no task gradient, but an
optimizer with weight decay still shrinks its weights every step: with SGD by ``(1 - lr *
weight_decay)`` per step (a user's silenced pathway went from norm 4.59 to 0.40 in 30 epochs).
The pathway then comes back weaker because it decayed, not because the other pathway won the
competition, which can fake a critical period. ``mode="freeze"`` is immune (its parameters get
no gradient at all, so every torch optimizer skips them, weight decay included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from lightning_critical._warnings import warn_once


def decaying_groups(optimizers: Sequence[Any], params: Iterable[Tensor]) -> list[tuple[str, float]]:
    """``(optimizer name, weight_decay)`` of every param group with ``weight_decay > 0`` holding one of ``params``.

    Example::

        >>> import torch
        >>> w, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([{"params": [w], "weight_decay": 1e-3}, {"params": [b]}], lr=0.1)
        >>> decaying_groups([opt], [w]), decaying_groups([opt], [b])
        ([('SGD', 0.001)], [])
    """
    wanted = {id(p) for p in params}
    found: list[tuple[str, float]] = []
    for optimizer in optimizers:
        for group in getattr(optimizer, "param_groups", ()):
            decay = group.get("weight_decay", 0) or 0
            if float(decay) > 0 and any(id(p) in wanted for p in group.get("params", ())):
                entry = (type(optimizer).__name__, float(decay))
                if entry not in found:
                    found.append(entry)
    return found


def warn_if_decayed(
    deficit: str, what: str, optimizers: Sequence[Any], params: Iterable[Tensor], freeze_hint: bool = True
) -> bool:
    """Warn once per process and cause when ``params`` are in a param group with weight decay.

    ``deficit`` names the deficit (its ``repr``), ``what`` says why its parameters get no task
    gradient; ``freeze_hint`` adds ``mode='freeze'`` to the remedies. Returns whether a warning
    was given now.
    """
    groups = decaying_groups(optimizers, params)
    if not groups:
        return False
    used = ", ".join(f"{name}(weight_decay={decay:g})" for name, decay in groups)
    return warn_once(
        f"{deficit}: {what}, but {used} still shrinks its weights every step of the window, so the pathway may "
        "come back weaker because it decayed, not because it was out-competed (this can fake a critical period). "
        "To measure the deficit alone, put these parameters in a param group with weight_decay=0"
        + (", or use mode='freeze' (its parameters skip the optimizer, weight decay included)" if freeze_hint else "")
        + "; otherwise report the pathway's weight norms beside the result."
    )

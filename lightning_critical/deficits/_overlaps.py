"""Which deficits may act on one thing at once: overlapping windows, shared targets, unreachable windows.

Checked before training (:func:`check_overlaps`, :func:`warn_if_unreachable`); windows in
different units whose overlap cannot be decided then are checked at every step by the deficit
itself. Plain functions of the deficits' windows and targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn

from lightning_critical._namespace import pl
from lightning_critical._warnings import warn_once
from lightning_critical.schedule import Window


class Windowed(Protocol):
    """What these checks read of a deficit (``Windowed`` has it)."""

    window: Window
    targets: dict[str, Any]
    unsure_overlaps: list[tuple[Any, str]]

    @property
    def label(self) -> str: ...


def check_overlaps(deficit: Windowed, others: Sequence[Windowed], per_epoch: int | None) -> None:
    """Refuse two deficits (``deficit`` and one of the trainer's ``others``) acting on one target with
    overlapping windows; note the undecidable pairs.

    A pair whose windows are in different units and cannot be compared (the epoch's length is
    unknown) is warned about and appended to ``deficit.unsure_overlaps``, checked at each step.
    """
    for other in others:
        if deficit.window.comparable(other.window, per_epoch):
            if not deficit.window.overlaps(other.window, per_epoch):
                continue
            what = shared_target(deficit.targets, other.targets)
            if what:
                raise ValueError(
                    f"{deficit.label} and {other.label} both act on {what} with overlapping windows; "
                    "give one pathway at most one deficit at a time."
                )
            continue
        what = shared_target(deficit.targets, other.targets)
        if what and not any(o is deficit for o, _ in other.unsure_overlaps):
            # Epoch and step windows cannot be compared without the epoch's length.
            warn_once(
                f"{deficit.label} and {other.label} both act on {what} and their windows may overlap: one is in "
                "epochs, the other in steps, and the number of optimizer steps per epoch is unknown (the "
                "train dataloader has no length). Training stops with an error at the first step where both "
                "are active; give both windows in one unit to have this checked before training."
            )
            deficit.unsure_overlaps.append((other, what))


def warn_if_unreachable(deficit: Windowed, trainer: pl.Trainer, per_epoch: int | None) -> None:
    """Warn (once per message and process) when the window starts or ends after the run's last update."""
    w = deficit.window
    max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
    limit_steps = max_steps if max_steps is not None and max_steps >= 0 else None
    if limit_steps is None and max_epochs is not None and max_epochs >= 0 and per_epoch is not None:
        limit_steps = max_epochs * per_epoch
    limit: float
    if w.unit == "epoch" and max_epochs is not None and max_epochs >= 0:
        limit, what = max_epochs, f"max_epochs={max_epochs}"
    elif limit_steps is not None:
        limit = limit_steps if w.unit == "step" else limit_steps / max(per_epoch or 1, 1)
        what = f"the run's {limit_steps} optimizer steps"
    else:
        return
    # Once per distinct message and process: a sweep repeats the same window in many fits.
    if w.start >= limit:
        warn_once(f"{deficit.label} starts at or after {what}: it will never be active.")
    elif w.end is not None and w.end > limit:
        warn_once(f"{deficit.label} ends after {what}: it will be cut short.")


def shared_target(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    """What two deficits' targets have in common, described for a message ('' if nothing).

    Modules are compared as objects: the same module (under any name), one inside the
    other, or two modules sharing a parameter (tied weights). Other targets compare by name
    (equal, or one a dotted prefix of the other).

    Example::

        >>> from torch import nn
        >>> left, right = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> right.weight = left.weight
        >>> shared_target({"left": left}, {"right": right})
        "'left' and 'right', which share parameter 'weight'"
        >>> shared_target({"left": left}, {"head": nn.Linear(2, 2)})
        ''
    """
    for a_name, a in mine.items():
        for b_name, b in theirs.items():
            if isinstance(a, nn.Module) and isinstance(b, nn.Module):
                what = _module_relation(a_name, a, b_name, b)
            elif (
                a_name
                and b_name
                and (a_name == b_name or a_name.startswith(b_name + ".") or b_name.startswith(a_name + "."))
            ):
                what = f"{a_name!r}/{b_name!r}"
            else:
                what = ""
            if what:
                return what
    return ""


def _module_relation(a_name: str, a: nn.Module, b_name: str, b: nn.Module) -> str:
    if a is b:
        return f"{a_name!r}" if a_name == b_name else f"{a_name!r} and {b_name!r} (the same module)"
    if any(m is b for m in a.modules()):
        return f"{b_name!r}, which is inside {a_name!r}"
    if any(m is a for m in b.modules()):
        return f"{a_name!r}, which is inside {b_name!r}"
    theirs = {id(p) for p in b.parameters()}
    shared = [n for n, p in a.named_parameters() if id(p) in theirs]
    if shared:
        return f"{a_name!r} and {b_name!r}, which share parameter {shared[0]!r}"
    return ""

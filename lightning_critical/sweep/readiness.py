"""When a planned run may start, and where it starts from when its planned checkpoint will never come.

A run that branches waits for the checkpoint it starts from (its parent writes it *while* it
trains). If the parent ends without writing it (it failed first, or stopped early), or sharing
stopped, the run is *retargeted*: it starts from its deepest own-prefix checkpoint on disk,
else from scratch. Retargeting never changes the plan's nodes in place: :func:`retarget` and
:func:`from_scratch` return a new :class:`~lightning_critical.sweep.plan.Node`, and the
dispatcher tells its observers (``on_retarget(old, new)``), e.g. so the checkpoint collector
moves the run from one checkpoint's consumers to the other's.

Example (``b`` planned to branch from ``k2`` after 2 epochs; only its own prefix ``k1`` is on disk)::

    >>> from lightning_critical.sweep.plan import Node
    >>> b = Node("b", 4, branch_epoch=2, parent="a", resume_key="k2", prefix_keys=["k0", "k1", "k2", "k3", "k4"])
    >>> moved = retarget(b, on_disk={"k1"}.__contains__, writer={"k1": "a"}.get)
    >>> (moved.branch_epoch, moved.resume_key, moved.parent), (b.branch_epoch, b.resume_key)
    ((1, 'k1', 'a'), (2, 'k2'))
    >>> from_scratch(b).resume_key is None
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from lightning_critical.sweep.plan import Node

_T = TypeVar("_T", bound=Node)  # a Twin stays a Twin


class Start(Enum):
    """What a run waits for: nothing (``NOW``), its parent (``WAIT``), or a new start point (``RETARGET``)."""

    NOW = "now"
    WAIT = "wait"
    RETARGET = "retarget"


def readiness(node: Node, on_disk: Callable[[str], bool], unfinished: Callable[[str], bool]) -> Start:
    """Whether ``node`` may start: from scratch or from a checkpoint on disk now; its parent still to finish: wait.

    ``unfinished(run_id)``: whether a run of this call has not finished yet (a parent that has
    not may still write the checkpoint). Otherwise the checkpoint will never come: retarget.

    Example::

        >>> n = Node("b", 4, branch_epoch=2, parent="a", resume_key="k")
        >>> [readiness(n, lambda key: False, unfinished.__contains__).value for unfinished in ({"a"}, set())]
        ['wait', 'retarget']
        >>> readiness(n, lambda key: True, {"a"}.__contains__).value
        'now'
    """
    if node.resume_key is None or on_disk(node.resume_key):
        return Start.NOW
    if node.parent is not None and unfinished(node.parent):
        return Start.WAIT
    return Start.RETARGET


def retarget(node: _T, on_disk: Callable[[str], bool], writer: Callable[[str], str | None],
             sharing: bool = True) -> _T:
    """A copy of ``node`` starting from its deepest own-prefix checkpoint on disk, else from scratch.

    ``writer(key)`` names the run that wrote a checkpoint (its new parent); with ``sharing=False``
    the copy starts from scratch. ``node`` itself is left as it was.
    """
    depth = 0 if not sharing else max(
        (d for d in range(1, node.epochs) if d < len(node.prefix_keys) and on_disk(node.prefix_keys[d])), default=0)
    if not depth:
        return from_scratch(node)
    key = node.prefix_keys[depth]
    return dataclasses.replace(node, branch_epoch=depth, resume_key=key, parent=writer(key))


def from_scratch(node: _T, write_checkpoints: bool = True) -> _T:
    """A copy of ``node`` that trains from scratch (and, unless ``write_checkpoints``, writes no branch checkpoint)."""
    save_keys = dict(node.save_keys) if write_checkpoints else {}
    return dataclasses.replace(node, branch_epoch=0, resume_key=None, parent=None, save_keys=save_keys)

"""The prefix tree of a sweep: which runs branch from which checkpoint (pure Python, no Lightning).

Within one group of runs (same seed and swept values), a run's training is determined by its
*schedule*: for every epoch, which of its windows is active (for step windows, which steps of
the epoch are inside which window). Two runs whose schedules agree on epochs ``0 .. k-1``
train identically up to epoch ``k``, so the second can start from the first's checkpoint
taken after ``k`` epochs. The plan is a trie over the schedules: every epoch of the trie is
trained once, which is the fewest epochs any plan can train.

A deficit's effect must depend only on whether it is active (true for every deficit in this
package); pass ``share_prefixes=False`` for a deficit whose effect depends on its window's
bounds, or a learning-rate schedule that depends on ``max_epochs`` when runs differ in length.
Step windows share only when the number of optimizer steps per epoch is known.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_critical.schedule import Window

Token = Any  # 0 (no window active) or a JSON-able description of what is active in one epoch


def schedule_tokens(windows: Sequence[Window], epochs: int, steps_per_epoch: int | None = None) -> list[Token] | None:
    """What is active in each epoch of a run; ``None`` when it cannot be known (step windows, unknown epoch length).

    Epoch windows: the 1-based index of the active window, 0 for none. Step windows: the
    active ``(window index, first step, end step)`` pieces within the epoch, 0 for none.

    Example::

        >>> schedule_tokens([Window(0, 2)], 4)
        [1, 1, 0, 0]
        >>> schedule_tokens([Window(5, 15, "step")], 2, steps_per_epoch=10)
        [[[1, 5, 10]], [[1, 0, 5]]]
        >>> schedule_tokens([Window(5, 15, "step")], 2) is None
        True
    """
    if not windows:
        return [0] * epochs
    if windows[0].unit == "epoch":
        return [next((i + 1 for i, w in enumerate(windows) if w.start <= t < w.stop), 0) for t in range(epochs)]
    if steps_per_epoch is None:
        return None
    tokens: list[Token] = []
    for t in range(epochs):
        lo, hi = t * steps_per_epoch, (t + 1) * steps_per_epoch
        pieces = [[i + 1, max(w.start, lo) - lo, int(min(w.stop, hi)) - lo]
                  for i, w in enumerate(windows) if w.start < hi and w.stop > lo]
        tokens.append(pieces or 0)
    return tokens


def prefix_keys(group: str, tokens: Sequence[Token]) -> list[str]:
    """Chained hashes: ``keys[k]`` names the training state after ``k`` epochs of ``tokens`` in ``group``.

    ``keys[0]`` is the group's starting point; equal prefixes in one group give equal keys.
    """
    h = hashlib.sha256(group.encode())
    keys = [h.hexdigest()[:20]]
    for token in tokens:
        h = h.copy()
        h.update(b"|" + json.dumps(token, separators=(",", ":")).encode())
        keys.append(h.hexdigest()[:20])
    return keys


@dataclass
class Node:
    """One run as the backends execute it.

    Attributes:
        run_id: the run's id.
        epochs: the run's total epochs.
        branch_epoch: epochs already trained when it starts (0: from scratch).
        parent: run id of the run that writes the checkpoint it starts from (``None``: from
            scratch, or from a checkpoint file left by an earlier session).
        resume_key: key of the checkpoint it starts from (``None``: from scratch).
        save_keys: ``{epoch: key}``, the checkpoints this run writes (after that many epochs)
            for the runs that branch from it.
        prefix_keys: key of the run's own state after ``k`` epochs, ``k = 0 .. epochs``
            (empty when the run cannot share).
    """

    run_id: str
    epochs: int
    branch_epoch: int = 0
    parent: str | None = None
    resume_key: str | None = None
    save_keys: dict[int, str] = field(default_factory=dict)
    prefix_keys: list[str] = field(default_factory=list)

    @property
    def epochs_to_train(self) -> int:
        return self.epochs - self.branch_epoch


@dataclass
class Plan:
    """Nodes in an order where every parent comes before its children."""

    nodes: list[Node]

    @property
    def epochs_trained(self) -> int:
        """Epochs the plan trains."""
        return sum(n.epochs_to_train for n in self.nodes)

    @property
    def epochs_independent(self) -> int:
        """Epochs the same runs would train one by one from scratch."""
        return sum(n.epochs for n in self.nodes)

    def children(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            if node.parent is not None:
                out.setdefault(node.parent, []).append(node)
        return out

    def by_id(self) -> dict[str, Node]:
        return {n.run_id: n for n in self.nodes}


@dataclass
class PlanItem:
    """What the planner needs to know about one run."""

    run_id: str
    group: str
    epochs: int
    tokens: list[Token] | None


class _Trie:
    __slots__ = ("children", "owner")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.owner: str | None = None


def make_plan(
    items: Iterable[PlanItem],
    share_prefixes: bool = True,
    available: Mapping[str, str | None] | None = None,
) -> Plan:
    """Plan the runs: each run starts from the deepest shared prefix trained by a run planned before it.

    Args:
        items: the runs to execute.
        share_prefixes: ``False`` trains every run from scratch.
        available: checkpoint keys already on disk (from an interrupted session), mapped to the
            run id that wrote them (or ``None``); a run may start from one of them.

    Within a group, runs are planned shortest first (a run whose schedule is a prefix of a
    longer one trains it once), then in decreasing schedule order, so a removal sweep's longest
    deficit trains the shared deficit epochs and every other run branches from it.

    Example::

        >>> items = [PlanItem(r, "g", 4, t) for r, t in [("a", [1, 1, 0, 0]), ("b", [1, 0, 0, 0]), ("c", [0, 0, 0, 0])]]
        >>> plan = make_plan(items)
        >>> [(n.run_id, n.parent, n.branch_epoch) for n in plan.nodes]
        [('a', None, 0), ('b', 'a', 1), ('c', None, 0)]
        >>> plan.epochs_trained, plan.epochs_independent
        (11, 12)
    """
    items = list(items)
    available = dict(available or {})
    order = sorted(items, key=lambda it: [json.dumps(t) for t in (it.tokens or [])], reverse=True)
    order = sorted(order, key=lambda it: (it.group, it.epochs))
    nodes: list[Node] = []
    by_id: dict[str, Node] = {}
    tries: dict[str, _Trie] = {}
    for item in order:
        node = Node(item.run_id, item.epochs)
        nodes.append(node)
        by_id[item.run_id] = node
        if not share_prefixes or item.tokens is None:
            continue
        tokens = item.tokens
        node.prefix_keys = keys = prefix_keys(item.group, tokens)
        root = tries.setdefault(item.group, _Trie())
        # deepest prefix trained by an earlier run of this plan (at most epochs - 1: a run trains >= 1 epoch)
        path = [root]
        for token in tokens[: item.epochs - 1]:
            child = path[-1].children.get(json.dumps(token))
            if child is None:
                break
            path.append(child)
        planned = max((d for d, t in enumerate(path) if d > 0 and t.owner is not None), default=0)
        on_disk = max((d for d in range(1, item.epochs) if keys[d] in available), default=0)
        if on_disk and on_disk >= planned:
            node.branch_epoch, node.resume_key, node.parent = on_disk, keys[on_disk], available[keys[on_disk]]
            start = on_disk
        elif planned:
            owner = by_id[path[planned].owner]  # type: ignore[index]
            owner.save_keys[planned] = keys[planned]
            node.branch_epoch, node.resume_key, node.parent = planned, keys[planned], owner.run_id
            start = planned
        else:
            start = 0
        # record what this run trains: depths start+1 .. epochs (shallower nodes stay with their owners)
        trie = root
        for depth, token in enumerate(tokens, start=1):
            trie = trie.children.setdefault(json.dumps(token), _Trie())
            if depth > start and trie.owner is None:
                trie.owner = item.run_id
    return Plan(_parents_first(nodes))


def _parents_first(nodes: list[Node]) -> list[Node]:
    """Order nodes so that each comes after its parent (planning order already does, except for file parents)."""
    ids = {n.run_id for n in nodes}
    placed: set[str] = set()
    out: list[Node] = []
    pending = list(nodes)
    while pending:
        rest = []
        for node in pending:
            if node.parent is None or node.parent not in ids or node.parent in placed:
                out.append(node)
                placed.add(node.run_id)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # cannot happen for a trie; keep every node anyway
            out.extend(rest)
            break
        pending = rest
    return out

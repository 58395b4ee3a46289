"""Which branched runs the exactness audit retrains first: the ones most at risk, chosen from the plan (pure Python).

A branched run inherits its first ``branch_epoch`` epochs from a checkpoint; state that a
branch point does not carry (a counter, a curriculum, a mask) may start to matter only late in
training, so the run branched deepest is the one most likely to end different. Among runs
branched at the same depth, a run whose length differs from its parent's comes first
(``removal(..., epochs_after=)``: state built from ``max_epochs`` differs there only), then grid
order (windows, swept values, seeds, as the call listed them). The order depends on the plan
alone, never on which run finishes first, so two forms of one study (YAML and Python) audit the
same runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_critical.sweep.plan import Node


def audit_order(nodes: Sequence[Node], grid_order: Sequence[str]) -> list[str]:
    """The branched runs of ``nodes`` (run ids), most at risk first; ``grid_order``: every run id in grid order.

    Example (``a`` trains from scratch; ``b`` branches from it after 1 epoch, ``c`` after 2 with
    a longer run, ``d`` after 2)::

        >>> nodes = [Node("a", 4), Node("b", 4, 1, "a", "kb"), Node("d", 4, 2, "a", "kd"), Node("c", 6, 2, "a", "kc")]
        >>> audit_order(nodes, ["a", "b", "d", "c"])
        ['c', 'd', 'b']
    """
    position = {rid: i for i, rid in enumerate(grid_order)}
    epochs = {n.run_id: n.epochs for n in nodes}

    def risk(node: Node) -> tuple[int, int, int]:
        # a parent from an earlier call: its length is unknown here, so no preference
        same_length = epochs.get(node.parent or "", node.epochs) == node.epochs
        return -node.branch_epoch, int(same_length), position.get(node.run_id, len(position))

    return [n.run_id for n in sorted((n for n in nodes if n.resume_key is not None), key=risk)]

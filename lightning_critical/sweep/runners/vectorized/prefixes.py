"""Shared prefixes inside a vectorized job: members whose runs agree on their first epochs train as one row.

The default runner's prefix tree (:func:`lightning_critical.sweep.plan.make_plan`) is planned
over the job's members: runs of one *group* (same seed and swept values) whose schedules
(:func:`~lightning_critical.sweep.plan.schedule_tokens`: which window is active in each epoch)
agree on epochs ``0 .. k-1`` train identically up to epoch ``k``. A member with a parent in
that tree holds no row of the stack until its branch epoch ``k``; there the loop *forks* its
parent's row (:meth:`~.stack.Stack.fork`, :meth:`~.optim.StackedOptimizer.fork`) and
:func:`fork_member` gives the child a copy of everything else the parent carries across the
epoch boundary: its own optimizer's state and hyperparameters, its schedulers' states, its
global random states (``Member.rng``) and the states of generator objects held by its model,
datamodule, deficits and loaders (found as the default runner's branching finds them),
and its datamodule's ``state_dict``. Every copy is a clone, never an alias. The job then
trains as many member-epochs as the default runner's prefix tree.

Step windows share too: the job knows its steps per epoch (the train loaders' length).
``share_prefixes=False`` (the sweep's) trains every member from epoch 0.

Example::

    >>> from types import SimpleNamespace
    >>> from lightning_critical.schedule import Window
    >>> from lightning_critical.sweep.spec import RunSpec
    >>> def task(windows, epochs):
    ...     return SimpleNamespace(run=RunSpec(windows, seed=0), epochs=epochs)
    >>> tasks = [task((Window(0, 2),), 4), task((Window(0, 1),), 3), task((), 2)]
    >>> branch_points(tasks, steps_per_epoch=3)  # {child: (parent, epochs shared)}: the shorter run trains first
    {0: (1, 1)}
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical.sweep.plan import PlanItem, make_plan, schedule_tokens
from lightning_critical.sweep.runners.branching import rngs
from lightning_critical.sweep.runners.vectorized.members import Member
from lightning_critical.sweep.spec import canonical_json


def branch_points(tasks: Sequence[Any], steps_per_epoch: int | None, share: bool = True) -> dict[int, tuple[int, int]]:
    """``{child index: (parent index, branch epoch)}`` of the prefix tree of ``tasks`` (roots absent).

    A child trains nothing before its branch epoch: its state there is its parent's.
    """
    if not share:
        return {}
    items = [PlanItem(str(index), group_key(task), task.epochs,
                      schedule_tokens(task.run.windows, task.epochs, steps_per_epoch))
             for index, task in enumerate(tasks)]
    plan = make_plan(items)
    return {int(n.run_id): (int(n.parent), n.branch_epoch) for n in plan.nodes if n.parent is not None}


def same_length_forks(forks: dict[int, tuple[int, int]], tasks: Sequence[Any],
                      members: Sequence[Member]) -> dict[int, tuple[int, int]]:
    """``forks`` without a fork between runs of different lengths whose ``configure_optimizers`` read the run's
    length (``max_epochs``, ``estimated_stepping_batches``: :class:`~.members.RunLength`); such a child trains
    from its first epoch.

    Example::

        >>> from types import SimpleNamespace
        >>> tasks = [SimpleNamespace(epochs=3), SimpleNamespace(epochs=2), SimpleNamespace(epochs=3)]
        >>> members = [SimpleNamespace(length_read=["max_epochs"])] * 3
        >>> same_length_forks({1: (0, 1), 2: (0, 2)}, tasks, members)
        {2: (0, 2)}
    """
    return {child: (parent, epoch) for child, (parent, epoch) in forks.items()
            if tasks[child].epochs == tasks[parent].epochs
            or not (members[child].length_read or members[parent].length_read)}


def group_key(task: Any) -> str:
    """The prefix group of a task's run: its seed and swept values (runs of other groups never share)."""
    return canonical_json({"seed": task.run.seed, "params": task.run.encode()["params"]})


def member_epochs(tasks: Sequence[Any], forks: dict[int, tuple[int, int]]) -> int:
    """The member-epochs a job trains (each member's epochs after its branch epoch).

    Example::

        >>> from types import SimpleNamespace
        >>> member_epochs([SimpleNamespace(epochs=4), SimpleNamespace(epochs=3)], {1: (0, 1)})
        6
    """
    return sum(t.epochs - forks.get(i, (i, 0))[1] for i, t in enumerate(tasks))


def fork_member(parent: Member, child: Member) -> None:
    """Give ``child`` a clone of ``parent``'s optimizer, schedulers and random states (see the module docstring).

    The rows of the stack (parameters, buffers, a stacked optimizer's state) are forked by the
    stack and the stacked optimizer; this copies what each member holds itself.
    """
    _fork_optimizer(parent.optimizer, child.optimizer, [p for _, p in parent.named], [p for _, p in child.named])
    for mine, theirs in zip(child.schedulers, parent.schedulers, strict=True):
        mine.scheduler.load_state_dict(copy.deepcopy(theirs.scheduler.state_dict()))
    child.rng = _cloned(parent.rng)
    found, own = rngs.find(_parts(parent)), rngs.find(_parts(child))
    if sorted(found) != sorted(own):
        raise RuntimeError(f"members of one group hold other generator objects ({sorted(found)} and {sorted(own)}); "
                           "use share_prefixes=False")
    for path, gen in found.items():
        rngs.set_state(own[path], _cloned(rngs.state(gen)))
    source = parent.datamodule
    if source is not None and hasattr(source, "state_dict"):
        state = source.state_dict()
        if state:
            child.datamodule.load_state_dict(_cloned(state))


def _fork_optimizer(parent: torch.optim.Optimizer, child: torch.optim.Optimizer, parent_params: list[Any],
                    child_params: list[Any]) -> None:
    """The child's optimizer: the parent's hyperparameters (a scheduler changed them) and per-parameter state."""
    for mine, theirs in zip(child.param_groups, parent.param_groups, strict=True):
        mine.update({k: copy.deepcopy(v) for k, v in theirs.items() if k != "params"})
    child.state.clear()
    for p_parent, p_child in zip(parent_params, child_params, strict=True):
        if p_parent in parent.state:
            child.state[p_child] = _cloned(parent.state[p_parent])


def _cloned(value: Any) -> Any:
    """A deep copy whose tensors are clones (``Optimizer.load_state_dict`` would alias them)."""
    return copy.deepcopy(value)  # deepcopy clones tensors (and their storage), and copies arrays


def _parts(member: Member) -> dict[str, Any]:
    return {"model": member.model, "datamodule": member.datamodule, "deficits": member.deficits,
            "train_dataloader": member.train_loader, "val_dataloader": member.val_loader}

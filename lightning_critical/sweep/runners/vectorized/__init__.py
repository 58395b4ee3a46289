"""The vectorized runner: every run of a small model that can share a stack trained as one ``torch.func`` job.

``lc.sweep.run(..., runner="vectorized")`` (or ``runner=lc.sweep.VectorizedRunner()``) groups
the runs whose models have the same parameter shapes and whose loaders give the same batches per
epoch and batch shapes (:meth:`VectorizedRunner.batches`; runs of other lengths leave the stack
when they end) and trains each group as one job: parameters stacked, the user's unchanged
``training_step`` / ``validation_step`` called through ``functional_call`` under ``vmap`` over
members, with one template module per params combination (:class:`.stack.Stack`: each member
runs its own combination's module), ``self.log`` collected per member, each
member's own ``configure_optimizers()`` (its optimizer and schedulers over its row of the
stack), its batches from its own datamodule under its own random states (through the
datamodule's transfer hooks), every built-in deficit per member (:mod:`.deficits`: input
deficits on its rows, ``PathwayDeficit`` freeze with gradients dropped per member, silence,
noise and ``ModeDeficit`` as hooks reading per-member tensors (:mod:`.effects`), ``TaskSwitch``
on its own datamodule), gradient clipping per member, BatchNorm statistics per member; metric
functions per member after the job (:mod:`.evaluate`). Records, table, store, resume and
summary are the default runner's; with ``tensorboard``, each member's logs are written after
the job as its run trained alone writes them (:mod:`.history`, :mod:`.writer`).
A job trains on one device (``VectorizedRunner(device=...)``, else the sweep's ``trainer=``
accelerator: :mod:`.device`).

**Exactness.** Members of linear and MLP models end bitwise equal to the runs the default
runner trains one by one (``tests/test_sweep_vectorized*.py``; small products: :mod:`.kernels`);
convolutions differ by float32 rounding (vmap makes a grouped convolution), and so does
BatchNorm. Not in this version: extra callbacks.

**Shared prefixes.** Runs of one seed and swept values whose schedules agree on their first
epochs train as one row of the stack until they part (:mod:`.prefixes`: the default runner's
prefix tree, planned inside the job); there the row is forked (parameters, buffers, optimizer
and scheduler states, random states, logged values: clones). ``shares_prefixes`` is ``False``
(the engine writes no branch checkpoints for this runner: the job shares by itself); the
sweep's ``share_prefixes=False`` trains every member from epoch 0. A record's
``epochs_trained``, ``branch_epoch`` and ``parent`` say what its member trained itself.

Everything it cannot map is refused before training (:data:`.checks.REFUSALS`), in
:meth:`VectorizedRunner.batches`, with the default runner as the remedy; ``runner="auto"``
(:class:`AutoRunner`) falls back to it and says why.

Example::

    >>> runner = VectorizedRunner()
    >>> runner.name, runner.shares_prefixes, sorted(runner.supports)
    ('vectorized', False, ['save_model', 'tensorboard', 'test'])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from lightning_critical.sweep.build import build_deficits, deficit_seed
from lightning_critical.sweep.runners.base import envelope
from lightning_critical.sweep.runners.lightning import QUIET_TRAINER, LightningRunner
from lightning_critical.sweep.runners.rng import capture, restore
from lightning_critical.sweep.runners.vectorized.checks import (
    REFUSALS,
    VectorizedRefused,
    check_module,
    check_spec,
    trial_refusal,
    unexpected_refusal,
)
from lightning_critical.sweep.runners.vectorized.device import check_device, job_device, to_device
from lightning_critical.sweep.runners.vectorized.evaluate import final_metrics
from lightning_critical.sweep.runners.vectorized.held_out import check_test
from lightning_critical.sweep.runners.vectorized.members import Member, check_deficits
from lightning_critical.sweep.runners.vectorized.optim import follows_schedulers
from lightning_critical.sweep.runners.vectorized.prefixes import branch_points, group_key, same_length_forks
from lightning_critical.sweep.runners.vectorized.stack import Stack
from lightning_critical.sweep.runners.vectorized.tensors import stacked
from lightning_critical.sweep.runners.vectorized.train import train
from lightning_critical.sweep.runners.vectorized.writer import write_logs
from lightning_critical.sweep.spec import canonical_json

__all__ = ["REFUSALS", "AutoRunner", "VectorizedRefused", "VectorizedRunner"]


class VectorizedRunner:
    """Train the runs that share a stack as one vectorized job (see :mod:`.vectorized`).

    Args:
        allow_dropout: accept dropout (members then draw their masks under ``vmap``'s
            ``randomness="different"``: statistically, not bitwise, the runs trained alone).
        max_members: the most runs per job (``None``: every run that can share a stack).
        exact_logs: the logged values that become final metrics (the last epoch's training
            logs, the last validation) are computed by replaying each member's step alone, so
            they equal the default runner's bitwise (reductions such as a loss's mean round
            differently under ``vmap``; gradients do not). ``False``: read them from ``vmap``
            (faster; last-digit float32 differences). ``None`` (default): ``True`` unless the
            model has convolutions, whose members differ by float32 rounding anyway.
        stacked_optimizer: one stock SGD/Adam/AdamW over the stacked parameters when it equals
            the members' own optimizers bitwise (:func:`.optim.stackable`); ``False``: always
            one optimizer per member (over its row).
        device: where a job trains (:mod:`.device`): ``"cpu"``, ``"cuda"``, ``"cuda:<index>"`` or
            a ``torch.device``; ``None`` (default): the device the sweep's ``trainer=``
            accelerator means, as the default runner's ``Trainer`` picks it (``"auto"``: CUDA
            when available). Stack, optimizer state, batches, gates and replays live there.

    Raises:
        ValueError: a ``device`` that is not a CPU or CUDA device (the message lists the valid ones).
        VectorizedRefused: from :meth:`batches`, before training, for what cannot be mapped (an
            accelerator that disagrees with ``device``, CUDA where none is available, ...).

    Example::

        >>> VectorizedRunner(max_members=25).max_members
        25
        >>> VectorizedRunner(device="cpu").device
        'cpu'
    """

    name = "vectorized"
    shares_prefixes = False  # no branch checkpoints from the engine: the job shares prefixes itself (.prefixes)
    supports: frozenset[str] = frozenset({"save_model", "tensorboard", "test"})  # logs written after the job (.writer)
    lightning_trial = True  # the pre-flight's Lightning trial fit checks the metric names (the same module's steps)

    def __init__(self, allow_dropout: bool = False, max_members: int | None = None, exact_logs: bool | None = None,
                 stacked_optimizer: bool = True, device: str | torch.device | None = None) -> None:
        flags = (("allow_dropout", allow_dropout), ("exact_logs", exact_logs), ("stacked_optimizer", stacked_optimizer))
        for name, flag in flags:
            if not isinstance(flag, bool) and not (name == "exact_logs" and flag is None):
                raise TypeError(f"{name}={flag!r} is not valid: give True or False.")
        if max_members is not None and (not isinstance(max_members, int) or max_members < 1):
            raise ValueError(f"max_members={max_members!r} is not valid: give an integer >= 1 or None.")
        self.allow_dropout, self.max_members, self.exact_logs = allow_dropout, max_members, exact_logs
        self.stacked_optimizer = stacked_optimizer
        self.device = check_device(device)

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        """One job per parameter shapes and loader shapes (batches per epoch, batch sizes, dataset sizes, first
        batch's shapes; runs of other lengths leave the stack when they end; with ``max_members``, the runs of one
        seed and swept values kept together, so they share their prefixes), after the refusals (every params
        combination's module) and a trial step per job; any error met on the way is a :class:`VectorizedRefused`
        naming it."""
        try:
            return self._batches(tasks)
        except VectorizedRefused:
            raise
        except Exception as err:
            raise unexpected_refusal(err) from err

    def _batches(self, tasks: list[Any]) -> list[list[Any]]:
        if not tasks:
            return []
        check_spec(tasks[0].spec)
        job_device(self.device, {**QUIET_TRAINER, **tasks[0].spec.trainer})
        for task in tasks:
            check_deficits(build_deficits(task.spec, task.run))
        combos: dict[str, list[Any]] = {}  # params combination -> its tasks (members with deficits first)
        for task in sorted(tasks, key=lambda t: not t.run.windows):
            combos.setdefault(canonical_json(task.run.encode()["params"]), []).append(task)
        jobs: dict[str, list[tuple[list[Any], Member]]] = {}  # what members of one job share -> its combinations
        for combo in combos.values():
            signature, member = self._signature(combo)
            jobs.setdefault(signature, []).append((combo, member))
        for job in jobs.values():  # a step of every template of every job, before any training
            extra = job[0][0][1:2] if len(job) == 1 else []  # two members at least: vmap over more than one
            self.trial([combo[0] for combo, _ in job] + extra, [member for _, member in job])
        size = self.max_members or len(tasks)
        job_of = {id(t): j for j, job in enumerate(jobs.values()) for combo, _ in job for t in combo}
        groups = [[t for t in tasks if job_of[id(t)] == j] for j in range(len(jobs))]  # in the sweep's order
        return [g[i:i + size] for g in map(_by_prefix_group, groups) for i in range(0, len(g), size)]

    def trial(self, tasks: Sequence[Any], members: Sequence[Member] = ()) -> None:
        """One vmapped training and validation step on ``tasks``' members (each its own batch and template; the
        first ones given as ``members`` when already built and checked); a failure is a refusal."""
        saved = capture()
        try:
            more = [Member(t) for t in tasks[len(members):]]
            for member in more:
                check_module(member.model, self.allow_dropout)
                if member.task.spec.test:
                    check_test(member.model)
        finally:
            restore(saved)
        self._trial([*members, *more])

    def _trial(self, members: list[Member]) -> None:
        saved = capture()
        try:
            stack = self._stack(members)
            try:
                batches = [_first(m, m.train_loader, stack.device) for m in members]
                gates = to_device(stack.gates(members, 0, 0), stack.device)
                stack.train_step(stacked(batches), gates, 0)
                if all(m.make_val_loader() is not None for m in members):
                    stack.validation_step(stacked([_first(m, m.val_loader, stack.device) for m in members]), 0)
            except VectorizedRefused:
                raise
            except Exception as err:
                raise trial_refusal(err) from err
        finally:
            restore(saved)

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]:
        """One record per task, all trained as one vectorized job under the run envelope."""
        return envelope(list(tasks), self._train)

    def _train(self, tasks: list[Any]) -> list[dict[str, Any]]:
        spec = tasks[0].spec
        members = [Member(t) for t in tasks]
        for member in members:
            check_module(member.model, self.allow_dropout)
        stack = self._stack(members)
        trainer = {**QUIET_TRAINER, **spec.trainer}
        forks = same_length_forks(branch_points(tasks, len(members[0].train_loader), spec.share_prefixes), tasks,
                                  members)
        # members of several params combinations: schedulers the stacked optimizer cannot follow (their
        # hyperparameters may part during training): each member's own optimizer then (exact)
        one_optimizer = self.stacked_optimizer and follows_schedulers(members, len(stack.templates))
        produced = train(members, stack, int(trainer.get("check_val_every_n_epoch") or 1),
                         self._exact_logs(members[0].model), one_optimizer, _clip(trainer),
                         scalars=tasks[0].log_dir is not None, forks=forks)
        out = []
        for index, (task, member, logs) in enumerate(zip(tasks, members, produced, strict=True)):
            parent, branch_epoch = forks.get(index, (None, 0))
            metrics = final_metrics(member, logs.callback, task.epochs * len(member.train_loader),
                                    stack.view.log_every_n_steps)
            if task.log_dir is not None:
                write_logs(task, member, logs, metrics, len(member.train_loader), stack.view.log_every_n_steps)
            if spec.save_model:
                _save(member.model, os.path.join(task.out, "models", f"{task.label}.pt"))
            out.append({"metrics": metrics, "epochs_trained": task.epochs - branch_epoch,
                        "branch_epoch": branch_epoch, "parent": None if parent is None else tasks[parent].run_id,
                        "global_step": task.epochs * len(member.train_loader),
                        "deficit_seed": deficit_seed(member.deficits)})
        return out

    def _exact_logs(self, model: Any) -> bool:
        if self.exact_logs is not None:
            return self.exact_logs
        return not any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())

    def _stack(self, members: list[Member]) -> Stack:
        trainer = {**QUIET_TRAINER, **members[0].task.spec.trainer}
        every = trainer.get("log_every_n_steps")
        stack = Stack(members, randomness="different" if self.allow_dropout else "error",
                      log_every_n_steps=50 if every is None else int(every),  # Lightning's default: 50
                      device=job_device(self.device, trainer))
        for member in members:
            member.configure()
        return stack

    def _signature(self, combo: list[Any]) -> tuple[str, Member]:
        """What the members of one job must share, for a params combination's runs (parameter shapes, batches per
        epoch and batch shapes), and the member of its first run, whose module is checked here (every
        combination's, before any training)."""
        saved = capture()
        try:
            member = Member(combo[0])
            check_module(member.model, self.allow_dropout)
            if member.task.spec.test:
                check_test(member.model)
            loaders: list[Any] = [_loader_signature(member, loader)
                                  for loader in (member.train_loader, member.make_val_loader())]
        finally:
            restore(saved)
        if any(loader is not None and loader[1] is None for loader in loaders):  # a batch sampler: sizes unknown
            loaders.append(canonical_json(combo[0].run.encode()["params"]))  # its combination alone
        shapes = {k: list(v.shape) for k, v in member.model.state_dict().items()}
        return canonical_json({"shapes": shapes, "loaders": loaders}), member

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), *sorted(vars(self).items())))


class AutoRunner:
    """``runner="auto"``: the vectorized runner when the sweep qualifies, else the default; says which and why.

    The choice is made in :meth:`batches`, before training, and printed as one line. The
    vectorized runner shares prefixes inside its jobs; the default runner, when chosen, trains
    each run from scratch (the engine plans before the choice: same rows either way).

    Example::

        >>> AutoRunner().name
        'auto'
    """

    name = "auto"
    shares_prefixes = False
    lightning_trial = True
    supports: frozenset[str] = frozenset({"save_model", "callbacks", "test", "tensorboard"})  # both runners write them

    def __init__(self) -> None:
        self._chosen: Any = None

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        """The chosen runner's jobs; prints the choice and the reason."""
        vectorized = VectorizedRunner()
        spec = tasks[0].spec if tasks else None
        asked = [n for n in ("callbacks",) if spec is not None and getattr(spec, n)]
        try:
            if asked:
                raise VectorizedRefused(f"{asked} asked for")
            groups = vectorized.batches(tasks)
            self._chosen = vectorized
            print(f"runner='auto': the vectorized runner ({len(tasks)} runs in {len(groups)} job(s)): the model "
                  "qualifies")
            return groups
        except Exception as err:  # a refusal, or a bug of ours: neither should stop a sweep the default runner trains
            self._chosen = LightningRunner()
            reason = err.construct if isinstance(err, VectorizedRefused) else unexpected_refusal(err).construct
            print(f"runner='auto': the default runner (one fit per run): {reason}")
            return self._chosen.batches(tasks)

    def run(self, tasks: Sequence[Any]) -> list[dict[str, Any]]:
        """The chosen runner's records (the default runner when :meth:`batches` was not called)."""
        return (self._chosen or LightningRunner()).run(tasks)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


def _first(member: Member, loader: Any, device: torch.device) -> Any:
    with member.drawing():
        return member.transfer(next(iter(loader)), device)


def _loader_signature(member: Member, loader: Any) -> list[Any] | None:
    """Batches per epoch, batch size, ``drop_last``, dataset size and the first batch's shapes (``None``: no loader)."""
    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    with member.drawing():
        first = next(iter(loader))
    shapes = [list(t.shape) for t in torch.utils._pytree.tree_leaves(first) if isinstance(t, torch.Tensor)]
    return [len(loader), getattr(loader, "batch_size", None), getattr(loader, "drop_last", None), total, shapes]


def _by_prefix_group(tasks: list[Any]) -> list[Any]:
    """``tasks`` with the runs of one seed and swept values together (first-seen order), so that a job split by
    ``max_members`` keeps the runs that can share a prefix in one job where it can."""
    keys = [group_key(task) for task in tasks]
    first: dict[str, int] = {}
    for key in keys:
        first.setdefault(key, len(first))
    order = sorted(range(len(tasks)), key=lambda i: first[keys[i]])
    return [tasks[i] for i in order]


def _clip(trainer: dict[str, Any]) -> tuple[float, str] | None:
    value = trainer.get("gradient_clip_val")
    return None if value is None else (float(value), str(trainer.get("gradient_clip_algorithm") or "norm"))


def _save(model: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({k: v.to("cpu", copy=True) for k, v in model.state_dict().items()}, tmp)  # a fit ends on the CPU
    os.replace(tmp, path)

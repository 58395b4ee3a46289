"""One member of a vectorized job: the run's own model, datamodule, deficits, random state and optimizer.

Each member is built exactly as the default runner builds its run (``seed_everything(seed)``,
then the model, datamodule and deficit factories, then ``prepare_data`` / ``setup``), and keeps
its own global random states, which are put in place whenever the member draws (its data
loaders' shuffles and seeds, its validation loader made lazily where Lightning makes it, an
input deficit's callable, ``configure_optimizers``), so its batches are the ones its run trained
alone would see.
Its parameters alias one row of the job's stacked parameters (:func:`alias_rows`), so its own
optimizer and schedulers (its module's unchanged ``configure_optimizers()``) update that row.

Example::

    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> stack = {"weight": torch.zeros(3, 1, 2), "bias": torch.zeros(3, 1)}
    >>> alias_rows(net, stack, 1)
    >>> with torch.no_grad():
    ...     _ = net.bias.add_(1.0)
    >>> stack["bias"][:, 0].tolist()
    [0.0, 1.0, 0.0]
"""

from __future__ import annotations

import copy
import importlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_critical._namespace import pl
from lightning_critical.deficits.pathway import PathwayDeficit
from lightning_critical.protocols import resolve_modules
from lightning_critical.sweep.build import build_datamodule, build_deficits, build_model
from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused, check_optimization
from lightning_critical.sweep.runners.vectorized.deficits import check_deficits, resolve_deficits
from lightning_critical.sweep.runners.vectorized.device import to_device
from lightning_critical.sweep.runners.vectorized.loaders import Feed, stock_tensors

_optimizer_module = importlib.import_module(f"{pl.__name__}.core.optimizer")
CPU = torch.device("cpu")


class Member:
    """The run of ``task`` as one row of a vectorized job (see the module docstring)."""

    def __init__(self, task: Any) -> None:
        spec, run = task.spec, task.run
        self.task = task
        pl.seed_everything(run.seed, verbose=False)
        self.model = build_model(spec, run)
        self.datamodule = build_datamodule(spec, run)
        self.deficits = build_deficits(spec, run)
        self.inputs, self.pathways, self.modes, self.switches = check_deficits(self.deficits)
        source = self.datamodule if self.datamodule is not None else self.model
        if self.datamodule is not None:
            self.datamodule.prepare_data()
        if _overrides(self.model, "prepare_data"):  # Lightning calls the module's too (its own data)
            self.model.prepare_data()
        if self.datamodule is not None:
            self.datamodule.setup("fit")
        _setup_detached(self.model, self.datamodule)
        # Lightning never makes the validation loader (nor draws for it) with limit_val_batches=0 or without
        # a validation_step
        self.validates = (spec.trainer.get("limit_val_batches", 1.0) != 0 and _overrides(self.model, "validation_step")
                          and _has_val_loader(source))
        self.val_loader: Any = None  # made where Lightning makes it (make_val_loader)
        self._val_source, self._val_made = source, False
        if self.validates and spec.trainer.get("num_sanity_val_steps"):  # the sanity check's, under isolate_rng
            saved = _capture()
            try:
                self.val_loader, self._val_made = _val_loader(source), True
            finally:
                _restore(saved)
        self.train_loader = source.train_dataloader()
        self.rng = _capture()
        self.frozen: dict[int, list[nn.Parameter]] = {}
        self.named: list[tuple[str, nn.Parameter]] = []  # set when the stack aliases the parameters
        self.fixed: list[nn.Parameter] = []  # requires_grad=False where another member trains it: always frozen
        self.blocked: dict[frozenset[str], list[nn.Parameter]] = {}  # cut off by noise on these modules (.reach)
        self.view = TrainerView(datamodule=self.datamodule)  # what the deficits' own checks read as the trainer
        resolve_deficits(self)
        self._started = False
        self.length_read: list[str] = []  # set by configure()

    @contextmanager
    def drawing(self) -> Iterator[None]:
        """Put this member's random states in place (and keep what it drew), restoring the caller's."""
        saved = _capture()
        _restore(self.rng)
        try:
            yield
        finally:
            self.rng = _capture()
            _restore(saved)

    @contextmanager
    def drawing_torch(self) -> Iterator[None]:
        """:meth:`drawing` for draws known to use torch's generator only (a stock sampler over a TensorDataset)."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng[0])
        try:
            yield
        finally:
            self.rng = (torch.get_rng_state(), self.rng[1], self.rng[2])
            torch.set_rng_state(saved)

    def make_val_loader(self) -> Any:
        """The validation loader (``None``: no validation), made once, by the first call, as Lightning makes it.

        Lightning calls ``val_dataloader()`` at the sanity check (random states isolated), else at
        the first validation, after that epoch's training: the loop calls this there, so that what
        ``val_dataloader()`` draws (a random subset) comes from the member's stream at that point.
        A list of loaders is refused (:class:`.checks.VectorizedRefused`).
        """
        if not self._val_made and self.validates:
            with self.drawing():
                self.val_loader = _val_loader(self._val_source)
            self._val_made = True
        return self.val_loader

    def val_from(self, parent: Member) -> None:
        """At a fork: ``parent``'s validation loader copied if it was made (the run trained alone made it once)."""
        if parent._val_made:
            self.val_loader, self._val_made = copy.deepcopy(parent.val_loader), True

    def feed(self, loader: Any) -> Feed:
        """A new epoch of ``loader`` for this member (the iterator made under its random states)."""
        return Feed(self, loader)

    def configure(self) -> None:
        """The member's optimizer and schedulers from its module's own ``configure_optimizers()`` (params aliased)."""
        steps = self.task.epochs * len(self.train_loader)  # Lightning's, with max_steps=-1 and no accumulation
        view = RunLength(self.task.epochs, steps, datamodule=self.datamodule)
        self.model._trainer = view  # what configure_optimizers may read: the run's length (a OneCycleLR's steps)
        try:
            with self.drawing():  # what it draws comes from the run's stream
                optimizers, configs, _ = _optimizer_module._configure_optimizers(self.model.configure_optimizers())
        finally:
            self.model._trainer = None
        self.length_read = sorted(view.read)
        schedulers = _optimizer_module._configure_schedulers_automatic_opt(configs, None) if configs else []
        check_optimization(optimizers, schedulers)
        self.optimizer, self.schedulers = optimizers[0], schedulers
        for index, deficit in enumerate(self.pathways):
            if deficit.mode == "freeze":
                modules = resolve_modules(self.model, deficit.pathways).values()
                self.frozen[index] = list({id(p): p for m in modules for p in m.parameters()}.values())

    def batch(self, deficits_at: tuple[int, int], batch: Any, batch_idx: int,
              device: torch.device = CPU) -> Any:
        """``batch`` as this member's training step sees it: its task switched (:meth:`switch_tasks`), moved to
        ``device`` through the datamodule's transfer hooks (:meth:`transfer`), then its active input deficits
        applied in order (Lightning's deficit callbacks see the batch on the device); a callable transform under the
        member's random states (:meth:`drawing`), as it draws in the run trained alone."""
        epoch, step = deficits_at
        self.switch_tasks(epoch, step)
        batch = self.transfer(batch, device)
        for deficit in self.inputs:
            if deficit.window.contains(epoch=epoch, step=step):
                if isinstance(deficit.transform, str):  # a built-in transform draws from its own generator only
                    batch = deficit.apply(batch, step, batch_idx, 0)
                    continue
                with self.drawing():  # a user's callable may draw from the global generators: the member's
                    batch = deficit.apply(batch, step, batch_idx, 0)
        return batch

    def switch_tasks(self, epoch: int, step: int) -> None:
        """Each ``TaskSwitch``: the task of the step about to run set on this member's datamodule.

        A run's ``TaskSwitch`` sets its initial task when training starts, then the task of the
        time reached at every epoch start (and, in steps, after every optimizer step): always
        before the datamodule's transfer hooks see the next batch, which is where this is called.
        """
        self.view.current_epoch, self.view.global_step = epoch, step
        for switch in self.switches:
            if not self._started:  # TaskSwitch.on_train_start without the run's charts (a sweep writes none here)
                if switch._initial_task is None:
                    switch._initial_task = switch._choose_initial()
                name = switch.task_at(switch._now(self.view))  # type: ignore[arg-type]  # reads the counters only
                if name is not None:
                    switch._set(name)
                switch._applied = name
            switch._sync(self.view)  # type: ignore[arg-type]  # what its on_train_epoch_start / on_train_batch_end do
        self._started = True

    def transfer(self, batch: Any, device: torch.device = CPU) -> Any:
        """``batch`` moved to ``device`` through the datamodule's overridden transfer hooks, as Lightning moves a
        batch (a module's own transfer hooks are refused by :func:`.checks.check_module`)."""
        dm, base = self.datamodule, pl.LightningDataModule
        if dm is not None and type(dm).on_before_batch_transfer is not base.on_before_batch_transfer:
            batch = dm.on_before_batch_transfer(batch, 0)
        if dm is not None and type(dm).transfer_batch_to_device is not base.transfer_batch_to_device:
            batch = dm.transfer_batch_to_device(batch, device, 0)
        else:
            batch = to_device(batch, device)
        if dm is not None and type(dm).on_after_batch_transfer is not base.on_after_batch_transfer:
            batch = dm.on_after_batch_transfer(batch, 0)
        return batch

    def frozen_now(self, epoch: int, step: int) -> list[nn.Parameter]:
        """The parameters whose gradient is dropped before this optimizer step: active freeze deficits,
        :attr:`fixed` (``requires_grad=False`` here where another member of the job trains that parameter) and
        :attr:`blocked` (cut off from the loss by the noise deficits open now: no gradient under Lightning)."""
        out: list[nn.Parameter] = list(self.fixed)
        if self.blocked:
            out.extend(self.blocked.get(frozenset(self.noised(epoch, step)), []))
        for index, params in self.frozen.items():
            if self.pathways[index].window.contains(epoch=epoch, step=step):
                out.extend(params)
        return out

    def silence_targets(self) -> set[str]:
        """The modules any of this member's silence deficits acts on."""
        return {name for d in self.pathways if d.mode == "silence" for name in d.targets}

    def noise_targets(self) -> dict[str, tuple[PathwayDeficit, int]]:
        """``{module: (noise deficit, its index among the deficit's pathways)}`` of every noise deficit."""
        return {name: (d, i) for d in self.pathways if d.mode == "noise" for i, name in enumerate(d.targets)}

    def mode_targets(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module: (U columns, V columns)}`` of every ``ModeDeficit`` (its lesioned modes of the task basis)."""
        return {name: (d._u, d._v) for d in self.modes for name in d.targets}  # type: ignore[misc]

    def silenced(self, epoch: int, step: int) -> set[str]:
        """The module names silenced at this step (active silence deficits)."""
        return {name for d in self.pathways if d.mode == "silence" and d.window.contains(epoch=epoch, step=step)
                for name in d.targets}

    def noised(self, epoch: int, step: int) -> dict[str, tuple[PathwayDeficit, int]]:
        """:meth:`noise_targets` of the noise deficits active at this step."""
        return {name: (d, i) for d in self.pathways if d.mode == "noise" and d.window.contains(epoch=epoch, step=step)
                for i, name in enumerate(d.targets)}

    def lesioned(self, epoch: int, step: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`mode_targets` of the mode deficits active at this step."""
        return {name: (d._u, d._v) for d in self.modes  # type: ignore[misc]
                if d.window.contains(epoch=epoch, step=step) for name in d.targets}

    def step_schedulers(self, interval: str) -> None:
        for config in self.schedulers:
            if config.interval == interval:
                config.scheduler.step()


def alias_rows(module: nn.Module, stack: dict[str, torch.Tensor], row: int) -> None:
    """Make ``module``'s parameters and buffers row ``row`` of ``stack`` (same storage: updates show in the stack).

    A parameter keeps its ``requires_grad`` (the user's flag: ``False`` means no gradient, no
    update); a tied parameter or buffer (one tensor under several names, stacked under its first
    name, as ``named_parameters()`` lists it) stays tied: every name gets the same row.
    """
    tied = _tied_names(module)
    for name, tensor in stack.items():
        new: torch.Tensor | None = None
        for alias in tied.get(name, [name]):
            owner_name, _, leaf = alias.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if leaf in owner._parameters:
                old = owner._parameters[leaf]
                requires_grad = old.requires_grad if old is not None else True
                new = nn.Parameter(tensor[row], requires_grad=requires_grad) if new is None else new
                owner._parameters[leaf] = new  # type: ignore[assignment]  # a Parameter made above
            else:
                new = tensor[row] if new is None else new
                owner._buffers[leaf] = new


def _tied_names(module: nn.Module) -> dict[str, list[str]]:
    """``{first name: every name}`` of each parameter and buffer (several names: tied)."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*module.named_parameters(remove_duplicate=False),
                         *module.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return {group[0]: group for group in names.values()}


class TrainerView:
    """What a member's module reads as ``self.trainer``: the loop's counters and the sweep's logging cadence.

    ``global_step`` / ``current_epoch`` are the job's (members step together), so a step that
    reads them (or ``log_every_n_steps``) sees what its run trained alone would; ``datamodule``
    only in ``setup``. Any other attribute raises an ``AttributeError`` naming it (the trial
    step turns it into a refusal).
    """

    logger: Any = None
    local_rank = global_rank = node_rank = 0
    world_size = 1
    is_global_zero = True

    def __init__(self, log_every_n_steps: int = 50, **extra: Any) -> None:
        self.global_step = self.current_epoch = 0
        self.log_every_n_steps = log_every_n_steps
        self.loggers: list[Any] = []
        vars(self).update(extra)

    def __getattr__(self, name: str) -> Any:  # only called for what is not set
        raise AttributeError(f"self.trainer.{name} read by the module: vectorized members train without a Trainer "
                             f"(they see only {sorted(vars(self))}, logger and the ranks)")


class RunLength(TrainerView):
    """:class:`TrainerView` with the run's length, as ``configure_optimizers`` reads it (``max_epochs``,
    ``estimated_stepping_batches``); ``read``: the names read (such a member shares no prefix with runs of
    another length).

    Example::

        >>> view = RunLength(3, 12)
        >>> view.estimated_stepping_batches, sorted(view.read)
        (12, ['estimated_stepping_batches'])
    """

    def __init__(self, epochs: int, steps: int, **extra: Any) -> None:
        super().__init__(**extra)
        self._length = {"max_epochs": epochs, "estimated_stepping_batches": steps}
        self.read: set[str] = set()

    @property
    def max_epochs(self) -> int:
        self.read.add("max_epochs")
        return self._length["max_epochs"]

    @property
    def estimated_stepping_batches(self) -> int:
        self.read.add("estimated_stepping_batches")
        return self._length["estimated_stepping_batches"]


def _setup_detached(model: Any, datamodule: Any) -> None:
    """``model.setup("fit")`` with no Trainer, but ``self.trainer.datamodule`` readable (a common setup pattern)."""
    model._trainer = TrainerView(datamodule=datamodule)
    try:
        model.setup("fit")
    finally:
        model._trainer = None  # the stack's template gets its own view (without the datamodule)


def _overrides(model: Any, name: str) -> bool:
    return name in vars(model) or getattr(type(model), name) is not getattr(pl.LightningModule, name)


def _has_val_loader(source: Any) -> bool:
    base = pl.LightningDataModule if isinstance(source, pl.LightningDataModule) else pl.LightningModule
    # Not overridden (HierarchicalDataModule): no validation, as under Lightning (whose base method raises).
    # An instance attribute counts too (LightningDataModule.from_datasets sets the loaders on the instance).
    return "val_dataloader" in vars(source) or type(source).val_dataloader is not base.val_dataloader


def _val_loader(source: Any) -> Any:
    try:
        loader = source.val_dataloader()
    except NotImplementedError:
        return None
    if isinstance(loader, (list, tuple, dict)) and len(loader) > 1:
        raise VectorizedRefused(f"val_dataloader() returned a {type(loader).__name__} of {len(loader)} loaders "
                                "(one validation loader is supported)")
    if isinstance(loader, (list, tuple, dict)) and loader:  # Lightning: one loader in a list is that loader
        return next(iter(loader.values())) if isinstance(loader, dict) else loader[0]
    return loader if loader else None


def draws(loader: Any) -> bool:
    """Whether iterating ``loader`` may draw beyond the seed its iterator takes (anything but a stock
    ``SequentialSampler`` over a ``TensorDataset``): such a loader is iterated at every validation epoch."""
    return stock_tensors(loader) is None or type(loader.sampler) is not torch.utils.data.SequentialSampler


def _capture() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()  # noqa: NPY002 (the run's global state)


def _restore(state: tuple[Any, Any, Any]) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])  # noqa: NPY002 (the run's global state)

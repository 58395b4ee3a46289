"""The members' parameters stacked, and the user's unchanged steps called under ``torch.func.vmap``.

:class:`Stack` stacks the members' parameters and buffers (``stack_module_state``), makes every
member's own module alias its row, and calls the user's ``training_step`` /
``validation_step`` on a template copy of the module through ``functional_call`` under
``vmap`` over members (gradients by ``torch.func.grad_and_value``). ``self.log`` inside the
steps is collected (:class:`LogCollector`) and comes out of ``vmap`` as ``(M,)`` tensors.
The deficits that act inside the forward pass (silence, noise, mode lesions) are hooks on the template
that read per-member tensors fed into the step beside the batch (:mod:`.effects`).

Example::

    >>> import torch
    >>> logs = LogCollector()
    >>> logs.start("val")
    >>> logs.log("val_acc", torch.tensor([0.5]))
    >>> logs.take(), logs.meta["val_acc"]
    ({'val_acc': tensor(0.5000)}, (False, True, None))
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.utils._pytree import tree_map, tree_structure

from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused
from lightning_critical.sweep.runners.vectorized.effects import Effects
from lightning_critical.sweep.runners.vectorized.kernels import SmallProducts
from lightning_critical.sweep.runners.vectorized.members import Member, TrainerView, alias_rows

Tensors = dict[str, torch.Tensor]


class LogCollector:
    """What ``self.log`` / ``self.log_dict`` receive during one step, with Lightning's defaults per stage."""

    def __init__(self) -> None:
        self.stage = "train"
        self.values: Tensors = {}
        self.meta: dict[str, tuple[bool, bool, int | None]] = {}
        self.unlogged: set[str] = set()  # logged with logger=False: callback metrics only, not sent to the loggers

    def start(self, stage: str) -> None:
        self.stage, self.values = stage, {}

    def take(self) -> Tensors:
        values, self.values = self.values, {}
        return values

    def log(self, name: str, value: Any, prog_bar: bool = False, logger: Any = None, on_step: bool | None = None,
            on_epoch: bool | None = None, reduce_fx: Any = "mean", batch_size: int | None = None,
            **_: Any) -> None:
        training = self.stage == "train"
        step = training if on_step is None else bool(on_step)
        epoch = (not training) if on_epoch is None else bool(on_epoch)
        if reduce_fx not in ("mean", torch.mean):
            raise VectorizedRefused(f"self.log({name!r}, reduce_fx={reduce_fx!r}) (only the mean is mapped)")
        tensor = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(value)
        tensor = tensor.squeeze()
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
        self.values[name] = tensor
        self.meta[name] = (step, epoch, batch_size)
        if logger is False:
            self.unlogged.add(name)

    def log_dict(self, dictionary: dict[str, Any], **kwargs: Any) -> None:
        for name, value in dictionary.items():
            self.log(name, value, **kwargs)


class _Caller(nn.Module):
    """Calls a named method of the wrapped module, so ``functional_call`` reaches steps other than ``forward``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, method: str, *args: Any) -> Any:
        passed = [(name, id(b)) for name, b in self.m.named_buffers()]  # the tensors functional_call put in place
        out = getattr(self.m, method)(*args)
        now = {name: id(b) for name, b in self.m.named_buffers()}
        moved = [name for name, ident in passed if now.get(name) != ident]
        if moved:  # functional_call puts the original back: the new value would be lost silently
            raise VectorizedRefused(f"{method} reassigns the buffers {moved} (self.<buffer> = ...; only in-place "
                                    "updates such as self.<buffer>.mul_(...) reach the stacked buffers)")
        return out


class Stack:
    """The stacked parameters of ``members`` and the vmapped steps (see the module docstring)."""

    def __init__(self, members: list[Member], randomness: str = "error", log_every_n_steps: int = 50,
                 device: torch.device | None = None) -> None:
        self.device = torch.device("cpu") if device is None else device
        template = copy.deepcopy(members[0].model).to(self.device)  # its self.device: tensors a step creates
        self.view = template._trainer = TrainerView(log_every_n_steps)  # the loop keeps its counters (at())
        params, buffers = stack_module_state([m.model for m in members])
        self.params: Tensors = {k: v.detach().to(self.device) for k, v in params.items()}
        self.buffers: Tensors = {k: v.to(self.device) for k, v in buffers.items()}
        for row, member in enumerate(members):
            alias_rows(member.model, {**self.params, **self.buffers}, row)
            member.named = list(member.model.named_parameters())
        self.logs = LogCollector()
        template.log = self.logs.log
        template.log_dict = self.logs.log_dict
        self.template, self.caller, self.randomness = template, _Caller(template), randomness
        self.effects = Effects(template, members)  # the hooks of the deficits that act inside the forward pass
        self.effects.device = self.device
        self.kernels, self._kernels_checked = SmallProducts(), False  # tiny layers: each member's own mm
        self.takes_index = {s: _takes_batch_idx(getattr(template, s))
                            for s in ("training_step", "validation_step", "test_step")}

    def at(self, epoch: int, step: int) -> None:
        """The counters the steps read as ``self.current_epoch`` / ``self.global_step`` (optimizer steps done)."""
        self.view.current_epoch, self.view.global_step = epoch, step

    def keep(self, members: list[Member], rows: list[int]) -> None:
        """Shrink the stack to ``rows`` (members that finished leave it); ``members`` are the ones kept, in order.

        Each kept member's parameters keep their identity (its optimizer state is keyed by them)
        and alias their new row; members that left keep their final weights in the old stack.
        """
        index = torch.tensor(rows)
        self.params = {k: v[index] for k, v in self.params.items()}
        self.buffers = {k: v[index] for k, v in self.buffers.items()}
        for row, member in enumerate(members):
            for name, param in member.named:
                param.data = self.params[name][row]
            alias_rows(member.model, self.buffers, row)

    def fork(self, members: list[Member], rows: list[int]) -> None:
        """The stack's rows ``rows`` for ``members`` (in order), where a repeated row is a fork: a copy of it.

        :meth:`keep` with rows that may repeat (indexing copies, so a forked member's row is its
        own, never an alias of its parent's): a member that branches from another's shared prefix
        (:mod:`.prefixes`) gets its parent's parameters and buffers in a new row.

        Example::

            >>> import torch
            >>> from types import SimpleNamespace
            >>> a, b = SimpleNamespace(model=torch.nn.Linear(1, 1)), SimpleNamespace(model=torch.nn.Linear(1, 1))
            >>> stack = Stack.__new__(Stack)
            >>> stack.params, stack.buffers = {"weight": torch.ones(1, 1, 1), "bias": torch.zeros(1, 1)}, {}
            >>> for m in (a, b):
            ...     m.named = list(m.model.named_parameters())
            >>> stack.fork([a, b], [0, 0])
            >>> with torch.no_grad():
            ...     _ = b.model.weight.add_(1.0)
            >>> stack.params["weight"].flatten().tolist(), a.model.weight.item()
            ([1.0, 2.0], 1.0)
        """
        self.keep(members, rows)

    def gates(self, members: list[Member], epoch: int, step: int, batch_idx: int = 0) -> Tensors:
        """The per-member tensors the deficits' hooks read in this step (:meth:`.effects.Effects.gates`)."""
        return self.effects.gates(members, epoch, step, batch_idx)

    def train_step(self, batch: Any, gates: Tensors, batch_idx: int) -> tuple[Tensors, Tensors]:
        """One training step of every member: the gradients ``{name: (M, ...)}`` and the logged ``{name: (M,)}``."""
        self.template.train()
        if self.effects.noising(gates):  # the noise is drawn here, outside vmap, member by member
            self.effects.add_noise(gates, self.effects.noise_shapes(batch, lambda: self._probe(batch, batch_idx)))
        if not self._kernels_checked:
            self.kernels.check(lambda: self._probe(batch, batch_idx))
            self._kernels_checked = True

        def loss(params: Tensors, buffers: Tensors, batch: Any, gates: Tensors) -> tuple[torch.Tensor, Tensors]:
            self.effects.use(gates)
            try:
                out = self._call("training_step", params, buffers, batch, batch_idx, "train")
            finally:
                self.effects.use(None)
            value = out.get("loss") if isinstance(out, dict) else out
            if not isinstance(value, torch.Tensor):
                raise VectorizedRefused(f"training_step returned {type(out).__name__} at batch {batch_idx}, not a "
                                        "loss tensor (or dict): a step skipped by returning None is not mapped")
            return value, self.logs.take()

        step = vmap(grad_and_value(loss, has_aux=True), randomness=self.randomness)
        with self.kernels.around("train", batch):
            grads, (_, logs) = step(self.params, self.buffers, batch, gates)
        return grads, logs

    def validation_step(self, batch: Any, batch_idx: int) -> Tensors:
        """Every member's ``validation_step`` on its batch (evaluation mode, no gradients): the logged values."""
        self.template.eval()

        def step(params: Tensors, buffers: Tensors, batch: Any) -> Tensors:
            self._call("validation_step", params, buffers, batch, batch_idx, "val")
            return self.logs.take()

        try:
            with torch.no_grad(), self.kernels.around("val", batch):
                return vmap(step, randomness=self.randomness)(self.params, self.buffers, batch)
        finally:
            self.template.train()

    def snapshot(self) -> Snapshot:
        """The template's Python attributes and the stacked buffers as they are now (before a step that a
        :meth:`replay` may follow: the replay must start from them, as the run's step did)."""
        return Snapshot(self.template, {k: v.clone() for k, v in self.buffers.items()})

    def replay(self, method: str, batches: list[Any], gates: Tensors, batch_idx: int, rows: list[int],
               before: Snapshot | None = None) -> Tensors:
        """``method`` called for each member of ``rows`` alone (no vmap, no gradient, buffers untouched): its logs.

        Reductions such as ``cross_entropy``'s mean round differently under ``vmap``; the
        gradients do not. Replaying a step member by member gives the values a run trained
        alone logs (used for the epochs whose logged values are final). ``before``: the state
        the step started from (:meth:`snapshot`), given when the step already ran under ``vmap``:
        each replay starts from those buffers and the template's Python attributes then, and the
        attributes are put back as the step left them (a counter in the step counts once per step).
        Without it, each replay starts from the current attributes, the last one's are kept.
        """
        training = method == "training_step"
        self.template.train(training)
        start = before if before is not None else Snapshot(self.template, self.buffers)
        after = Snapshot(self.template, {})
        logged = []
        try:
            with torch.no_grad():
                for row in rows:
                    batch = batches[row]
                    params = {k: v[row] for k, v in self.params.items()}
                    buffers = {k: v[row].clone() for k, v in start.buffers.items()}
                    self.effects.use({k: g[row] for k, g in gates.items()})
                    start.restore()
                    self._call(method, params, buffers, batch, batch_idx, "train" if training else "val")
                    logged.append(self.logs.take())
        finally:
            self.effects.use(None)
            if before is not None:
                after.restore()
            self.template.train()
        return {name: torch.stack([r[name] for r in logged]) for name in logged[0]} if logged else {}

    def _probe(self, batch: Any, batch_idx: int) -> None:
        """Member 0's training step alone, no gradient, buffers and Python attributes untouched, logs dropped (the
        noise hooks record the shapes of their inputs)."""
        before = Snapshot(self.template, {})  # the template's Python attributes: as if the probe never ran
        try:
            with torch.no_grad():
                params = {k: v[0] for k, v in self.params.items()}
                buffers = {k: v[0].clone() for k, v in self.buffers.items()}
                row = tree_map(lambda t: t[0] if isinstance(t, torch.Tensor) else t, batch)
                self._call("training_step", params, buffers, row, batch_idx, "train")
                self.logs.take()
        finally:
            before.restore()

    def _call(self, method: str, params: Tensors, buffers: Tensors, batch: Any, batch_idx: int, stage: str) -> Any:
        self.logs.start(stage)
        state = {f"m.{k}": v for k, v in {**params, **buffers}.items()}
        args = (method, batch, batch_idx) if self.takes_index[method] else (method, batch)
        return functional_call(self.caller, state, args)


class Snapshot:
    """A module's Python attributes (every submodule's ``__dict__``, shallow) and given buffers, to start again from.

    Example::

        >>> net = torch.nn.Linear(1, 1)
        >>> net.seen = 0
        >>> before = Snapshot(net, {})
        >>> net.seen += 1
        >>> before.restore()
        >>> net.seen
        0
    """

    def __init__(self, module: nn.Module, buffers: Tensors) -> None:
        self.attributes = [(m, dict(vars(m))) for m in module.modules()]
        self.buffers = buffers

    def restore(self) -> None:
        for module, attributes in self.attributes:
            vars(module).clear()
            vars(module).update(attributes)


def stacked(batches: list[Any]) -> Any:
    """The members' batches as one batch with a leading member dimension (shapes must agree).

    Lists and tuples count as one container (a deficit's callable may give a tuple where the loader
    gives a list): the stacked batch has the first member's container types.

    Example::

        >>> x = torch.zeros(2, 3)
        >>> batch = stacked([[x, x], (x, x)])
        >>> type(batch).__name__, batch[0].shape
        ('list', torch.Size([2, 2, 3]))
    """
    first = tree_structure(batches[0])
    if any(tree_structure(b) != first for b in batches[1:]):
        batches = [_as_structure(b, batches[0]) for b in batches]
    try:
        return tree_map(lambda *xs: torch.stack(xs) if isinstance(xs[0], torch.Tensor) else xs[0], *batches)
    except RuntimeError as err:
        raise ValueError(f"the members' batches differ in shape ({err}); members of one vectorized job need "
                         "datamodules that give batches of one shape (same batch size and dataset size)") from err


def _as_structure(batch: Any, like: Any) -> Any:
    """``batch`` with ``like``'s list/tuple container types (any other difference: a clear error)."""
    if type(like) in (list, tuple) and type(batch) in (list, tuple) and len(like) == len(batch):
        return type(like)(_as_structure(b, lk) for b, lk in zip(batch, like, strict=True))
    if isinstance(like, dict) and isinstance(batch, dict) and list(like) == list(batch):
        return {k: _as_structure(batch[k], like[k]) for k in like}
    if tree_structure(batch) != tree_structure(like):
        raise ValueError(f"the members' batches differ in structure ({tree_structure(batch)} vs "
                         f"{tree_structure(like)}), e.g. an input deficit's callable changes the batch's "
                         "containers; members of one vectorized job need batches of one structure")
    return batch


def batch_size_of(batch: Any) -> int:
    """Lightning's inferred batch size: the first dimension of the batch's first tensor."""
    for leaf in torch.utils._pytree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor):
            return int(leaf.size(0)) if leaf.dim() else 1
    return 1


def _takes_batch_idx(method: Callable[..., Any]) -> bool:
    params = list(inspect.signature(method).parameters.values())
    return len(params) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)

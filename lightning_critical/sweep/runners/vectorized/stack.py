"""The members' parameters stacked, and the user's unchanged steps called under ``torch.func.vmap``.

:class:`Stack` stacks the members' parameters and buffers (:func:`.tensors.stack_state`), makes every
member's own module alias its row, and calls the user's ``training_step`` /
``validation_step`` on a template copy of the module through ``functional_call`` under
``vmap`` over members (gradients by ``torch.func.grad_and_value``, of the parameters that get
one under Lightning only: :mod:`.reach`). A job of several params
combinations holds one template per combination (:func:`.templates.template_key`), each a copy of that
combination's module: the vmapped step runs once per template on its rows (gathered, then put
back in row order); ``keep`` / ``fork`` carry each row's template along. ``self.log`` inside the
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
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.utils._pytree import tree_map

from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused
from lightning_critical.sweep.runners.vectorized.effects import Effects
from lightning_critical.sweep.runners.vectorized.kernels import SmallProducts
from lightning_critical.sweep.runners.vectorized.members import Member, TrainerView, alias_rows
from lightning_critical.sweep.runners.vectorized.reach import block, cut_at, reached
from lightning_critical.sweep.runners.vectorized.templates import Caller, Snapshot, template_rows
from lightning_critical.sweep.runners.vectorized.tensors import Tensors, assembled, gather_rows, stack_state


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


class Stack:
    """The stacked parameters of ``members`` and the vmapped steps (see the module docstring)."""

    def __init__(self, members: list[Member], randomness: str = "error", log_every_n_steps: int = 50,
                 device: torch.device | None = None) -> None:
        self.device = torch.device("cpu") if device is None else device
        self.view = TrainerView(log_every_n_steps)  # the loop keeps its counters (at())
        self.logs = LogCollector()
        self.row_template, firsts = template_rows(members)  # row -> its template; the rows the templates copy
        self.templates = [self._template(members[row].model) for row in firsts]  # one per params combination
        self.callers = [Caller(t) for t in self.templates]
        self.takes = [{s: _takes_batch_idx(getattr(t, s)) for s in ("training_step", "validation_step", "test_step")}
                      for t in self.templates]
        params, buffers = stack_state([m.model for m in members])
        self.params: Tensors = {k: v.detach().to(self.device) for k, v in params.items()}
        self.buffers: Tensors = {k: v.to(self.device) for k, v in buffers.items()}
        for row, member in enumerate(members):
            alias_rows(member.model, {**self.params, **self.buffers}, row)
            member.named = list(member.model.named_parameters())
        # a parameter no member trains (requires_grad=False) gets no gradient; one some train is frozen for the others
        flags = [{n: p.requires_grad for n, p in m.named} for m in members]
        self.trained = [n for n in self.params if any(f[n] for f in flags)]
        for member in members:
            member.fixed = [p for n, p in member.named if not p.requires_grad and n in self.trained]
        self.reached: set[str] | None = None  # the parameters the training step reaches (found at its first call)
        self._members = members  # what each one's step cuts off is found then too (.reach.block)
        self._kind = {id(m): t for m, t in zip(members, self.row_template, strict=True)}  # its template
        self.randomness = randomness
        self.effects = Effects(self.templates[0], members)  # the hooks of the deficits that act inside the forward pass
        for template in self.templates[1:]:
            self.effects.hook(template)
        self.effects.device = self.device
        self.kernels, self._kernels_checked = SmallProducts(), False  # tiny layers: each member's own mm
        self._use(self.row_template[0])

    def _template(self, model: Any) -> Any:  # a LightningModule
        template = copy.deepcopy(model).to(self.device)  # its self.device: tensors a step creates
        template._trainer = self.view
        template.log = self.logs.log
        template.log_dict = self.logs.log_dict
        return template

    def _use(self, index: int) -> None:
        """Make template ``index`` the one the steps call (``self.template``, ``self.caller``)."""
        self.template, self.caller, self.takes_index = self.templates[index], self.callers[index], self.takes[index]

    def at(self, epoch: int, step: int) -> None:
        """The counters the steps read as ``self.current_epoch`` / ``self.global_step`` (optimizer steps done)."""
        self.view.current_epoch, self.view.global_step = epoch, step

    def keep(self, members: list[Member], rows: list[int]) -> None:
        """Shrink the stack to ``rows`` (members that finished leave it); ``members`` are the ones kept, in order.

        Each kept member's parameters keep their identity (its optimizer state is keyed by them)
        and alias their new row; members that left keep their final weights in the old stack.
        """
        index = torch.tensor(rows)
        self.row_template = [self.row_template[row] for row in rows]
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
            >>> stack.row_template = [0]
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
        """One training step of every member: the gradients ``{name: (M, ...)}`` and the logged ``{name: (M,)}``.

        Only the parameters that get a gradient under Lightning are in the gradients: those some
        member trains (``requires_grad``) that the step reaches (:meth:`_reached`); for the others
        a run's ``.grad`` stays ``None``, so its optimizer skips them (no weight decay, no momentum).
        """
        self._train_mode(True)
        if self.effects.noising(gates):  # the noise is drawn here, outside vmap, member by member
            self.effects.add_noise(gates, self.effects.noise_shapes(batch, lambda: self._probe(batch, batch_idx)))
        if not self._kernels_checked:
            for index in sorted(set(self.row_template)):  # a step of every template: one that calls bmm turns it off
                self.kernels.check(functools.partial(self._probe, batch, batch_idx, self.row_template.index(index)))
            self._kernels_checked = True
        if self.reached is None:  # members of one kind (template) reach the same parameters
            self.reached = block(self._members, set(self.trained),
                                 lambda member, modules: self._reached(member, batch, batch_idx, modules),
                                 kind=lambda member: self._kind[id(member)])

        def loss(params: Tensors, buffers: Tensors, batch: Any, gates: Tensors) -> tuple[torch.Tensor, Tensors]:
            self.effects.use(gates)
            try:
                out = self._call("training_step", params, buffers, batch, batch_idx, "train")
            finally:
                self.effects.use(None)
            return _loss(out, batch_idx), self.logs.take()

        step = vmap(grad_and_value(loss, has_aux=True), randomness=self.randomness)
        with self.kernels.around("train", batch):
            grads, (_, logs) = self._per_template(step, batch, gates)
        return {n: grads[n] for n in self.trained if n in self.reached}, logs

    def _reached(self, member: Member, batch: Any, batch_idx: int, noised: frozenset[str] = frozenset()) -> set[str]:
        """The parameters the training step of a row of ``member``'s template reaches alone (:mod:`.reach`; no
        deficit acting but the inputs of the modules ``noised`` cut off; buffers untouched, logs dropped)."""
        index = self.row_template.index(self._kind[id(member)])
        self._use(self._kind[id(member)])
        before = Snapshot(self.templates, {})  # the templates' Python attributes: as if the probe never ran
        try:
            return self._reached_row(index, batch, batch_idx, noised)
        finally:
            before.restore()
            self._use(self.row_template[0])

    def _reached_row(self, index: int, batch: Any, batch_idx: int, noised: frozenset[str]) -> set[str]:
        row = tree_map(lambda t: t[index] if isinstance(t, torch.Tensor) else t, batch)
        buffers = {k: v[index].clone() for k, v in self.buffers.items()}

        def loss(params: Tensors) -> torch.Tensor:
            value = _loss(self._call("training_step", params, buffers, row, batch_idx, "train"), batch_idx)
            self.logs.take()
            return value

        params = {k: v[index].detach().requires_grad_(True) for k, v in self.params.items()}
        # a step that draws (allow_dropout) draws again: the caller's random state is kept
        with torch.random.fork_rng(devices=[]), cut_at(self.template, {n: self.effects.noised[n] for n in noised}):
            return reached(loss, params)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensors:
        """Every member's ``validation_step`` on its batch (evaluation mode, no gradients): the logged values."""
        self._train_mode(False)

        def step(params: Tensors, buffers: Tensors, batch: Any, gates: Tensors) -> Tensors:
            self._call("validation_step", params, buffers, batch, batch_idx, "val")
            return self.logs.take()

        try:
            with torch.no_grad(), self.kernels.around("val", batch):
                out: Tensors = self._per_template(vmap(step, randomness=self.randomness), batch, {})
                return out
        finally:
            self._train_mode(True)

    def snapshot(self) -> Snapshot:
        """The template's Python attributes and the stacked buffers as they are now (before a step that a
        :meth:`replay` may follow: the replay must start from them, as the run's step did)."""
        return Snapshot(self.templates, {k: v.clone() for k, v in self.buffers.items()})

    def replay(self, method: str, batches: Sequence[Any], gates: Tensors, batch_idx: int, rows: list[int],
               before: Snapshot | None = None) -> Tensors:
        """``method`` called for each member of ``rows`` alone (no vmap, no gradient, buffers untouched): its logs.

        Reductions such as ``cross_entropy``'s mean round differently under ``vmap``; the
        gradients do not. Replaying a step member by member gives the values a run trained
        alone logs (used for the epochs whose logged values are final), with its own template. ``before``: the state
        the step started from (:meth:`snapshot`), given when the step already ran under ``vmap``:
        each replay starts from those buffers and the templates' Python attributes then, and the
        attributes are put back as the step left them (a counter in the step counts once per step).
        Without it, each replay starts from the current attributes, the last one's are kept.
        """
        training = method == "training_step"
        self._train_mode(training)
        start = before if before is not None else Snapshot(self.templates, self.buffers)
        after = Snapshot(self.templates, {})
        logged = []
        try:
            with torch.no_grad():
                for row in rows:
                    self._use(self.row_template[row])
                    batch = batches[row]
                    params = {k: v[row] for k, v in self.params.items()}
                    buffers = {k: v[row].clone() for k, v in start.buffers.items()}
                    self.effects.use({k: g[row] for k, g in gates.items()})
                    start.restore()
                    self._call(method, params, buffers, batch, batch_idx, "train" if training else "val")
                    logged.append(self.logs.take())
        finally:
            self.effects.use(None)
            self._use(self.row_template[0])
            if before is not None:
                after.restore()
            self._train_mode(True)
        return {name: torch.stack([r[name] for r in logged]) for name in logged[0]} if logged else {}

    def _train_mode(self, training: bool) -> None:
        for template in self.templates:
            template.train(training)

    def _per_template(self, step: Callable[[Tensors, Tensors, Any, Tensors], Any], batch: Any, gates: Tensors) -> Any:
        """``step(params, buffers, batch, gates)`` (vmapped) on the rows of each template with that template, the
        outputs put back in row order; a job of one params combination calls it once on the whole stack.

        The rows of a template are gathered (copies): in-place buffer updates (BatchNorm) are written back.
        """
        if len(self.templates) == 1:
            return step(self.params, self.buffers, batch, gates)
        parts = []
        try:
            for index in sorted(set(self.row_template)):
                rows = torch.tensor([r for r, t in enumerate(self.row_template) if t == index], device=self.device)
                self._use(index)
                buffers = {k: v.index_select(0, rows) for k, v in self.buffers.items()}
                part = step({k: v.index_select(0, rows) for k, v in self.params.items()}, buffers,
                            gather_rows(batch, rows), {k: g.index_select(0, rows) for k, g in gates.items()})
                for name, value in buffers.items():
                    self.buffers[name][rows] = value
                parts.append((rows, part))
        finally:
            self._use(self.row_template[0])
        return assembled(parts, len(self.row_template))

    def _probe(self, batch: Any, batch_idx: int, row: int = 0) -> None:
        """Member ``row``'s training step alone with its template, no gradient, buffers and Python attributes
        untouched, logs dropped (the noise hooks record the shapes of their inputs)."""
        self._use(self.row_template[row])
        before = Snapshot(self.templates, {})  # the templates' Python attributes: as if the probe never ran
        try:
            with torch.no_grad():
                params = {k: v[row] for k, v in self.params.items()}
                buffers = {k: v[row].clone() for k, v in self.buffers.items()}
                one = tree_map(lambda t: t[row] if isinstance(t, torch.Tensor) else t, batch)
                self._call("training_step", params, buffers, one, batch_idx, "train")
                self.logs.take()
        finally:
            before.restore()
            self._use(self.row_template[0])

    def _call(self, method: str, params: Tensors, buffers: Tensors, batch: Any, batch_idx: int, stage: str) -> Any:
        self.logs.start(stage)
        state = {f"m.{k}": v for k, v in {**params, **buffers}.items()}
        args = (method, batch, batch_idx) if self.takes_index[method] else (method, batch)
        return functional_call(self.caller, state, args)


def _loss(out: Any, batch_idx: int) -> torch.Tensor:
    """The loss tensor of what ``training_step`` returned (a tensor or a dict with ``"loss"``)."""
    value = out.get("loss") if isinstance(out, dict) else out
    if not isinstance(value, torch.Tensor):
        raise VectorizedRefused(f"training_step returned {type(out).__name__} at batch {batch_idx}, not a loss tensor "
                                "(or dict): a step skipped by returning None is not mapped")
    return value


def _takes_batch_idx(method: Callable[..., Any]) -> bool:
    params = list(inspect.signature(method).parameters.values())
    return len(params) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)

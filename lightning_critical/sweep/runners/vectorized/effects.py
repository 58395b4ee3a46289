"""The deficits that act inside the model's forward pass, per member, under ``torch.func.vmap``.

Each member has its own deficits and windows, but the vmapped step calls one template module
for all of them. So every such deficit becomes a forward hook on the template that reads a
per-member tensor fed into the step beside the batch (the step's ``gates``, keyed by kind and
module; ``vmap`` maps over their first dimension):

- ``PathwayDeficit(mode="silence")``: ``silence/<module>``, ``(M,)``: 1.0, or 0.0 while the
  member's window is open; the module's output is multiplied by it (as the default runner's
  hook multiplies it by zero).
- ``PathwayDeficit(mode="noise")``: ``noise_on/<module>``, ``(M,)`` booleans, and
  ``noise/<module>/<call>``, ``(M, *input shape)``: the Gaussian noise the default runner's hook
  draws for that member, step and call, drawn here outside ``vmap`` with the same seeded
  generator (the deficit's seed, the epoch, the batch index, rank 0, the pathway's index, the
  call); the input is replaced by it where the member's window is open (``torch.where``: the
  noise itself, bitwise). The input's shape is found once per batch shape by calling the step
  of member 0 alone, without gradients (:meth:`Effects.noise_shapes`).
- ``ModeDeficit``: ``mode_on/<module>`` and the member's task-basis columns ``mode_u/<module>``,
  ``mode_v/<module>``; the input loses its components along ``v`` and the output those along
  ``u`` where the member's window is open (the default runner's arithmetic, row by row).

Hooks act on training-mode passes only, as the deficits' own hooks do.

Example::

    >>> import torch
    >>> effects = Effects(torch.nn.Sequential(torch.nn.Linear(2, 2)), [])
    >>> effects.gates([], 0, 0, 0)
    {}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from lightning_critical.deficits.pathway import PathwayDeficit, map_tensors
from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused

Tensors = dict[str, torch.Tensor]
Shapes = dict[tuple[str, int], tuple[tuple[int, ...], torch.dtype]]


class Effects:
    """The template's hooks for the members' silence, noise and mode deficits (see the module docstring)."""

    def __init__(self, template: nn.Module, members: list[Any]) -> None:
        self.silenced = sorted({n for m in members for n in m.silence_targets()})
        self.noised: dict[str, PathwayDeficit] = {}  # module -> a deficit that finds its input position
        for member in members:
            for name, (deficit, _) in member.noise_targets().items():
                first = self.noised.setdefault(name, deficit)
                if first.input_index != deficit.input_index:
                    raise VectorizedRefused(f"noise deficits on {name!r} with different input_index "
                                            f"({first.input_index} and {deficit.input_index}) in one job")
        ranks = {(n, int(u.shape[1])) for m in members for n, (u, _) in m.mode_targets().items()}
        if len({n for n, _ in ranks}) != len(ranks):
            raise VectorizedRefused(f"ModeDeficits lesioning different numbers of modes of one pathway in one job "
                                    f"({sorted(ranks)})")
        self.lesioned = sorted({n for n, _ in ranks})
        self.current: Tensors | None = None
        self.calls: dict[str, int] = {}
        self.recorded: Shapes | None = None  # while noise_shapes() probes the inputs
        self.shapes: dict[Any, Shapes] = {}
        self.context: tuple[list[dict[str, tuple[PathwayDeficit, int]]], int, int] = ([], 0, 0)
        self.device = torch.device("cpu")  # of the per-member tensors and the noise's generator (the run's device)
        self.hook(template)

    def hook(self, template: nn.Module) -> None:
        """Register the hooks on ``template`` (a job has one template per params combination: each gets them)."""
        for name in self.silenced:
            template.get_submodule(name).register_forward_hook(self._silence_hook(name))
        for name in self.noised:
            template.get_submodule(name).register_forward_pre_hook(self._noise_hook(name))
        for name in self.lesioned:
            template.get_submodule(name).register_forward_pre_hook(self._mode_pre_hook(name))
            template.get_submodule(name).register_forward_hook(self._mode_hook(name))

    def use(self, gates: Tensors | None) -> None:
        """The per-member tensors of the step about to run (``None``: no deficit acts); its call counts restart."""
        self.current, self.calls = gates, {}

    def gates(self, members: list[Any], epoch: int, step: int, batch_idx: int) -> Tensors:
        """The per-member tensors of this step (the noise itself is added by :meth:`add_noise`)."""
        out: Tensors = {}
        silenced = [m.silenced(epoch, step) for m in members] if self.silenced else []
        for name in self.silenced:
            out[f"silence/{name}"] = torch.tensor([0.0 if name in s else 1.0 for s in silenced], device=self.device)
        noised = [m.noised(epoch, step) for m in members] if self.noised else []
        self.context = (noised, epoch, batch_idx)
        for name in self.noised:
            if any(name in n for n in noised):
                out[f"noise_on/{name}"] = torch.tensor([name in n for n in noised], device=self.device)
        lesions = [m.lesioned(epoch, step) for m in members] if self.lesioned else []
        for name in self.lesioned:
            if any(name in lesion for lesion in lesions):
                out[f"mode_on/{name}"] = torch.tensor([name in lesion for lesion in lesions], device=self.device)
                shown = next(lesion[name] for lesion in lesions if name in lesion)
                for side, key in ((0, "u"), (1, "v")):  # zeros where the window is closed (not used there)
                    out[f"mode_{key}/{name}"] = torch.stack(
                        [lesion[name][side] if name in lesion else torch.zeros_like(shown[side]) for lesion in lesions]
                    ).to(self.device)
        return out

    def noising(self, gates: Tensors) -> bool:
        """Whether a noise deficit acts on some member in this step."""
        return any(k.startswith("noise_on/") for k in gates)

    def noise_shapes(self, batch: Any, probe: Callable[[], None]) -> Shapes:
        """``{(module, call): (shape, dtype)}`` of the noised inputs for batches shaped like ``batch``.

        ``probe`` runs member 0's step alone (no gradient); the hooks record the inputs' shapes.
        """
        key = tuple(tuple(t.shape) for t in tree_leaves(batch) if isinstance(t, torch.Tensor))
        if key not in self.shapes:
            self.recorded = {}
            try:
                probe()
                self.shapes[key] = self.recorded
            finally:
                self.recorded = None
        return self.shapes[key]

    def add_noise(self, gates: Tensors, shapes: Shapes) -> None:
        """Each member's noise for every noised call of the step, drawn as the default runner's hook draws it."""
        noised, epoch, batch_idx = self.context
        for (name, call), (shape, dtype) in shapes.items():
            rows = []
            for active in noised:
                if name not in active:
                    rows.append(torch.zeros(shape, dtype=dtype, device=self.device))
                    continue
                deficit, index = active[name]
                key = (deficit.seed, epoch, batch_idx, 0)  # rank 0: a run of the sweep trains on one device
                seed = hash(key + (index, call)) % (2**63 - 1)
                generator = torch.Generator(device=self.device).manual_seed(seed)
                noise = torch.randn(shape, generator=generator, dtype=dtype, device=self.device)
                rows.append(noise * deficit.noise_std)
            gates[f"noise/{name}/{call}"] = torch.stack(rows)

    def _silence_hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            gate = self.current.get(f"silence/{name}") if self.current is not None and module.training else None
            return output if gate is None else map_tensors(output, lambda t: t * gate)
        return hook

    def _noise_hook(self, name: str) -> Callable[[nn.Module, tuple], tuple | None]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not module.training or (self.current is None and self.recorded is None):
                return None
            if self.recorded is None and f"noise_on/{name}" not in self.current:  # type: ignore[operator]
                return None
            position = self.noised[name]._input_position(name, args)
            self.calls[name] = call = self.calls.get(name, 0) + 1
            x = args[position]
            if self.recorded is not None:
                self.recorded[(name, call)] = (tuple(x.shape), x.dtype)
                return None
            gates = self.current
            assert gates is not None
            noise = gates.get(f"noise/{name}/{call}")
            if noise is None or noise.shape != x.shape:
                raise RuntimeError(f"PathwayDeficit(mode='noise') on {name!r}: call {call} of this step has the input "
                                   f"shape {tuple(x.shape)}, not the one found for this batch shape (the vectorized "
                                   "runner needs a pathway's inputs to depend on the batch's shape only)")
            return args[:position] + (torch.where(gates[f"noise_on/{name}"], noise, x),) + args[position + 1:]
        return hook

    def _mode_pre_hook(self, name: str) -> Callable[[nn.Module, tuple], tuple | None]:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            on = self._lesion(module, name)
            if on is None:
                return None
            if not args:
                raise TypeError(f"ModeDeficit on {name!r}: the pathway's forward got no positional input.")
            return (_project(args[0], on, self._basis(name, "v"), name, "input"),) + tuple(args[1:])
        return hook

    def _mode_hook(self, name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            on = self._lesion(module, name)
            return output if on is None else _project(output, on, self._basis(name, "u"), name, "output")
        return hook

    def _lesion(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if not module.training or self.current is None:
            return None
        return self.current.get(f"mode_on/{name}")

    def _basis(self, name: str, side: str) -> torch.Tensor:
        assert self.current is not None
        return self.current[f"mode_{side}/{name}"]


def _project(x: Any, on: torch.Tensor, basis: torch.Tensor, name: str, side: str) -> torch.Tensor:
    """``x`` without its components along ``basis`` where ``on`` (ModeDeficit's arithmetic), else ``x`` itself."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ModeDeficit on {name!r}: the pathway's {side} is a {type(x).__name__}, not a tensor; "
                        "the pathway must map one task-input tensor to one task-output tensor.")
    if x.shape[-1] != basis.shape[0]:
        raise ValueError(f"ModeDeficit on {name!r}: the pathway's {side} has {x.shape[-1]} features but the task "
                         f"basis has {basis.shape[0]}; the pathway must map task inputs to task outputs.")
    b = basis.to(device=x.device, dtype=x.dtype)
    return torch.where(on, x - MemberMatmul.apply(MemberMatmul.apply(x, b), b.T), x)


class MemberMatmul(torch.autograd.Function):
    """``a @ b`` (``b`` a constant), computed member by member under ``vmap``, backward too.

    ``vmap`` makes one batched matmul of the members' products, whose kernel for small
    matrices sums in another order than the matmul of a run trained alone; one matmul per
    member is that run's own kernel call, so the products (and the input's gradient,
    ``grad @ b.T``) are bitwise the run's.

    Example::

        >>> a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 2)
        >>> torch.equal(torch.func.vmap(MemberMatmul.apply)(a, b), torch.stack([a[i] @ b[i] for i in range(3)]))
        True
    """

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (b,) = ctx.saved_tensors
        return MemberMatmul.apply(grad, b.transpose(-2, -1)), None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, int | None], a: torch.Tensor,
             b: torch.Tensor) -> tuple[torch.Tensor, int]:
        rows = [MemberMatmul.apply(a if in_dims[0] is None else a.select(in_dims[0], i),
                                   b if in_dims[1] is None else b.select(in_dims[1], i))
                for i in range(info.batch_size)]
        return torch.stack(rows), 0

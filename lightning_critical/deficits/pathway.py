"""PathwayDeficit: freeze, silence or feed noise to whole submodules during a window."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_critical._checks import check_choice, check_float, check_int, check_names, check_seed
from lightning_critical._namespace import pl
from lightning_critical.deficits._weight_decay import warn_if_decayed
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.protocols import resolve_modules
from lightning_critical.schedule import WindowLike

MODES: tuple[str, ...] = ("freeze", "silence", "noise")


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every floating tensor inside tensors, tuples, lists and dicts."""
    if isinstance(value, Tensor):
        return fn(value) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


class PathwayDeficit(WindowedDeficit):
    """Deprive one or more submodules ("pathways") of a model during a training window.

    Args:
        pathways: a name in the model's ``pathways`` mapping, a submodule path
            (``"encoder.0"``), a glob (``"branch_*"``) or a list of these.
        window: ``lc.Window`` or ``(start, end)``; half-open, in ``unit``.
        mode: ``"freeze"``: the pathway still feeds the output, but its parameters are left
            bitwise unchanged by the optimizer (their gradients are dropped right before every
            optimizer step in the window, so SGD momentum, Adam moments and weight decay skip
            them too; buffers such as BatchNorm statistics still update).
            ``"silence"``: the pathway's output is multiplied by zero. Its gradients are then
            zero, so with plain SGD its parameters are held (the theory's "silence"); momentum
            and weight decay still move them.
            ``"noise"``: the pathway's *input* is replaced by Gaussian noise of standard
            deviation ``noise_std`` (seeded from ``seed``, the epoch, the batch, the rank and
            the pathway, so a resumed run draws the same noise). The input is one positional
            argument of the pathway's forward: the first floating-point tensor, or
            ``args[input_index]``. Every other argument (masks, states, keyword arguments
            such as ``nn.MultiheadAttention``'s ``attn_mask``) passes through unchanged.
            ``"silence"`` and ``"noise"`` act on forward passes in training mode only
            (``module.training``) and never inside :func:`~lightning_critical.probing.probing`:
            evaluation-mode passes and monitors see the intact network, and draw no noise.
        noise_std: standard deviation of the ``"noise"`` mode (finite, ``>= 0``).
        unit: unit of a tuple ``window``: ``"epoch"`` or ``"step"``.
        seed: seed of the ``"noise"`` mode (an integer ``>= 0``).
        name: key of the ``deficit/<name>`` scalar (default ``<mode>/<pathways>``).
        input_index: ``"noise"`` mode only: which positional argument of the pathway's
            forward is its input (default: the first floating-point tensor). E.g. ``2`` for
            the ``value`` of an attention layer called as ``attn(query, key, value)``.

    Raises:
        ValueError: unknown mode, non-finite or negative ``noise_std``, bad seed, empty or
            negative window, ``input_index`` outside the ``"noise"`` mode; before training: a
            pathway that names nothing (the message lists what exists), two deficits acting on
            one module (the same module under any name, one inside the other, or modules
            sharing a parameter) with overlapping windows; in a ``"noise"`` window: a pathway
            whose forward gets no floating-point tensor at the input position.

    Example::

        >>> import lightning_critical as lc
        >>> deficit = lc.PathwayDeficit("b", window=(0, 150), mode="freeze")
        >>> deficit.window
        Window(start=0, end=150, unit='epoch')
    """

    def __init__(
        self,
        pathways: str | Sequence[str],
        window: WindowLike,
        mode: str = "freeze",
        noise_std: float = 1.0,
        unit: str = "epoch",
        seed: int = 0,
        name: str | None = None,
        input_index: int | None = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        self.mode = check_choice("mode", mode, MODES)
        self.noise_std = check_float("noise_std", noise_std, low=0)
        self.seed = check_seed("seed", seed)
        self.pathways = check_names("pathways", pathways)
        self.input_index = check_int("input_index", input_index, low=0, allow_none=True)
        if self.input_index is not None and mode != "noise":
            raise ValueError(f"input_index={input_index!r} only applies to mode='noise', not mode={mode!r}.")
        self._batch_idx = 0

    @override
    def default_name(self) -> str:
        return f"{self.mode}/{','.join(self.pathways)}"

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.targets = resolve_modules(pl_module, self.pathways)

    @override
    def repr_settings(self) -> dict[str, str]:
        shown = self.pathways[0] if len(self.pathways) == 1 else self.pathways
        out = {"pathways": repr(shown), **super().repr_settings(), "mode": repr(self.mode)}
        if self.mode == "noise":
            out["noise_std"] = f"{self.noise_std:g}"
            if self.input_index is not None:
                out["input_index"] = str(self.input_index)
        if self.seed and self.mode == "noise":
            out["seed"] = str(self.seed)
        return out

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.mode in ("silence", "noise"):
            what = ("its output is zeroed, so its weights get no gradient" if self.mode == "silence"
                    else "its input is noise, so its weights get no task gradient")
            warn_if_decayed(repr(self), what, trainer.optimizers, self._parameters())

    def _parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for module in self.targets.values():
            for p in module.parameters():
                seen[id(p)] = p
        return list(seen.values())

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self.mode == "freeze" and self.is_active(trainer):
            # No gradient means every torch optimizer skips the parameter entirely:
            # no momentum/Adam-moment update, no weight decay.
            for p in self._parameters():
                p.grad = None

    @override
    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[RemovableHandle]:
        modules = list(self.targets.values())
        if self.mode == "freeze" or not modules:
            return []
        if self.mode == "silence":
            return [self.register_forward_hook(modules, _silence_hook)]
        return [self.register_forward_pre_hook(modules, self._noise_hook(trainer))]

    def _noise_hook(self, trainer: pl.Trainer) -> Callable[[nn.Module, tuple], tuple]:
        std = self.noise_std
        index_of = {id(m): (i, name) for i, (name, m) in enumerate(self.targets.items())}
        calls: dict[int, int] = {}
        # Seeded by what identifies this forward pass (run seed, epoch, batch, rank, pathway,
        # call), all derived from the trainer, so a resumed run draws the same noise and no
        # two pathways, micro-batches or ranks share it. The hook helper skips evaluation
        # passes and probing() before this runs, so those consume no call and no draw.
        key = (self.seed, trainer.current_epoch, self._batch_idx, trainer.global_rank)

        def hook(module: nn.Module, args: tuple) -> tuple:
            index, name = index_of[id(module)]
            position = self._input_position(name, args)
            calls[index] = calls.get(index, 0) + 1
            gen_seed = hash(key + (index, calls[index])) % (2**63 - 1)
            x = args[position]
            gen = torch.Generator(device=x.device).manual_seed(gen_seed)
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * std
            return args[:position] + (noise,) + args[position + 1:]

        return hook

    def _input_position(self, name: str, args: tuple) -> int:
        def floating(value: Any) -> bool:
            return isinstance(value, Tensor) and value.is_floating_point()

        if self.input_index is not None:
            if self.input_index < len(args) and floating(args[self.input_index]):
                return self.input_index
            got = type(args[self.input_index]).__name__ if self.input_index < len(args) else "nothing"
            raise ValueError(
                f"PathwayDeficit(mode='noise') on {name!r}: input_index={self.input_index} names {got}, but it must "
                f"name a floating-point tensor among the {len(args)} positional argument(s) of its forward "
                f"({[type(a).__name__ for a in args]})."
            )
        position = next((i for i, a in enumerate(args) if floating(a)), None)
        if position is None:
            raise ValueError(
                f"PathwayDeficit(mode='noise') on {name!r}: its forward got no floating-point tensor as a positional "
                f"argument (got {[type(a).__name__ for a in args]}); the input must be passed positionally "
                "(keyword arguments are never replaced), or choose it with input_index."
            )
        return position

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Noise hooks are keyed by the batch: re-create them for every batch while active.
        self._batch_idx = batch_idx
        if self.mode == "noise" and self.attached:
            self.detach()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def _silence_hook(module: nn.Module, args: Any, output: Any) -> Any:
    return map_tensors(output, lambda t: t * 0)

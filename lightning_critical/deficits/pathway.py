"""PathwayDeficit: freeze, silence or feed noise to whole submodules during a window."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.probing import is_probing
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
            ``"noise"``: the pathway's floating-point inputs are replaced by Gaussian noise of
            standard deviation ``noise_std`` (seeded from ``seed``, the epoch, the batch, the rank
            and the pathway, so a resumed run draws the same noise).
            ``"silence"`` and ``"noise"`` act on forward passes in training mode only
            (``module.training``): evaluation-mode passes during the window see the intact network.
        noise_std: standard deviation of the ``"noise"`` mode.
        unit: unit of a tuple ``window``: ``"epoch"`` or ``"step"``.
        seed: seed of the ``"noise"`` mode.
        name: key of the ``deficit/<name>`` scalar (default ``<mode>/<pathways>``).

    Raises:
        ValueError: unknown mode, negative ``noise_std``, empty/negative window; before
            training: a pathway that names nothing (the message lists what exists), two
            deficits on one pathway with overlapping windows.

    Example::

        >>> import lightning_critical as lc
        >>> deficit = lc.PathwayDeficit("b", window=(0, 150), mode="freeze")
        >>> deficit.window
        Window(start=0, end=150, unit='epoch')
    """

    def __init__(
        self,
        pathways: Union[str, Sequence[str]],
        window: WindowLike,
        mode: str = "freeze",
        noise_std: float = 1.0,
        unit: str = "epoch",
        seed: int = 0,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not valid; choose one of {MODES}.")
        if not noise_std >= 0:
            raise ValueError(f"noise_std={noise_std!r} must be >= 0.")
        names = [pathways] if isinstance(pathways, str) else pathways
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"pathways={pathways!r} must be a name, submodule path or glob (a non-empty string) or a list of them."
            )
        self.pathways = list(names)
        self._batch_idx = 0
        self.mode = mode
        self.noise_std = float(noise_std)
        self.seed = int(seed)

    def _default_name(self) -> str:
        return f"{self.mode}/{','.join(self.pathways)}"

    def _resolve(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.targets = resolve_modules(pl_module, self.pathways)

    def _parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for module in self.targets.values():
            for p in module.parameters():
                seen[id(p)] = p
        return list(seen.values())

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        if self.mode == "freeze" and self.is_active(trainer):
            # No gradient means every torch optimizer skips the parameter entirely:
            # no momentum/Adam-moment update, no weight decay.
            for p in self._parameters():
                p.grad = None

    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[RemovableHandle]:
        if self.mode == "freeze":
            return []
        handles = []
        for index, module in enumerate(self.targets.values()):
            if self.mode == "silence":
                handles.append(module.register_forward_hook(_silence_hook))
            else:
                handles.append(module.register_forward_pre_hook(self._noise_hook(trainer, index), with_kwargs=True))
        return handles

    def _noise_hook(self, trainer: "pl.Trainer", index: int) -> Callable:
        std = self.noise_std
        calls = [0]
        # Seeded by what identifies this forward pass (run seed, epoch, batch, rank, pathway,
        # call), all derived from the trainer, so a resumed run draws the same noise and no
        # two pathways, micro-batches or ranks share it.
        key = (self.seed, trainer.current_epoch, self._batch_idx, trainer.global_rank, index)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
            if not module.training or is_probing():  # evaluation passes and monitors see the intact input
                return None
            calls[0] += 1
            gen_seed = hash(key + (calls[0],)) % (2**63 - 1)

            def noise(t: Tensor) -> Tensor:
                gen = torch.Generator(device=t.device).manual_seed(gen_seed)
                return torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) * std

            return map_tensors(args, noise), map_tensors(kwargs, noise)

        return hook

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        # Noise hooks are keyed by the batch: re-create them for every batch while active.
        self._batch_idx = batch_idx
        if self.mode == "noise" and self.attached:
            self._detach()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def _silence_hook(module: nn.Module, args: Any, output: Any) -> Any:
    if not module.training or is_probing():  # evaluation passes and monitors see the intact pathway
        return None
    return map_tensors(output, lambda t: t * 0)

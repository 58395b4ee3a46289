"""ModeDeficit: remove task singular modes from one pathway's map during a window."""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Union

import pytorch_lightning as pl
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.probing import is_probing
from lightning_critical.protocols import TaskBasis, end_to_end_maps, find_task_basis, resolve_modules
from lightning_critical.schedule import WindowLike
from lightning_critical.spectral import check_basis_fits


class ModeDeficit(WindowedDeficit):
    """Lesion task modes of one pathway: ``Omega <- (I - u u^T) Omega (I - v v^T)`` in a window.

    The projection is applied around the pathway's forward pass: its input loses the
    components along ``v_alpha`` and its output those along ``u_alpha``. The effective map
    therefore has row and column ``alpha`` of ``U^T Omega V`` zeroed (the paper's
    "gate_sing"), and that mode's weights receive no gradient while the window lasts.

    Args:
        pathway: one pathway name, submodule path or glob matching exactly one submodule.
            Its input must be the task input (``in`` features) and its output the task output.
        modes: index or indices ``alpha`` into the task basis (0 = largest singular value).
        window: ``lc.Window`` or ``(start, end)``; ``(0, None)`` lesions the whole run.
        task_basis: ``(U, S, V)``; default: ``task_basis()`` of the module, else of the datamodule.
        unit: unit of a tuple ``window``.
        name: key of the ``deficit/<name>`` scalar (default ``modes/<pathway>/<modes>``).

    Raises:
        ValueError: negative or out-of-range mode indices; before training: no task basis, a
            basis whose shape does not fit the pathway's map, a pathway that names nothing.

    Example::

        >>> import lightning_critical as lc
        >>> lesion = lc.ModeDeficit("a", modes=[1], window=(0, None))
        >>> lesion.modes
        [1]
    """

    def __init__(
        self,
        pathway: str,
        modes: Union[int, Sequence[int]],
        window: WindowLike,
        task_basis: Optional[TaskBasis] = None,
        unit: str = "epoch",
        name: Optional[str] = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        self.pathway = pathway
        listed = [modes] if isinstance(modes, numbers.Integral) else modes
        if (
            isinstance(listed, (str, bytes)) or not isinstance(listed, Sequence) or not listed
            or any(isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0 for m in listed)
        ):
            raise ValueError(f"modes={modes!r} must be one or more non-negative integer mode indices.")
        self.modes = [int(m) for m in listed]
        self._basis = task_basis
        self._u: Optional[Tensor] = None
        self._v: Optional[Tensor] = None

    def _default_name(self) -> str:
        return f"modes/{self.pathway}/{','.join(map(str, self.modes))}"

    def _resolve(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        targets = resolve_modules(pl_module, self.pathway)
        if len(targets) != 1:
            raise ValueError(f"ModeDeficit pathway={self.pathway!r} matches {sorted(targets)}; it must match exactly one.")
        self.targets = targets
        basis = self._basis if self._basis is not None else find_task_basis(pl_module, trainer.datamodule)
        if basis is None:
            raise ValueError(
                "ModeDeficit needs a task basis: pass task_basis=(U, S, V) or implement task_basis() "
                "on the LightningModule or the datamodule."
            )
        u, _, v = basis
        rank = u.shape[1]
        bad = [m for m in self.modes if m >= rank]
        if bad:
            raise ValueError(f"modes {bad} are out of range: the task basis has {rank} modes (0..{rank - 1}).")
        maps = end_to_end_maps(pl_module)
        if self.pathway in maps:
            check_basis_fits(tuple(maps[self.pathway].shape), u, v, what=f"map of pathway {self.pathway!r}")
        self._u = u[:, self.modes].detach().clone()
        self._v = v[:, self.modes].detach().clone()

    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> list[RemovableHandle]:
        (module,) = self.targets.values()
        u, v = self._u, self._v
        assert u is not None and v is not None

        def project(x: Tensor, basis: Tensor, side: str) -> Tensor:
            if x.shape[-1] != basis.shape[0]:
                raise ValueError(
                    f"ModeDeficit on {self.pathway!r}: the pathway's {side} has {x.shape[-1]} features but the "
                    f"task basis has {basis.shape[0]}; the pathway must map task inputs to task outputs."
                )
            b = basis.to(device=x.device, dtype=x.dtype)
            return x - (x @ b) @ b.T

        # Training-mode passes only: evaluation passes during the window see the whole map.
        def pre_hook(mod: nn.Module, args: tuple) -> Optional[tuple]:
            return (project(args[0], v, "input"),) + tuple(args[1:]) if mod.training and not is_probing() else None

        def post_hook(mod: nn.Module, args: Any, output: Tensor) -> Optional[Tensor]:
            return project(output, u, "output") if mod.training and not is_probing() else None

        return [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]


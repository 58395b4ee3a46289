"""ModeDeficit: remove task singular modes from one pathway's map during a window."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_critical._lightning import datamodule_of
from lightning_critical._namespace import pl
from lightning_critical.deficits._weight_decay import warn_if_decayed
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.protocols import TaskBasis, check_task_basis, end_to_end_maps, find_task_basis, resolve_modules
from lightning_critical.schedule import WindowLike
from lightning_critical.spectral import check_basis_fits

# Modules whose forward returns a tuple (outputs and states): the projection of "the
# pathway's output" is not defined for them.
_TUPLE_OUTPUTS: tuple[type, ...] = (nn.RNNBase, nn.MultiheadAttention)


class ModeDeficit(WindowedDeficit):
    """Lesion task modes of one pathway: ``Omega <- (I - u u^T) Omega (I - v v^T)`` in a window.

    The projection is applied around the pathway's forward pass: its input loses the
    components along ``v_alpha`` and its output those along ``u_alpha``. The effective map
    therefore has row and column ``alpha`` of ``U^T Omega V`` zeroed (the paper's
    "gate_sing"), and that mode's weights receive no gradient while the window lasts.
    Training-mode passes only: evaluation passes and monitors (inside
    :func:`~lightning_critical.probing.probing`) see the whole map.

    Args:
        pathway: one pathway name, submodule path or glob matching exactly one submodule.
            Its input (first positional argument) must be the task input (``in`` features,
            last dimension) and its output a single tensor, the task output. Modules that
            return tuples (``nn.LSTM``/``GRU``/``RNN``, ``nn.MultiheadAttention``) are refused.
        modes: index or distinct indices ``alpha`` into the task basis (0 = largest singular
            value). A repeated index would turn the projection into a reflection.
        window: ``lc.Window`` or ``(start, end)``; ``(0, None)`` lesions the whole run.
        task_basis: ``(U, S, V)`` with ``U`` (out x r), ``S`` (r,), ``V`` (in x r) floating
            tensors (or arrays) whose used columns are orthonormal; default: ``task_basis()``
            of the module, else of the datamodule (checked the same way before training).
        unit: unit of a tuple ``window``.
        name: key of the ``deficit/<name>`` scalar (default ``modes/<pathway>/<modes>``).

    Raises:
        ValueError: a ``pathway`` that is not a non-empty string; negative, repeated or
            out-of-range mode indices; a malformed ``task_basis``; before training: no task
            basis, a basis whose shape does not fit the pathway's map, a pathway that names
            nothing or several modules, a pathway whose forward returns a tuple.

    Example::

        >>> import lightning_critical as lc
        >>> lesion = lc.ModeDeficit("a", modes=[1], window=(0, None))
        >>> lesion.modes
        [1]
    """

    def __init__(
        self,
        pathway: str,
        modes: int | Sequence[int],
        window: WindowLike,
        task_basis: TaskBasis | None = None,
        unit: str = "epoch",
        name: str | None = None,
    ) -> None:
        super().__init__(window, unit=unit, name=name)
        if not isinstance(pathway, str) or not pathway:
            raise ValueError(
                f"pathway={pathway!r} is not valid: give one pathway name, submodule path or glob (a non-empty string)."
            )
        self.pathway = pathway
        listed = [modes] if isinstance(modes, numbers.Integral) else modes
        if (
            isinstance(listed, (str, bytes)) or not isinstance(listed, Sequence) or not listed
            or any(isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 0 for m in listed)
        ):
            raise ValueError(f"modes={modes!r} must be one or more non-negative integer mode indices.")
        repeated = sorted({int(m) for m in listed if list(listed).count(m) > 1})
        if repeated:
            raise ValueError(
                f"modes={modes!r} repeats mode(s) {repeated}: give each mode once (a repeated mode would reflect "
                "the map along it instead of removing it)."
            )
        self.modes = [int(m) for m in listed]
        self._basis = None if task_basis is None else self._check_basis(task_basis, "task_basis")
        self._u: Tensor | None = None
        self._v: Tensor | None = None

    def _check_basis(self, basis: Any, what: str) -> TaskBasis:
        u, s, v = check_task_basis(basis, what)
        rank = u.shape[1]
        bad = [m for m in self.modes if m >= rank]
        if bad:
            raise ValueError(f"modes {bad} are out of range: the task basis has {rank} modes (0..{rank - 1}).")
        # The projection I - b b^T removes exactly the lesioned modes only for orthonormal b.
        for label, side in (("U", u), ("V", v)):
            cols = side[:, self.modes].double()
            if not torch.allclose(cols.T @ cols, torch.eye(len(self.modes), dtype=cols.dtype), atol=1e-3):
                raise ValueError(
                    f"{what}: columns {self.modes} of {label} are not orthonormal; give the task's singular "
                    "vectors (Y = U diag(S) V^T with orthonormal columns)."
                )
        return u, s, v

    @override
    def default_name(self) -> str:
        return f"modes/{self.pathway}/{','.join(map(str, self.modes))}"

    @override
    def repr_settings(self) -> dict[str, str]:
        out = {"pathway": repr(self.pathway), "modes": repr(self.modes), **super().repr_settings()}
        if self._basis is not None:
            out["task_basis"] = f"given (rank {self._basis[0].shape[1]})"
        return out

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        params = [p for module in self.targets.values() for p in module.parameters()]
        warn_if_decayed(repr(self), "the lesioned modes get no gradient", trainer.optimizers, params,
                        freeze_hint=False)

    @override
    def resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        targets = resolve_modules(pl_module, self.pathway)
        if len(targets) != 1:
            raise ValueError(
                f"ModeDeficit pathway={self.pathway!r} matches {sorted(targets)}; it must match exactly one."
            )
        ((qualified, module),) = targets.items()
        if isinstance(module, _TUPLE_OUTPUTS):
            raise ValueError(
                f"ModeDeficit pathway={self.pathway!r} is a {type(module).__name__} ({qualified!r}), whose forward "
                "returns a tuple (outputs and states): the projection needs a pathway that maps the task input to one "
                "output tensor. Wrap it in a module that returns the output tensor, or lesion a linear pathway."
            )
        self.targets = targets
        if self._basis is not None:
            basis = self._basis
        else:
            found = find_task_basis(pl_module, datamodule_of(trainer))
            if found is None:
                raise ValueError(
                    "ModeDeficit needs a task basis: pass task_basis=(U, S, V) or implement task_basis() "
                    "on the LightningModule or the datamodule."
                )
            basis = self._check_basis(found, "task_basis() of the model/datamodule")
        u, _, v = basis
        maps = end_to_end_maps(pl_module)
        if self.pathway in maps:
            check_basis_fits(tuple(maps[self.pathway].shape), u, v, what=f"map of pathway {self.pathway!r}")
        self._u = u[:, self.modes].detach().clone()
        self._v = v[:, self.modes].detach().clone()

    @override
    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[RemovableHandle]:
        (module,) = self.targets.values()
        u, v = self._u, self._v
        assert u is not None and v is not None

        def project(x: Any, basis: Tensor, side: str) -> Tensor:
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"ModeDeficit on {self.pathway!r}: the pathway's {side} is a {type(x).__name__}, not a tensor; "
                    "the pathway must map one task-input tensor to one task-output tensor."
                )
            if x.shape[-1] != basis.shape[0]:
                raise ValueError(
                    f"ModeDeficit on {self.pathway!r}: the pathway's {side} has {x.shape[-1]} features but the "
                    f"task basis has {basis.shape[0]}; the pathway must map task inputs to task outputs."
                )
            b = basis.to(device=x.device, dtype=x.dtype)
            return x - (x @ b) @ b.T

        # The hook helpers skip evaluation passes and probing(): those see the whole map.
        def pre_hook(mod: nn.Module, args: tuple) -> tuple:
            if not args:
                raise TypeError(f"ModeDeficit on {self.pathway!r}: the pathway's forward got no positional input.")
            return (project(args[0], v, "input"),) + tuple(args[1:])

        def post_hook(mod: nn.Module, args: Any, output: Any) -> Tensor:
            return project(output, u, "output")

        return [self.register_forward_pre_hook(module, pre_hook), self.register_forward_hook(module, post_hook)]

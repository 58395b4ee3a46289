"""The documented protocols a user model or datamodule may implement, and their lookups.

A LightningModule (or any ``nn.Module``) may offer:

* ``pathways``: a mapping ``name -> nn.Module`` (e.g. an ``nn.ModuleDict``). Deficits look
  names up here first, then as submodule paths (``"encoder.0"``), then as globs (``"enc*"``).
* ``end_to_end_maps() -> dict[str, Tensor]``: linear maps whose spectra the monitor tracks.
* ``task_basis() -> (U, S, V)`` with ``U`` (out x r), ``S`` (r,), ``V`` (in x r): the task's
  singular modes. It may live on the module or on the datamodule; returning ``None`` means
  "not known". :func:`check_task_basis` validates one.

Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lightning_critical.spectral.matrices import name_matches

TaskBasis = tuple[Tensor, Tensor, Tensor]


def available_names(module: nn.Module, limit: int = 40) -> str:
    """A readable list of pathway names and submodule names, for error messages."""
    names = list(getattr(module, "pathways", {}) or {})
    subs = [n for n, _ in module.named_modules() if n]
    shown = subs[:limit]
    more = f" ... and {len(subs) - limit} more" if len(subs) > limit else ""
    pathways = f"pathways: {names}; " if names else ""
    return f"{pathways}submodules: {shown}{more}"


def resolve_modules(module: nn.Module, spec: str | Sequence[str]) -> dict[str, nn.Module]:
    """Turn pathway names, submodule paths or globs into ``{qualified_name: submodule}``.

    A glob keeps only the outermost matches (``"enc*"`` does not also return ``"enc.0"``).

    Raises:
        ValueError: naming the pattern that matched nothing and listing what exists.
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise ValueError("no pathway given: pass a name, a submodule path or a glob.")
    qualified = {id(m): n for n, m in module.named_modules()}
    out: dict[str, nn.Module] = {}
    mapping = getattr(module, "pathways", None)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"pathway {pattern!r} must be a non-empty string.")
        if mapping is not None and pattern in mapping:
            sub = mapping[pattern]
            out[qualified.get(id(sub), pattern)] = sub
            continue
        try:
            out[pattern] = module.get_submodule(pattern)
            continue
        except AttributeError:
            pass
        matched = sorted(n for n in qualified.values() if n and name_matches(n, pattern))
        outermost = [n for n in matched if not any(n.startswith(m + ".") for m in matched)]
        if not outermost:
            raise ValueError(
                f"pathway {pattern!r} matches nothing in {type(module).__name__}; {available_names(module)}."
            )
        for name in outermost:
            out[name] = module.get_submodule(name)
    return out


def find_task_basis(*owners: Any) -> TaskBasis | None:
    """The first ``task_basis()`` that one of ``owners`` (module, datamodule...) returns."""
    for owner in owners:
        fn = getattr(owner, "task_basis", None)
        if callable(fn):
            basis = fn()
            if basis is not None:
                return basis
    return None


def end_to_end_maps(module: nn.Module) -> dict[str, Tensor]:
    """The module's ``end_to_end_maps()``, or an empty dict if it has none."""
    fn = getattr(module, "end_to_end_maps", None)
    return dict(fn()) if callable(fn) else {}


def check_task_basis(basis: Any, what: str = "task_basis") -> TaskBasis:
    """Return ``(U, S, V)`` as floating tensors if they form a task basis; else a ``ValueError`` naming ``what``.

    ``U`` is ``(out, r)``, ``S`` is ``(r,)``, ``V`` is ``(in, r)``, all finite; tensors or
    anything ``torch.as_tensor`` reads (numpy arrays).

    Example::

        >>> import torch
        >>> U, S, V = check_task_basis((torch.eye(3)[:, :2], torch.ones(2), torch.eye(2)))
        >>> tuple(U.shape), tuple(S.shape), tuple(V.shape)
        ((3, 2), (2,), (2, 2))
        >>> check_task_basis((torch.eye(3)[:, :2], torch.ones(3), torch.eye(2)))
        Traceback (most recent call last):
        ...
        ValueError: task_basis: S has 3 values but U and V have r=2 columns; give S of shape (2,).
    """
    if isinstance(basis, (str, bytes)) or not isinstance(basis, (tuple, list)) or len(basis) != 3:
        shown = f"a {type(basis).__name__}" + (f" of length {len(basis)}" if isinstance(basis, (tuple, list)) else "")
        raise ValueError(f"{what} is {shown}; it must be a tuple (U, S, V): U (out x r), S (r,), V (in x r).")
    parts = []
    for label, value, dims in zip("USV", basis, (2, 1, 2), strict=True):
        try:
            tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            tensor = None
        if tensor is None or isinstance(value, (str, bytes)) or not tensor.is_floating_point():
            raise ValueError(f"{what}: {label} is a {type(value).__name__}; it must be a floating-point tensor.")
        if tensor.dim() != dims:
            shape = "(r,)" if dims == 1 else ("(out, r)" if label == "U" else "(in, r)")
            raise ValueError(f"{what}: {label} has shape {tuple(tensor.shape)}; it must be {dims}-D, {shape}.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: {label} holds NaN or infinite values.")
        parts.append(tensor)
    u, s, v = parts
    if u.shape[1] != v.shape[1]:
        raise ValueError(f"{what}: U has {u.shape[1]} columns but V has {v.shape[1]}; both need one per mode (r).")
    if s.shape[0] != u.shape[1]:
        raise ValueError(
            f"{what}: S has {s.shape[0]} values but U and V have r={u.shape[1]} columns; "
            f"give S of shape ({u.shape[1]},)."
        )
    return u, s, v


# -- task switching --------------------------------------------------------------------------
@runtime_checkable
class TaskSwitchable(Protocol):
    """What :class:`~lightning_critical.TaskSwitch` drives: ``tasks`` (names) and ``set_task(name)``.

    A datamodule (or any object) is *task-switchable* when it has

    * ``tasks``: the names of the tasks it can serve (a sequence of strings), and
    * ``set_task(name)``: make ``name`` the task that the next training step uses;
    * optionally ``task``: the name of the active task, and
    * optionally ``initial_task``: the task a fresh run starts on, when it is not the active one.

    ``set_task`` is called in the main process, before the batch of the step it concerns is
    transferred to the device; with dataloader workers, resolve task-specific content in the
    datamodule's transfer hooks (see :mod:`lightning_critical.deficits.task_switch`).

    Example::

        >>> class TwoTasks:
        ...     tasks = ("pretrain", "target")
        ...     task = "pretrain"
        ...     def set_task(self, name):
        ...         self.task = name
        >>> isinstance(TwoTasks(), TaskSwitchable)
        True
    """

    @property
    def tasks(self) -> Sequence[str]: ...

    def set_task(self, name: str) -> None: ...


def check_task_switchable(obj: Any, what: str = "target") -> None:
    """Raise ``TypeError`` naming what is missing when ``obj`` lacks the :class:`TaskSwitchable` protocol.

    Example::

        >>> check_task_switchable(object(), "datamodule")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: TaskSwitch needs a datamodule ... but object lacks ['tasks', 'set_task']. ...
    """
    missing = [n for n in ("tasks", "set_task") if not hasattr(obj, n)]
    if not missing and not callable(obj.set_task):
        missing = ["set_task (callable)"]
    if missing:
        raise TypeError(
            f"TaskSwitch needs a {what} implementing the TaskSwitchable protocol "
            f"(`tasks` and `set_task(name)`), but {type(obj).__name__} lacks {missing}. "
            "Pass a datamodule that implements it to trainer.fit(..., datamodule=...) or give "
            "TaskSwitch(target=...)."
        )

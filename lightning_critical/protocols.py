"""The documented protocols a user model or datamodule may implement, and their lookups.

A LightningModule (or any ``nn.Module``) may offer:

* ``pathways``: a mapping ``name -> nn.Module`` (e.g. an ``nn.ModuleDict``). Deficits look
  names up here first, then as submodule paths (``"encoder.0"``), then as globs (``"enc*"``).
* ``end_to_end_maps() -> dict[str, Tensor]``: linear maps whose spectra the monitor tracks.
* ``task_basis() -> (U, S, V)`` with ``U`` (out x r), ``S`` (r,), ``V`` (in x r): the task's
  singular modes. It may live on the module or on the datamodule; returning ``None`` means
  "not known".

Nothing here imports Lightning.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Optional, Sequence, Union

from torch import Tensor, nn

TaskBasis = tuple[Tensor, Tensor, Tensor]


def available_names(module: nn.Module, limit: int = 40) -> str:
    """A readable list of pathway names and submodule names, for error messages."""
    names = list(getattr(module, "pathways", {}) or {})
    subs = [n for n, _ in module.named_modules() if n]
    shown = subs[:limit]
    more = f" ... and {len(subs) - limit} more" if len(subs) > limit else ""
    pathways = f"pathways: {names}; " if names else ""
    return f"{pathways}submodules: {shown}{more}"


def resolve_modules(module: nn.Module, spec: Union[str, Sequence[str]]) -> dict[str, nn.Module]:
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
        matched = sorted(n for n in qualified.values() if n and fnmatch.fnmatchcase(n, pattern))
        outermost = [n for n in matched if not any(n.startswith(m + ".") for m in matched)]
        if not outermost:
            raise ValueError(f"pathway {pattern!r} matches nothing in {type(module).__name__}; {available_names(module)}.")
        for name in outermost:
            out[name] = module.get_submodule(name)
    return out


def find_task_basis(*owners: Any) -> Optional[TaskBasis]:
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

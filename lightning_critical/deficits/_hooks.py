"""Forward hooks that belong to the deficit, not to the model: copies of the model stay clean.

Why not ``module.register_forward_hook``: those hooks live in the module's ``__dict__``, so
``copy.deepcopy`` (EMA and SWA callbacks, snapshot utilities), pickling and ``copy.copy``
hand them to every copy taken while a window is open. The copy then keeps the deficit for
ever (the callback can only remove the handles it registered on the original), and its
hook closures pin the original model in memory. Making the hook objects copy themselves
into inert stand-ins would still leave entries in the copy and depend on how each copy
mechanism walks ``__dict__``.

Instead each deficit registers *one* process-wide hook (``torch.nn.modules.module``'s
``register_module_forward_pre_hook`` / ``register_module_forward_hook``) that acts only
when the module being called **is** one of its target objects (identity, not equality or
name). Nothing is stored on the model, so every copy is a plain model whatever made it, and
removing the handle is all the cleaning there is. The cost while a window is open is one
dict look-up per module call in the process; PyTorch calls global hooks "for debugging and
profiling" because of that process-wide reach, which the identity check makes harmless.
One limit follows: global pre-hooks receive positional arguments only (no ``kwargs``).

Every hook here is called only for training-mode passes (``module.training``) outside
:func:`~lightning_critical.probing.probing`: evaluation passes and monitors see the intact
model.

Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

from lightning_critical.probing import is_probing

Modules = nn.Module | Iterable[nn.Module]
PreHook = Callable[[nn.Module, tuple], Any | None]
PostHook = Callable[[nn.Module, tuple, Any], Any | None]


def _targets(modules: Modules) -> dict[int, nn.Module]:
    listed = [modules] if isinstance(modules, nn.Module) else list(modules)
    if not listed or not all(isinstance(m, nn.Module) for m in listed):
        raise TypeError(f"expected one or more nn.Module objects to hook, got {modules!r}.")
    return {id(m): m for m in listed}


def forward_pre_hook(modules: Modules, hook: PreHook) -> RemovableHandle:
    """Call ``hook(module, args)`` before the forward of each of ``modules`` (and no other module).

    As with ``nn.Module.register_forward_pre_hook``, a non-``None`` return replaces ``args``.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> handle = forward_pre_hook(layer, lambda m, args: (args[0] * 0,))
        >>> layer(torch.ones(1, 2)).equal(layer.bias.unsqueeze(0)), len(layer._forward_pre_hooks)
        (True, 0)
        >>> handle.remove()
    """
    targets = _targets(modules)

    def dispatch(module: nn.Module, args: tuple) -> Any | None:
        # Identity, so a copy of a target (same class, equal weights) is never touched.
        if targets.get(id(module)) is not module or not module.training or is_probing():
            return None
        return hook(module, args)

    return register_module_forward_pre_hook(dispatch)


def forward_hook(modules: Modules, hook: PostHook) -> RemovableHandle:
    """Call ``hook(module, args, output)`` after the forward of each of ``modules``.

    A non-``None`` return replaces the output.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> handle = forward_hook(layer, lambda m, args, out: out * 0)
        >>> layer(torch.ones(1, 2)).abs().sum().item()
        0.0
        >>> handle.remove(); layer(torch.ones(1, 2)).abs().sum().item() > 0
        True
    """
    targets = _targets(modules)

    def dispatch(module: nn.Module, args: tuple, output: Any) -> Any | None:
        if targets.get(id(module)) is not module or not module.training or is_probing():
            return None
        return hook(module, args, output)

    return register_module_forward_hook(dispatch)

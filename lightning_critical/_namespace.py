"""Which Lightning the package talks to: ``lightning.pytorch`` or ``pytorch_lightning``.

The two distributions ship the same trainer under two module names, and a Trainer accepts only
LightningModules of its own namespace. The package therefore binds to one namespace when it is
first imported, and imports only that one:

1. ``LIGHTNING_CRITICAL_NAMESPACE`` (``lightning``, ``lightning.pytorch`` or ``pytorch_lightning``)
   when set;
2. otherwise the namespace the user has already imported (``import lightning as L`` before
   ``import lightning_critical`` binds to ``lightning.pytorch``); when both are loaded,
   ``pytorch_lightning``;
3. otherwise ``pytorch_lightning`` when installed (it is a declared dependency), else ``lightning``.

Callbacks do not depend on the binding: they recognise loggers and trainers of either namespace
(:func:`instance_of`), so they drop into a script written against the other one. Bundled
LightningModules and data modules do: they subclass the bound namespace's classes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Container, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lightning_critical._checks import check_choice

ENV = "LIGHTNING_CRITICAL_NAMESPACE"
NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
_ALIASES = {"lightning": "lightning.pytorch", "lightning.pytorch": "lightning.pytorch",
            "pytorch_lightning": "pytorch_lightning", "pytorch-lightning": "pytorch_lightning"}


def choose(environ: Mapping[str, str] | None = None, loaded: Container[str] | None = None) -> str:
    """The namespace to bind to, by the rules in the module docstring.

    Example::

        >>> choose(environ={ENV: "lightning"})
        'lightning.pytorch'
        >>> choose(environ={}, loaded={"lightning"})
        'lightning.pytorch'
    """
    env = os.environ if environ is None else environ
    loaded = sys.modules if loaded is None else loaded
    forced = env.get(ENV, "").strip()
    if forced:
        return _ALIASES[check_choice(ENV, forced, sorted(_ALIASES), extra=" (the Lightning namespace to bind to)")]
    has_new = "lightning" in loaded or "lightning.pytorch" in loaded
    has_old = "pytorch_lightning" in loaded
    if has_new and not has_old:
        return "lightning.pytorch"
    if has_old or importlib.util.find_spec("pytorch_lightning") is not None:
        return "pytorch_lightning"
    return "lightning.pytorch"


NAME = choose()

if TYPE_CHECKING:
    # The type checker sees one namespace; the two are the same code under two names.
    import pytorch_lightning as pl
    import pytorch_lightning.accelerators
    import pytorch_lightning.callbacks
    import pytorch_lightning.loggers
    import pytorch_lightning.profilers
    import pytorch_lightning.utilities  # noqa: F401  (makes pl.<submodule> known to the checker)
    from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
else:
    pl = importlib.import_module(NAME)
    rank_zero_info = importlib.import_module(f"{NAME}.utilities").rank_zero_info
    rank_zero_warn = importlib.import_module(f"{NAME}.utilities").rank_zero_warn


def submodule(path: str) -> ModuleType:
    """``<bound namespace>.<path>``, e.g. ``submodule("cli")`` (imported on first use)."""
    return importlib.import_module(f"{NAME}.{path}")


def instance_of(obj: Any, path: str) -> bool:
    """Whether ``obj`` is an instance of ``<namespace>.<path>`` in any loaded namespace.

    ``path`` is dotted from the namespace root, e.g. ``"loggers.TensorBoardLogger"``. A namespace
    the user never imported is not imported here (its classes can have no instances).
    """
    module_path, _, cls_name = path.rpartition(".")
    for root in NAMESPACES:
        full = f"{root}.{module_path}" if module_path else root
        module = sys.modules.get(full)
        cls = getattr(module, cls_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(obj, cls):
            return True
    return False


def namespace_of(obj: Any) -> str | None:
    """The Lightning namespace an object's class comes from (``None`` for non-Lightning objects)."""
    for klass in type(obj).__mro__:
        module = klass.__module__
        for root in NAMESPACES:
            if module == root or module.startswith(root + "."):
                return root
    return None


def mismatch_message(obj: Any, what: str) -> str | None:
    """Why ``obj`` (a user's LightningModule, datamodule or callback) cannot go to a Trainer of the
    bound namespace, or ``None`` when it can (or is no Lightning object at all)."""
    found = namespace_of(obj)
    if found is None or found == NAME:
        return None
    return (f"{what} is a {found} {type(obj).__name__}, but lightning_critical is bound to {NAME} "
            f"(the namespace loaded when it was first used). Import {found.split('.')[0]} before using "
            f"lightning_critical, or set {ENV}={found}.")


@contextlib.contextmanager
def exported() -> Iterator[None]:
    """Put the binding in the environment while the block runs, so that worker processes started in
    it (a sweep's process pool, a user's executor) bind to the same namespace before they unpickle
    anything; an explicit ``LIGHTNING_CRITICAL_NAMESPACE`` is left as it is."""
    if os.environ.get(ENV):
        yield
        return
    os.environ[ENV] = NAME
    try:
        yield
    finally:
        os.environ.pop(ENV, None)

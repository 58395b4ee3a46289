"""What a sweep's results depend on besides its arguments: the user's code and the library versions.

A sweep's identity (:meth:`~lightning_critical.sweep.spec.SweepSpec.describe`) names its
factories, deficit, Trainer arguments and metrics. This module adds what those names hide:

* :func:`code_digest`: a digest of every function, class and simple module constant of the
  user's own modules that the sweep runs, found by following the factories, the classes they
  build (their methods and user base classes) and the globals those read, recursively, through
  attributes of user modules (``losses.mse``), modules imported inside a function, and
  containers (a registry ``{"relu": my_relu}``). A user module whose attributes are picked at
  run time (``getattr(losses, name)``, ``globals()[name]``, the module passed on as a value) is
  hashed whole: every function, class and constant of it (``losses (whole module: reached
  through getattr)``), so an edit of any of them changes the identity. "User
  module" means neither the standard library, nor site-packages / dist-packages, nor this
  package (covered by its version). Each function is hashed from its syntax tree with
  docstrings removed, so docstrings, comments and formatting do not count; where no source is
  available (an interactive session, generated code) its bytecode minus the docstring is
  hashed instead, and the entry says ``bytecode:`` (:mod:`~lightning_critical.sweep.source`).
* :func:`versions`: torch, the Lightning namespace in use, numpy, this package, Python (minor).

What differs between two descriptions, readably, is :mod:`~lightning_critical.sweep.changes`'s.

Pure Python (``inspect``, ``ast``, ``dis``, ``hashlib``); imports neither Lightning nor torch.
What is hashed is the code that runs: a source file edited since its module was imported no
longer compiles to the loaded bytecode, so that bytecode is hashed (reload the module to use
the edit).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import re
import sys
import sysconfig
import types
from collections.abc import Iterable, Mapping
from typing import Any

from lightning_critical.sweep.references import imported, load_user_module, references, resolved
from lightning_critical.sweep.source import (
    SIMPLE,
    cell_filled,
    class_digest,
    constant,
    digest,
    function_digest,
    is_value,
)

MAX_DEPTH = 8
"""References followed from a factory (factory -> class -> method -> helper -> ...)."""
MAX_ENTRIES = 400
"""Entries per role; beyond that the digest says it was truncated."""
_MAX_ITEMS = 200  # elements of one container looked at for code
_PACKAGE = "lightning_critical"
_CONTAINERS = (dict, list, tuple, set, frozenset)
_HIDDEN = re.compile(r"^(__\w+__|_+|_i+|_i?\d+|_[iod]h|In|Out|get_ipython|exit|quit)$")  # IPython's history too


# -- which code is the user's ------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib") if k in paths} | {os.path.dirname(os.__file__)}
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


@functools.lru_cache(maxsize=4096)
def _user_file(file: str) -> bool:
    path = os.path.realpath(file)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_library_dirs())


def is_user_module(name: str | None) -> bool:
    """Whether code of module ``name`` is the user's: not stdlib, site-packages or this package.

    Example::

        >>> is_user_module("json"), is_user_module("lightning_critical.sweep.spec")
        (False, False)
    """
    if not name:
        return False
    if name in ("__main__", "__mp_main__"):  # the script or session itself (a notebook's runs from a kernel file)
        return True
    top = name.split(".")[0]
    if top == _PACKAGE or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    file = getattr(sys.modules.get(name), "__file__", None)
    return True if file is None else _user_file(file)  # no file: __main__ of a session, exec'd code


def _module_of(obj: Any) -> str | None:
    if isinstance(obj, types.FunctionType):
        return obj.__globals__.get("__name__") or obj.__module__
    return getattr(obj, "__module__", None)


def _array_digest(value: Any) -> str | None:
    """A digest of a module-level tensor or numpy array (duck-typed: no torch import)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().contiguous().numpy()
    if hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):
        return "value:" + hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()[:12]
    return None


def _load(name: str) -> Any:
    return load_user_module(name, _user_file)


def _attributes(value: Any) -> list[Any]:
    return sorted((k, constant(v)) for k, v in getattr(value, "__dict__", {}).items() if is_value(v))


def _layout(value: Any, depth: int = 0) -> Any:
    """A container's constants, with the code in it by name (the code itself is hashed as entries)."""
    if depth > MAX_DEPTH:
        return "..."
    if isinstance(value, (types.FunctionType, type)):
        return f"{_module_of(value)}:{value.__qualname__}"
    if isinstance(value, functools.partial):
        return ["partial", _layout(value.func, depth + 1), _layout(value.args, depth + 1),
                _layout(value.keywords, depth + 1)]
    if isinstance(value, _CONTAINERS) and len(value) > 10_000:
        return f"<{len(value)} items>"
    if isinstance(value, (list, tuple)):
        return [_layout(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_layout(v, depth + 1) for v in value), key=repr)
    if isinstance(value, dict):
        return sorted(([_layout(k, depth + 1), _layout(v, depth + 1)] for k, v in value.items()), key=repr)
    if not isinstance(value, SIMPLE) and is_user_module(_module_of(type(value))):
        return [f"{_module_of(type(value))}:{type(value).__qualname__}", _attributes(value)]
    return constant(value)


# -- the walk ---------------------------------------------------------------------------------
class _Walk:
    """Collects ``{"module:qualname": digest}`` for the user code reachable from some objects."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.seen: dict[int, Any] = {}  # id -> object, kept alive so ids stay unique during the walk
        self.whole: set[str] = set()  # modules hashed whole
        self.truncated = False

    def add(self, key: str, digest: str) -> None:
        if len(self.entries) >= MAX_ENTRIES:
            self.truncated = True
            return
        name, n = key, 1
        while name in self.entries and self.entries[name] != digest:  # two lambdas of one scope
            n += 1
            name = f"{key}#{n}"
        self.entries[name] = digest

    def visit(self, obj: Any, depth: int, root: bool = False) -> None:
        if depth > MAX_DEPTH:
            self.truncated = True
            return
        if inspect.ismodule(obj) and is_user_module(obj.__name__):  # a module held as a value: any attribute
            self.visit_namespace(obj.__name__, vars(obj), "held as a value", depth + 1)
        if id(obj) in self.seen or isinstance(obj, SIMPLE) or inspect.ismodule(obj):
            return
        self.seen[id(obj)] = obj
        if isinstance(obj, functools.partial):
            self.visit_all([obj.func, *obj.args, *obj.keywords.values()], depth, root)
        elif inspect.ismethod(obj):
            self.visit(obj.__func__, depth)
            self.visit(obj.__self__, depth + 1)
        elif isinstance(obj, (staticmethod, classmethod)):
            self.visit(obj.__func__, depth)
        elif isinstance(obj, property):
            self.visit_all([obj.fget, obj.fset, obj.fdel], depth)
        elif isinstance(obj, types.FunctionType):
            self.visit_function(obj, depth)
        elif inspect.isclass(obj):
            self.visit_class(obj, depth)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            self.visit_all(list(obj)[:_MAX_ITEMS], depth, root)
        elif isinstance(obj, Mapping):
            self.visit_all(list(obj.values())[:_MAX_ITEMS], depth, root)
        else:  # an instance: its class, and what its attributes hold (a callable object, a deficit template)
            user = is_user_module(_module_of(type(obj)))
            if user:
                self.visit(type(obj), depth + 1)
            if user or root:
                attrs = getattr(obj, "__dict__", None)
                if isinstance(attrs, dict):
                    self.visit_all(list(attrs.values())[:_MAX_ITEMS], depth + 1)

    def visit_all(self, objs: Iterable[Any], depth: int, root: bool = False) -> None:
        for obj in objs:
            if obj is not None:
                self.visit(obj, depth, root)

    def visit_function(self, fn: types.FunctionType, depth: int) -> None:
        module = _module_of(fn)
        if not is_user_module(module):
            return
        self.add(f"{module}:{fn.__qualname__}", function_digest(fn))
        refs = references(fn.__code__)
        scope, package = fn.__globals__, fn.__globals__.get("__package__")
        for name in sorted(refs.globals):
            if name in scope:
                self.visit_global(module or "?", name, scope[name], depth + 1)
        if "globals" in refs.globals and "globals" not in scope:  # globals()[name]: any name of the module
            self.visit_namespace(module or "?", scope, "reached through globals()", depth + 1)
        locals_ = {name: imported(b, package, _load) for name, b in sorted(refs.imports.items())}
        for name, binding in sorted(refs.imports.items()):  # `from mymodule import helper` inside the function
            owner = resolved(binding, package, _load)
            if binding.attr and is_user_module(owner):
                self.visit_global(owner, binding.attr, locals_[name], depth + 1)
        for local, chain, how in sorted(refs.chains):  # mymodule.helper(...): follow attributes of user modules
            value: Any = locals_.get(chain[0]) if local else scope.get(chain[0])
            for attr in chain[1:]:
                if not inspect.ismodule(value) or not is_user_module(value.__name__):
                    break
                owner, value = value.__name__, getattr(value, attr, None)
                self.visit_global(owner, attr, value, depth + 1)
            if inspect.ismodule(value) and is_user_module(value.__name__):  # getattr(mymodule, name), or passed on
                self.visit_namespace(value.__name__, vars(value), how, depth + 1)
        self.visit_all([c.cell_contents for c in (fn.__closure__ or ()) if cell_filled(c)], depth + 1)
        self.visit_all([*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()], depth + 1)

    def visit_namespace(self, module: str, scope: Mapping[str, Any], how: str, depth: int) -> None:
        """Every function, class and constant of a module whose attributes the code picks at run time.

        Conservative: an edit of any of them changes the identity, and the change names the module
        and why (``code.model: losses (whole module: reached through getattr) changed``).
        """
        if module in self.whole:
            return
        self.whole.add(module)
        for name, value in sorted(scope.items()):
            if not inspect.ismodule(value) and not _HIDDEN.match(name):
                self.visit_global(module, name, value, depth)
        members = sorted((k, v) for k, v in self.entries.items() if k.startswith(f"{module}:"))
        self.add(f"{module} (whole module: {how})", "module:" + digest(json.dumps(members)))

    def visit_global(self, module: str, name: str, value: Any, depth: int) -> None:
        """A name a user function reads from its module: code is followed, constants are recorded."""
        if value is None or inspect.ismodule(value):
            return
        if isinstance(value, (types.FunctionType, functools.partial)) or inspect.isclass(value):
            self.visit(value, depth)
        elif is_value(value):
            self.add(f"{module}:{name}", "value:" + digest(json.dumps(constant(value))))
        elif (array := _array_digest(value)) is not None:
            self.add(f"{module}:{name}", array)
        elif isinstance(value, _CONTAINERS):  # a registry: {"relu": my_relu, ...}; its functions are followed
            self.add(f"{module}:{name}", "value:" + digest(json.dumps(_layout(value))))
            self.visit(value, depth)
        elif is_user_module(_module_of(type(value))):  # a module-level config object of a user class
            self.add(f"{module}:{name}", "value:" + digest(json.dumps(_attributes(value))))
            self.visit(value, depth)

    def visit_class(self, cls: type, depth: int) -> None:
        module = _module_of(cls)
        if not is_user_module(module):
            return
        self.add(f"{module}:{cls.__qualname__}", class_digest(cls))
        for value in vars(cls).values():
            if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)) or inspect.isclass(value):
                self.visit(value, depth)
            elif isinstance(value, functools.cached_property):
                self.visit(value.func, depth)
            elif isinstance(value, _CONTAINERS) and not is_value(value):  # a registry held by the class
                self.visit(value, depth)
        self.visit_all(cls.__bases__, depth + 1)


def code_digest(roles: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """For each role (``"model"``, ...), the digest of every user function, class and constant it reaches.

    Example::

        >>> code_digest({"metrics": [len]})  # a builtin: no user code
        {}
    """
    out: dict[str, dict[str, str]] = {}
    for role, objs in roles.items():
        walk = _Walk()
        walk.visit(objs, 0, root=True)
        entries = dict(sorted(walk.entries.items()))
        if walk.truncated:
            entries["(truncated)"] = f"only the first {MAX_ENTRIES} entries, {MAX_DEPTH} references deep"
        if entries:
            out[role] = entries
    return out


# -- versions ---------------------------------------------------------------------------------
_DISTRIBUTIONS = {"lightning.pytorch": "lightning", "pytorch_lightning": "pytorch-lightning",
                  "lightning_critical": "lightning-critical"}


def _version(module: str) -> str:
    loaded = sys.modules.get(module)
    version = getattr(loaded, "__version__", None)
    if version is not None:
        return str(version)
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(namespace: str) -> dict[str, str]:
    """The versions of torch, the Lightning ``namespace`` in use, numpy, this package and Python (major.minor).

    Python's minor version is there because the syntax trees hashed by :func:`code_digest` change
    with it: an upgrade then reads as one line, not as every function changed.

    Example::

        >>> sorted(versions("pytorch_lightning"))
        ['lightning_critical', 'numpy', 'python', 'pytorch_lightning', 'torch']
    """
    found = {name: _version(name) for name in ("torch", namespace, "numpy", _PACKAGE)}
    return {**found, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}

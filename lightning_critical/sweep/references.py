"""What a function's bytecode refers to: the names it reads, attribute chains on them, its imports.

:mod:`~lightning_critical.sweep.identity` follows these to find the user code a run runs. A
module named in code is followed attribute by attribute (``losses.mse(...)`` follows ``mse``);
where a module is used otherwise (``getattr(losses, name)``, passed to a function, stored), its
attributes cannot be known statically, and the chain says so (``how``), so that the whole module
is hashed.
"""

from __future__ import annotations

import dis
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_critical.sweep.source import all_codes

_DYNAMIC = frozenset({"getattr", "hasattr", "vars", "setattr", "delattr"})


@dataclass(frozen=True, order=True)
class Binding:
    """A local name bound by an import inside a function: ``module`` (``level`` dots), ``attr`` of it or ``""``."""

    module: str
    level: int
    attr: str
    loads: str = ""
    """``a.b`` for ``import a.b`` (which binds ``a``)."""


@dataclass
class References:
    """What one code object (and the code nested in it) refers to."""

    globals: set[str] = field(default_factory=set)
    """Names loaded from the module's globals (or builtins)."""
    chains: set[tuple[bool, tuple[str, ...], str]] = field(default_factory=set)
    """``(local, names, how)``: a name and the attributes read on it, longest first; ``local``: the name is
    bound by an import in the function; ``how``: how the last value is used if it is a module
    (``"reached through getattr"`` or ``"used as a value"``)."""
    imports: dict[str, Binding] = field(default_factory=dict)
    """Local names bound by imports, and to what."""


def _names(argval: Any) -> tuple[str, ...]:
    return argval if isinstance(argval, tuple) else (argval,)  # LOAD_FAST_LOAD_FAST (3.13+) loads two


def _imports(codes: list[types.CodeType]) -> dict[str, Binding]:
    out: dict[str, Binding] = {}
    for code in codes:
        consts: list[Any] = []
        module, level, as_form, attr = None, 0, False, ""
        for ins in dis.get_instructions(code):
            if ins.opname == "IMPORT_NAME":
                level = consts[-2] if len(consts) >= 2 and isinstance(consts[-2], int) else 0
                as_form = len(consts) >= 1 and consts[-1] is None  # `import a.b` / `import a.b as x`
                module, attr = ins.argval, ""
            elif ins.opname == "IMPORT_FROM" and module is not None:
                attr = ins.argval
            elif ins.opname.startswith("STORE_") and module is not None:
                if as_form and not attr:  # `import a.b` binds `a`
                    out[_names(ins.argval)[0]] = Binding(module.split(".")[0], level, "", module)
                elif as_form:  # `import a.b as x` binds `a.b`
                    out[_names(ins.argval)[0]] = Binding(module, level, "")
                else:  # `from a import b`
                    out[_names(ins.argval)[0]] = Binding(module, level, attr)
                if as_form:
                    module = None
            elif ins.opname not in ("POP_TOP", "SWAP", "LOAD_CONST", "LOAD_SMALL_INT"):
                module = None
            if ins.opname in ("LOAD_CONST", "LOAD_SMALL_INT"):
                consts.append(ins.argval)
    return out


def references(code: types.CodeType) -> References:
    """The globals ``code`` loads, the attribute chains on them or on imported modules, and its imports.

    Example::

        >>> def f(x):
        ...     import helpers
        ...     return helpers.scale(x) + getattr(losses, "mse")(x)
        >>> refs = references(f.__code__)
        >>> sorted(refs.chains)
        [(False, ('getattr',), 'used as a value'), (False, ('losses',), 'reached through getattr'), \
(True, ('helpers', 'scale'), 'used as a value')]
    """
    codes = list(all_codes(code))
    out = References(imports=_imports(codes))
    for item in codes:
        chain: list[str] = []
        local, how, previous = False, "used as a value", ""
        for ins in dis.get_instructions(item):
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
                chain.append(ins.argval)
                continue
            if chain:
                out.chains.add((local, tuple(chain), how))
                chain = []
            if ins.opname in ("PUSH_NULL", "CACHE"):
                continue
            how = "reached through getattr" if previous in _DYNAMIC else "used as a value"
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                out.globals.add(ins.argval)
                chain, local = [ins.argval], False
            elif ins.opname.startswith(("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE")):
                loaded = _names(ins.argval)
                out.chains.update((True, (n,), how if i == 0 else "used as a value")
                                  for i, n in enumerate(loaded[:-1]) if n in out.imports)
                if loaded[-1] in out.imports:
                    chain, local = [loaded[-1]], True
                    how = how if len(loaded) == 1 else "used as a value"
            previous = ins.argval if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") else ""
        if chain:
            out.chains.add((local, tuple(chain), how))
    return out


def imported(binding: Binding, package: str | None, load: Callable[[str], Any]) -> Any:
    """The module (or its attribute) an import inside a function binds; ``load(name)`` where not imported yet."""
    name = binding.module
    if binding.level:
        try:
            name = importlib.util.resolve_name("." * binding.level + name, package)
        except (ImportError, ValueError):
            return None
    if binding.loads and binding.loads not in sys.modules:
        load(binding.loads)
    module = sys.modules.get(name) or load(name)
    if module is None or not binding.attr:
        return module
    value = getattr(module, binding.attr, None)
    return value if value is not None else sys.modules.get(f"{name}.{binding.attr}") or load(f"{name}.{binding.attr}")


def resolved(binding: Binding, package: str | None, load: Callable[[str], Any]) -> str:
    """The absolute name of the module an import inside a function imports from."""
    module = getattr(imported(Binding(binding.module, binding.level, ""), package, load), "__name__", None)
    return module or binding.module


def load_user_module(name: str, user_file: Callable[[str], bool]) -> Any:
    """Import module ``name``, which a function imports when it runs, if it is the user's (so its code is
    known before the run; the run imports it anyway); else ``None``."""
    try:
        top = name.split(".")[0]
        if top == "lightning_critical" or top in sys.stdlib_module_names or top in sys.builtin_module_names:
            return None
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not os.path.isfile(spec.origin) or not user_file(spec.origin):
            return None
        return importlib.import_module(name)
    except Exception:  # the run itself meets (and reports) the import's error
        return None

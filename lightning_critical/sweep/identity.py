"""What a sweep's results depend on besides its arguments: the user's code and the library versions.

A sweep's identity (:meth:`~lightning_critical.sweep.spec.SweepSpec.describe`) names its
factories, deficit, Trainer arguments and metrics. This module adds what those names hide:

* :func:`code_digest`: a digest of every function, class and simple module constant of the
  user's own modules that the sweep runs, found by following the factories, the classes they
  build (their methods and user base classes) and the globals those read, recursively. "User
  module" means neither the standard library, nor site-packages / dist-packages, nor this
  package (covered by its version). Each function is hashed from its syntax tree with
  docstrings removed, so docstrings, comments and formatting do not count; where no source is
  available (an interactive session, generated code) its bytecode minus the docstring is
  hashed instead, and the entry says ``bytecode:``.
* :func:`versions`: torch, the Lightning namespace in use, numpy and this package.
* :func:`changes`: what differs between two descriptions, readably
  (``code.model: mymodule:Net.training_step changed``, ``versions: torch 2.12.0 -> 2.13.0``).

Pure Python (``inspect``, ``ast``, ``dis``, ``hashlib``); imports neither Lightning nor torch.
The source hashed is the file on disk: after editing a module, reload it before rerunning.
"""

from __future__ import annotations

import ast
import copy
import dis
import functools
import hashlib
import importlib.metadata
import inspect
import json
import linecache
import os
import re
import sys
import sysconfig
import textwrap
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

MAX_DEPTH = 8
"""References followed from a factory (factory -> class -> method -> helper -> ...)."""
MAX_ENTRIES = 400
"""Entries per role; beyond that the digest says it was truncated."""
_MAX_ITEMS = 200  # elements of one container looked at for code
_PACKAGE = "lightning_critical"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    top = name.split(".")[0]
    if top == _PACKAGE or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    file = getattr(sys.modules.get(name), "__file__", None)
    return True if file is None else _user_file(file)  # no file: __main__ of a session, exec'd code


def _module_of(obj: Any) -> str | None:
    if isinstance(obj, types.FunctionType):
        return obj.__globals__.get("__name__") or obj.__module__
    return getattr(obj, "__module__", None)


# -- normalised code of one function or class ------------------------------------------------
def _strip_docstrings(node: ast.AST) -> ast.AST:
    for item in ast.walk(node):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = item.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                item.body = body[1:] or [ast.Pass()]
    return node


def _parse_block(lines: list[str]) -> ast.stmt | None:
    """The first statement of a source block cut out of a file (indented or not)."""
    text = "".join(lines)
    try:
        if lines and lines[0][:1] in (" ", "\t"):  # a method or nested def: parse inside a block
            return ast.parse("if True:\n" + text).body[0].body[0]  # type: ignore[attr-defined]
        tree = ast.parse(textwrap.dedent(text))
    except (SyntaxError, ValueError, IndexError):
        return None
    return tree.body[0] if tree.body else None


_FILES: dict[str, tuple[str, ast.Module]] = {}


def _file_tree(filename: str) -> ast.Module | None:
    linecache.checkcache(filename)
    text = "".join(linecache.getlines(filename))
    if not text:
        return None
    cached = _FILES.get(filename)
    if cached is not None and cached[0] == text:
        return cached[1]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    _FILES[filename] = (text, tree)
    return tree


def _lambda_node(code: types.CodeType) -> ast.AST | None:
    tree = _file_tree(code.co_filename)
    if tree is None:
        return None
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda) and n.lineno == code.co_firstlineno]
    positions = getattr(code, "co_positions", None)  # Python >= 3.11
    if len(found) > 1 and positions is not None:  # several lambdas on one line: the one holding the code's start
        start = next(((line, col) for line, end_line, col, end in positions()
                      if None not in (line, col) and (end_line, end) != (line, col)), None)  # not RESUME's (0, 0)
        found = [n for n in found if start is not None and _span_holds(n, start)]
    return found[0] if len(found) == 1 else None


def _span_holds(node: ast.AST, position: tuple[int, int]) -> bool:
    first = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    last = (node.end_lineno or node.lineno, node.end_col_offset or 0)  # type: ignore[attr-defined]
    return first <= position <= last


def _argument_names(node: ast.AST) -> list[str]:
    args: ast.arguments = node.args  # type: ignore[attr-defined]
    names = [a.arg for a in args.posonlyargs + args.args]
    names += [args.vararg.arg] if args.vararg else []
    names += [a.arg for a in args.kwonlyargs]
    return names + ([args.kwarg.arg] if args.kwarg else [])


def _code_arguments(code: types.CodeType) -> list[str]:
    n = code.co_argcount + code.co_kwonlyargcount
    n += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    names = list(code.co_varnames[:n])
    if code.co_flags & inspect.CO_VARARGS:  # the code keeps *args after the keyword-only names; the tree before
        star = names.pop(code.co_argcount + code.co_kwonlyargcount)
        names.insert(code.co_argcount, star)
    return names


def _function_node(fn: types.FunctionType) -> ast.AST | None:
    """The syntax tree of ``fn``, or ``None`` when its source is missing or no longer matches it."""
    code = fn.__code__
    if fn.__name__ == "<lambda>":
        node = _lambda_node(code)
    else:
        try:
            node = _parse_block(inspect.getsourcelines(fn)[0])
        except (OSError, TypeError):
            return None
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name != fn.__name__:
            return None
    # a file edited since the function was defined has other lines there: compare the signature
    return node if node is not None and _argument_names(node) == _code_arguments(code) else None


def _skip_first_const(code: types.CodeType) -> bool:
    """Whether ``co_consts[0]`` is a function's docstring slot (the docstring, or ``None`` without one)."""
    if sys.version_info >= (3, 14):
        return bool(code.co_flags & 0x4000000)  # CO_HAS_DOCSTRING
    return (code.co_name not in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<module>")
            and bool(code.co_flags & inspect.CO_NEWLOCALS) and bool(code.co_consts)
            and (code.co_consts[0] is None or isinstance(code.co_consts[0], str)))


def _bytecode(code: types.CodeType) -> Any:
    consts = list(code.co_consts[1:] if _skip_first_const(code) else code.co_consts)
    return [code.co_code.hex(), [_bytecode(c) if inspect.iscode(c) else _constant(c) for c in consts],
            list(code.co_names), list(code.co_varnames), list(code.co_freevars)]


def _constant(value: Any) -> Any:
    if isinstance(value, _SIMPLE):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [_constant(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return sorted(([_constant(k), _constant(v)] for k, v in value.items()), key=repr)
    return f"<{type(value).__qualname__}>"


def _values(fn: types.FunctionType) -> Any:
    """What ``fn`` carries besides its code: defaults and simple closure values."""
    closure = [_constant(c.cell_contents) if _is_value(c.cell_contents) else None
               for c in (fn.__closure__ or ()) if _cell_filled(c)]
    return [_constant(fn.__defaults__ or ()), _constant(fn.__kwdefaults__ or {}), closure]


def _cell_filled(cell: Any) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return False
    return True


def function_digest(fn: Any) -> str:
    """``ast:<hash>`` of a function's syntax tree without docstrings (``bytecode:<hash>`` without source).

    Example::

        >>> def f(x):
        ...     "Doubles."
        ...     return 2 * x  # a comment
        >>> def g(x): return 2 * x
        >>> function_digest(f) == function_digest(g)
        True
    """
    node = _function_node(fn)
    values = json.dumps(_values(fn))
    if node is None:
        return "bytecode:" + _digest(json.dumps(_bytecode(fn.__code__)) + values)
    node = copy.deepcopy(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        node.name = ""  # the entry's key names it; renaming is not a code change
    return "ast:" + _digest(ast.dump(_strip_docstrings(node)) + values)


def _class_node(cls: type) -> ast.ClassDef | None:
    """The class statement of ``cls`` in its module's file, found by qualified name (``None``: not found)."""
    try:
        tree = _file_tree(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError):
        return None
    if tree is None:
        return None
    nodes: list[ast.AST] = [tree]
    parts = cls.__qualname__.split(".")
    for i, part in enumerate(parts):
        if part == "<locals>":
            continue
        deep = i > 0 and parts[i - 1] == "<locals>"  # defined somewhere inside a function's body
        found: list[ast.AST] = []
        for parent in nodes:
            children = ast.walk(parent) if deep else ast.iter_child_nodes(parent)
            found += [n for n in children if n is not parent and getattr(n, "name", None) == part
                      and isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        nodes = found
    first = getattr(cls, "__firstlineno__", None)  # Python >= 3.13
    if first is not None:
        nodes = [n for n in nodes if first in (n.lineno, *(d.lineno for d in n.decorator_list))]  # type: ignore[attr-defined]
    node = nodes[0] if len(nodes) == 1 and isinstance(nodes[0], ast.ClassDef) else None
    # a file edited since the class was defined: every method of the source must exist on the class
    if node is None or any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name not in vars(cls)
                           for s in node.body):
        return None
    return node


def _class_digest(cls: type) -> str:
    """The class statement without its methods (bases, decorators, class attributes) or, without source, those."""
    node = _class_node(cls)
    if node is not None:
        node = copy.copy(node)
        node.body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return "ast:" + _digest(ast.dump(_strip_docstrings(copy.deepcopy(node))))
    attrs = {k: _constant(v) for k, v in vars(cls).items() if _is_value(v) and k != "__doc__"}
    bases = [f"{b.__module__}:{b.__qualname__}" for b in cls.__bases__]
    return "bytecode:" + _digest(json.dumps([bases, sorted(attrs.items())]))


def _is_value(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return len(value) <= 10_000 and all(_is_value(v) for v in value)
    if isinstance(value, dict):
        return len(value) <= 10_000 and all(_is_value(k) and _is_value(v) for k, v in value.items())
    return False


def _array_digest(value: Any) -> str | None:
    """A digest of a module-level tensor or numpy array (duck-typed: no torch import)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().contiguous().numpy()
    if hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):
        return "value:" + hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()[:12]
    return None


# -- what a function refers to -------------------------------------------------------------------
def _references(code: types.CodeType) -> tuple[set[str], set[tuple[str, ...]], set[tuple[str, str]]]:
    """Globals a code object loads, attribute chains on them (``mod.fn``) and names imported inside it."""
    globals_: set[str] = set()
    chains: set[tuple[str, ...]] = set()
    imports: set[tuple[str, str]] = set()
    for item in _codes(code):
        chain: list[str] = []
        module = ""
        for ins in dis.get_instructions(item):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                globals_.add(ins.argval)
                chain = [ins.argval]
                continue
            if ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
                chain.append(ins.argval)
                chains.add(tuple(chain))
                continue
            chain = []
            if ins.opname == "IMPORT_NAME":
                module = ins.argval
                imports.add((module, ""))
            elif ins.opname == "IMPORT_FROM" and module:
                imports.add((module, ins.argval))
    return globals_, chains, imports


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from _codes(const)


# -- the walk ---------------------------------------------------------------------------------
class _Walk:
    """Collects ``{"module:qualname": digest}`` for the user code reachable from some objects."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.seen: dict[int, Any] = {}  # id -> object, kept alive so ids stay unique during the walk
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
        if id(obj) in self.seen or isinstance(obj, _SIMPLE) or inspect.ismodule(obj):
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
        names, chains, imports = _references(fn.__code__)
        scope = fn.__globals__
        for name in sorted(names):
            if name in scope:
                self.visit_global(module or "?", name, scope[name], depth + 1)
        for chain in sorted(chains):  # mymodule.helper(...): follow attributes of user modules
            value: Any = scope.get(chain[0])
            for attr in chain[1:]:
                if not inspect.ismodule(value) or not is_user_module(value.__name__):
                    break
                owner, value = value.__name__, getattr(value, attr, None)
                self.visit_global(owner, attr, value, depth + 1)
        for module_name, attr in sorted(imports):
            imported = sys.modules.get(module_name)
            if imported is not None and attr and is_user_module(module_name):
                self.visit_global(module_name, attr, getattr(imported, attr, None), depth + 1)
        self.visit_all([c.cell_contents for c in (fn.__closure__ or ()) if _cell_filled(c)], depth + 1)
        self.visit_all([*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()], depth + 1)

    def visit_global(self, module: str, name: str, value: Any, depth: int) -> None:
        """A name a user function reads from its module: code is followed, constants are recorded."""
        if value is None or inspect.ismodule(value):
            return
        if isinstance(value, (types.FunctionType, functools.partial)) or inspect.isclass(value):
            self.visit(value, depth)
        elif _is_value(value):
            self.add(f"{module}:{name}", "value:" + _digest(json.dumps(_constant(value))))
        elif (digest := _array_digest(value)) is not None:
            self.add(f"{module}:{name}", digest)
        elif is_user_module(_module_of(type(value))):  # a module-level config object of a user class
            attrs = {k: _constant(v) for k, v in getattr(value, "__dict__", {}).items() if _is_value(v)}
            self.add(f"{module}:{name}", "value:" + _digest(json.dumps(sorted(attrs.items()))))
            self.visit(value, depth)

    def visit_class(self, cls: type, depth: int) -> None:
        module = _module_of(cls)
        if not is_user_module(module):
            return
        self.add(f"{module}:{cls.__qualname__}", _class_digest(cls))
        for value in vars(cls).values():
            if isinstance(value, (types.FunctionType, staticmethod, classmethod, property)) or inspect.isclass(value):
                self.visit(value, depth)
            elif isinstance(value, functools.cached_property):
                self.visit(value.func, depth)
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
    """The versions of torch, the Lightning ``namespace`` in use, numpy and this package.

    Example::

        >>> sorted(versions("pytorch_lightning"))
        ['lightning_critical', 'numpy', 'pytorch_lightning', 'torch']
    """
    return {name: _version(name) for name in ("torch", namespace, "numpy", _PACKAGE)}


# -- what changed ------------------------------------------------------------------------------
def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two sweep descriptions, one readable line per difference.

    Example::

        >>> changes({"versions": {"torch": "2.12"}, "code": {"model": {"m:Net.step": "ast:1"}}},
        ...         {"versions": {"torch": "2.13"}, "code": {"model": {"m:Net.step": "ast:2"}}})
        ['code.model: m:Net.step changed', 'versions: torch 2.12 -> 2.13']
    """
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if key in ("code", "versions") and (before is None or after is None) and before != after:
            out.append(f"{key}: not recorded in the stored sweep (written by an older lightning-critical)"
                       if before is None else f"{key}: not recorded by this call")
        elif key == "code":
            out += _code_changes(before or {}, after or {})
        elif key == "versions":
            old_v, new_v = before or {}, after or {}
            out += [f"versions: {name} {old_v.get(name)} -> {new_v.get(name)}"
                    for name in sorted(set(old_v) | set(new_v)) if old_v.get(name) != new_v.get(name)]
        else:
            out += _differences(before, after, key)
    return out


def _code_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for role in sorted(set(old) | set(new)):
        before, after = old.get(role) or {}, new.get(role) or {}
        for name in sorted(set(before) | set(after)):
            if name not in before:
                out.append(f"code.{role}: {name} added")
            elif name not in after:
                out.append(f"code.{role}: {name} removed")
            elif before[name] != after[name]:
                how = " (source no longer found: hashed from bytecode)" if str(after[name]).startswith("bytecode:") \
                    and not str(before[name]).startswith("bytecode:") else ""
                out.append(f"code.{role}: {name} changed{how}")
    return out


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    if _canonical(old) != _canonical(new):
        return [f"{prefix}: {_canonical(old)[:200]} -> {_canonical(new)[:200]}"]
    return []

"""The normalised code of one function or class: what a sweep's identity hashes (see ``identity``).

Functions are hashed from their syntax tree with docstrings removed (so docstrings, comments
and formatting do not count), plus their defaults and simple closure values; classes from
their ``class`` statement without the methods (bases, decorators, class attributes). Without
source (an interactive session, generated code, a file edited since the import), the bytecode
minus the docstring is hashed instead and the digest says ``bytecode:``. The source is used only
when it compiles to the loaded bytecode, so the digest is always that of the code that runs.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import linecache
import sys
import types
from collections.abc import Iterator
from typing import Any

SIMPLE = (type(None), bool, int, float, complex, str, bytes)


def digest(text: str) -> str:
    """A 12-character hex digest of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _strip_docstrings(node: ast.AST) -> ast.AST:
    for item in ast.walk(node):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = item.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                item.body = body[1:] or [ast.Pass()]  # a function of only a docstring returns None, as `pass`
    return node


class _File:
    """One source file as read now: its syntax tree, its definitions by line, and its code objects compiled."""

    def __init__(self, filename: str, text: str) -> None:
        self.text = text
        self.tree = ast.parse(text, filename)
        _strip_docstrings(self.tree)  # the tree serves hashing only
        self.defs: dict[int, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                lines = {node.lineno} | {d.lineno for d in getattr(node, "decorator_list", [])}
                for line in lines:
                    self.defs.setdefault(line, []).append(node)
        self.codes: dict[tuple[str, int], list[types.CodeType]] = {}
        for code in all_codes(compile(text, filename, "exec", dont_inherit=True)):
            self.codes.setdefault((code.co_name, code.co_firstlineno), []).append(code)

    def loaded(self, code: types.CodeType) -> bool:
        """Whether ``code`` is what this text compiles to at its line (the file was not edited since)."""
        same = [c for c in self.codes.get((code.co_name, code.co_firstlineno), ()) if c.co_code == code.co_code]
        return bool(same) and any(_bytecode(c) == _bytecode(code) for c in same)


def all_codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in it (functions, lambdas, comprehensions, class bodies)."""
    yield code
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from all_codes(const)


_FILES: dict[str, _File] = {}


def _file(filename: str) -> _File | None:
    linecache.checkcache(filename)
    text = "".join(linecache.getlines(filename))
    if not text:
        return None
    cached = _FILES.get(filename)
    if cached is not None and cached.text == text:
        return cached
    try:
        _FILES[filename] = _File(filename, text)
    except (SyntaxError, ValueError):
        return None
    return _FILES[filename]


def _function_node(fn: types.FunctionType) -> ast.AST | None:
    """The syntax tree of ``fn``, or ``None`` when its source is missing or is not the code that runs."""
    code = fn.__code__
    source = _file(code.co_filename)
    if source is None or not source.loaded(code):
        return None
    found: list[ast.AST]
    if fn.__name__ == "<lambda>":
        found = [n for n in source.defs.get(code.co_firstlineno, []) if isinstance(n, ast.Lambda)]
        positions = getattr(code, "co_positions", None)  # Python >= 3.11
        if len(found) > 1 and positions is not None:  # several lambdas on one line: the one holding the code
            start = next(((line, col) for line, end_line, col, end in positions()
                          if None not in (line, col) and (end_line, end) != (line, col)), None)  # not RESUME's
            found = [n for n in found if start is not None and _span_holds(n, start)]
    else:
        found = [n for n in source.defs.get(code.co_firstlineno, [])
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == fn.__name__]
    return found[0] if len(found) == 1 else None


def _span_holds(node: ast.AST, position: tuple[int, int]) -> bool:
    first = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    last = (node.end_lineno or node.lineno, node.end_col_offset or 0)  # type: ignore[attr-defined]
    return first <= position <= last


def _skip_first_const(code: types.CodeType) -> bool:
    """Whether ``co_consts[0]`` is a function's docstring slot (the docstring, or ``None`` without one)."""
    if sys.version_info >= (3, 14):
        return bool(code.co_flags & 0x4000000)  # CO_HAS_DOCSTRING
    return (code.co_name not in ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>", "<module>")
            and bool(code.co_flags & inspect.CO_NEWLOCALS) and bool(code.co_consts)
            and (code.co_consts[0] is None or isinstance(code.co_consts[0], str)))


def _bytecode(code: types.CodeType) -> Any:
    consts = list(code.co_consts[1:] if _skip_first_const(code) else code.co_consts)
    return [code.co_code.hex(), [_bytecode(c) if inspect.iscode(c) else constant(c) for c in consts],
            list(code.co_names), list(code.co_varnames), list(code.co_freevars)]


def constant(value: Any) -> Any:
    if isinstance(value, SIMPLE):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset, set)):
        items = [constant(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return sorted(([constant(k), constant(v)] for k, v in value.items()), key=repr)
    return f"<{type(value).__qualname__}>"


def _values(fn: types.FunctionType) -> Any:
    """What ``fn`` carries besides its code: defaults and simple closure values."""
    closure = [constant(c.cell_contents) if is_value(c.cell_contents) else None
               for c in (fn.__closure__ or ()) if cell_filled(c)]
    return [constant(fn.__defaults__ or ()), constant(fn.__kwdefaults__ or {}), closure]


def cell_filled(cell: Any) -> bool:
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
        return "bytecode:" + digest(json.dumps(_bytecode(fn.__code__)) + values)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # all but the name (the entry's key names it)
        parts: list[ast.AST | None] = [node.args, *node.decorator_list, *node.body, node.returns]
        text = "|".join(ast.dump(p) if p is not None else "" for p in parts)
        return "ast:" + digest(f"{type(node).__name__}|{text}{values}")
    return "ast:" + digest(ast.dump(node) + values)


def _class_node(cls: type) -> ast.ClassDef | None:
    """The class statement of ``cls`` in its module's file, found by qualified name (``None``: not found)."""
    try:
        source = _file(inspect.getsourcefile(cls) or "")
    except (OSError, TypeError):
        return None
    if source is None:
        return None
    nodes: list[ast.AST] = [source.tree]
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
    return node if node is not None and _matches_class(node, cls) else None


def _matches_class(node: ast.ClassDef, cls: type) -> bool:
    """Whether the class statement still describes ``cls`` (its methods exist, its literal attributes agree)."""
    attrs = vars(cls)
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name not in attrs:
            return False
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else \
            stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None else None
        if isinstance(target, ast.Name) and target.id in attrs:
            try:
                literal = ast.literal_eval(stmt.value)  # type: ignore[attr-defined]
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if constant(literal) != constant(attrs[target.id]):
                return False
    return True


def class_digest(cls: type) -> str:
    """The class statement without its methods (bases, decorators, class attributes) or, without source, those."""
    node = _class_node(cls)
    if node is not None:
        body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
        parts = [*node.bases, *node.keywords, *node.decorator_list, *body]
        return "ast:" + digest("|".join(ast.dump(p) for p in parts))
    attrs = {k: constant(v) for k, v in vars(cls).items() if is_value(v) and k != "__doc__"}
    bases = [f"{b.__module__}:{b.__qualname__}" for b in cls.__bases__]
    return "bytecode:" + digest(json.dumps([bases, sorted(attrs.items())]))


def is_value(value: Any) -> bool:
    if isinstance(value, SIMPLE):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return len(value) <= 10_000 and all(is_value(v) for v in value)
    if isinstance(value, dict):
        return len(value) <= 10_000 and all(is_value(k) and is_value(v) for k, v in value.items())
    return False

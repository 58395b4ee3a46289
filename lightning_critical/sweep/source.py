"""The normalised code of one function or class: what a sweep's identity hashes (see ``identity``).

Functions are hashed from their syntax tree with docstrings removed (so docstrings, comments
and formatting do not count), plus their defaults and simple closure values; classes from
their ``class`` statement without the methods (bases, decorators, class attributes). Without
source (an interactive session, generated code, a file edited since the import), the bytecode
minus the docstring is hashed instead and the digest says ``bytecode:``.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import inspect
import json
import linecache
import sys
import textwrap
import types
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
    node = copy.deepcopy(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        node.name = ""  # the entry's key names it; renaming is not a code change
    return "ast:" + digest(ast.dump(_strip_docstrings(node)) + values)


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


def class_digest(cls: type) -> str:
    """The class statement without its methods (bases, decorators, class attributes) or, without source, those."""
    node = _class_node(cls)
    if node is not None:
        node = copy.copy(node)
        node.body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return "ast:" + digest(ast.dump(_strip_docstrings(copy.deepcopy(node))))
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

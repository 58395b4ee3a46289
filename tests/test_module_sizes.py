"""The package's size promises (docs/design.md, "Layout"): one concept per module, so no module
over 400 lines and no function whose body (its docstring left out) runs over 60 lines unless its
docstring says why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_critical"
MAX_MODULE_LINES = 400
MAX_BODY_LINES = 60
REASON = "Long because"  # a function over the limit starts a docstring paragraph with this


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if len(body) > 1 and ast.get_docstring(fn) is not None:
        body = body[1:]
    return (fn.end_lineno or fn.lineno) - body[0].lineno + 1


def long_functions(source: str) -> list[tuple[str, int]]:
    """``(name, body lines)`` of every function over the limit whose docstring gives no reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = _body_lines(node)
            if lines > MAX_BODY_LINES and REASON not in (ast.get_docstring(node) or ""):
                found.append((node.name, lines))
    return found


def test_no_module_is_over_the_limit() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


def test_no_function_is_over_the_limit_without_a_reason() -> None:
    long = {f"{p.relative_to(PACKAGE.parent)}:{name}": n for p in _modules()
            for name, n in long_functions(p.read_text())}
    assert not long, (f"function bodies over {MAX_BODY_LINES} lines without a '{REASON} ...' paragraph in "
                      f"their docstring: {long}")


@pytest.mark.parametrize(("reason", "expected"), [("", [("f", 61)]), (f'"""{REASON} the table is one."""\n    ', [])])
def test_the_function_check_finds_a_long_function(reason: str, expected: list[tuple[str, int]]) -> None:
    source = "def f():\n    " + reason + "\n".join(["x = 1"] * 61).replace("\n", "\n    ") + "\n"
    assert long_functions(source) == expected

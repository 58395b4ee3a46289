"""Print pip constraints that pin every direct dependency to the lowest version pyproject.toml allows.

``python .ci/lowest_constraints.py [extra ...] > lowest.txt`` then ``pip install -e ".[dev]" -c lowest.txt``:
the project's own requirements (and those of the extras named) at their lower bounds (``>=X`` or
``~=X`` gives ``==X``), their dependencies at whatever pip resolves. A requirement without a lower
bound is an error: "tested with the oldest versions pyproject.toml allows" must cover every one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib  # Python >= 3.11: CI runs this with its python3

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
LOWER = re.compile(r"(?:>=|~=)\s*([0-9][^,;\s]*)")


def lowest(requirements: list[str]) -> dict[str, str]:
    """``{name: lowest allowed version}`` for PEP 508 strings such as ``"jsonargparse[signatures]>=4.27"``."""
    pins: dict[str, str] = {}
    for req in requirements:
        name = re.split(r"[\[<>=~!;\s]", req, maxsplit=1)[0]
        match = LOWER.search(req)
        if match is None:
            raise SystemExit(f"{PYPROJECT}: {req!r} has no lower bound (>= or ~=) to test")
        pins[name.lower()] = match.group(1)
    return pins


def main(extras: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for name, version in sorted(lowest(requirements).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""The lines of ``results.jsonl``: strictly valid JSON, non-finite numbers kept, glued lines recovered.

JSON has no NaN or infinity. A record is written with every non-finite number replaced by
``null`` and named in a ``"nonfinite"`` map from its JSON Pointer (RFC 6901: ``/`` between
keys, ``~1`` for a ``/`` inside a key, ``~0`` for ``~``) to ``"nan"``, ``"inf"`` or ``"-inf"``;
reading puts the number back. So any JSON reader can read the file, and this package reads
back exactly what the run measured. Lines written by older versions (bare ``NaN``) still read.

A line that does not parse is a crash mid-write; when an older version glued the next record to
such a fragment, the record at the end of the line is recovered.

Example::

    >>> line = encode_line({"run_id": "r1", "metrics": {"loss": float("nan"), "acc/top-1": float("-inf")}})
    >>> line
    '{"metrics":{"acc/top-1":null,"loss":null},"nonfinite":{"/metrics/acc~1top-1":"-inf","/metrics/loss":"nan"},"run_id":"r1"}'
    >>> decode_line(line)["metrics"]
    {'acc/top-1': -inf, 'loss': nan}
    >>> decode_line('{"run_id": "r0", "metr' + line)["run_id"]  # a torn fragment glued to a whole line
    'r1'
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

NONFINITE = "nonfinite"
"""The key of the map from JSON Pointer to ``"nan"`` / ``"inf"`` / ``"-inf"`` in a stored line."""

_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _plain(value: Any, pointer: str, nonfinite: dict[str, str]) -> Any:
    """``value`` as JSON values, numbers as Python numbers, non-finite ones as ``None`` (noted in ``nonfinite``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        nonfinite[pointer] = "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{pointer}/{_escape(str(k))}", nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{pointer}/{i}", nonfinite) for i, v in enumerate(value)]
    return str(value)  # anything else (a path, an exception) as its text, as the store always did


def encode_line(record: Mapping[str, Any]) -> str:
    """One line of strict JSON (sorted keys) for ``record``; non-finite numbers as ``null`` plus ``"nonfinite"``."""
    nonfinite: dict[str, str] = {}
    clean = _plain({k: v for k, v in record.items() if k != NONFINITE}, "", nonfinite)
    if nonfinite:
        clean[NONFINITE] = nonfinite
    return json.dumps(clean, sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_line(line: bytes | str) -> dict[str, Any] | None:
    """The dict stored on ``line`` with its non-finite numbers restored, or ``None`` if there is none."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        return None
    try:
        value = json.loads(text)  # also reads the bare NaN of older versions
    except ValueError:
        value = _recover(text)
    if not isinstance(value, dict):
        return None
    marks = value.pop(NONFINITE, None)
    if isinstance(marks, dict):
        for pointer, name in marks.items():
            _put(value, str(pointer), _NAMES.get(name, math.nan))
    return value


def _recover(text: str) -> Any:
    """The whole record at the end of a line that starts with a fragment (glued by older versions)."""
    start = text.find('{"', 1)
    while start > 0:
        try:
            value = json.loads(text[start:])
        except ValueError:
            start = text.find('{"', start + 1)
            continue
        if isinstance(value, dict) and ("run_id" in value or isinstance(value.get("plan"), dict)):
            return value
        start = text.find('{"', start + 1)
    return None


def _put(root: Any, pointer: str, number: float) -> None:
    tokens = [_unescape(t) for t in pointer.split("/")[1:]]
    node = root
    try:
        for token in tokens[:-1]:
            node = node[int(token)] if isinstance(node, list) else node[token]
        last = tokens[-1]
        if isinstance(node, list):
            node[int(last)] = number
        elif isinstance(node, dict):
            node[last] = number
    except (KeyError, IndexError, ValueError, TypeError):
        pass  # a mark that points nowhere (hand-edited file): the value stays null

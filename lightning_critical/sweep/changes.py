"""What differs between two sweep descriptions, one readable line per difference.

A sweep's description (:meth:`~lightning_critical.sweep.spec.SweepSpec.describe`, stored in
``<out>/sweep.json``) holds its arguments, the digests of the user code it runs
(:func:`~lightning_critical.sweep.identity.code_digest`) and the library versions. When a call
finds another description in ``out``, the store shows the user what changed
(``code.model: mymodule:Net.training_step changed``, ``versions: torch 2.12.0 -> 2.13.0``,
``trainer.max_epochs: 2 -> 3``) and ``resume="reuse"`` may cross only code and version changes
(:func:`changes_besides_code`). Pure Python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


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


def changes_besides_code(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two descriptions other than code and versions (what ``resume="reuse"`` may not cross).

    Example::

        >>> changes_besides_code({"trainer": {"max_epochs": 2}, "model": {"function": "m:f", "code": "1"}},
        ...                      {"trainer": {"max_epochs": 3}, "model": {"function": "m:f", "code": "2"}})
        ['trainer.max_epochs: 2 -> 3']
    """
    return changes(_without_code(old), _without_code(new))


def _without_code(value: Any, top: bool = True) -> Any:
    if isinstance(value, Mapping):
        drop = {"code", "versions"} if top else ({"code"} if "function" in value else set())
        return {k: _without_code(v, False) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_without_code(v, False) for v in value]
    return value


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
                how = (" (hashed from the loaded bytecode: its source is missing or differs from it; after editing "
                       "a file, reload the module)") if str(after[name]).startswith("bytecode:") \
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

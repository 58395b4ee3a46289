"""A sweep config's mistake in one line: jsonargparse's nested report cut to the key, the value and what is valid.

jsonargparse explains a bad value over several lines (every member of a union, the value's
repr, nested parser keys). ``lightning-critical sweep`` prints one line instead: the full key
(``study.model.init_args.chanels``), what is wrong, and the valid choices (the keys of a
section, the arguments of a class, the classes of a module).

Example::

    >>> from lightning_critical.sweep.study import Study
    >>> one_line(ValueError("Group 'study' does not accept option 'window'"), {"study": Study})
    "study.window is not a key of study; valid keys: ['model', 'datamodule', 'deficit', 'windows', ...]"
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Any

_GROUP = re.compile(r"Group '([\w.]+)' does not accept option '([\w.]+)'")
_OPTION = re.compile(r"Option '([\w.]+)' is not accepted")
_KEY = re.compile(r'Parser key "([\w.]+)":')
_CLASS_PATH = re.compile(r"class_path='([\w.]+)'")
_TYPE = re.compile(r"(?:an? )?<class '(?:[\w.]+\.)?(\w+)'>")
_GOT = re.compile(r"\.? ?Got value: (.*)$")


class ConfigError(ValueError):
    """A sweep config that cannot be read; the message is one line naming the key and what is valid."""


def _listed(names: list[str], limit: int = 4) -> str:
    shown = [repr(n) for n in names[:limit]] + (["..."] if len(names) > limit else [])
    return f"[{', '.join(shown)}]"


def one_line(err: BaseException, groups: dict[str, type]) -> str:
    """jsonargparse's error ``err`` about a config of ``groups`` (section name -> dataclass), as one line."""
    text = str(err)
    group = _GROUP.search(text)
    if group:
        section, key = group.groups()
        valid = [f.name for f in dataclasses.fields(groups[section])] if section in groups else []
        return f"{section}.{key} is not a key of {section}; valid keys: {_listed(valid)}"
    key = _KEY.search(text)
    if key is None:
        option = _OPTION.search(text)
        if option:
            section = option.group(1).split(".")[0]
            return f"{section} is not a section of the config; valid sections: {sorted(groups)}"
        lines = [line.strip().replace('"<unicode string>"', "the config") for line in text.splitlines()]
        return "; ".join(line for line in lines if line) or repr(err)  # e.g. YAML syntax: what and where
    return _about_key(key.group(1), text[key.end():])


def _about_key(key: str, body: str) -> str:
    """The reason for ``key`` from the rest of jsonargparse's report (``body``), nested keys followed."""
    bullets = [line.strip()[2:] for line in body.splitlines() if line.strip().startswith("- ")]
    reason = bullets[0] if bullets else " ".join(line.strip() for line in body.splitlines() if line.strip())
    reason = re.sub(r"^Type .*? expects a function or a callable class: ", "", reason)
    class_path = _CLASS_PATH.search(body)
    option = _OPTION.search(reason)
    if option and class_path:
        return _unknown_argument(key, option.group(1), class_path.group(1))
    if ("No module named" in reason or "has no attribute" in reason) and class_path:
        return _not_importable(key, class_path.group(1), _GOT.sub("", reason))
    nested = _KEY.search(reason)
    if nested:
        inner = reason[nested.end():].split(". Got value: Namespace")[0]
        return _about_key(f"{key}.init_args.{nested.group(1)}", inner)
    got = _GOT.search(reason)
    value = f"={got.group(1).rstrip('.')}" if got else ""
    reason = _TYPE.sub(r"\1", _GOT.sub("", reason)).strip().rstrip(".")
    return f"{key}{value} is not valid: {reason[:1].lower()}{reason[1:]}"


def _unknown_argument(key: str, name: str, class_path: str) -> str:
    try:
        module, _, attr = class_path.rpartition(".")
        params = [p for p in inspect.signature(getattr(importlib.import_module(module), attr)).parameters
                  if p not in ("self", "args", "kwargs") and not (key.startswith("study.deficit") and p == "window")]
    except (ImportError, AttributeError, TypeError, ValueError):
        params = []
    why = " (the sweep gives each run's window)" if name == "window" and key.startswith("study.deficit") else ""
    return f"{key}.init_args.{name} is not an argument of {class_path}{why}; its arguments: {params}"


def _not_importable(key: str, class_path: str, reason: str) -> str:
    module_name, _, _ = class_path.rpartition(".")
    hint = "a dotted path package.module.Class, importable from the current directory"
    try:
        module: Any = importlib.import_module(module_name)
        classes = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_"))
        hint = f"classes of {module_name}: {_listed(classes, 8)}"
    except ImportError:
        pass
    return f"{key}.class_path={class_path!r} cannot be imported ({reason.strip().rstrip('.')}); valid: {hint}"


"""Random generator objects reachable from a run's parts, by stable path, and their states as tensors.

A research model, datamodule, loader or callback often keeps its own generator
(``torch.Generator``, ``numpy.random.Generator`` / ``BitGenerator`` / ``RandomState``,
``random.Random``) rather than drawing from the global ones. :func:`find` walks a run's parts
(attributes, submodules, list / tuple / dict items, a few levels deep; not parameter tensors,
not the ``Trainer``) and names each generator by the path it is first reached by, e.g.
``model.noise.gen`` or ``train_dataloader.generator``; equal code gives equal paths in every
process. :func:`state` stores a generator's state as tensors and plain values (so it survives
``torch.load(..., weights_only=True)``); :func:`set_state` puts it back.

Example::

    >>> import numpy as np, torch
    >>> class Aug:
    ...     def __init__(self):
    ...         self.rng = np.random.default_rng(0)
    ...         self.gens = [torch.Generator().manual_seed(1)]
    >>> found = find({"datamodule": Aug()})
    >>> sorted(found)
    ['datamodule.gens[0]', 'datamodule.rng']
    >>> saved = {p: state(g) for p, g in found.items()}
    >>> a = found["datamodule.rng"].random()
    >>> set_state(found["datamodule.rng"], saved["datamodule.rng"])
    >>> found["datamodule.rng"].random() == a
    True
"""

from __future__ import annotations

import random
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lightning_critical._namespace import pl

MAX_DEPTH = 5
"""Attribute hops followed from a root (submodules of an ``nn.Module`` do not count)."""
MAX_ITEMS = 64
"""Longer lists, tuples and dicts are not looked into (a dataset's list of file names is no place for a generator)."""

_MODULE_SKIP = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_trainer", "_fabric"})
_LEAVES = (str, bytes, int, float, bool, complex, torch.Tensor, np.ndarray, type, types.ModuleType,
           types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def is_rng(obj: Any) -> bool:
    """Whether ``obj`` is a random generator object with a state (``random.SystemRandom`` has none)."""
    if isinstance(obj, random.SystemRandom):
        return False
    return isinstance(obj, (torch.Generator, np.random.Generator, np.random.BitGenerator, np.random.RandomState,
                            random.Random))


def find(roots: Mapping[str, Any]) -> dict[str, Any]:
    """Every generator reachable from ``roots`` (``{name: object}``, walked in order), by its first path."""
    found: dict[str, Any] = {}
    seen: set[int] = set()
    for name, root in roots.items():
        _walk(root, name, 0, found, seen)
    return found


def _walk(obj: Any, path: str, depth: int, found: dict[str, Any], seen: set[int]) -> None:
    if obj is None or isinstance(obj, _LEAVES) or id(obj) in seen:
        return
    seen.add(id(obj))
    if is_rng(obj):
        found[path] = obj
        return
    if depth > MAX_DEPTH or isinstance(obj, pl.Trainer) or hasattr(type(obj), "__next__"):
        return  # iterators (a loader's live iterator, generator functions) are not state we can carry
    if isinstance(obj, torch.nn.Module):
        for key, value in vars(obj).items():
            if key not in _MODULE_SKIP and "hook" not in key:
                _walk(value, f"{path}.{key}", depth + 1, found, seen)
        for key, child in obj._modules.items():
            _walk(child, f"{path}.{key}", depth, found, seen)
        return
    if isinstance(obj, Mapping):
        if len(obj) <= MAX_ITEMS:
            for key, value in obj.items():
                _walk(value, f"{path}[{key!r}]", depth + 1, found, seen)
        return
    if isinstance(obj, (list, tuple)):
        if len(obj) <= MAX_ITEMS:
            for i, value in enumerate(obj):
                _walk(value, f"{path}[{i}]", depth + 1, found, seen)
        return
    try:  # only the instance dictionary: no property or __getattr__ of user code runs
        attrs = object.__getattribute__(obj, "__dict__")
    except (AttributeError, TypeError):
        return
    if isinstance(attrs, dict):
        for key, value in list(attrs.items()):
            _walk(value, f"{path}.{key}", depth + 1, found, seen)


def state(gen: Any) -> dict[str, Any]:
    """The state of generator ``gen`` as tensors and plain values."""
    if isinstance(gen, torch.Generator):
        return {"kind": "torch", "state": gen.get_state()}
    if isinstance(gen, np.random.RandomState):
        return {"kind": "RandomState", "state": _pack(gen.get_state(legacy=False))}
    if isinstance(gen, np.random.Generator):
        return {"kind": "Generator", "state": _pack(gen.bit_generator.state)}
    if isinstance(gen, np.random.BitGenerator):
        return {"kind": "BitGenerator", "state": _pack(gen.state)}
    version, internal, gauss = gen.getstate()
    return {"kind": "random", "version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": None if gauss is None else float(gauss)}


def set_state(gen: Any, saved: Mapping[str, Any]) -> None:
    """Put ``saved`` (from :func:`state`) back into ``gen``; a generator of another kind is a ``TypeError``."""
    kind = saved["kind"]
    if kind != state_kind(gen):
        raise TypeError(f"a {kind} state cannot be put into a {type(gen).__name__}")
    if kind == "torch":
        gen.set_state(saved["state"])
    elif kind == "RandomState":
        gen.set_state(_unpack(saved["state"]))
    elif kind == "Generator":
        gen.bit_generator.state = _unpack(saved["state"])
    elif kind == "BitGenerator":
        gen.state = _unpack(saved["state"])
    else:
        gen.setstate((saved["version"], tuple(int(v) for v in saved["internal"].tolist()), saved["gauss"]))


def state_kind(gen: Any) -> str:
    if isinstance(gen, torch.Generator):
        return "torch"
    if isinstance(gen, np.random.RandomState):
        return "RandomState"
    if isinstance(gen, np.random.Generator):
        return "Generator"
    if isinstance(gen, np.random.BitGenerator):
        return "BitGenerator"
    return "random"


def same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two saved states are equal."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)):
                return False
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            if not same_state(x, y):
                return False
        elif x != y:
            return False
    return True


def _pack(value: Any) -> Any:
    # numpy states hold arrays and 128-bit integers: tensors and decimal strings load with weights_only=True
    if isinstance(value, Mapping):
        return {str(k): _pack(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__array__": torch.from_numpy(value.astype(np.int64)), "dtype": str(value.dtype)}
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return {"__int__": str(int(value))}
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, Mapping):
        if "__array__" in value:
            return value["__array__"].numpy().astype(value["dtype"])
        if "__int__" in value:
            return int(value["__int__"])
        return {k: _unpack(v) for k, v in value.items()}
    return value

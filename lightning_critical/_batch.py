"""Reading and replacing the input and the target of a training batch, whatever its structure.

One place knows how batches look, so deficits and monitors agree on it (plain torch, no
Lightning). A batch may be

* a tensor: it is the input; it holds no target;
* a tuple or list (namedtuples included): elements by index. The input defaults to element
  0 and the target to the **last** element, so ``(xa, xb, y)`` finds ``y``;
* a mapping: ``dict`` and any :class:`collections.abc.Mapping` (``collections.UserDict``, a
  tokenizer's ``BatchEncoding``, ...): elements by key. The input defaults to the first key
  present among :data:`INPUT_KEYS`, the target to the first among :data:`TARGET_KEYS`;
* a dataclass instance: elements by field name, with the same defaults as mappings.

Anything else needs explicit keys in a callable (``InputDeficit`` accepts ``batch -> batch``,
``FisherMonitor`` accepts ``inputs=batch -> model arguments``).

How a batch becomes model arguments (``BatchSpec``) lives in :mod:`lightning_critical._batch_spec`.

Replacing an element returns a new batch of the same type and never modifies the original
(the dataset may hold the very tensors of the batch). Every look-up error is a ``ValueError``
that names the argument (``input_key`` / ``target_key``) and lists what the batch holds.

Example::

    >>> import torch
    >>> batch = (torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1]))
    >>> key = locate(batch, "target")             # the last element, not xb
    >>> key, get(batch, key, "target").tolist()
    (2, [0, 1])
    >>> new = replace(batch, key, torch.tensor([1, 0]))
    >>> new[2].tolist(), batch[2].tolist()      # a new batch; the original is untouched
    ([1, 0], [0, 1])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from torch import Tensor

INPUT_KEYS: tuple[str, ...] = ("input", "inputs", "x", "image", "images", "pixel_values", "input_ids")
TARGET_KEYS: tuple[str, ...] = ("y", "label", "labels", "target", "targets")
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "input": ("input_key", INPUT_KEYS),
    "target": ("target_key", TARGET_KEYS),
}

Key = int | str | None
InputsFn = Callable[[Any], Any]


# -- describing a batch (for error messages) ------------------------------------------------
def _short(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}"
    return type(value).__name__


def describe(batch: Any) -> str:
    """What a batch holds, in one line (used by every error message here).

    Example::

        >>> import torch
        >>> describe((torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)))
        'a tuple of 2 elements: [0] tensor (4, 2) float32, [1] tensor (4,) int64'
        >>> describe({"x": torch.zeros(3)})
        "a dict with keys ['x']: 'x' tensor (3,) float32"
    """
    if isinstance(batch, Tensor):
        return f"a single {_short(batch)}"
    if isinstance(batch, Mapping):
        items = ", ".join(f"{k!r} {_short(v)}" for k, v in batch.items())
        return f"a {type(batch).__name__} with keys {list(batch)}: {items}"
    if isinstance(batch, (tuple, list)):
        items = ", ".join(f"[{i}] {_short(v)}" for i, v in enumerate(batch))
        return f"a {type(batch).__name__} of {len(batch)} elements: {items}"
    if is_dataclass_batch(batch):
        items = ", ".join(f"{f.name!r} {_short(getattr(batch, f.name))}" for f in dataclasses.fields(batch))
        return f"a {type(batch).__name__} (dataclass) with fields {items}"
    return f"a {type(batch).__name__}"


def is_dataclass_batch(batch: Any) -> bool:
    return dataclasses.is_dataclass(batch) and not isinstance(batch, type)


def field_names(batch: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(batch)]


# -- finding an element ------------------------------------------------------------------------
def locate(batch: Any, role: str, key: Key = None, owner: str = "lightning_critical") -> Key:
    """The key of the batch's ``role`` (``"input"`` or ``"target"``) element; ``None`` means the batch itself.

    ``key`` is what the user gave (``None`` for the default look-up described in the module
    docstring). Negative tuple indices are returned as non-negative ones.

    Raises:
        ValueError: the element cannot be found; the message lists what the batch holds.

    Example::

        >>> import torch
        >>> locate((torch.zeros(1), torch.zeros(1), torch.zeros(1)), "target")
        2
        >>> locate({"image": torch.zeros(1), "label": torch.zeros(1)}, "input")
        'image'
    """
    arg, names = ROLES[role]
    if isinstance(batch, Tensor):
        if role == "target":
            raise ValueError(f"{owner}: the batch is {describe(batch)}, which holds no target; "
                             f"return (inputs, target) from the dataloader, or set {arg} on a batch that has one.")
        if key is not None:
            raise ValueError(f"{owner}: {arg}={key!r} cannot index the batch, which is {describe(batch)} "
                             f"and is itself the input; leave {arg}=None.")
        return None
    if isinstance(batch, (tuple, list)):
        if key is None:
            if role == "target" and len(batch) < 2:
                raise ValueError(f"{owner}: the batch is {describe(batch)}; no element is left for the target. "
                                 f"Pass {arg}=<index>.")
            if not batch:
                raise ValueError(f"{owner}: the batch is an empty {type(batch).__name__}; it holds no {role}.")
            return 0 if role == "input" else len(batch) - 1
        if isinstance(key, bool) or not isinstance(key, int) or not -len(batch) <= key < len(batch):
            raise ValueError(f"{owner}: {arg}={key!r} is not an index of the batch, which is {describe(batch)}. "
                             f"Pass {arg}=<an index from 0 to {len(batch) - 1}>.")
        return key % len(batch)
    if isinstance(batch, Mapping):
        return _by_name(batch, list(batch), role, key, owner, "keys")
    if is_dataclass_batch(batch):
        return _by_name(batch, field_names(batch), role, key, owner, "fields")
    raise ValueError(f"{owner} cannot find the {role} in {describe(batch)}: batches must be tensors, tuples, lists, "
                     "mappings or dataclasses; use a callable for other types.")


def _by_name(batch: Any, keys: list[Any], role: str, key: Key, owner: str, what: str) -> Key:
    arg, names = ROLES[role]
    if key is None:
        found = next((k for k in names if k in keys), None)
        if found is None:
            raise ValueError(
                f"{owner}: none of the default {role} {what} {list(names)} is in the batch; its {what} are "
                f"{keys} ({describe(batch)}). Pass {arg}=<key>."
            )
        return found
    if key not in keys:
        raise ValueError(f"{owner}: {arg}={key!r} is not in the batch; its {what} are {keys} ({describe(batch)}). "
                         f"Pass {arg}=<one of them>.")
    return key


def get(batch: Any, key: Key, role: str = "input", owner: str = "lightning_critical") -> Tensor:
    """The tensor at ``key`` (from :func:`locate`); ``None`` is the batch itself.

    Raises:
        ValueError: the element is not a tensor.
    """
    if key is None:
        value = batch
    elif is_dataclass_batch(batch) and not isinstance(batch, Mapping):
        value = getattr(batch, key)  # type: ignore[arg-type]  # locate() gives a dataclass a field name
    else:
        value = batch[key]
    if not isinstance(value, Tensor):
        raise ValueError(f"{owner}: the batch's {role} (element {key!r}) is a {type(value).__name__}, not a tensor; "
                         f"the batch is {describe(batch)}. Pass {ROLES[role][0]}=<the key of a tensor>.")
    return value


# -- replacing an element --------------------------------------------------------------------
def replace(batch: Any, key: Key, value: Any) -> Any:
    """A copy of ``batch`` with the element at ``key`` set to ``value``; ``batch`` is not modified.

    The copy has the batch's type (namedtuples, list and mapping subclasses included); only the
    container is copied, the other elements are shared.

    Raises:
        TypeError: a mapping type that cannot be copied without sharing its storage, or an
            immutable mapping that cannot be rebuilt from a dict.

    Example::

        >>> from collections import UserDict
        >>> b = UserDict({"x": 1, "y": 2})
        >>> replace(b, "y", 3), b
        ({'x': 1, 'y': 3}, {'x': 1, 'y': 2})
    """
    if key is None:
        return value
    if isinstance(batch, tuple):
        if hasattr(batch, "_fields") and hasattr(batch, "_replace"):
            return batch._replace(**{batch._fields[key]: value})
        items = list(batch)
        items[key] = value  # type: ignore[index]  # locate() gives a sequence an int key
        return type(batch)(items)
    if isinstance(batch, list):
        out_list = copy.copy(batch)
        out_list[key] = value  # type: ignore[index]  # locate() gives a sequence an int key
        return out_list
    if isinstance(batch, MutableMapping):
        old = batch[key]
        out = copy.copy(batch)
        out[key] = value
        if batch[key] is not old:  # a shallow copy that shares its storage: undo, refuse
            batch[key] = old
            raise TypeError(f"cannot replace {key!r} in a {type(batch).__name__} without modifying the original batch "
                            "(its copy shares storage); give the transform as a callable batch -> batch instead.")
        return out
    if isinstance(batch, Mapping):
        try:
            # a concrete Mapping subclass; one that cannot be built from a dict raises TypeError, caught below
            return type(batch)({**batch, key: value})  # type: ignore[call-arg]
        except TypeError as err:
            raise TypeError(f"cannot rebuild a {type(batch).__name__} with {key!r} replaced ({err}); "
                            "give the transform as a callable batch -> batch instead.") from err
    if is_dataclass_batch(batch):
        return dataclasses.replace(batch, **{key: value})  # type: ignore[arg-type]  # locate(): a field name
    raise TypeError(f"cannot replace an element of {describe(batch)}.")

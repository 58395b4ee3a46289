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

Model arguments (:meth:`BatchSpec.model_inputs`), from the positional arguments the model's
``forward`` requires (:func:`forward_arguments`): a mapping / dataclass batch that holds
them by name gives them by name; otherwise one argument is the input, and ``k >= 2`` are the
first ``k`` elements of a tuple / list batch other than the target, so ``forward(x1, x2)``
trained on ``(x1, x2, y)`` batches needs no setting. Anything else: ``inputs=batch -> tuple``.

Replacing an element returns a new batch of the same type and never modifies the original
(the dataset may hold the very tensors of the batch). Every look-up error is a ``ValueError``
that names the argument (``input_key`` / ``target_key``) and lists what the batch holds.

Example::

    >>> import torch
    >>> spec = BatchSpec(owner="InputDeficit")
    >>> batch = (torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0, 1]))
    >>> spec.target(batch).tolist()             # the last element, not xb
    [0, 1]
    >>> new = spec.with_target(batch, torch.tensor([1, 0]))
    >>> new[2].tolist(), batch[2].tolist()      # a new batch; the original is untouched
    ([1, 0], [0, 1])
    >>> spec.model_inputs({"x": torch.zeros(2, 3), "y": torch.ones(2)})[0].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from torch import Tensor

from lightning_critical._checks import check_key

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
    if _is_dataclass(batch):
        items = ", ".join(f"{f.name!r} {_short(getattr(batch, f.name))}" for f in dataclasses.fields(batch))
        return f"a {type(batch).__name__} (dataclass) with fields {items}"
    return f"a {type(batch).__name__}"


def _is_dataclass(batch: Any) -> bool:
    return dataclasses.is_dataclass(batch) and not isinstance(batch, type)


def _field_names(batch: Any) -> list[str]:
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
    if _is_dataclass(batch):
        return _by_name(batch, _field_names(batch), role, key, owner, "fields")
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
    elif _is_dataclass(batch) and not isinstance(batch, Mapping):
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
    if _is_dataclass(batch):
        return dataclasses.replace(batch, **{key: value})  # type: ignore[arg-type]  # locate(): a field name
    raise TypeError(f"cannot replace an element of {describe(batch)}.")


def forward_arguments(module: Any) -> tuple[str, ...] | None:
    """The names of the positional arguments ``module.forward`` requires (``None`` when unknown).

    Parameters with defaults, ``*args`` and keyword-only parameters do not count; a forward
    that takes only ``*args`` (such as ``LightningModule.forward`` when not overridden), or
    whose signature cannot be read, gives ``None``.

    Example::

        >>> from torch import nn
        >>> class TwoInputs(nn.Module):
        ...     def forward(self, x1, x2, mask=None):
        ...         return x1 + x2
        >>> forward_arguments(TwoInputs()), forward_arguments(nn.Linear(2, 2))
        (('x1', 'x2'), ('input',))
    """
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = tuple(p.name for p in params if p.kind in positional and p.default is inspect.Parameter.empty)
    return names or None


# -- one object describing how a user's batches look -------------------------------------------
class BatchSpec:
    """Where the input and the target sit in a batch, and how a batch becomes model arguments.

    The one batch convention of the package (public as ``lc.BatchSpec``): ``InputDeficit``
    finds the element it corrupts with it (``input_key`` / ``target_key``), ``FisherMonitor``
    builds the model's arguments with it (``input_key`` or ``inputs``); the sweep passes
    batches through untouched. Use it in your own transforms and callbacks to read batches
    the same way. Defaults (see the module docstring): the input is the batch itself (a
    tensor), element 0 (tuple / list) or the first of :data:`INPUT_KEYS` present (mapping,
    dataclass); the target is the **last** element, or the first of :data:`TARGET_KEYS`.

    Model arguments (:meth:`model_inputs`): ``inputs(batch)`` when given, else what the
    model's ``forward`` requires: by name from a mapping batch that holds its argument names
    (``forward(image, mask)`` with ``{"image", "mask", "label"}`` batches), else the input for
    one argument, else the first ``k`` elements of a tuple batch other than the target
    (``forward(x1, x2)`` with ``(x1, x2, y)`` batches). No setting needed in these cases.

    Args:
        input_key: index / key / field of the input (``None``: the default look-up).
        target_key: index / key / field of the target (``None``: the default look-up).
        inputs: optional callable ``batch -> tuple of model arguments`` (e.g.
            ``lambda b: (b["input_ids"], b["attention_mask"])``).
        owner: the class name shown in error messages.

    Raises:
        ValueError: a key that is neither ``None``, an integer nor a string; ``inputs`` not
            callable; ``inputs`` given together with ``input_key``. Look-ups raise a
            ``ValueError`` that names the argument and lists what the batch holds.

    Example::

        >>> import torch
        >>> import lightning_critical as lc
        >>> batch = {"image": torch.zeros(2, 1, 8, 8), "mask": torch.ones(2, 8), "label": torch.tensor([0, 1])}
        >>> spec = lc.BatchSpec(inputs=lambda b: (b["image"], b["mask"]))
        >>> [tuple(a.shape) for a in spec.model_inputs(batch)]
        [(2, 1, 8, 8), (2, 8)]
        >>> spec.target(batch).tolist()
        [0, 1]
        >>> blurred = spec.with_input(batch, spec.input(batch) + 1)   # a new batch; `batch` is untouched
        >>> float(blurred["image"].mean()), float(batch["image"].mean())
        (1.0, 0.0)
        >>> x1, x2, y = torch.zeros(2, 3), torch.ones(2, 4), torch.tensor([0, 1])
        >>> [tuple(a.shape) for a in lc.BatchSpec().model_inputs((x1, x2, y), forward=("x1", "x2"))]
        [(2, 3), (2, 4)]
    """

    def __init__(self, input_key: Key = None, target_key: Key = None, inputs: InputsFn | None = None,
                 owner: str = "lightning_critical") -> None:
        self.input_key = check_key("input_key", input_key)
        self.target_key = check_key("target_key", target_key)
        if inputs is not None and not callable(inputs):
            raise ValueError(
                f"inputs={inputs!r} is not valid: give a callable batch -> tuple of model arguments, or None."
            )
        if inputs is not None and input_key is not None:
            raise ValueError(
                f"input_key={input_key!r} and inputs={inputs!r} both say what the model reads; give one of them."
            )
        self.inputs = inputs
        self.owner = owner

    def input_key_of(self, batch: Any) -> Key:
        return locate(batch, "input", self.input_key, self.owner)

    def target_key_of(self, batch: Any) -> Key:
        key = locate(batch, "target", self.target_key, self.owner)
        if (
            self.target_key is None
            and self.input_key is not None
            and key == locate(batch, "input", self.input_key, self.owner)
        ):
            raise ValueError(f"{self.owner}: the default target (element {key!r}) is the input chosen by "
                             f"input_key={self.input_key!r}; the batch is {describe(batch)}. Pass target_key=<key>.")
        return key

    def input(self, batch: Any) -> Tensor:
        """The input tensor of ``batch``."""
        return get(batch, self.input_key_of(batch), "input", self.owner)

    def target(self, batch: Any) -> Tensor:
        """The target tensor of ``batch``."""
        return get(batch, self.target_key_of(batch), "target", self.owner)

    def with_input(self, batch: Any, value: Tensor) -> Any:
        """A copy of ``batch`` whose input is ``value``."""
        return replace(batch, self.input_key_of(batch), value)

    def with_target(self, batch: Any, value: Tensor) -> Any:
        """A copy of ``batch`` whose target is ``value``."""
        return replace(batch, self.target_key_of(batch), value)

    def model_inputs(self, batch: Any, forward: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The positional arguments of ``model(...)`` for ``batch``.

        ``forward``: the names of the positional arguments the model's forward requires
        (:func:`forward_arguments`), or ``None`` when unknown.

        * ``inputs`` given: ``inputs(batch)`` (a tensor counts as one argument);
        * ``input_key`` given, or ``forward`` unknown: ``(input,)``;
        * a mapping or dataclass batch holding every name of ``forward``: those elements, in
          ``forward``'s order (``forward(image, mask)`` reads ``batch["image"], batch["mask"]``);
        * one required argument: ``(input,)``;
        * ``k >= 2`` required arguments: the first ``k`` elements of a tuple / list batch other
          than the target, e.g. ``(x1, x2)`` of ``(x1, x2, y)``.

        Raises:
            ValueError: ``inputs`` returned something other than a tensor, tuple or list; the
                batch cannot supply the ``k >= 2`` arguments.
        """
        if self.inputs is not None:
            args = self.inputs(batch)
            if isinstance(args, Tensor):
                return (args,)
            if not isinstance(args, (tuple, list)) or not args:
                raise ValueError(f"{self.owner}: inputs(batch) must return a tensor or a non-empty tuple of model "
                                 f"arguments; it returned {describe(args)} for a batch that is {describe(batch)}.")
            return tuple(args)
        if self.input_key is not None or not forward:
            return (self.input(batch),)
        if isinstance(batch, Mapping) or _is_dataclass(batch):
            keys = list(batch) if isinstance(batch, Mapping) else _field_names(batch)
            if all(name in keys for name in forward):
                return tuple(get(batch, name, "input", self.owner) for name in forward)
        if len(forward) == 1:
            return (self.input(batch),)
        if isinstance(batch, (tuple, list)):
            target = self.target_key_of(batch) if len(batch) > 1 else None
            candidates = [v for i, v in enumerate(batch) if i != target]
            if len(candidates) >= len(forward):
                return tuple(candidates[: len(forward)])
        raise ValueError(
            f"{self.owner}: the model's forward requires {len(forward)} positional arguments {list(forward)}, but "
            f"the batch is {describe(batch)}, which does not hold them (a tuple batch needs {len(forward)} elements "
            "besides the target, the last; a mapping needs those keys). Pass inputs=<callable batch -> tuple of "
            "model arguments>, e.g. inputs=lambda b: (b['x1'], b['x2'])."
        )

    def __repr__(self) -> str:
        inputs = None if self.inputs is None else getattr(self.inputs, "__name__", "callable")
        return f"BatchSpec(input_key={self.input_key!r}, target_key={self.target_key!r}, inputs={inputs})"

"""How a user's batches look: where the input and the target sit, and how a batch becomes model arguments.

:class:`BatchSpec` is the package's one batch convention (public as ``lc.BatchSpec``), built on
the element access of :mod:`lightning_critical._batch` (plain torch, no Lightning). Model
arguments (:meth:`BatchSpec.model_inputs`) come from the positional arguments the model's
``forward`` requires (:func:`forward_arguments`): a mapping / dataclass batch that holds them
by name gives them by name; otherwise one argument is the input, and ``k >= 2`` are the first
``k`` elements of a tuple / list batch other than the target, so ``forward(x1, x2)`` trained on
``(x1, x2, y)`` batches needs no setting. Anything else: ``inputs=batch -> tuple``.

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

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_critical._batch import InputsFn, Key, describe, field_names, get, is_dataclass_batch, locate, replace
from lightning_critical._checks import check_key


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
        if isinstance(batch, Mapping) or is_dataclass_batch(batch):
            keys = list(batch) if isinstance(batch, Mapping) else field_names(batch)
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

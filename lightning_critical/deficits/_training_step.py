"""Wrapping a LightningModule's ``training_step`` so it receives transformed batches, and undoing it.

While an input deficit is active, the module gets an instance attribute ``training_step``
(the forward-redirection trick Lightning's own strategies use) that applies the active batch
transforms and calls the module's own step; nothing else sees the transformed batch. One
wrapper per module holds every active transform, so several deficits compose and are removed
in any order; the last removal restores the module's ``__dict__`` exactly.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

from lightning_critical.probing import is_probing

BatchFn = Callable[[Any], Any]


def own_training_step(module: Any, own: Any) -> Any:
    """What a copy of a wrapped module gets instead of the wrapper: its own ``training_step``.

    ``own`` is the instance attribute the module had before it was wrapped (``None``: the
    class's method, bound to ``module``).
    """
    if own is not None:
        return own
    return inspect.getattr_static(type(module), "training_step").__get__(module, type(module))


class TrainingStepWrapper:
    """The ``training_step`` attribute put on a module while input deficits are active.

    It applies the active transforms to the batch and calls the module's own step (not while
    :func:`~lightning_critical.probing.is_probing`). It presents that step's signature
    (``__wrapped__``, ``__signature__``), so Lightning passes ``batch_idx`` exactly when the
    module's step takes it. A deep copy or pickle of the module gets the module's own
    ``training_step`` back instead of this wrapper (which would call the original module).
    """

    def __init__(self, module: Any, original: Any, own: Any) -> None:
        functools.update_wrapper(self, original)
        self.__signature__ = inspect.signature(original)
        self.module, self.original, self.own = module, original, own
        self.transforms: list[BatchFn] = []

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_probing():
            for transform in self.transforms:
                batch = transform(batch)
        return self.original(batch, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> Any:
        module_copy = memo.get(id(self.module))
        if module_copy is None:  # the wrapper alone is copied: like a function, it is its own copy
            return self
        return own_training_step(module_copy, copy.deepcopy(self.own, memo) if self.own is not None else None)

    def __reduce__(self) -> tuple:
        return own_training_step, (self.module, self.own)


class BatchTransformHandle:
    """Installs one transform in the module's :class:`TrainingStepWrapper`; ``remove()`` undoes it.

    Example::

        >>> import torch
        >>> class Step(torch.nn.Module):
        ...     def training_step(self, batch):
        ...         return batch
        >>> module = Step()
        >>> handle = BatchTransformHandle(module, lambda batch: batch * 2)
        >>> module.training_step(torch.ones(1)).tolist()
        [2.0]
        >>> handle.remove(); "training_step" in module.__dict__
        False
    """

    def __init__(self, module: Any, fn: BatchFn) -> None:
        self.module, self.fn = module, fn
        current = module.__dict__.get("training_step")
        if not isinstance(current, TrainingStepWrapper):
            current = TrainingStepWrapper(module, module.training_step, current)
            module.__dict__["training_step"] = current
        current.transforms.append(fn)

    def remove(self) -> None:
        current = self.module.__dict__.get("training_step")
        if not isinstance(current, TrainingStepWrapper):
            return
        if self.fn in current.transforms:
            current.transforms.remove(self.fn)
        if not current.transforms:
            if current.own is not None:
                self.module.__dict__["training_step"] = current.own
            else:
                del self.module.__dict__["training_step"]

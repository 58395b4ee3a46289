"""Which user code reads a run's length: runs of different lengths share a prefix only where none did.

The sweep builds each run's ``Trainer`` itself; :func:`watch` gives that instance a subclass
whose ``max_epochs`` and ``estimated_stepping_batches`` note the reads whose calling frame is
user code (not torch, Lightning or this package). A parent whose prefix read them refuses
children of another length (``"Anneal.loss reads trainer.max_epochs (6 -> 5)"``): the loss or
schedule of its prefix was computed for its own length.

Example::

    >>> from lightning_critical._namespace import pl
    >>> trainer = watch(pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
    ...                            enable_progress_bar=False, enable_model_summary=False))
    >>> trainer.max_epochs, reads(trainer)  # this package's own read is not noted
    (3, {})
    >>> exec("epochs = trainer.max_epochs", {"trainer": trainer, "__name__": "user_code"})
    >>> reads(trainer)
    {'trainer.max_epochs': '<module>'}
"""

from __future__ import annotations

import sys
from typing import Any

from lightning_critical._namespace import pl

FRAMEWORK = ("torch", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_critical", "torchmetrics")
"""Top-level packages whose reads are the framework's own (a read from a doctest or test is the user's)."""


def _caller() -> str | None:
    frame = sys._getframe(3)  # _caller <- _note <- the property <- its reader
    module = str(frame.f_globals.get("__name__", ""))
    if module.split(".", 1)[0] in FRAMEWORK:
        return None
    return str(getattr(frame.f_code, "co_qualname", frame.f_code.co_name))


def _note(trainer: Any, name: str) -> None:
    where = _caller()
    if where is not None:
        trainer.__dict__.setdefault("_lc_length_reads", {}).setdefault(f"trainer.{name}", where)


_CLASSES: dict[type, type] = {}


def _watched(kind: type) -> type:
    if kind not in _CLASSES:
        base: Any = kind

        class Watched(base):
            @property
            def max_epochs(self) -> Any:
                _note(self, "max_epochs")
                return base.max_epochs.fget(self)

            @property
            def estimated_stepping_batches(self) -> Any:
                _note(self, "estimated_stepping_batches")
                return base.estimated_stepping_batches.fget(self)

        Watched.__name__ = Watched.__qualname__ = kind.__name__
        Watched.__module__ = kind.__module__
        _CLASSES[kind] = Watched
    return _CLASSES[kind]


def watch(trainer: pl.Trainer) -> pl.Trainer:
    """Note the reads of ``trainer.max_epochs`` / ``estimated_stepping_batches`` by user code (returns ``trainer``)."""
    trainer.__class__ = _watched(type(trainer))
    return trainer


def reads(trainer: pl.Trainer) -> dict[str, str]:
    """``{"trainer.max_epochs": "Class.function", ...}``: the first user read of each, so far."""
    return dict(vars(trainer).get("_lc_length_reads", {}))

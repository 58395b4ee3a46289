"""Measuring without touching: the context in which monitors look at a model.

A probe must never change the experiment it measures. When a monitor runs the model (a
nonlinear pathway's ``end_to_end_maps()``, a Fisher estimate), two things could leak into
training: the hooks that deficits put on the model (a noise deficit would consume one of its
draws, a silence deficit would zero the map being measured) and the random-number streams
(dropout inside a probed layer would advance the global generator). Inside :func:`probing`

* every deficit hook returns at once, as if the deficit were not there (:func:`is_probing`
  tells a hook; user-defined deficits should check it too), and
* the CPU generator and the CUDA generators of the devices in use are saved on entry and
  restored on exit.

Nothing here imports Lightning.

Example::

    >>> import torch
    >>> from lightning_critical.probing import probing, is_probing
    >>> before = torch.random.get_rng_state()
    >>> with probing():
    ...     _ = torch.rand(3)          # a probe that draws random numbers ...
    ...     is_probing()
    True
    >>> torch.equal(before, torch.random.get_rng_state()), is_probing()   # ... leaves no trace
    (True, False)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

_state = threading.local()


def is_probing() -> bool:
    """Whether the calling thread is inside :func:`probing` (deficit hooks then do nothing)."""
    return getattr(_state, "depth", 0) > 0


@contextmanager
def probing(devices: Iterable[torch.device] | None = None) -> Iterator[None]:
    """Run a measurement with deficit hooks inert and every random-number stream restored afterwards.

    Args:
        devices: the CUDA devices whose generators to restore besides the CPU one (default:
            the current CUDA device when CUDA is initialised).
    """
    cuda = [d for d in (devices or []) if torch.device(d).type == "cuda"]
    if devices is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [torch.device("cuda", torch.cuda.current_device())]
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with torch.random.fork_rng(devices=[torch.device(d).index or 0 for d in cuda], enabled=True):
            yield
    finally:
        _state.depth -= 1

"""The process state a sweep run must neither see from nor leave to its caller: threads, random states, Ctrl-C, logs.

Example::

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with isolated(1):
    ...     _ = torch.rand(1)
    >>> torch.get_num_threads() == before
    True
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator

import torch

from lightning_critical.sweep.runners import rng


@contextlib.contextmanager
def isolated(threads: int) -> Iterator[None]:
    """Run with ``threads`` intra-op threads and give the caller back its threads, random states and Ctrl-C handler."""
    from threadpoolctl import threadpool_limits

    old_threads = torch.get_num_threads()
    old_rng = rng.capture()
    old_seed = os.environ.get("PL_GLOBAL_SEED")
    main = threading.current_thread() is threading.main_thread()
    old_handler = signal.getsignal(signal.SIGINT) if main else None
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(old_threads)
        rng.restore(old_rng)
        if old_seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = old_seed
        if main and old_handler is not None:
            # Lightning ignores SIGINT after catching a KeyboardInterrupt; give Ctrl-C back.
            signal.signal(signal.SIGINT, old_handler)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's per-run chatter (info logs, known warnings) for the duration of a run."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                        ".*GPU available but not used.*", ".*LeafSpec.*", ".*callbacks used to create the checkpoint.*",
                        ".*that has no `state_key`.*", ".*is not a state_dict.*"):
            warnings.filterwarnings("ignore", pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)

"""Process-group hygiene for CPU (gloo) DDP runs (plain torch, no Lightning).

Lightning destroys NCCL process groups at interpreter exit but leaves gloo groups alive. A
spawned DDP worker that exits with its gloo group alive can abort: gloo's worker threads may
still hold the last collective's tensors (e.g. Lightning's ``should_stop`` all-reduce); when
one of them frees such a tensor during interpreter finalization it needs the GIL, and a thread
that asks for the GIL then is ended inside a ``noexcept`` destructor, so the process dies with
SIGABRT and "terminate called without an active exception". It is a race, lost now and then on
a loaded machine. Destroying the group at exit, while Python is fully alive, joins those
threads first (PyTorch's documentation asks every program to call ``destroy_process_group``).
"""

from __future__ import annotations

import atexit

import torch

_registered = False


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def destroy_process_group_at_exit() -> bool:
    """Destroy the default process group when this process exits (once per process).

    Call it in each DDP process once the group exists (e.g. from a callback's ``setup``).
    Returns whether a handler was registered: ``False`` without an initialised group or when
    one is registered already. Harmless where Lightning also destroys the group (NCCL): the
    second call finds nothing left to destroy.

    Example::

        >>> destroy_process_group_at_exit()  # no process group here
        False
    """
    global _registered
    if _registered or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    atexit.register(_destroy_process_group)
    _registered = True
    return True

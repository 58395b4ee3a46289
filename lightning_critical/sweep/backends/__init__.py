"""Where the jobs of a sweep execute: :mod:`.base` (the interface), :mod:`.local` (serial, processes, any
Executor), :mod:`.ray` (Ray tasks), :mod:`.workers` (local worker processes), :mod:`.resolve` (``backend=``).

Example::

    >>> from lightning_critical.sweep.backends import resolve_backend
    >>> resolve_backend("serial", None, 1).name
    'serial'
"""

from lightning_critical.sweep.backends.base import Backend, default_workers
from lightning_critical.sweep.backends.local import ExecutorBackend, ProcessBackend, SerialBackend
from lightning_critical.sweep.backends.ray import RayBackend
from lightning_critical.sweep.backends.resolve import BACKENDS, ray_available, resolve_backend

__all__ = ["BACKENDS", "Backend", "ExecutorBackend", "ProcessBackend", "RayBackend", "SerialBackend",
           "default_workers", "ray_available", "resolve_backend"]

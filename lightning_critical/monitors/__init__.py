"""Monitor callbacks: what the network has learned, recorded over training (on the ``Monitor`` base)."""

from lightning_critical.history import read_history
from lightning_critical.monitors.base import Monitor
from lightning_critical.monitors.fisher_monitor import FisherMonitor
from lightning_critical.monitors.reliance_monitor import RelianceMonitor
from lightning_critical.monitors.spectral_monitor import SpectralMonitor

__all__ = ["FisherMonitor", "Monitor", "RelianceMonitor", "SpectralMonitor", "read_history"]

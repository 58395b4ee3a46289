"""lightning-critical: probe critical learning periods with PyTorch Lightning callbacks."""

from lightning_critical import data, models, theory
from lightning_critical.deficits import ModeDeficit, PathwayDeficit
from lightning_critical.monitors import SpectralMonitor
from lightning_critical.schedule import Window

__version__ = "0.1.0"
from lightning_critical.tasks import TaskSwitch, TaskSwitchable

"""lightning-critical: probe critical learning periods with PyTorch Lightning callbacks."""

from lightning_critical import data, experiments, models, plots, sweep, theory
from lightning_critical._batch import BatchSpec
from lightning_critical.deficits import InputDeficit, ModeDeficit, PathwayDeficit
from lightning_critical.monitors import FisherMonitor, SpectralMonitor
from lightning_critical.schedule import Window
from lightning_critical.tasks import TaskSwitch, TaskSwitchable

__version__ = "0.1.0"

__all__ = [
    "BatchSpec",
    "FisherMonitor",
    "InputDeficit",
    "ModeDeficit",
    "PathwayDeficit",
    "SpectralMonitor",
    "TaskSwitch",
    "TaskSwitchable",
    "Window",
    "data",
    "experiments",
    "models",
    "plots",
    "sweep",
    "theory",
]

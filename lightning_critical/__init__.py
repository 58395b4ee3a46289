"""lightning-critical: probe critical learning periods with PyTorch Lightning callbacks.

Names are imported on first use, so that ``import lightning_critical`` loads no Lightning: the
package binds to the Lightning namespace (``lightning.pytorch`` or ``pytorch_lightning``) the
user has imported by the time a callback, model or experiment is first touched (see
:mod:`lightning_critical._namespace`).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BatchSpec": "lightning_critical._batch_spec",
    "FisherMonitor": "lightning_critical.monitors",
    "InputDeficit": "lightning_critical.deficits",
    "ModeDeficit": "lightning_critical.deficits",
    "PathwayDeficit": "lightning_critical.deficits",
    "RelianceMonitor": "lightning_critical.monitors",
    "Schedule": "lightning_critical.schedule",
    "SpectralMonitor": "lightning_critical.monitors",
    "TaskSwitch": "lightning_critical.deficits",
    "TaskSwitchable": "lightning_critical.protocols",
    "Window": "lightning_critical.schedule",
}
__all__ = [
    "BatchSpec", "FisherMonitor", "InputDeficit", "ModeDeficit", "PathwayDeficit", "Schedule", "SpectralMonitor",
    "RelianceMonitor", "reliance",
    "TaskSwitch", "TaskSwitchable", "Window", "data", "experiments", "models", "plots", "sweep", "theory",
]

if TYPE_CHECKING:
    from lightning_critical import data, experiments, models, plots, sweep, theory
    from lightning_critical._batch_spec import BatchSpec
    from lightning_critical.deficits import InputDeficit, ModeDeficit, PathwayDeficit, TaskSwitch
    from lightning_critical.monitors import FisherMonitor, RelianceMonitor, SpectralMonitor
    from lightning_critical.protocols import TaskSwitchable
    from lightning_critical.schedule import Schedule, Window


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value: Any = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"lightning_critical.{name}") is not None:
        # any public submodule, as after `import lightning_critical.<name>`: lc.spectral, lc.cadence, ...
        value = importlib.import_module(f"lightning_critical.{name}")
    else:
        raise AttributeError(f"module 'lightning_critical' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

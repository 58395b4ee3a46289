"""Scheduled interventions: deficits that act on training inside a window, and task switches."""

from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.input import InputDeficit
from lightning_critical.deficits.intervention import ScheduledIntervention
from lightning_critical.deficits.mode import ModeDeficit
from lightning_critical.deficits.pathway import PathwayDeficit
from lightning_critical.deficits.task_switch import TaskSwitch

__all__ = ["InputDeficit", "ModeDeficit", "PathwayDeficit", "ScheduledIntervention", "TaskSwitch", "WindowedDeficit"]

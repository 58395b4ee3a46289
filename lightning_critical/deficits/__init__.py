"""Deficit callbacks: interventions that act on training inside a window."""

from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.input import InputDeficit
from lightning_critical.deficits.mode import ModeDeficit
from lightning_critical.deficits.pathway import PathwayDeficit

__all__ = ["InputDeficit", "ModeDeficit", "PathwayDeficit", "WindowedDeficit"]

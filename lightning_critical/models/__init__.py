"""Bundled LightningModules. They use only the documented protocols (see ``protocols``)."""

from lightning_critical.models.multipathway import MultiPathwayLinearNet

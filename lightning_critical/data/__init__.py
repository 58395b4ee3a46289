"""Bundled datamodules (generated tasks; no download)."""

from lightning_critical.data.hierarchical import HierarchicalDataModule, hierarchical_features, task_svd
from lightning_critical.data.matrix_completion import MatrixCompletionDataModule

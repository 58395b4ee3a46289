"""Bundled datamodules (generated or package-shipped data; nothing is downloaded)."""

from lightning_critical.data.cifar import CIFAR10DataModule, load_cifar10
from lightning_critical.data.digits import DigitsDataModule
from lightning_critical.data.hierarchical import HierarchicalDataModule, hierarchical_features, task_svd
from lightning_critical.data.images import ImageClassificationDataModule
from lightning_critical.data.matrix_completion import MatrixCompletionDataModule
from lightning_critical.data.two_view import TwoViewDigits

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "HierarchicalDataModule",
    "ImageClassificationDataModule",
    "MatrixCompletionDataModule",
    "TwoViewDigits",
    "hierarchical_features",
    "load_cifar10",
    "task_svd",
]

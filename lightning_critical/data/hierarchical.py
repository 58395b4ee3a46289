"""The hierarchical task of Saxe et al. (2019): items described by the features of a tree."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_critical._checks import check_float, check_int
from lightning_critical._namespace import pl
from lightning_critical.protocols import TaskBasis


def hierarchical_features(branching: int = 2, levels: int = 3) -> Tensor:
    """The ``(features, items)`` 0/1 matrix of a tree with ``branching ** levels`` leaf items.

    Every node of the tree is a feature that its descendant items have: the root feature
    (all items), ``branching`` level-1 features, ..., and one leaf feature per item. The
    default tree has 8 items and 1 + 2 + 4 + 8 = 15 features.

    Example::

        >>> hierarchical_features().shape
        torch.Size([15, 8])
    """
    for name, value, low in (("branching", branching, 2), ("levels", levels, 1)):
        check_int(name, value, low)
    n_items = branching**levels
    rows = []
    for level in range(levels + 1):
        group = branching ** (levels - level)  # items below one node of this level
        for node in range(branching**level):
            row = torch.zeros(n_items)
            row[node * group : (node + 1) * group] = 1.0
            rows.append(row)
    return torch.stack(rows)


def task_svd(y: Tensor) -> TaskBasis:
    """``Y = U diag(S) V^T`` with signs fixed so each ``u_a`` has a non-negative sum (reproducible)."""
    u, s, vh = torch.linalg.svd(y.double(), full_matrices=False)
    signs = torch.where(u.sum(dim=0) < 0, -1.0, 1.0).to(u.dtype)
    return (u * signs).float(), s.float(), (vh.T * signs).float()


class HierarchicalDataModule(pl.LightningDataModule):
    """One-hot items in, their hierarchical features out; one full batch per epoch.

    Inputs are ``X = I`` (one row per item), targets the item's feature vector, so the task
    map is ``Y`` (features x items) and its SVD gives the task modes (:meth:`task_basis`).

    Args:
        branching: children per tree node (default 2).
        levels: tree depth below the root (default 3: 8 items, 15 features).
        feature_noise: std of Gaussian noise added once to ``Y`` (a fixed, noisy task).
        seed: seed of that noise.
        batch_size: items per batch (default: all, i.e. full-batch gradient descent).
        num_workers: dataloader workers.

    Example::

        >>> dm = HierarchicalDataModule()
        >>> U, S, V = dm.task_basis()
        >>> U.shape, S.shape, V.shape
        (torch.Size([15, 8]), torch.Size([8]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        branching: int = 2,
        levels: int = 3,
        feature_noise: float = 0.0,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_float("feature_noise", feature_noise, low=0)
        y = hierarchical_features(branching, levels)
        if feature_noise > 0:
            gen = torch.Generator().manual_seed(seed)
            y = y + feature_noise * torch.randn(y.shape, generator=gen)
        self.features = y
        n_items = y.shape[1]
        # at most the number of items; an int, since the DataLoader refuses numpy integers
        batch_size = check_int("batch_size", batch_size, high=n_items, allow_none=True)
        self.batch_size = batch_size or n_items
        self.num_workers = num_workers
        self._basis = task_svd(y)

    @property
    def in_features(self) -> int:
        return self.features.shape[1]

    @property
    def out_features(self) -> int:
        return self.features.shape[0]

    def task_basis(self) -> TaskBasis:
        """``(U, S, V)`` of the feature matrix ``Y`` (features x items)."""
        return self._basis

    def dataset(self) -> TensorDataset:
        return TensorDataset(torch.eye(self.in_features), self.features.T.contiguous())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

"""ImageClassificationDataModule: train / validation / test loaders over in-memory image tensors.

The base of the bundled image datamodules (:class:`~lightning_critical.data.DigitsDataModule`,
:class:`~lightning_critical.data.CIFAR10DataModule`) and of any ``(images, labels)`` pair a
user holds in memory.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_critical._checks import check_float, check_int, check_seed
from lightning_critical._namespace import pl

__all__ = ["ImageClassificationDataModule", "check_fraction"]


def check_fraction(name: str, value: float, low_inclusive: bool) -> None:
    """Check a share of the images: in ``[0, 1)`` (or ``(0, 1)``); 1 would leave the other part empty.

    Example::

        >>> check_fraction("val_fraction", 1.0, low_inclusive=True)
        Traceback (most recent call last):
        ...
        ValueError: val_fraction=1.0 is not valid: it must be < 1 (at 1 no images are left to train on).
    """
    check_float(name, value, low=0, low_inclusive=low_inclusive, high=1)
    if value == 1:
        raise ValueError(f"{name}={value!r} is not valid: it must be < 1 (at 1 no images are left to train on).")


class ImageClassificationDataModule(pl.LightningDataModule):
    """Train / validation / test loaders over image tensors ``(N, C, H, W)`` and labels ``(N,)``.

    A ``val_fraction`` of the training images (a seeded random subset) becomes the
    validation set. Training batches are shuffled (by the global RNG, so
    ``seed_everything`` makes runs repeatable); validation and test batches are not.

    Args:
        train: ``(images, labels)`` to train (and validate) on.
        test: ``(images, labels)`` held out for testing.
        batch_size: examples per batch.
        val_fraction: share of ``train`` kept for validation, in ``[0, 1)``.
        seed: seed of the validation split.
        num_workers: dataloader workers.

    Example::

        >>> dm = ImageClassificationDataModule((torch.rand(10, 1, 4, 4), torch.arange(10) % 2),
        ...                                    (torch.rand(4, 1, 4, 4), torch.arange(4) % 2), val_fraction=0.2)
        >>> dm.setup("fit"); len(dm.train_set), len(dm.val_set), dm.num_classes
        (8, 2, 2)
    """

    def __init__(
        self,
        train: tuple[Tensor, Tensor],
        test: tuple[Tensor, Tensor],
        batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size)
        check_fraction("val_fraction", val_fraction, low_inclusive=True)
        check_seed("seed", seed)
        check_int("num_workers", num_workers, low=0)
        for what, (x, y) in (("train", train), ("test", test)):
            if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{what} must be images (N, C, H, W) and labels (N,); got {tuple(x.shape)} and {tuple(y.shape)}."
                )
        x, y = train
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        n_val = int(round(val_fraction * x.shape[0]))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])
        self.test_set = TensorDataset(*test)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_classes = int(max(int(y.max()), int(test[1].max())) + 1)
        self.image_shape = tuple(x.shape[1:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=512, num_workers=self.num_workers)

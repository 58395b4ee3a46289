"""TwoViewDigits: the bundled digits as two views (left and right halves), for multi-source studies."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_critical.data.digits import DigitsDataModule

__all__ = ["TwoViewDigits", "halves"]


def halves(images: Tensor) -> tuple[Tensor, Tensor]:
    """The left and right halves ``(N, C, H, W // 2)`` of images ``(N, C, H, W)``.

    Example::

        >>> import torch
        >>> left, right = halves(torch.arange(8.0).reshape(1, 1, 2, 4))
        >>> left.flatten().tolist(), right.flatten().tolist()
        ([0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0])
    """
    width = images.shape[-1] // 2
    return images[..., :width], images[..., width:]


def _two_views(dataset: TensorDataset) -> TensorDataset:
    x, y = dataset.tensors
    return TensorDataset(*halves(x), y)


class TwoViewDigits(DigitsDataModule):
    """scikit-learn's digits split into two views, the left and right 8x4 halves: batches ``(a, b, y)``.

    Each half alone classifies the digits worse than both together, so a network trained on
    both uses both, and depriving one view early in training (noise in its place, e.g.
    ``lc.PathwayDeficit("b", mode="noise")`` on :class:`~lightning_critical.models.TwoViewNet`)
    can leave the network ignoring it for good: the multisensory critical period of Kleinman,
    Achille & Soatto (CVPR 2023) in miniature. Same splits and arguments as
    :class:`~lightning_critical.data.DigitsDataModule`; ``view_shape`` is ``(1, 8, 4)``.

    Example::

        >>> dm = TwoViewDigits(subset=100)
        >>> a, b, y = next(iter(dm.train_dataloader()))
        >>> tuple(a.shape), tuple(b.shape), dm.view_shape
        ((64, 1, 8, 4), (64, 1, 8, 4), (1, 8, 4))
    """

    def __init__(self, batch_size: int = 64, test_fraction: float = 0.25, val_fraction: float = 0.1, seed: int = 0,
                 subset: int | None = None, num_workers: int = 0) -> None:
        super().__init__(batch_size, test_fraction, val_fraction, seed, subset, num_workers)
        self.train_set = _two_views(self.train_set)
        self.val_set = _two_views(self.val_set)
        self.test_set = _two_views(self.test_set)
        self.view_shape = tuple(self.train_set.tensors[0].shape[1:])

"""CIFAR-10 from its standard python-format batch files (no torchvision, no download).

The python version of CIFAR-10 (``cifar-10-python.tar.gz`` from the dataset's site,
extracted to ``cifar-10-batches-py/``) holds pickled dicts ``data_batch_1`` ...
``data_batch_5`` and ``test_batch``, each with ``b"data"``: ``uint8`` array ``(N, 3072)``
(1024 red, then green, then blue values of a 32x32 image, row-major) and ``b"labels"``:
``N`` ints in ``0..9``. Unpickling runs code from the file: only load files you trust.
"""

from __future__ import annotations

import glob
import os
import pickle

import numpy as np
import torch
from torch import Tensor

from lightning_critical._checks import check_int
from lightning_critical.data.images import ImageClassificationDataModule

CLASSES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_batch(path: str) -> tuple[Tensor, Tensor]:
    """One batch file as images ``(N, 3, 32, 32)`` float in ``[0, 1]`` and labels ``(N,)``."""
    with open(path, "rb") as fh:
        entry = pickle.load(fh, encoding="bytes")
    data = np.asarray(entry[b"data"], dtype=np.uint8)
    labels = entry.get(b"labels", entry.get(b"fine_labels"))
    if data.ndim != 2 or data.shape[1] != 3072 or labels is None or len(labels) != data.shape[0]:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: need b'data' (N, 3072) uint8 and N b'labels'.")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return images, torch.as_tensor(list(labels), dtype=torch.long)


def find_cifar_dir(root: str) -> str:
    """``root`` or ``root/cifar-10-batches-py``, whichever holds ``test_batch``."""
    for candidate in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(candidate, "test_batch")):
            return candidate
    raise ValueError(
        f"no CIFAR-10 python batches under root={root!r}: expected 'data_batch_1'..'data_batch_5' and "
        "'test_batch' there or in its 'cifar-10-batches-py' folder (extract cifar-10-python.tar.gz)."
    )


def load_cifar10(root: str) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((train_x, train_y), (test_x, test_y))`` from every ``data_batch_*`` and ``test_batch``."""
    folder = find_cifar_dir(root)
    train_files = sorted(glob.glob(os.path.join(folder, "data_batch_*")))
    if not train_files:
        raise ValueError(f"no 'data_batch_*' file in {folder!r}.")
    parts = [read_cifar_batch(f) for f in train_files]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return train, read_cifar_batch(os.path.join(folder, "test_batch"))


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10 read from the python-format batch files under ``root`` (see module docstring).

    Images are ``(3, 32, 32)`` in ``[0, 1]``; ``normalize=True`` subtracts the training
    set's per-channel mean and divides by its standard deviation. ``subset`` keeps only the
    first ``subset`` training images.

    Example::

        >>> CIFAR10DataModule("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: no CIFAR-10 python batches under root='/nonexistent' ...
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        normalize: bool = True,
        seed: int = 0,
        subset: int | None = None,
        num_workers: int = 0,
    ) -> None:
        check_int("subset", subset, low=2, allow_none=True)
        (x, y), (tx, ty) = load_cifar10(root)
        if subset is not None:
            x, y = x[:subset], y[:subset]
        if normalize:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
            x, tx = (x - mean) / std, (tx - mean) / std
        super().__init__((x, y), (tx, ty), batch_size, val_fraction, seed, num_workers)
        self.num_classes = len(CLASSES)

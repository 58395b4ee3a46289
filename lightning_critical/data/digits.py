"""DigitsDataModule: scikit-learn's bundled 8x8 handwritten digits (offline), as an image datamodule."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_critical._checks import check_int, check_seed
from lightning_critical.data.images import ImageClassificationDataModule, check_fraction

__all__ = ["DigitsDataModule", "load_digits_tensors"]


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 digits: images ``(1797, 1, 8, 8)`` in ``[0, 1]``, labels ``(1797,)`` (new tensors)."""
    images, labels = _digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(labels, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Any, Any]:
    """The file read once per process (a sweep builds a datamodule per run); callers copy what they use.

    Read straight from scikit-learn's bundled CSV, as ``load_digits`` reads it, without importing
    scikit-learn (about a second, paid by the first sweep of every process and every worker).
    """
    path = _bundled_csv()
    if path is not None:
        data = np.loadtxt(path, delimiter=",")
        if data.shape == (1797, 65):
            return data[:, :-1], data[:, -1].astype(int, copy=False)
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dev/example dependency
        raise ImportError("DigitsDataModule needs scikit-learn: pip install 'lightning-critical[digits]'") from err
    images, labels = load_digits(return_X_y=True)
    return images, labels


def _bundled_csv() -> str | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn (``None``: not there)."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):  # pragma: no cover - a broken installation: load_digits says why
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


class DigitsDataModule(ImageClassificationDataModule):
    """scikit-learn's bundled handwritten digits (offline): 8x8 grey images, 10 classes.

    A seeded ``test_fraction`` of the 1797 images is held out for testing; ``val_fraction``
    of the rest validates. ``subset`` keeps only the first ``subset`` training images (fast
    tests).

    Example::

        >>> dm = DigitsDataModule(test_fraction=0.25, val_fraction=0.1)
        >>> len(dm.train_set) + len(dm.val_set) + len(dm.test_set), dm.image_shape, dm.num_classes
        (1797, (1, 8, 8), 10)
    """

    def __init__(
        self,
        batch_size: int = 64,
        test_fraction: float = 0.25,
        val_fraction: float = 0.1,
        seed: int = 0,
        subset: int | None = None,
        num_workers: int = 0,
    ) -> None:
        check_fraction("test_fraction", test_fraction, low_inclusive=False)
        check_seed("seed", seed)
        check_int("subset", subset, low=2, allow_none=True)
        x, y = load_digits_tensors()
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
        n_test = int(round(test_fraction * x.shape[0]))
        test_idx, train_idx = perm[:n_test], perm[n_test:]
        if subset is not None:
            train_idx = train_idx[:subset]
        super().__init__(
            (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), batch_size, val_fraction, seed, num_workers
        )

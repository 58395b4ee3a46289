"""Confusing inputs to the bundled SmallCNN, digits datamodules and MultiPathwayLinearNet: a clear error naming the
argument and the bad value, before any training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import lightning_critical as lc


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=(32.5, 64)), r"channels\[0\]=32.5 must be an integer >= 1, not float"),
        (dict(channels=(16, 0)), r"channels\[1\]=0 must be an integer >= 1"),
        (dict(channels=(16, "32")), r"channels\[1\]='32' must be an integer"),
        (dict(channels=(16, 32, 64)), r"channels=\(16, 32, 64\) is not valid: give the two conv widths"),
        (dict(channels=16), r"channels=16 is not valid: give the two conv widths"),
        (dict(in_channels=0), r"in_channels=0 must be an integer >= 1"),
        (dict(lr=0.0), r"lr=0.0 is not valid: it must be a finite number > 0"),
        (dict(lr="0.1"), r"lr='0.1' is not valid: it must be a finite number > 0, not str"),
        (dict(lr=float("nan")), r"lr=nan is not valid"),
        (dict(momentum=-0.5), r"momentum=-0.5 is not valid: it must be a finite number >= 0"),
        (dict(weight_decay=float("inf")), r"weight_decay=inf is not valid"),
        (dict(lr_decay=1.5), r"lr_decay=1.5 is not valid: it must be a finite number > 0 and <= 1"),
        (dict(lr_decay=0), r"lr_decay=0 is not valid"),
        (dict(seed=1.5), r"seed=1.5 must be an integer >= 0, not float"),
        (dict(seed=-1), r"seed=-1 must be an integer >= 0"),
    ],
)
def test_small_cnn_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lc.models.SmallCNN(**kwargs)


def test_small_cnn_accepts_numpy_and_list_widths() -> None:
    net = lc.models.SmallCNN(channels=[np.int64(4), 8], seed=np.int64(0), lr=np.float32(0.1))
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(test_fraction=1.0), r"test_fraction=1.0 is not valid: it must be < 1"),
        (dict(test_fraction=0.0), r"test_fraction=0.0 is not valid: it must be a finite number > 0 and <= 1"),
        (dict(test_fraction="0.2"), r"test_fraction='0.2' is not valid.*not str"),
        (dict(val_fraction=1), r"val_fraction=1 is not valid: it must be < 1"),
        (dict(val_fraction=-0.1), r"val_fraction=-0.1 is not valid: it must be a finite number >= 0"),
        (dict(val_fraction=float("nan")), r"val_fraction=nan is not valid"),
        (dict(subset=1), r"subset=1 must be an integer >= 2 or None"),
        (dict(subset=100.0), r"subset=100.0 must be an integer >= 2 or None, not float"),
        (dict(subset=True), r"subset=True must be an integer"),
        (dict(seed=0.5), r"seed=0.5 must be an integer >= 0, not float"),
        (dict(batch_size=0), r"batch_size=0 must be an integer >= 1"),
        (dict(num_workers=-1), r"num_workers=-1 must be an integer >= 0"),
    ],
)
def test_digits_refuses(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lc.data.DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(val_fraction=1.0), r"val_fraction=1.0 is not valid: it must be < 1"),
        (dict(seed="0"), r"seed='0' must be an integer >= 0, not str"),
        (dict(num_workers=1.5), r"num_workers=1.5 must be an integer >= 0, not float"),
    ],
)
def test_image_datamodule_refuses(kwargs: dict[str, Any], match: str) -> None:
    data = (torch.rand(10, 1, 4, 4), torch.arange(10) % 2)
    with pytest.raises(ValueError, match=match):
        lc.data.ImageClassificationDataModule(data, data, **kwargs)


@pytest.mark.parametrize("pathways", [True, 2.0])
def test_multipathway_refuses_a_pathway_count_that_is_not_an_integer(pathways: Any) -> None:
    with pytest.raises(ValueError, match=rf"pathways={pathways!r} must be a count or distinct identifier names"):
        lc.models.MultiPathwayLinearNet(depth=2, width=8, pathways=pathways)

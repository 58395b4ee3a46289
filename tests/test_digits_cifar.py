"""Digits and CIFAR-10 (python batch format, files made here) datamodules with SmallCNN."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl


def write_cifar_batches(
    folder, n_per_file: int = 12, n_train_files: int = 2, seed: int = 0, learnable: bool = False
) -> dict:
    """CIFAR-10 python-format files: pickled dicts with b"data" uint8 (N, 3072) and b"labels".

    ``learnable``: each class brightens one colour channel in one image quadrant (class ``c``:
    channel ``c % 3``, quadrant ``c // 3``) on top of the noise, a pattern that survives blur.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    made = {}
    names = [f"data_batch_{i + 1}" for i in range(n_train_files)] + ["test_batch"]
    for name in names:
        labels = rng.integers(0, 10, size=n_per_file).tolist()
        if learnable:
            images = rng.integers(0, 128, size=(n_per_file, 3, 32, 32))
            for img, c in zip(images, labels, strict=True):
                row, col = divmod(c // 3, 2)
                img[c % 3, 16 * row : 16 * row + 16, 16 * col : 16 * col + 16] += 127
            data = images.reshape(n_per_file, 3072).astype(np.uint8)  # R, G, B planes, row-major
        else:
            data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, fh)
        made[name] = (data, labels)
    return made


def test_digits_splits_are_disjoint_and_seeded():
    dm = lc.data.DigitsDataModule(test_fraction=0.2, val_fraction=0.25, seed=3)
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sum(sizes) == 1797 and sizes[2] == round(0.2 * 1797)
    x = torch.cat([dm.train_set.tensors[0], dm.val_set.tensors[0], dm.test_set.tensors[0]])
    assert x.shape[1:] == (1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    again = lc.data.DigitsDataModule(test_fraction=0.2, val_fraction=0.25, seed=3)
    assert torch.equal(again.test_set.tensors[0], dm.test_set.tensors[0])
    with pytest.raises(ValueError, match="test_fraction=1.5"):
        lc.data.DigitsDataModule(test_fraction=1.5)


def test_cifar_reader_layout_and_folder_forms(tmp_path):
    made = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        (x, y), (tx, ty) = lc.data.load_cifar10(str(root))
        assert x.shape == (24, 3, 32, 32) and tx.shape == (12, 3, 32, 32)
        data, labels = made["data_batch_2"]
        # row 5 of file 2: 1024 red values, then green, then blue, each row-major 32x32
        img = x[12 + 5]
        assert float(img[1, 3, 7]) == pytest.approx(data[5, 1024 + 3 * 32 + 7] / 255.0)
        assert y[12:].tolist() == labels and ty.tolist() == made["test_batch"][1]
    with pytest.raises(ValueError, match="no CIFAR-10 python batches under root="):
        lc.data.load_cifar10(str(tmp_path / "missing"))
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        lc.data.cifar.read_cifar_batch(str(tmp_path / "test_batch"))


def test_cifar_datamodule_trains_small_cnn_with_blur_deficit(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", n_per_file=64, learnable=True)
    dm = lc.data.CIFAR10DataModule(str(tmp_path), batch_size=16, val_fraction=0.25)
    train_x = dm.train_set.tensors[0]
    assert train_x.mean(dim=(0, 2, 3)).abs().max() < 0.1  # normalised with (roughly) train statistics
    pl.seed_everything(0)
    model = lc.models.SmallCNN(in_channels=3, num_classes=dm.num_classes, channels=(8, 8), seed=0)
    deficit = lc.InputDeficit("blur", window=(0, 2), factor=4)
    trainer = pl.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[deficit], default_root_dir=tmp_path)
    trainer.fit(model, dm)
    assert trainer.global_step == 8 * 6  # 96 train images (128 - 25%) in batches of 16
    result = trainer.test(model, dm, verbose=False)[0]
    assert result["test_acc"] > 0.5  # the 64 held-out images; chance is 0.1
    assert "training_step" not in model.__dict__


def test_small_cnn_learns_digits(tmp_path):
    pl.seed_everything(0)
    dm = lc.data.DigitsDataModule(batch_size=32, subset=400)
    model = lc.models.SmallCNN(channels=(8, 16), seed=0)
    trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    acc = trainer.test(model, dm, verbose=False)[0]["test_acc"]
    assert acc > 0.75  # 0.85 measured with 400 training images; chance is 0.1


@pytest.mark.parametrize("subset, match", [(-5, r"subset=-5 must be an integer >= 2 or None"),
                                           (10.0, r"subset=10.0 must be an integer >= 2 or None, not float")])
def test_cifar_refuses_a_subset_that_is_not_a_count(tmp_path, subset, match):
    # Was accepted: subset=-5 silently dropped the last five training images (x[:-5]), 10.0 failed inside slicing.
    write_cifar_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ValueError, match=match):
        lc.data.CIFAR10DataModule(str(tmp_path), subset=subset)
    assert len(lc.data.CIFAR10DataModule(str(tmp_path), subset=10, val_fraction=0.2).train_set) == 8


def test_image_datamodule_lives_in_its_own_module():
    from lightning_critical.data.images import ImageClassificationDataModule

    assert lc.data.ImageClassificationDataModule is ImageClassificationDataModule
    assert issubclass(lc.data.DigitsDataModule, ImageClassificationDataModule)
    assert issubclass(lc.data.CIFAR10DataModule, ImageClassificationDataModule)

"""InputDeficit: corrupts training batches inside its window only, for any batch structure."""

from __future__ import annotations

from collections import namedtuple

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical.deficits.input import blur, downsample


Pair = namedtuple("Pair", ["image", "label"])

# 16 distinct images (4x4) with 4 labels; every image has a known id in pixel [0, 0, 0].
IMAGES = torch.rand(16, 1, 4, 4)
LABELS = torch.arange(16) % 4


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        x, y = IMAGES[i], LABELS[i]
        if self.kind == "dict":
            return {"pixels": x, "labels": y}
        if self.kind == "namedtuple":
            return Pair(x, y)
        return x, y


class Recorder(pl.LightningModule):
    """Records every batch that training_step and validation_step receive."""

    def __init__(self, kind: str = "tuple", input_key=0) -> None:
        super().__init__()
        self.kind, self.key = kind, input_key
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, 4))
        self.train_batches: list[tuple[int, int, object]] = []
        self.val_batches: list[object] = []

    def training_step(self, batch, batch_idx):
        self.train_batches.append((self.current_epoch, self.global_step, _clone(batch)))
        x, y = (batch[self.key], batch["labels"]) if self.kind == "dict" else (batch[0], batch[1])
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_batches.append(_clone(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(ListDataset(self.kind), batch_size=8)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(ListDataset(self.kind), batch_size=8)


def _clone(batch):
    if isinstance(batch, dict):
        return {k: v.clone() for k, v in batch.items()}
    return type(batch)(*(v.clone() for v in batch)) if hasattr(batch, "_fields") else [v.clone() for v in batch]


def _inputs(batch):
    return batch["pixels"] if isinstance(batch, dict) else batch[0]


def fit(model, callbacks, tmp_path, epochs=3):
    trainer = pl.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, num_sanity_val_steps=0,
    )
    trainer.fit(model)
    return trainer


def test_blur_and_downsample_match_their_formulas():
    x = torch.rand(3, 2, 8, 8)
    # area downsampling by 2 is 2x2 average pooling; blur upsamples that bilinearly back to 8x8
    torch.testing.assert_close(downsample(x, 2), F.avg_pool2d(x, 2))
    ref = F.interpolate(F.avg_pool2d(x, 4), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(blur(x, 4), ref)
    # 1-D and 3-D inputs
    assert blur(torch.rand(2, 3, 10), 2).shape == (2, 3, 10)
    assert blur(torch.rand(2, 1, 4, 6, 6), 2).shape == (2, 1, 4, 6, 6)
    # a constant image stays constant; blur loses the finest detail (a checkerboard vanishes)
    torch.testing.assert_close(blur(torch.full((1, 1, 8, 8), 3.0), 2), torch.full((1, 1, 8, 8), 3.0))
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    torch.testing.assert_close(blur(checker[None, None].float(), 2), torch.full((1, 1, 8, 8), 0.5))


@pytest.mark.parametrize("kind", ["tuple", "namedtuple", "dict"])
def test_blur_only_inside_window_and_never_on_validation(tmp_path, kind):
    key = "pixels" if kind == "dict" else None
    model = Recorder(kind, input_key=key or 0)
    deficit = lc.InputDeficit("blur", window=(1, 2), factor=2, input_key=key)
    fit(model, [deficit], tmp_path)
    assert len(model.train_batches) == 6
    for epoch, step, batch in model.train_batches:
        x = _inputs(batch)
        start = 8 * (step % 2)  # two unshuffled batches per epoch
        clean = IMAGES[start : start + 8]
        expected = blur(clean, 2) if epoch == 1 else clean
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        assert type(batch) is (dict if kind == "dict" else (Pair if kind == "namedtuple" else list))
    for batch in model.val_batches:
        x = _inputs(batch)
        assert any(torch.equal(x, IMAGES[s : s + 8]) for s in (0, 8))
    assert "training_step" not in model.__dict__  # nothing left on the module
    assert not deficit.attached


def test_noise_vflip_downsample_label_shuffle_and_callable(tmp_path):
    x, y = IMAGES[:8], LABELS[:8]
    noisy = lc.InputDeficit("noise", window=(0, 1), noise_std=0.5, seed=1).apply([x, y], step=4)
    assert noisy[0].shape == x.shape and not torch.equal(noisy[0], x)
    assert torch.equal(noisy[0], lc.InputDeficit("noise", (0, 1), noise_std=0.5, seed=1).apply([x, y], step=4)[0])
    assert (noisy[0] - x).std().item() == pytest.approx(0.5, rel=0.25)
    assert torch.equal(noisy[1], y)
    assert torch.equal(lc.InputDeficit("vflip", (0, 1)).apply((x, y))[0], x.flip(2))
    assert lc.InputDeficit("downsample", (0, 1), factor=2).apply({"image": x, "y": y})["image"].shape == (8, 1, 2, 2)
    shuffled = lc.InputDeficit("label_shuffle", (0, 1)).apply({"x": x, "label": y}, step=0)
    assert torch.equal(shuffled["x"], x) and not torch.equal(shuffled["label"], y)
    assert sorted(shuffled["label"].tolist()) == sorted(y.tolist())
    zero = lc.InputDeficit(lambda b: (b[0] * 0, b[1]), (0, 1)).apply((x, y))
    assert torch.equal(zero[0], torch.zeros_like(x))
    # the batch itself is never modified in place
    assert torch.equal(x, IMAGES[:8])


def test_label_shuffle_in_training_and_global_rng_untouched(tmp_path):
    pl.seed_everything(0)
    plain = Recorder()
    fit(plain, [], tmp_path / "a", epochs=2)
    pl.seed_everything(0)
    model = Recorder()
    fit(model, [lc.InputDeficit("label_shuffle", window=(0, 1), seed=3)], tmp_path / "b", epochs=2)
    first, later = model.train_batches[:2], model.train_batches[2:]
    assert all(not torch.equal(b[1], LABELS[:8]) and not torch.equal(b[1], LABELS[8:]) for _, _, b in first)
    assert all(torch.equal(b[0], p[0]) for (_, _, b), (_, _, p) in zip(model.train_batches, plain.train_batches))
    assert all(torch.equal(b[1], p[1]) for (_, _, b), (_, _, p) in zip(later, plain.train_batches[2:]))


def test_two_input_deficits_compose_and_both_detach(tmp_path):
    model = Recorder()
    a = lc.InputDeficit("vflip", window=(0, 2))
    b = lc.InputDeficit("noise", window=(1, 3), noise_std=0.1)
    fit(model, [a, b], tmp_path)
    epoch1 = [batch for e, _, batch in model.train_batches if e == 1][0]
    step = [s for e, s, _ in model.train_batches if e == 1][0]
    expected = b.apply(a.apply([IMAGES[:8], LABELS[:8]], step), step)[0]
    torch.testing.assert_close(epoch1[0], expected, rtol=0, atol=0)
    assert "training_step" not in model.__dict__


def test_detached_after_exception(tmp_path):
    class Crash(Recorder):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    model = Crash()
    deficit = lc.InputDeficit("blur", window=(0, None), factor=2)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, [deficit], tmp_path)
    assert "training_step" not in model.__dict__ and not deficit.attached


def test_bad_input_raises_with_choices(tmp_path):
    with pytest.raises(ValueError, match="'sharpen'.*blur"):
        lc.InputDeficit("sharpen", window=(0, 1))
    with pytest.raises(ValueError, match="factor=1"):
        lc.InputDeficit("blur", window=(0, 1), factor=1)
    with pytest.raises(ValueError, match="noise_std=-1"):
        lc.InputDeficit("noise", window=(0, 1), noise_std=-1)
    with pytest.raises(ValueError, match="keys are \\['pixels', 'labels'\\]"):
        fit(Recorder("dict", input_key="pixels"), [lc.InputDeficit("blur", window=(0, 1))], tmp_path, epochs=1)
    with pytest.raises(ValueError, match="shape"):
        lc.InputDeficit("blur", window=(0, 1)).apply((torch.rand(4, 3), torch.zeros(4)))


def test_resuming_inside_the_window_reapplies_the_same_corruption(tmp_path):
    # Uninterrupted: 4 epochs with noisy inputs during epochs [0, 3).
    pl.seed_everything(0)
    full = Recorder()
    fit(full, [lc.InputDeficit("noise", window=(0, 3), noise_std=0.3, seed=5)], tmp_path / "full", epochs=4)
    # Interrupted after epoch 1 (inside the window), resumed from the checkpoint with a fresh callback.
    pl.seed_everything(0)
    first = Recorder()
    trainer = fit(first, [lc.InputDeficit("noise", window=(0, 3), noise_std=0.3, seed=5)], tmp_path / "a", epochs=2)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = Recorder()
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path / "b",
                         callbacks=[lc.InputDeficit("noise", window=(0, 3), noise_std=0.3, seed=5)])
    trainer.fit(resumed, ckpt_path=tmp_path / "mid.ckpt")
    seen = first.train_batches + resumed.train_batches
    assert [s for _, s, _ in seen] == [s for _, s, _ in full.train_batches]
    for (_, step, a), (_, _, b) in zip(seen, full.train_batches):
        assert torch.equal(a[0], b[0]), step
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name

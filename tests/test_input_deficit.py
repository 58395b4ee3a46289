"""InputDeficit: corrupts training batches inside its window only, for any batch structure."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.deficits.transforms import blur, downsample

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
        self.train_batches: list[tuple[int, int, Any]] = []
        self.val_batches: list[Any] = []

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
    assert all(
        torch.equal(b[0], p[0]) for (_, _, b), (_, _, p) in zip(model.train_batches, plain.train_batches, strict=True)
    )
    assert all(torch.equal(b[1], p[1]) for (_, _, b), (_, _, p) in zip(later, plain.train_batches[2:], strict=True))


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
    for (_, step, a), (_, _, b) in zip(seen, full.train_batches, strict=True):
        assert torch.equal(a[0], b[0]), step
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


# -- issue 10 ---------------------------------------------------------------------------------
class NoBatchIdx(Recorder):
    """A valid training_step that takes the batch only (Lightning then passes no batch_idx)."""

    def training_step(self, batch):  # type: ignore[override]  # Lightning allows it; the case under test
        return super().training_step(batch, None)


def test_training_step_without_batch_idx_keeps_working_in_the_window(tmp_path):
    # Item 1: the wrapper used to take *args, so Lightning passed batch_idx and the step raised TypeError.
    model = NoBatchIdx()
    deficit = lc.InputDeficit("blur", window=(1, 2), factor=2)
    fit(model, [deficit], tmp_path)
    blurred = [b for e, _, b in model.train_batches if e == 1]
    assert len(model.train_batches) == 6 and len(blurred) == 2
    torch.testing.assert_close(blurred[0][0], blur(IMAGES[:8], 2), rtol=0, atol=0)
    assert "training_step" not in model.__dict__


def test_wrapper_presents_the_signature_of_the_wrapped_step():
    import inspect

    from lightning_critical.deficits._training_step import BatchTransformHandle

    for model, params in ((NoBatchIdx(), ["batch"]), (Recorder(), ["batch", "batch_idx"])):
        handle = BatchTransformHandle(model, lambda b: b)
        assert list(inspect.signature(model.training_step).parameters) == params
        handle.remove()
        assert "training_step" not in model.__dict__


class NoiseRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        start = 8 * batch_idx
        self.seen.append((self.current_epoch, self.global_step, batch_idx, batch[0] - IMAGES[start : start + 8]))
        return super().training_step(batch, batch_idx)


def _accumulating_fit(model, root, epochs, ckpt=None):
    trainer = pl.Trainer(max_epochs=epochs, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=root,
                         callbacks=[lc.InputDeficit("noise", window=(0, 4), noise_std=0.3, seed=5)])
    trainer.fit(model, ckpt_path=ckpt)
    return trainer


def test_noise_differs_between_micro_batches_and_ranks_and_resumes_identically(tmp_path):
    # Item 5: every micro-batch of an accumulated step drew the same noise (seeded by the step only).
    pl.seed_everything(0)
    full = NoiseRecorder()
    _accumulating_fit(full, tmp_path / "full", 4)
    assert [(e, s, i) for e, s, i, _ in full.seen] == [(e, e, i) for e in range(4) for i in range(2)]
    for (_, _, _, a), (_, _, _, b) in zip(full.seen[::2], full.seen[1::2], strict=True):  # a step's two micro-batches
        assert not torch.allclose(a, b)
    # interrupted after epoch 1, resumed with a fresh callback: the same draws
    pl.seed_everything(0)
    first = NoiseRecorder()
    trainer = _accumulating_fit(first, tmp_path / "a", 2)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = NoiseRecorder()
    _accumulating_fit(resumed, tmp_path / "b", 4, ckpt=tmp_path / "mid.ckpt")
    seen = first.seen + resumed.seen
    assert [k[:3] for k in seen] == [k[:3] for k in full.seen]
    assert all(torch.equal(a[3], b[3]) for a, b in zip(seen, full.seen, strict=True))
    # DDP ranks draw their own noise too
    deficit = lc.InputDeficit("noise", window=(0, 1))
    batch = (IMAGES[:8], LABELS[:8])
    rank0, rank1 = (deficit.apply(batch, step=3, batch_idx=1, rank=r)[0] for r in (0, 1))
    assert not torch.equal(rank0, rank1) and torch.equal(rank0, deficit.apply(batch, 3, 1, 0)[0])


class SnapshotInWindow(pl.Callback):
    """Takes a deep copy (as EMA / snapshot callbacks do) and a pickle of the module inside the window."""

    def __init__(self) -> None:
        self.copies: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import copy
        import pickle

        if trainer.current_epoch == 1 and batch_idx == 0:
            assert "training_step" in pl_module.__dict__  # the window is active
            self.copies = [copy.deepcopy(pl_module), pickle.loads(pickle.dumps(pl_module))]


@pytest.mark.parametrize("kind", ["class", "own"])
def test_copies_taken_inside_the_window_come_out_clean(tmp_path, kind):
    # Item 13: a deep copy used to keep the wrapper, which blurred and called the ORIGINAL module.
    model = Recorder()
    if kind == "own":  # the module already had an instance-level training_step
        model.training_step = model.training_step  # type: ignore[method-assign]  # the case under test
    snap = SnapshotInWindow()
    fit(model, [lc.InputDeficit("blur", window=(1, 2), factor=2), snap], tmp_path)
    assert len(snap.copies) == 2
    recorded = len(model.train_batches)
    raw = (IMAGES[:8], LABELS[:8])
    for clone in snap.copies:
        assert clone.training_step.__self__ is clone
        before = len(clone.train_batches)
        loss = clone.training_step(raw, 0)
        loss.backward()
        assert len(clone.train_batches) == before + 1 and len(model.train_batches) == recorded
        assert torch.equal(clone.train_batches[-1][2][0], IMAGES[:8])  # the raw batch, not blurred
        assert all(p.grad is not None for p in clone.parameters())  # the copy's own parameters
        assert all(p.grad is None for p in model.parameters())
    if kind == "own":
        assert model.__dict__["training_step"].__self__ is model
    else:
        assert "training_step" not in model.__dict__


class Sequences(pl.LightningModule):
    """Batch-first sequences (N, T, D): time is dimension 1, features dimension 2."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return F.cross_entropy(self.head(batch[0].mean(1)), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(8, 12, 6, generator=gen), torch.arange(8) % 2)
        return torch.utils.data.DataLoader(data, batch_size=4)


def test_blur_of_sequences_needs_spatial_dims_and_then_blurs_time(tmp_path):
    # Item 15: a (N, T, D) batch used to be blurred along the feature axis without a word.
    model = Sequences()
    start = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"spatial_dims.*\(N, T, D\)"):
        fit(model, [lc.InputDeficit("blur", window=(1, 2), factor=2)], tmp_path)  # the window opens later ...
    # ... caught at once
    assert model.seen == [] and all(torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))
    model = Sequences()
    fit(model, [lc.InputDeficit("blur", window=(0, 1), factor=2, spatial_dims=(1,))], tmp_path, epochs=1)
    x = model.train_dataloader().dataset.tensors[0][:4]
    expected = blur(x.transpose(1, 2), 2).transpose(1, 2)  # blurred over time, per feature
    torch.testing.assert_close(model.seen[0], expected)
    flipped = lc.InputDeficit("vflip", (0, 1), spatial_dims=1).apply((x, torch.zeros(4)))[0]
    assert torch.equal(flipped, x.flip(1))


def test_images_and_volumes_have_default_spatial_dims():
    x4, x5 = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 4, 8, 8)
    assert torch.equal(lc.InputDeficit("blur", (0, 1), factor=2).apply((x4, 0))[0], blur(x4, 2))
    assert torch.equal(lc.InputDeficit("vflip", (0, 1)).apply((x4, 0))[0], x4.flip(2))
    assert lc.InputDeficit("downsample", (0, 1), factor=2).apply((x5, 0))[0].shape == (2, 1, 2, 4, 4)
    assert torch.equal(lc.InputDeficit("vflip", (0, 1)).apply((x5, 0))[0], x5.flip(3))  # height of (D, H, W)
    # explicit dims in any order or sign, and a channels-last image (N, H, W, C)
    nhwc = x4.permute(0, 2, 3, 1)
    got = lc.InputDeficit("blur", (0, 1), factor=2, spatial_dims=(-2, 1)).apply((nhwc, 0))[0]
    torch.testing.assert_close(got, blur(x4, 2).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="spatial_dims.*3-D"):
        lc.InputDeficit("blur", (0, 1)).apply((torch.rand(2, 3, 10), 0))


def test_label_shuffle_of_a_two_input_batch_permutes_the_labels_not_the_second_input():
    # Item 14: the default target used to be index 1, i.e. xb.
    xa, xb, y = torch.rand(8, 3), torch.rand(8, 3), torch.arange(8)
    out = lc.InputDeficit("label_shuffle", window=(0, 1)).apply((xa, xb, y), step=0)
    assert out[0] is xa and out[1] is xb and not torch.equal(out[2], y)
    assert sorted(out[2].tolist()) == y.tolist()
    out = lc.InputDeficit("label_shuffle", window=(0, 1)).apply({"x": xa, "y": y, "target": xb})
    assert out["target"] is xb and not torch.equal(out["y"], y)  # "y" comes first among the target keys
    with pytest.raises(ValueError, match="target_key"):
        lc.InputDeficit("label_shuffle", window=(0, 1)).apply({"x": xa, "out": y})


def test_mapping_batches_user_dict(tmp_path):
    from collections import UserDict

    batch = UserDict({"pixel_values": IMAGES[:8], "labels": LABELS[:8]})
    out = lc.InputDeficit("vflip", (0, 1)).apply(batch)
    assert type(out) is UserDict and torch.equal(out["pixel_values"], IMAGES[:8].flip(2))
    assert batch["pixel_values"] is not out["pixel_values"] and torch.equal(batch["pixel_values"], IMAGES[:8])


def test_transform_registry_accepts_new_entries(monkeypatch):
    from lightning_critical.deficits.transforms import TRANSFORMS, Transform

    assert set(TRANSFORMS) == {"blur", "downsample", "noise", "vflip", "label_shuffle"}
    monkeypatch.setitem(TRANSFORMS, "negate", Transform(lambda x, ctx: -x))
    assert torch.equal(lc.InputDeficit("negate", (0, 1)).apply((IMAGES[:2], 0))[0], -IMAGES[:2])


def test_wrapper_is_inert_while_probing():
    from lightning_critical.deficits._training_step import BatchTransformHandle
    from lightning_critical.probing import probing

    model = Recorder()
    handle = BatchTransformHandle(model, lambda b: (b[0] * 0, b[1]))
    batch = (IMAGES[:8], LABELS[:8])
    with probing():
        model.training_step(batch, 0)
    model.training_step(batch, 0)
    handle.remove()
    assert torch.equal(model.train_batches[0][2][0], IMAGES[:8]) and not model.train_batches[1][2][0].any()

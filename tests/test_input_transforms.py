"""The transform registry of InputDeficit: a registered name is applied in a real fit, inside its window only."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.deficits.transforms import (
    TRANSFORMS,
    TransformContext,
    register_transform,
    unregister_transform,
)

IMAGES = torch.rand(16, 1, 4, 4)
LABELS = torch.arange(16) % 4


class Recorder(pl.LightningModule):
    """Records the inputs its training_step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
        self.seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch[0].clone()))
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(IMAGES, LABELS), batch_size=8)


@pytest.fixture
def registered() -> Iterator[list[TransformContext]]:
    """Registers "shift_by_factor" (x + factor, recording each context) and removes it afterwards."""
    contexts: list[TransformContext] = []

    def shift_by_factor(x: torch.Tensor, ctx: TransformContext) -> torch.Tensor:
        contexts.append(ctx)
        return x + ctx.factor

    register_transform("shift_by_factor", shift_by_factor, spatial=True, floating=True)
    yield contexts
    unregister_transform("shift_by_factor")


def test_a_registered_transform_is_applied_by_name_inside_its_window(tmp_path, registered):
    model = Recorder()
    deficit = lc.InputDeficit("shift_by_factor", window=(1, 2), factor=3)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[deficit])
    trainer.fit(model)
    assert [epoch for epoch, _ in model.seen] == [0, 0, 1, 1, 2, 2]
    for i, (epoch, x) in enumerate(model.seen):
        clean = IMAGES[8 * (i % 2): 8 * (i % 2) + 8]
        assert torch.equal(x, clean + 3 if epoch == 1 else clean), (epoch, i)
    # spatial=True: the deficit resolved the (N, C, H, W) default for it
    assert len(registered) == 2 and all(ctx.spatial_dims == (2, 3) for ctx in registered)
    assert "training_step" not in model.__dict__
    assert repr(deficit).startswith("InputDeficit(transform='shift_by_factor'")


def test_a_registered_transform_gets_the_checks_its_metadata_asks_for(registered):
    deficit = lc.InputDeficit("shift_by_factor", (0, 1), spatial_dims=(1,))
    assert deficit.spatial_dims == (1,)
    with pytest.raises(ValueError, match=r"needs a floating-point input"):
        deficit.apply((torch.zeros(2, 5, dtype=torch.long), LABELS[:2]))
    assert not registered


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("blur", lambda x, c: x), {}, r"name='blur' is a built-in transform \(\['blur', 'downsample'"),
        (("", lambda x, c: x), {}, r"name='' is not valid: it must be a non-empty string"),
        ((3, lambda x, c: x), {}, r"name=3 is not valid"),
        (("mine", "not callable"), {}, r"fn='not callable' is not valid: it must be a callable"),
        (("mine", lambda x, c: x), {"acts_on": "label"}, r"acts_on='label' is not valid; choose one of \('input', "),
    ],
)
def test_register_transform_rejects(args, kwargs, match):
    before = dict(TRANSFORMS)
    with pytest.raises(ValueError, match=match):
        register_transform(*args, **kwargs)
    assert TRANSFORMS == before


def test_an_unknown_name_lists_the_registered_ones(registered):
    with pytest.raises(ValueError, match=r"transform='shift' is not valid; choose one of \(.*'shift_by_factor'\)"):
        lc.InputDeficit("shift", (0, 1))


def _times_seven(x, ctx):
    return x * 0 + 7


def _plus_two(x, ctx):
    return x + 2


def test_a_deficit_keeps_the_transform_it_was_built_with():
    """A sweep worker unpickles the deficit with a registry of its own: the deficit must carry its
    entry, or a changed registry would silently apply another transform."""
    register_transform("plus_two", _plus_two)
    try:
        deficit = lc.InputDeficit("plus_two", window=(0, 5))
        unregister_transform("plus_two")
        register_transform("plus_two", _times_seven)  # another function under the same name
        copy = pickle.loads(pickle.dumps(deficit))
        x = torch.zeros(1, 1, 2, 2)
        for d in (deficit, copy):
            assert torch.equal(d.apply((x, torch.tensor([0])))[0], x + 2)
    finally:
        unregister_transform("plus_two")


def test_built_in_transforms_cannot_be_replaced_and_pickle_without_cloudpickle():
    with pytest.raises(ValueError, match=r"name='blur' is a built-in transform"):
        register_transform("blur", _times_seven)
    with pytest.raises(ValueError, match=r"only registered transforms can be removed"):
        unregister_transform("blur")
    for name in ("blur", "downsample", "noise", "vflip", "label_shuffle"):
        deficit = pickle.loads(pickle.dumps(lc.InputDeficit(name, window=(0, 1))))
        assert deficit.transform_spec == TRANSFORMS[name]

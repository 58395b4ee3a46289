"""Confusing inputs to InputDeficit and FisherMonitor: a clear error naming the argument, before training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import lightning_critical as lc
from lightning_critical._namespace import pl

WINDOW = (0, 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(transform="sharpen"), ValueError, r"transform='sharpen' is not valid; choose one of \('blur'"),
        (dict(transform=3), ValueError, r"transform=3 is not valid.*or a callable"),
        (dict(transform="blur", factor=1), ValueError, r"factor=1 must be an integer >= 2"),
        (dict(transform="blur", factor=2.5), ValueError, r"factor=2.5 must be an integer >= 2, not float"),
        (dict(transform="blur", factor="4"), ValueError, r"factor='4' must be an integer"),
        (dict(transform="blur", factor=True), ValueError, r"factor=True must be an integer"),
        (dict(transform="noise", noise_std="1.0"), ValueError,
         r"noise_std='1.0' is not valid: it must be a finite number >= 0, not str"),
        (dict(transform="noise", noise_std=float("inf")), ValueError,
         r"noise_std=inf is not valid: it must be a finite number"),
        (dict(transform="noise", noise_std=float("nan")), ValueError, r"noise_std=nan is not valid"),
        (dict(transform="noise", noise_std=-1), ValueError, r"noise_std=-1 is not valid.*>= 0"),
        (dict(transform="noise", seed="abc"), ValueError, r"seed='abc' must be an integer >= 0, not str"),
        (dict(transform="noise", seed=1.7), ValueError, r"seed=1.7 must be an integer >= 0, not float"),
        (dict(transform="noise", seed=-1), ValueError, r"seed=-1 must be an integer >= 0"),
        (dict(transform="blur", input_key=1.5), ValueError,
         r"input_key=1.5 is not valid: it must be None, an integer index or a string key"),
        (dict(transform="blur", input_key=["x"]), ValueError, r"input_key=\['x'\] is not valid"),
        (dict(transform="label_shuffle", target_key=True), ValueError, r"target_key=True is not valid"),
        (dict(transform="label_shuffle", target_key=""), ValueError, r"target_key='' is not valid"),
        (dict(transform="blur", spatial_dims=(0, 1)), ValueError,
         r"spatial_dims=\(0, 1\) is not valid.*batch dimension 0"),
        (dict(transform="blur", spatial_dims=(1, 1)), ValueError, r"spatial_dims=\(1, 1\) is not valid.*distinct"),
        (dict(transform="blur", spatial_dims=(1, 2, 3, 4)), ValueError,
         r"spatial_dims=\(1, 2, 3, 4\) is not valid: give 1 to 3"),
        (dict(transform="blur", spatial_dims="hw"), ValueError, r"spatial_dims='hw' is not valid"),
        (dict(transform="noise", spatial_dims=(1,)), ValueError,
         r"spatial_dims=\(1,\) is only used by the transforms \['blur'"),
    ],
)
def test_input_deficit_constructor_rejects(kwargs, error, match):
    transform = kwargs.pop("transform")
    with pytest.raises(error, match=match):
        lc.InputDeficit(transform, WINDOW, **kwargs)


def test_numpy_integers_are_accepted():
    deficit = lc.InputDeficit("blur", WINDOW, factor=np.int64(4), seed=np.int32(3), spatial_dims=(np.int64(2), 3))
    assert deficit.factor == 4 and type(deficit.factor) is int and deficit.seed == 3 and deficit.spatial_dims == (2, 3)
    monitor = lc.FisherMonitor(every_n_epochs=np.int64(2), num_batches=np.int64(1), seed=np.int64(5),
                               input_key=np.int64(0))
    assert monitor.every_n_epochs == 2 and monitor.seed == 5 and monitor.input_key == 0
    assert lc.InputDeficit("noise", WINDOW, noise_std=np.float32(0.5)).noise_std == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(every_n_epochs=0), r"every_n_epochs=0 must be an integer >= 1"),
        (dict(num_batches=1.5), r"num_batches=1.5 must be an integer >= 1, not float"),
        (dict(chunk_size="32"), r"chunk_size='32' must be an integer"),
        (dict(seed="abc"), r"seed='abc' must be an integer >= 0, not str"),
        (dict(seed=1.7), r"seed=1.7 must be an integer >= 0, not float"),
        (dict(input_key=2.0), r"input_key=2.0 is not valid: it must be None, an integer index or a string key"),
        (dict(input_key=("x",)), r"input_key=\('x',\) is not valid"),
        (dict(targets=5), r"targets=5 is not valid: give a name / glob"),
        (dict(targets=[]), r"targets=\[\] is not valid"),
        (dict(targets=["conv1", 3]), r"targets=\['conv1', 3\] is not valid"),
        (dict(inputs="x"), r"inputs='x' is not valid: give a callable"),
        (dict(inputs=lambda b: b, input_key=0), r"input_key=0 and inputs=.* give one of them"),
        (dict(history_file=123), r"history_file=123 is not valid"),
    ],
)
def test_fisher_monitor_constructor_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lc.FisherMonitor(**kwargs)


class Tiny(pl.LightningModule):
    def __init__(self, batches) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.batches = batches
        self.steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x = batch[0] if isinstance(batch, (tuple, list)) else batch["x"]
        return self(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=4)


X, Y = torch.randn(8, 4), torch.arange(8) % 3


class Rows(torch.utils.data.Dataset):
    """Eight rows, as (x, y) pairs or {"x": x, <target_name>: y} dicts."""

    def __init__(self, x, target_name=None):
        self.x, self.target_name = x, target_name

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return (self.x[i], Y[i]) if self.target_name is None else {"x": self.x[i], self.target_name: Y[i]}


@pytest.mark.parametrize(
    "callback, batches, match",
    [
        # Was an IndexError from inside the hook.
        (lambda: lc.FisherMonitor(input_key=5), Rows(X),
         r"input_key=5 is not an index of the batch, which is a list of 2 elements: \[0\] tensor \(4, 4\)"),
        (lambda: lc.FisherMonitor(input_key="image"), Rows(X, "y"),
         r"input_key='image' is not in the batch; its keys are \['x', 'y'\]"),
        (lambda: lc.FisherMonitor(inputs=lambda b: None), Rows(X), r"inputs\(batch\) must return"),
        (lambda: lc.InputDeficit("label_shuffle", (1, 2)), Rows(X, "out"),
         r"none of the default target keys.*target_key"),
        (lambda: lc.InputDeficit("blur", (1, 2), input_key=3), Rows(X), r"input_key=3 is not an index"),
        (lambda: lc.InputDeficit("noise", (1, 2)), Rows(X.long()), r"needs a floating-point input"),
    ],
)
def test_batch_errors_come_at_the_first_batch_before_any_update(tmp_path, callback, batches, match):
    model = Tiny(batches)
    before = model.net.weight.detach().clone()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback()])
    with pytest.raises(ValueError, match=match):
        trainer.fit(model)
    assert model.steps == 0 and torch.equal(model.net.weight, before)
    assert "training_step" not in model.__dict__


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_fisher_monitor_checks_the_batch_when_a_resumed_fit_starts_in_an_epoch_not_due(tmp_path):
    # Epoch 0 is always due, so only a resume can start a fit in an epoch without a record: with
    # every_n_epochs=2 and a resume into epoch 1, the wrong key used to train the whole epoch unnoticed.
    quiet: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False)
    first = Tiny(Rows(X))
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, **quiet)
    trainer.fit(first)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = Tiny(Rows(X))
    monitor = lc.FisherMonitor(every_n_epochs=2, input_key=5)
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, callbacks=[monitor], **quiet)
    with pytest.raises(ValueError, match=r"FisherMonitor: input_key=5 is not an index of the batch, which is a list"):
        trainer.fit(resumed, ckpt_path=tmp_path / "epoch1.ckpt")
    assert trainer.current_epoch == 1 and resumed.steps == 0
    assert torch.equal(resumed.net.weight, first.net.weight)

"""The vectorized runner's fast paths stay exact: one gather for all members' batches, deficits read per dataset."""

from __future__ import annotations

import functools
import gc
import importlib
import os
import weakref
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.deficits.transforms import TRANSFORMS, TransformContext

feeds = importlib.import_module("lightning_critical.sweep.runners.vectorized.feeds")
members = importlib.import_module("lightning_critical.sweep.runners.vectorized.members")
loaders = importlib.import_module("lightning_critical.sweep.runners.vectorized.loaders")

METRICS = ["val_acc", "val_loss", "train_loss"]


class MLP(pl.LightningModule):
    """A 64-16-10 MLP on the digits; SGD with momentum and weight decay, ``lr`` and ``wd`` swept."""

    def __init__(self, lr: float = 0.05, wd: float = 5e-4, opt: str = "sgd") -> None:
        super().__init__()
        self.lr, self.wd, self.opt = lr, wd, opt
        self.l1, self.l2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.l2(F.relu(self.l1(x.flatten(1)))), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.l2(F.relu(self.l1(x.flatten(1))))
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        if self.opt in ("adam", "adamw"):
            kind = torch.optim.AdamW if self.opt == "adamw" else torch.optim.Adam
            return kind(self.parameters(), lr=self.lr, weight_decay=self.wd if self.opt == "adamw" else 0.0)
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.wd)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)}


def sweep(tmp_path: Any, runner: Any, deficit: Any, windows: Any = None, **kw: Any) -> Any:
    trainer = {"max_epochs": 3} if windows else {}
    return lc.sweep.run(
        MLP, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32), deficit=deficit,
        windows=windows or lc.sweep.removal([1, 2], epochs_after=1), seeds=[0, 1], metrics=METRICS, trainer=trainer,
        runner=runner, out=os.path.join(tmp_path, str(runner)), backend="serial", tensorboard=False, plot=False,
        save_model=True, **kw)


def assert_bitwise(tmp_path: Any, default: Any, vectorized: Any) -> None:
    assert (vectorized["status"] == "ok").all()
    assert (default[METRICS].values == vectorized[METRICS].values).all()
    for label in default["label"]:
        a, b = (torch.load(os.path.join(tmp_path, r, "models", f"{label}.pt")) for r in ("None", "vectorized"))
        assert all(torch.equal(a[k], b[k]) for k in a), label


@pytest.mark.parametrize("name", ["blur", "vflip"])
def test_samplewise_transforms_give_a_sample_the_same_bits_in_any_batch(name: str) -> None:
    x = torch.rand(300, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    ctx = TransformContext(factor=3, noise_std=0.0, spatial_dims=(2, 3), generator=torch.Generator)
    fn = TRANSFORMS[name].fn
    assert fn in feeds.SAMPLEWISE
    whole = fn(x, ctx)
    index = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:64]
    assert torch.equal(fn(x[index], ctx), whole[index])
    assert torch.equal(fn(x[:1], ctx), whole[:1])


@pytest.mark.parametrize("deficit", [
    [lc.InputDeficit("blur", (0, 1)), lc.InputDeficit("vflip", (0, 1))],  # one chain read from transformed copies
    lc.InputDeficit("noise", (0, 1), noise_std=0.3),  # drawn per batch: Member.batch on the member's rows
])
def test_members_read_in_one_gather_equal_the_default_runner_bitwise(tmp_path: Any, monkeypatch: Any,
                                                                     deficit: Any) -> None:
    calls: list[int] = []
    general = feeds.Feeds._general

    def counted(self: Any, *args: Any) -> Any:
        calls.append(1)
        return general(self, *args)

    monkeypatch.setattr(feeds.Feeds, "_general", counted)
    default = sweep(tmp_path, None, deficit)
    vectorized = sweep(tmp_path, "vectorized", deficit)
    assert not calls  # every step took the one-gather path (the digits split differs per seed: two datasets)
    assert_bitwise(tmp_path, default, vectorized)


def test_members_with_interleaved_windows_read_their_own_rows(tmp_path: Any) -> None:
    # Grid order interleaves blurred and clean members: the rows of one chain are not consecutive.
    windows = [(0, 2), None, (1, 2)]
    deficit = lc.InputDeficit("blur", (0, 1), factor=2)
    default = sweep(tmp_path, None, deficit, windows=windows)
    vectorized = sweep(tmp_path, "vectorized", deficit, windows=windows)
    assert_bitwise(tmp_path, default, vectorized)


def test_the_dataset_caches_see_in_place_changes_and_keep_nothing_alive() -> None:
    a, b = torch.arange(6.0), torch.arange(6.0)
    assert feeds._canonical(a) is a and feeds._canonical(b) is a
    b.add_(1.0)  # b changed in place: no longer a's
    assert feeds._canonical(b) is b
    neg, pos = torch.tensor([-0.0]), torch.tensor([0.0])
    assert not feeds._same(neg, pos) and torch.equal(neg, pos)  # bitwise, not by value
    blur = lc.InputDeficit("blur", (0, 1), factor=2)
    source = (torch.rand(5, 1, 4, 4), torch.arange(5))
    first = feeds._transformed(source, ("blur",), [blur])
    assert first[1] is source[1] and feeds._transformed(source, ("blur",), [blur])[0] is first[0]
    source[0].mul_(2.0)  # changed in place: transformed again
    assert torch.equal(feeds._transformed(source, ("blur",), [blur])[0], blur.apply(list(source))[0])
    refs = [weakref.ref(t) for t in (a, b, *source)]
    del a, b, source, first
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert not any(chain == ("blur",) for _, chain in feeds._TRANSFORMED)  # the blurred copy went with its data


@pytest.mark.parametrize("shuffle", [True, False])
def test_feed_draws_the_epoch_order_as_the_loader_does(shuffle: bool) -> None:
    assert loaders._checked_permutation()  # this torch's RandomSampler: one seed drawn, one permutation
    data = torch.utils.data.TensorDataset(torch.arange(10.0))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=shuffle)

    class Owner:
        rng = (torch.manual_seed(3).get_state(), None, None)
        drawing_torch = members.Member.drawing_torch
        drawing = members.Member.drawing

    feed = loaders.Feed(Owner(), loader)
    got = [feed.next()[0].tolist() for _ in range(len(loader))]
    torch.manual_seed(3)
    assert got == [b[0].tolist() for b in loader]
    assert torch.equal(feed.member.rng[0], torch.get_rng_state())  # the same draws: the same state after
    assert [len(b) for b in got] == [4, 4, 2]


@pytest.mark.parametrize(("opt", "params"), [
    ("sgd", {"lr": [0.05, 0.2], "wd": [0.0, 5e-4]}),  # momentum, ExponentialLR; a member without weight decay
    ("adamw", {"lr": [1e-2, 3e-3], "wd": [0.0, 0.05]}),
    ("adam", {"lr": [1e-2, 3e-3]}),
])
def test_swept_learning_rates_and_weight_decays_step_in_one_optimizer_bitwise(tmp_path: Any, monkeypatch: Any,
                                                                              opt: str, params: Any) -> None:
    optim = importlib.import_module("lightning_critical.sweep.runners.vectorized.optim")
    steps: list[int] = []
    row_step = optim.StackedOptimizer._step_rows

    def counted(self: Any, *args: Any) -> Any:
        steps.append(1)
        return row_step(self, *args)

    monkeypatch.setattr(optim.StackedOptimizer, "_step_rows", counted)
    model = functools.partial(MLP, opt="adam" if opt == "adam" else opt)
    default = lc.sweep.run(model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
                           deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1], epochs_after=1),
                           seeds=[0], params=params, metrics=METRICS, trainer={}, out=os.path.join(tmp_path, "None"),
                           backend="serial", tensorboard=False, plot=False, save_model=True)
    vectorized = lc.sweep.run(model, functools.partial(lc.data.DigitsDataModule, subset=96, batch_size=32),
                              deficit=lc.InputDeficit("blur", (0, 1)), windows=lc.sweep.removal([1], epochs_after=1),
                              seeds=[0], params=params, metrics=METRICS, trainer={}, runner="vectorized",
                              out=os.path.join(tmp_path, "vectorized"), backend="serial", tensorboard=False,
                              plot=False, save_model=True)
    assert steps  # the members' steps went through one optimizer, row-wise
    assert_bitwise(tmp_path, default, vectorized)


@pytest.mark.parametrize(("kind", "settings"), [
    (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    (torch.optim.SGD, {"momentum": 0.5, "dampening": 0.3, "maximize": True}),
    (torch.optim.SGD, {}),
    (torch.optim.Adam, {"betas": (0.8, 0.95), "maximize": True}),
    (torch.optim.AdamW, {"eps": 1e-6}),
])
def test_the_row_wise_step_equals_each_members_own_optimizer_bitwise(kind: Any, settings: Any) -> None:
    optim = importlib.import_module("lightning_critical.sweep.runners.vectorized.optim")
    rowwise = importlib.import_module("lightning_critical.sweep.runners.vectorized.rowwise")
    gen = torch.Generator().manual_seed(0)
    lrs, decays = [0.1, 0.03, 0.1, 1e-3], [0.0, 1e-2, 5e-4, 0.0]
    stacked = torch.randn(4, 7, 5, generator=gen)
    own = [torch.nn.Parameter(stacked[i].clone()) for i in range(4)]
    opts = [kind([p], lr=lr, weight_decay=wd, **settings) for p, lr, wd in zip(own, lrs, decays, strict=True)]
    stock = kind([stacked.clone()], lr=0.1, **settings)  # its group and state: what the stacked optimizer holds
    assert optim.rowwise(stock)
    step = rowwise.sgd_rows if kind is torch.optim.SGD else rowwise.adam_rows
    group = {"decoupled_weight_decay": kind is torch.optim.AdamW, **stock.param_groups[0]}
    state: dict[str, Any] = {}
    for _ in range(5):
        grad = torch.randn(4, 7, 5, generator=gen)
        grad[0, 0, :2] = -0.0  # a member without weight decay keeps the sign of a zero gradient
        for p, g, opt in zip(own, grad, opts, strict=True):
            p.grad = g.clone()
            opt.step()
        step([stacked], [grad], [state], group, lrs, decays)
    assert all(torch.equal(stacked[i].view(torch.int32), own[i].detach().view(torch.int32)) for i in range(4))


def test_only_plain_optimizer_settings_step_row_wise() -> None:
    optim = importlib.import_module("lightning_critical.sweep.runners.vectorized.optim")
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert optim.rowwise(torch.optim.SGD(params, lr=0.1, momentum=0.9))
    assert not optim.rowwise(torch.optim.SGD(params, lr=0.1, foreach=True))
    assert not optim.rowwise(torch.optim.Adam(params, lr=0.1, amsgrad=True))
    assert not optim.rowwise(torch.optim.Adam(params, lr=torch.tensor(0.1)))


def test_the_digits_are_read_without_importing_scikit_learn_and_equal_load_digits() -> None:
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from lightning_critical.data import digits

    assert digits._bundled_csv() is not None
    digits._digits_arrays.cache_clear()
    images, labels = digits._digits_arrays()
    expected_images, expected_labels = load_digits(return_X_y=True)
    assert images.dtype == expected_images.dtype and labels.dtype == expected_labels.dtype
    assert (images == expected_images).all() and (labels == expected_labels).all()

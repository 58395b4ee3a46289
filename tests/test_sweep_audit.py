"""The exactness audit on real sweeps: ``lc.sweep.run(verify=...)`` retrains branched runs from scratch and compares."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import json
import os
import warnings
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SWEEP_CPU as CPU
from torch.utils.data import DataLoader, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep.audit import AuditWarning

# Where the "hidden" models keep their generator: a global of this module, which no capture of the
# model, datamodule, loaders or callbacks can reach. A branched run restarts it; the audit must notice.
HIDDEN: dict[str, torch.Generator] = {}
FITS: list[str] = []


class Tiny(pl.LightningModule):
    """A shuffled-minibatch regression with momentum; ``hidden=True`` adds noise from an uncaptured generator."""

    def __init__(self, seed: int = 0, hidden: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(48, 6, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()
        self.hidden = hidden
        if hidden:
            HIDDEN["g"] = torch.Generator().manual_seed(seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hidden:
            x = x + 0.3 * torch.randn(x.shape, generator=HIDDEN["g"])
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=12, shuffle=True)


def tiny(seed):
    return Tiny(seed)


def hidden(seed):
    return Tiny(seed, hidden=True)


class Interrupt(pl.Callback):
    """Counts every fit; while ``flag`` exists, Ctrl-C in the audit's from-scratch twin."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def on_train_start(self, trainer, pl_module):
        twin = f"{os.sep}audit{os.sep}scratch{os.sep}" in trainer.default_root_dir
        FITS.append("twin" if twin else "run")
        if twin and os.path.exists(self.flag):
            raise KeyboardInterrupt


def _sweep(out, model=tiny, datamodule=None, **kw):
    args: dict[str, Any] = dict(
        datamodule=datamodule, deficit=lc.InputDeficit("noise", window=(0, 1), noise_std=0.5),
        windows=lc.sweep.removal([1, 2, 3]), metrics="train_loss", trainer={"max_epochs": 4, **CPU}, out=str(out),
        backend="serial", tensorboard=False, plot=False, progress=False, save_model=True)
    args.update(kw)
    return lc.sweep.run(model, **args)


def _weights(table, label):
    return torch.load(os.path.join(table.attrs["out"], "models", f"{label}.pt"))


def _lines(out):
    with open(os.path.join(str(out), "results.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def test_the_default_audit_passes_on_a_shuffled_minibatch_model(tmp_path, capsys):
    table = _sweep(tmp_path / "s")
    branched = table[table.branch_epoch > 0]
    assert len(branched) == 2  # [0, 2) branches from [0, 3) after 2 epochs, [0, 1) after 1
    # the first branched run only ([0, 2), planned before [0, 1))
    assert table.set_index("window").audit.dropna().to_dict() == {"[0, 2) epochs": "equal"}
    audit = table.attrs["audit"]
    assert (audit["audited"], audit["passed"], audit["sharing_stopped"]) == (1, 1, None) and audit["seconds"] > 0
    assert "lightning-critical: audit: retrained 1 branched run(s) from scratch" in capsys.readouterr().err
    assert len(_lines(tmp_path / "s")) == 4  # the twin is not a run of the table
    assert not os.path.exists(tmp_path / "s" / "audit")  # weights deleted once equal
    # what passed is true: the same runs from scratch give the same numbers
    scratch = _sweep(tmp_path / "scratch", share_prefixes=False)
    assert table.train_loss.tolist() == scratch.train_loss.tolist()


def test_verify_all_audits_every_branched_run(tmp_path):
    table = _sweep(tmp_path, verify="all", windows=lc.sweep.removal([1, 2]), trainer={"max_epochs": 3, **CPU})
    assert table[table.branch_epoch > 0].audit.tolist() == ["equal"]
    assert table[table.branch_epoch == 0].audit.isna().all()


class Inline(cf.Executor):
    """An Executor that runs each (pickled) unit at once in this process: the Executor backend without spawning."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_the_audit_runs_on_an_executor_backend(tmp_path):
    # the twin is one more pickled unit of work (the process backend runs the same payloads; spawning costs 30 s here)
    table = _sweep(tmp_path, verify="all", backend=Inline())
    assert table[table.branch_epoch > 0].audit.tolist() == ["equal", "equal"]
    assert len(_lines(tmp_path)) == 4


def test_the_audit_catches_state_no_capture_can_see_and_stops_sharing(tmp_path):
    with pytest.warns(AuditWarning, match=r"run \S+ branched at epoch 2 did not end(.|\n)*net\.0\.weight"):
        table = _sweep(tmp_path / "s", model=hidden)
    reference = _sweep(tmp_path / "scratch", model=hidden, share_prefixes=False)
    audited = table[table.audit.notna()]
    assert len(audited) == 1 and audited.audit.item().startswith("differs: net.0.weight max|diff|=")
    # every row is the truth: the audited row holds its twin's results, the other branch never happened
    assert table.train_loss.tolist() == reference.train_loss.tolist()
    assert (table.branch_epoch == 0).all()
    refused = table[table.branch_refused.notna()]
    assert refused.window.tolist() == ["[0, 1) epochs"]
    assert refused.branch_refused.item().startswith("sharing stopped: the audit of")
    for label in table.label:  # the saved models too
        a, b = _weights(table, label), _weights(reference, label)
        assert all(torch.equal(a[k], b[k]) for k in a), label
    assert table.attrs["audit"]["passed"] == 0 and table.attrs["audit"]["sharing_stopped"]
    assert os.path.exists(tmp_path / "s" / "audit" / f"{audited.run_id.item()}.branched.pt")  # evidence kept
    # a later call on the same out (one more seed) keeps sharing off
    more = _sweep(tmp_path / "s", model=hidden, seeds=[0, 1])
    assert (more.branch_epoch == 0).all() and more.audit.notna().sum() == 1


def test_verify_false_trusts_the_branches(tmp_path, capsys):
    # what the audit protects against: without it, the hidden generator's branches end different, silently
    table = _sweep(tmp_path / "s", model=hidden, verify=False)
    reference = _sweep(tmp_path / "scratch", model=hidden, share_prefixes=False, verify=False)
    assert table.audit.isna().all() and (table.branch_epoch > 0).sum() == 2
    assert table.attrs["audit"]["audited"] == 0
    assert table.train_loss.tolist() != reference.train_loss.tolist()
    assert "audit: off (verify=False)" in capsys.readouterr().err


def test_an_interrupted_audit_is_finished_by_the_next_call_without_retraining_the_run(tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    FITS.clear()
    # preflight=False: FITS counts the training fits, and the pre-flight trial would be one more
    kw = dict(callbacks=lambda: [Interrupt(str(flag))], windows=lc.sweep.removal([1, 2]),
              trainer={"max_epochs": 3, **CPU}, preflight=False)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path / "s", **kw)
    assert FITS == ["run", "run", "twin"]  # [0, 2) from scratch, [0, 1) branched, its twin interrupted
    assert len(lc.sweep.load(tmp_path / "s")) == 1  # the audited run waits for its verdict
    flag.unlink()
    FITS.clear()
    table = _sweep(tmp_path / "s", **kw)
    assert FITS == ["twin", "run"]  # the twin, then the baseline; the audited run is not retrained
    assert table[table.branch_epoch > 0].audit.tolist() == ["equal"]
    assert len(_lines(tmp_path / "s")) == 3


class AugmentingData(pl.LightningDataModule):
    """Noise augmentation from the datamodule's own ``np.random.default_rng`` (``numpy``) or a loader whose
    shuffling uses its own ``torch.Generator`` (``loader``): state that lives outside the global generators."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.rng = np.random.default_rng(0)
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(48, 6, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()

    def train_dataloader(self):
        if self.how == "loader":
            gen = torch.Generator().manual_seed(3)  # PyTorch's reproducibility recipe
            return DataLoader(TensorDataset(self.x, self.y), batch_size=12, shuffle=True, generator=gen)
        noise = torch.from_numpy(self.rng.normal(0.0, 0.3, size=(48, 6)).astype("float32"))
        return DataLoader(TensorDataset(self.x + noise, self.y), batch_size=12, shuffle=True)


class CosineTiny(Tiny):
    """A learning-rate schedule built from ``trainer.max_epochs`` (runs of different lengths differ in it)."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.trainer.max_epochs or 1))]


ADVERSARIAL: dict[str, dict[str, Any]] = {
    "global_generator": dict(model=hidden),
    "datamodule_numpy_rng": dict(datamodule=functools.partial(AugmentingData, "numpy"),
                                 trainer={"max_epochs": 4, "reload_dataloaders_every_n_epochs": 1, **CPU}),
    "loader_generator": dict(datamodule=functools.partial(AugmentingData, "loader")),
    "lr_schedule_from_max_epochs": dict(model=CosineTiny, windows=lc.sweep.removal([1, 2], epochs_after=2)),
    # stops after the first epoch, the one whose end writes the branch checkpoint: children trained on
    "user_early_stopping": dict(callbacks=lambda: [pl.callbacks.EarlyStopping("train_loss", stopping_threshold=1e9)]),
}


@pytest.mark.parametrize("case", list(ADVERSARIAL))
def test_whatever_the_engine_misses_the_default_audit_leaves_no_wrong_number(tmp_path, case):
    # Each pattern keeps state a branch point may not carry. Whether the engine captures it, refuses the
    # branch or the audit catches it, the table must equal the same runs trained from scratch.
    kw = ADVERSARIAL[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuditWarning)
        table = _sweep(tmp_path / "s", **kw)
    reference = _sweep(tmp_path / "scratch", share_prefixes=False, verify=False, **kw)
    assert table.train_loss.tolist() == reference.train_loss.tolist()
    for label in table.label:
        a, b = _weights(table, label), _weights(reference, label)
        assert all(torch.equal(a[k], b[k]) for k in a), label
    said = table.audit.fillna("").str.startswith("differs").any() or table.branch_refused.notna().any()
    checked = table.audit.fillna("").str.startswith("equal").any()
    assert said or checked or (table.branch_epoch == 0).all()  # every branch was checked or refused, or none made


@pytest.mark.parametrize("verify", ["second", "ALL", -1, 1.5, [1], "true"], ids=repr)
def test_bad_verify_values_are_refused_before_training(tmp_path, verify):
    with pytest.raises(ValueError, match=r"verify=.* is not valid: choose 'first' \(default\), 'all', 'none'"):
        _sweep(tmp_path / "s", verify=verify)
    assert not os.path.exists(tmp_path / "s")


# State kept outside the model, keyed by the model object: no capture of a branch point can see it, and
# a branched run starts it afresh. Each test below lets it matter in one way only.
OUTSIDE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class Counting(Tiny):
    """Counts its training steps outside the model; the count is reported by a metric, never used in training."""

    def training_step(self, batch, batch_idx):
        OUTSIDE[self] = OUTSIDE.get(self, 0) + 1
        return super().training_step(batch, batch_idx)


def steps_counted(trainer, module):
    return {"steps_counted": float(OUTSIDE.get(module, 0))}


def test_a_metric_that_differs_with_equal_weights_fails_the_audit(tmp_path):
    # the weights of every branched run are right; the reported number of the audited one is not
    with pytest.warns(AuditWarning, match=r"metric steps_counted: 8\.0 branched, 16\.0 from scratch"):
        table = _sweep(tmp_path / "s", model=Counting, metrics=["train_loss", steps_counted])
    reference = _sweep(tmp_path / "scratch", model=Counting, metrics=["train_loss", steps_counted],
                       share_prefixes=False, verify=False)
    audited = table[table.audit.notna()]
    assert audited.audit.item().startswith("differs: metric steps_counted") and "weights equal" in audited.audit.item()
    assert table.steps_counted.tolist() == reference.steps_counted.tolist() == [16.0] * 4  # every row the truth
    assert table.train_loss.tolist() == reference.train_loss.tolist()
    assert (table.branch_epoch == 0).all() and table.attrs["audit"]["sharing_stopped"]


class LateCurriculum(Tiny):
    """Halves its input scale (kept outside the model) at the end of every epoch from epoch 2 on.

    A run branched after 1 or 2 epochs halves it itself and ends right; only a run branched after
    3 epochs starts with the wrong scale.
    """

    def training_step(self, batch, batch_idx):
        x, y = batch
        return super().training_step((x * OUTSIDE.get(self, 1.0), y), batch_idx)

    def on_train_epoch_end(self):
        if self.current_epoch >= 2:
            OUTSIDE[self] = OUTSIDE.get(self, 1.0) * 0.5


def test_the_default_audit_retrains_the_deepest_branch(tmp_path):
    # a sliding grid over 5 epochs: [2, 3) branches after 1 epoch (and finishes first), [3, 4) after 2, the
    # baseline after 3: the baseline is audited, catches the late state and every row ends the truth
    kw = dict(model=LateCurriculum, windows=lc.sweep.sliding([0, 1, 2, 3], 1), trainer={"max_epochs": 5, **CPU})
    with pytest.warns(AuditWarning, match=r"run baseline\S* branched at epoch 3"):
        table = _sweep(tmp_path / "s", **kw)
    reference = _sweep(tmp_path / "scratch", share_prefixes=False, verify=False, **kw)
    assert table.set_index("window").audit.dropna().str[:8].to_dict() == {"none": "differs:"}
    assert table.train_loss.tolist() == reference.train_loss.tolist()
    for label in table.label:
        a, b = _weights(table, label), _weights(reference, label)
        assert all(torch.equal(a[k], b[k]) for k in a), label

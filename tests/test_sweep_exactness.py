"""Exact or refused: a branched run ends bitwise equal to the same run trained from scratch, or refuses to branch.

Each case is an everyday research pattern (own generators, EarlyStopping, ModelCheckpoint,
schedules from ``max_epochs``, ...). Exact cases compare a sweep with shared prefixes against
the same sweep with ``share_prefixes=False`` (every tensor of every saved model, and the
metrics); refused cases check that the branched child raises ``BranchRefused`` with a reason
before its first training step.
"""

from __future__ import annotations

import copy
import json
import os
import random
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SWEEP_CPU as CPU
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.branching.checkpoint import Branching
from lightning_critical.sweep.runners.lightning import QUIET_TRAINER

try:
    from lightning_critical.sweep.runners.base import BranchRefused
except ImportError:  # main's code (to show which cases it gets silently wrong)
    BranchRefused = None  # type: ignore[assignment,misc]

_gen = torch.Generator().manual_seed(0)
X = torch.randn(48, 4, generator=_gen)
Y = torch.tanh(X @ torch.randn(4, 1, generator=_gen))
STEPS: dict[int, int] = {}
"""Training steps taken per model (by id): a refused child must take none."""


class Net(pl.LightningModule):
    """A tiny MLP with shuffled training batches, a validation loop and SGD with momentum."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        STEPS[id(self)] = STEPS.get(id(self), 0) + 1
        loss = self.loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(X[:16], Y[:16]), batch_size=8)


class Halve(pl.Callback):
    """The deficit: halve the inputs while the window is active."""

    def __init__(self, window: Any) -> None:
        self.window = window

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.window.start <= trainer.current_epoch < self.window.stop:
            batch[0].mul_(0.5)


def sweep(tmp_path: Any, share: bool, model: Any, grid: Any = None, epochs: int = 3, **kw: Any) -> Any:
    trainer = {"max_epochs": epochs, **CPU, **kw.pop("trainer", {})}
    return lc.sweep.run(model=model, deficit=kw.pop("deficit", Halve), windows=grid or lc.sweep.removal([1, 2]),
                        metrics=kw.pop("metrics", ["train_loss"]), trainer=trainer,
                        out=str(tmp_path / ("shared" if share else "independent")), backend="serial",
                        share_prefixes=share, save_model=True, tensorboard=False, plot=False, progress=False, **kw)


def models(table: Any) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for label in table["label"]:
        out[label] = torch.load(os.path.join(table.attrs["out"], "models", f"{label}.pt"))
    return out


def assert_exact(tmp_path: Any, model: Any, metrics: tuple[Any, ...] = ("train_loss",),
                 columns: tuple[str, ...] = (), **kw: Any) -> Any:
    """Run the sweep shared and from scratch; every run must end bitwise equal (models and metric ``columns``)."""
    shared = sweep(tmp_path, True, model, metrics=list(metrics), **kw)
    independent = sweep(tmp_path, False, model, metrics=list(metrics), **kw)
    assert (shared["status"] == "ok").all(), shared[["label", "status", "error"]].to_string()
    assert (independent["status"] == "ok").all(), independent["error"].tolist()
    assert shared["parent"].notna().any(), "nothing branched: the case tests nothing"
    shared, independent = shared.sort_values("label"), independent.sort_values("label")
    for metric in columns or metrics:
        assert shared[metric].tolist() == independent[metric].tolist(), metric
    a, b = models(shared), models(independent)
    for label in a:
        for name in a[label]:
            assert torch.equal(a[label][name], b[label][name]), (label, name)
    return shared


def branch_fit(tmp_path: Any, make_model: Any, *, parent_epochs: int, child_epochs: int, at: int,
               callbacks: Any = list, child_callbacks: Any = None, datamodule: Any = None,
               **trainer_kw: Any) -> tuple[Any, Any, Any]:
    """Fit a parent that writes a branch checkpoint after ``at`` epochs, then a child that resumes from it."""
    path = str(tmp_path / "branch.ckpt")
    kw = {**QUIET_TRAINER, "logger": False, "enable_checkpointing": True, **CPU, **trainer_kw}
    fits = []
    for epochs, branching, root, make_callbacks in (
            (parent_epochs, Branching({at: path}), "parent", callbacks),
            (child_epochs, Branching(), "child", child_callbacks or callbacks)):
        pl.seed_everything(0, verbose=False)
        model = make_model()
        dm = {"datamodule": datamodule()} if datamodule else {}
        trainer = pl.Trainer(max_epochs=epochs, callbacks=[*make_callbacks(), branching],
                             default_root_dir=str(tmp_path / root), **kw)
        fits.append((trainer, model, dm))
    (parent, model, dm), (child, child_model, child_dm) = fits
    parent.fit(model, **dm)
    assert os.path.exists(path)
    return child, lambda: child.fit(child_model, **child_dm, ckpt_path=path, weights_only=False), child_model


def assert_refused(tmp_path: Any, make_model: Any, reason: str, **kw: Any) -> None:
    child, fit, child_model = branch_fit(tmp_path, make_model, **kw)
    STEPS.pop(id(child_model), None)  # ids of models of earlier tests are reused
    expected: Any = BranchRefused if BranchRefused is not None else AssertionError  # main: no refusal, fails
    with pytest.raises(expected) as err:
        fit()
        raise AssertionError("the child trained on: silently different from a run trained from scratch")
    assert reason in err.value.reason, err.value.reason
    assert STEPS.get(id(child_model), 0) == 0, "refused after training started"


# -- 1. stopping decisions ----------------------------------------------------------------------
class Flat(Net):
    """Logs a metric that never improves after epoch 0: EarlyStopping(patience=1) stops after 2 epochs."""

    def on_train_epoch_end(self) -> None:
        self.log("flat", 1.0)


def test_early_stopping_in_the_branch_epoch(tmp_path):
    # the parent (0,3) stops in the epoch it would write the branch of (0,2): that child must not train on
    table = assert_exact(tmp_path, Flat, grid=lc.sweep.removal([1, 2, 3]), epochs=4,
                         callbacks=lambda: [pl.callbacks.EarlyStopping("flat", patience=1,
                                                                       check_on_train_epoch_end=True)])
    assert (table["epochs_trained"] + table["branch_epoch"] <= 2).all()
    # (0,2) was planned to branch after 2 epochs; its parent stopped there, so it started from the earlier branch
    assert table.loc[table["label"].str.startswith("w0-2"), "branch_epoch"].tolist() == [1]


SEQ = [3.0, 2.0, 2.0, 2.0, 2.0, 2.0]


class Plateau(Net):
    def on_train_epoch_end(self) -> None:
        self.log("es", SEQ[self.current_epoch])


def test_early_stopping_patience_survives_the_branch(tmp_path):
    # improves at epoch 1, then waits: wait_count > 0 at the branch points of (0,3) and (0,4)
    assert_exact(tmp_path, Plateau, grid=lc.sweep.removal([1, 2, 3, 4]), epochs=5,
                 callbacks=lambda: [pl.callbacks.EarlyStopping("es", patience=3, check_on_train_epoch_end=True)])


class Rising(Net):
    def on_train_epoch_end(self) -> None:
        self.log("rising", float(self.current_epoch))


def best_checkpoint(trainer: Any, module: Any) -> dict[str, float]:
    cb = trainer.checkpoint_callback
    name = os.path.basename(cb.best_model_path)
    inside = os.path.dirname(cb.best_model_path) == os.path.normpath(cb.dirpath)
    return {"best_score": float(cb.best_model_score), "best_epoch": float(name.split("-")[0].split("=")[1]),
            "best_file_here": float(inside and os.path.isfile(cb.best_model_path)),
            "top_k": float(len(cb.best_k_models))}


def test_model_checkpoint_keeps_the_prefix_best(tmp_path):
    # the best epoch (0) lies in the prefix: the child must end with it, its file in its own dirpath
    table = assert_exact(tmp_path, Rising, grid=lc.sweep.removal([1, 2, 3]), epochs=4,
                         metrics=(best_checkpoint,), columns=("best_score", "best_epoch", "best_file_here", "top_k"),
                         callbacks=lambda: [pl.callbacks.ModelCheckpoint(monitor="rising", save_top_k=2,
                                                                         save_on_train_epoch_end=True)])
    assert (table["best_epoch"] == 0).all() and (table["best_file_here"] == 1).all()


# -- 2./3. generators held by loaders, samplers, datasets, datamodules, models, callbacks -------------
class LoaderGenerator(Net):
    def train_dataloader(self) -> DataLoader:  # PyTorch's reproducibility recipe
        return DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))


class SamplerGenerator(Net):
    def train_dataloader(self) -> DataLoader:
        data = TensorDataset(X, Y)
        return DataLoader(data, batch_size=8, sampler=RandomSampler(data, generator=torch.Generator().manual_seed(3)))


class ShuffledVal(Net):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(X[:16], Y[:16]), batch_size=5, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(4))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))
        with torch.no_grad():  # the shuffled validation order feeds back into training
            self.net[2].bias.add_(1e-3 * self.loss(batch))  # type: ignore[operator]


class Noisy(Dataset):
    """Augments every sample with noise from a generator it is given (numpy or Python)."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.rng, random.Random):
            noise = torch.tensor([self.rng.gauss(0.0, 0.1) for _ in range(4)])
        else:
            noise = torch.from_numpy(self.rng.normal(0.0, 0.1, size=4).astype(np.float32))
        return X[i] + noise, Y[i]


class AugmentingData(pl.LightningDataModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Noisy(self.rng), batch_size=8, shuffle=True)


class DatasetRandom(Net):
    def train_dataloader(self) -> DataLoader:  # made here: a generator that exists only once the loader does
        return DataLoader(Noisy(random.Random(self.seed)), batch_size=8, shuffle=True)


class OwnDropout(Net):
    """Dropout masks from the model's own generator."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.gen = torch.Generator().manual_seed(seed + 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[1](self.net[0](x))
        if self.training:
            h = h * (torch.rand(h.shape, generator=self.gen) > 0.3) / 0.7
        return self.net[2](h)


class NoiseBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rs = np.random.RandomState(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x + torch.from_numpy(self.rs.normal(0, 0.1, size=tuple(x.shape)).astype(np.float32))


class SubmoduleRandomState(Net):
    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.net = nn.Sequential(NoiseBlock(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Jitter(pl.Callback):
    """Perturbs the weights at every epoch start from its own RandomState."""

    def __init__(self) -> None:
        self.rs = np.random.RandomState(3)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        with torch.no_grad():
            for p in pl_module.parameters():
                p.add_(torch.from_numpy(self.rs.normal(0, 0.01, size=tuple(p.shape)).astype(np.float32)))


class NoisyHalve(Halve):
    """A deficit with its own generator: noisy inputs while active."""

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.gen = torch.Generator().manual_seed(11)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        noise = torch.randn(batch[0].shape, generator=self.gen)  # drawn in every batch, used while active
        if self.window.start <= trainer.current_epoch < self.window.stop:
            batch[0].add_(0.1 * noise)


class WorkerNoise(Dataset):
    def __len__(self) -> int:
        return len(X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return X[i] + 0.1 * torch.randn(4), Y[i]  # the worker's global generator, seeded per epoch from the main one


class Workers(Net):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(WorkerNoise(), batch_size=8, shuffle=True, num_workers=2)


@pytest.mark.parametrize("case", [
    pytest.param({"model": LoaderGenerator}, id="loader_generator"),
    pytest.param({"model": SamplerGenerator}, id="sampler_generator"),
    pytest.param({"model": ShuffledVal, "metrics": ("train_loss", "val_loss")}, id="val_loader_generator"),
    pytest.param({"model": ShuffledVal, "trainer": {"num_sanity_val_steps": 2}}, id="sanity_check_val_generator"),
    pytest.param({"model": Net, "datamodule": AugmentingData}, id="datamodule_numpy_rng"),
    pytest.param({"model": DatasetRandom}, id="dataset_python_random"),
    pytest.param({"model": OwnDropout}, id="model_dropout_generator"),
    pytest.param({"model": SubmoduleRandomState}, id="submodule_randomstate"),
    pytest.param({"model": Net, "callbacks": lambda: [Jitter()]}, id="callback_randomstate"),
    pytest.param({"model": Workers}, id="num_workers_2"),
    pytest.param({"model": Net, "deficit": NoisyHalve, "grid": lc.sweep.removal([1, 2, 3]), "epochs": 4},
                 id="deficit_generator_removal"),
])
def test_generators_are_carried_through_the_branch(tmp_path, case):
    assert_exact(tmp_path, **case)


# -- plain state, trainer features -------------------------------------------------------------------
class Counter(Net):
    """Counts finished epochs in a plain attribute and lets the count shape the loss."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.epochs_seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) * (1 + self.epochs_seen)

    def on_train_epoch_end(self) -> None:
        self.epochs_seen += 1


@pytest.mark.parametrize("case", [
    pytest.param({"model": Counter}, id="epoch_counter_attribute"),
    pytest.param({"model": Net, "trainer": {"accumulate_grad_batches": 2, "gradient_clip_val": 0.5}},
                 id="accumulation_and_clipping"),
    pytest.param({"model": Net, "grid": lc.sweep.removal([1, 2, 3]), "epochs": 4,
                  "callbacks": lambda: [pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)]},
                 id="swa_across_the_branch"),
])
def test_state_and_trainer_features(tmp_path, case):
    assert_exact(tmp_path, **case)


def test_deficit_generator_across_a_sliding_branch(tmp_path):
    # (2,3) branches after epoch 0 from (1,2): its deficit's generator drew in epoch 0 and is used in epoch 2.
    # The baseline would branch from (2,3), whose deficit holds a generator the baseline lacks: refused.
    kw: dict[str, Any] = dict(deficit=NoisyHalve, grid=lc.sweep.sliding([1, 2], length=1))
    shared = sweep(tmp_path, True, Net, **kw).set_index("label")
    independent = sweep(tmp_path, False, Net, **kw).set_index("label")
    assert shared.loc["w2-3_seed0", "parent"] == shared.loc["w1-2_seed0", "run_id"]
    base = shared.loc["baseline_seed0"]
    why = f"{base.get('error')} {base.get('branch_refused')}"  # before / after the scheduler's fallback
    assert base["status"] == "ok" or "deficits[0:NoisyHalve].gen" in why, why
    ok = shared[shared["status"] == "ok"].reset_index()
    assert "w2-3_seed0" in set(ok["label"])
    a, b = models(ok), models(independent.reset_index())
    for label in a:
        for name in a[label]:
            assert torch.equal(a[label][name], b[label][name]), (label, name)


def test_chained_branches(tmp_path):
    # runs of different lengths: (0,2) branches from (0,1), (0,3) from (0,2) which itself resumed
    table = assert_exact(tmp_path, Counter, grid=lc.sweep.removal([1, 2, 3], epochs_after=1), epochs=4)
    parents = dict(zip(table["run_id"], table["parent"], strict=True))
    assert any(p in parents and isinstance(parents[p], str) for p in parents.values()), table[["label", "parent"]]


# -- refused: what the child configures differs, or what the parent holds cannot be carried -----------
class Cosine(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(self.trainer.max_epochs or 1))]


class Warmup(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        total = float(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / (0.1 * total)))
        return [opt], [{"scheduler": sched, "interval": "step"}]


class Step(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]


@pytest.mark.parametrize("case", [
    pytest.param({"model": Cosine}, id="cosine_same_length"),
    pytest.param({"model": Warmup}, id="warmup_same_length"),
    pytest.param({"model": Step, "grid": lc.sweep.removal([1, 2], epochs_after=2), "epochs": 4},
                 id="steplr_runs_of_different_lengths"),
])
def test_schedules_that_do_not_differ_are_shared(tmp_path, case):
    # no false refusals: a schedule from max_epochs is fine when runs have one length, StepLR whatever the length
    assert_exact(tmp_path, **case)


class TotalEpochs(Net):
    def setup(self, stage: str) -> None:
        self.total_epochs = int(self.trainer.max_epochs or 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) * (1 - self.current_epoch / self.total_epochs)


class DrawsAtFitStart(OwnDropout):
    def on_fit_start(self) -> None:
        self.offset = float(torch.rand(1, generator=self.gen))


class Plateaus(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                                                   "monitor": "train_loss"}}


class UserEMA(pl.Callback):
    """An exponential moving average of the weights, kept without a state_dict (so no checkpoint holds it)."""

    def __init__(self) -> None:
        self.ema: nn.Module | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.ema = copy.deepcopy(pl_module.net)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), pl_module.net.parameters(), strict=True):  # type: ignore[union-attr]
                e.mul_(0.5).add_(0.5 * p)


class GeneratorIfLong(Net):
    def setup(self, stage: str) -> None:
        if (self.trainer.max_epochs or 0) > 4:
            self.gen = torch.Generator().manual_seed(1)


class Persistent(Net):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, num_workers=1, persistent_workers=True)


@pytest.mark.parametrize(("case", "reason"), [
    pytest.param({"make_model": Cosine, "parent_epochs": 5, "child_epochs": 4}, "lr_schedulers[0].T_max: 5 -> 4",
                 id="cosine_T_max_from_max_epochs"),
    pytest.param({"make_model": Warmup, "parent_epochs": 5, "child_epochs": 4}, "lr_schedulers[0].lr_lambdas",
                 id="warmup_from_estimated_stepping_batches"),
    pytest.param({"make_model": TotalEpochs, "parent_epochs": 5, "child_epochs": 4}, "model.total_epochs: 5 -> 4",
                 id="model_attribute_from_max_epochs"),
    pytest.param({"make_model": DrawsAtFitStart, "parent_epochs": 3, "child_epochs": 3}, "model.gen: drawn from",
                 id="generator_drawn_in_on_fit_start"),
    pytest.param({"make_model": LoaderGenerator, "parent_epochs": 3, "child_epochs": 3,
                  "reload_dataloaders_every_n_epochs": 1}, "reload_dataloaders_every_n_epochs",
                 id="reloaded_loader_with_generator"),
    pytest.param({"make_model": GeneratorIfLong, "parent_epochs": 5, "child_epochs": 4},
                 "model.gen: the parent held a random generator", id="generator_only_in_parent"),
    pytest.param({"make_model": Net, "parent_epochs": 3, "child_epochs": 3,
                  "callbacks": lambda: [Jitter()], "child_callbacks": list},
                 "callbacks[0:", id="callback_only_in_one_run"),
    pytest.param({"make_model": Persistent, "parent_epochs": 3, "child_epochs": 3}, "persistent_workers=True",
                 id="persistent_workers"),
    pytest.param({"make_model": Plateaus, "parent_epochs": 3, "child_epochs": 3}, "ReduceLROnPlateau",
                 id="reduce_on_plateau"),
    pytest.param({"make_model": Net, "parent_epochs": 4, "child_epochs": 4, "callbacks": lambda: [UserEMA()]},
                 "callbacks[0:UserEMA].ema: changed during the prefix", id="callback_state_without_state_dict"),
])
def test_refused_before_the_first_step(tmp_path, case, reason):
    assert_refused(tmp_path, at=2, **case, reason=reason)


def test_a_refused_branch_is_never_a_result_and_its_row_says_why(tmp_path):
    # the run envelope returns status "refused" with the reason; the scheduler stores no such record but
    # trains the run from scratch, and its row carries the reason
    kw: dict[str, Any] = dict(model=Cosine, windows=lc.sweep.removal([1, 2], epochs_after=2), metrics=["train_loss"],
              deficit=Halve, trainer={"max_epochs": 4, **CPU}, out=str(tmp_path / "s"), backend="serial",
              tensorboard=False, plot=False, progress=False)
    table = lc.sweep.run(**kw)
    with open(tmp_path / "s" / "results.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    assert all(r["status"] == "ok" for r in records), records
    refused = [r for r in records if r.get("branch_refused")]
    assert refused and all("lr_schedulers[0].T_max" in r["branch_refused"] for r in refused), records
    assert all(r["branch_epoch"] == 0 and r["parent"] is None for r in refused)
    assert table["branch_refused"].notna().sum() == len(refused)


def test_refused_child_is_retrained_from_scratch(tmp_path):
    grid = lc.sweep.removal([1, 2], epochs_after=2)
    shared = sweep(tmp_path, True, Cosine, grid=grid, epochs=4)
    independent = sweep(tmp_path, False, Cosine, grid=grid, epochs=4)
    assert (shared["status"] == "ok").all(), shared["error"].tolist()
    assert shared["branch_refused"].fillna("").str.contains("T_max").any()
    a, b = models(shared), models(independent)
    for label in a:
        for name in a[label]:
            assert torch.equal(a[label][name], b[label][name]), (label, name)


class AllKinds(OwnDropout):
    """Holds one generator of every kind (all drawn from during training)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.kinds: dict[str, Any] = {"np": np.random.default_rng(1), "legacy": np.random.RandomState(2),
                                      "py": random.Random(3), "bits": np.random.PCG64(4)}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        k = self.kinds
        shift = k["np"].random() + k["legacy"].rand() + k["py"].random() + k["bits"].random_raw() % 7
        return super().training_step(batch, batch_idx) * (1 + 0.01 * float(shift))


def test_branch_state_loads_with_weights_only(tmp_path):
    _, fit, _ = branch_fit(tmp_path, AllKinds, parent_epochs=3, child_epochs=3, at=1,
                           callbacks=lambda: [pl.callbacks.ModelCheckpoint(monitor="train_loss")])
    checkpoint = torch.load(str(tmp_path / "branch.ckpt"), weights_only=False)
    state = checkpoint["callbacks"]["lightning_critical.sweep.Branching"]
    torch.save(state, str(tmp_path / "state.pt"))
    loaded = torch.load(str(tmp_path / "state.pt"), weights_only=True)
    kinds = {"model.gen", "model.kinds['np']", "model.kinds['legacy']", "model.kinds['py']", "model.kinds['bits']"}
    assert kinds <= set(loaded["branch"]["rngs"]) and loaded["branch"]["model_checkpoints"][0]["files"]
    fit()  # and the child resumes


def test_every_generator_kind_is_exact(tmp_path):
    assert_exact(tmp_path, AllKinds)


# -- 6. state no checkpoint carries: compared, refused where it differs -------------------------
class HparamsCurriculum(Net):
    """A curriculum kept in ``self.hparams`` (Lightning does not restore hparams on resume)."""

    def __init__(self, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__(seed)
        self.save_hyperparameters()

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x * self.hparams["scale"]), y)

    def on_train_epoch_end(self) -> None:
        if self.current_epoch >= 1:
            self.hparams["scale"] = self.hparams["scale"] * 0.5


class MaskAttribute(Net):
    """A pruning mask of 1200 elements kept as a plain tensor attribute."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.first, self.last = nn.Linear(4, 300), nn.Linear(300, 1)
        self.mask = torch.ones(300, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(F.linear(x, self.first.weight * self.mask, self.first.bias)))

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 1:
            w = self.first.weight.detach().abs()
            self.mask = (w > w.median()).float()


class BufferCounter(Net):
    """A step counter in a non-persistent buffer (no state_dict holds it)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.register_buffer("seen", torch.zeros(()), persistent=False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        seen: torch.Tensor = self.seen  # type: ignore[assignment]
        seen += 1
        return super().training_step(batch, batch_idx) * (1 + 0.1 * torch.clamp(seen - 12, min=0))


class PrivateCounter(Net):
    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._epochs_done = 0

    def loss(self, batch: Any) -> torch.Tensor:
        return super().loss(batch) * (1 + self._epochs_done)

    def on_train_epoch_end(self) -> None:
        self._epochs_done += 1


class PartialState(pl.Callback):
    """Halves a weight every 3rd epoch; its state_dict leaves out the private counter that decides when."""

    def __init__(self) -> None:
        self._calls = 0
        self.sigma = 0.05

    def state_dict(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sigma = state_dict["sigma"]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._calls += 1
        if self._calls % 3 == 0:
            with torch.no_grad():
                pl_module.net[0].weight.mul_(0.5)


class RunningMean(Net):
    """A torchmetrics MeanMetric never reset (its states are non-persistent)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        import torchmetrics

        self.running = torchmetrics.MeanMetric()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.running.update(loss.detach())
        return loss


class Extend(pl.Callback):
    """Decides the run's length during the run."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            trainer.fit_loop.max_epochs = int(trainer.fit_loop.max_epochs or 0) + 1


@pytest.mark.parametrize(("case", "reason"), [
    pytest.param({"make_model": HparamsCurriculum}, "model.hparams.scale", id="curriculum_in_hparams"),
    pytest.param({"make_model": MaskAttribute}, "model.mask (tensor)", id="large_tensor_attribute"),
    pytest.param({"make_model": BufferCounter}, "model.seen (tensor)", id="non_persistent_buffer"),
    pytest.param({"make_model": PrivateCounter}, "model._epochs_done", id="private_model_attribute"),
    pytest.param({"make_model": Net, "callbacks": lambda: [PartialState()]}, "callbacks[0:PartialState]._calls",
                 id="callback_private_counter_partial_state_dict"),
    pytest.param({"make_model": RunningMean}, "model.running.mean_value (tensor)", id="torchmetrics_never_reset"),
    pytest.param({"make_model": Net, "callbacks": lambda: [Extend()]}, "trainer.fit_loop.max_epochs: changed",
                 id="callback_extends_max_epochs"),
])
def test_uncarried_state_that_differs_is_refused(tmp_path, case, reason):
    assert_refused(tmp_path, at=2, parent_epochs=4, child_epochs=4, **case, reason=reason)


class LoggedMetric(Net):
    """torchmetrics objects logged with self.log: Lightning resets them every epoch (nothing to refuse)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        import torchmetrics

        self.mean = torchmetrics.MeanMetric()
        self.mse = torchmetrics.MeanSquaredError()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.mean.update(loss.detach())
        self.log("mean", self.mean, on_step=False, on_epoch=True)
        self.mse(self(batch[0]).detach(), batch[1])
        self.log("mse", self.mse, on_step=True, on_epoch=False)
        return loss


class ScheduledNet(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]


class OwnCheckpoint(pl.callbacks.ModelCheckpoint):
    """A user subclass: its private timers (``_last_time_checked``) are Lightning's, not state to compare."""


def lightning_callbacks() -> list[Any]:
    return [pl.callbacks.ModelCheckpoint(monitor="train_loss", save_top_k=2),
            pl.callbacks.EarlyStopping("train_loss", patience=10), OwnCheckpoint(monitor="val_loss")]


@pytest.mark.parametrize("case", [
    pytest.param({"model": LoggedMetric, "metrics": ("train_loss", "mean")}, id="logged_torchmetrics"),
    pytest.param({"model": ScheduledNet, "callbacks": lightning_callbacks}, id="lightning_callbacks"),
    pytest.param({"model": Net, "grid": lc.sweep.removal([1, 3]), "epochs": 4, "metrics": ("val_loss",),
                  "trainer": {"check_val_every_n_epoch": 2}}, id="val_loader_not_built_at_the_branch"),
])
def test_no_false_refusal_of_uncarried_state(tmp_path, case):
    shared = assert_exact(tmp_path, **case)
    assert shared["branch_refused"].isna().all(), shared["branch_refused"].tolist()


class Anneal(Net):
    """A loss weight annealed over ``trainer.max_epochs``, read in the loss (no configuration shows it)."""

    def loss(self, batch: Any) -> torch.Tensor:
        return super().loss(batch) * (1 + self.current_epoch / int(self.trainer.max_epochs or 1))


class Prune(Net):
    """torch.nn.utils.prune at epoch 1: the module's parameters change names (weight -> weight_orig)."""

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 1:
            torch.nn.utils.prune.l1_unstructured(self.net[0], "weight", amount=0.5)


@pytest.mark.parametrize(("case", "reason"), [
    pytest.param({"model": Anneal, "grid": lc.sweep.removal([1, 2], epochs_after=2), "epochs": 4},
                 "Anneal.loss reads trainer.max_epochs", id="loss_reads_max_epochs_runs_of_different_lengths"),
    pytest.param({"model": Prune, "grid": lc.sweep.sliding([0, 1, 2], 1), "epochs": 4},
                 "resuming from the branch checkpoint failed before the first step", id="pruned_module_structure"),
])
def test_refused_and_retrained_from_scratch(tmp_path, case, reason):
    shared = sweep(tmp_path, True, **case)
    independent = sweep(tmp_path, False, **case)
    assert (shared["status"] == "ok").all(), shared["error"].tolist()
    assert shared["branch_refused"].fillna("").str.contains(reason, regex=False).any(), shared["branch_refused"]
    a, b = models(shared), models(independent)
    for label in a:
        for name in a[label]:
            assert torch.equal(a[label][name], b[label][name]), (label, name)


def test_lightning_callbacks_with_a_logger_are_not_refused(tmp_path):
    # LearningRateMonitor needs a logger (the sweep's helper above runs without one)
    _, fit, _ = branch_fit(tmp_path, ScheduledNet, parent_epochs=4, child_epochs=4, at=2, logger=True,
                           callbacks=lambda: [pl.callbacks.LearningRateMonitor(), *lightning_callbacks()])
    fit()  # no BranchRefused

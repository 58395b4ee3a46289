"""Shared fixtures: tiny models, quiet trainers and a TensorBoard event reader."""

from __future__ import annotations

import glob
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_critical._namespace import pl

# The models under test are tiny: one intra-op thread is faster and immune to oversubscription.
torch.set_num_threads(1)
# Expected values here are built on the CPU, so every Trainer (and every example run in a
# subprocess) defaults to it on GPU machines too; tests/test_gpu.py asks for the GPU by name.
os.environ.setdefault("PL_TRAINER_ACCELERATOR", "cpu")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


class TwoBranchNet(pl.LightningModule):
    """A user-style model with no protocol at all: two branches summed, then a head."""

    def __init__(self, optimizer: str = "sgd", fail_at_step: int = -1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        self.right = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        self.head = nn.Linear(4, 3)
        self.optimizer = optimizer
        self.fail_at_step = fail_at_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.left(x) + self.right(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            raise RuntimeError("boom")
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.parameters()
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=0.01, weight_decay=0.01)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)
        raise ValueError(self.optimizer)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(32, 6, generator=gen)
        y = torch.randn(32, 3, generator=gen)
        return DataLoader(TensorDataset(x, y), batch_size=8)


def make_trainer(tmp_path: Any = None, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, deterministic=True,
    )
    if tmp_path is not None:
        defaults["default_root_dir"] = str(tmp_path)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def all_hooks(module: nn.Module) -> int:
    """How many forward / pre-forward / backward hooks are attached anywhere in ``module``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def read_tensorboard(log_dir: str) -> Any:
    """An EventAccumulator over the event file(s) in ``log_dir`` with every event kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {log_dir}"
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


class GlobalState:
    """A snapshot of the process-wide settings tests and the code they run change, and its restore.

    Trainer(deterministic=True) turns on deterministic algorithms and sets
    CUBLAS_WORKSPACE_CONFIG; DDP launchers set MASTER_ADDR / MASTER_PORT (a leaked port is
    reused by the next DDP test); seed_everything sets PL_GLOBAL_SEED / PL_SEED_WORKERS; the
    CLI quiets Lightning's loggers, adds a warnings filter and sets one intra-op thread.
    """

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.num_threads = torch.get_num_threads()
        self.default_dtype = torch.get_default_dtype()
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        loggers = logging.root.manager.loggerDict.items()
        self.log_levels = {name: lg.level for name, lg in loggers if isinstance(lg, logging.Logger)}
        self.root_level = logging.root.level
        self.cwd = os.getcwd()
        # catch_warnings saves the filters and restores them (caches included) on exit.
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()

    def restore(self) -> None:
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        torch.set_default_dtype(self.default_dtype)
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.cudnn
        for name, level in self.log_levels.items():
            if logging.getLogger(name).level != level:
                logging.getLogger(name).setLevel(level)
        logging.root.setLevel(self.root_level)
        self._warnings.__exit__(None, None, None)
        os.chdir(self.cwd)


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[GlobalState]:
    """Whatever a test changes in the process-wide settings (see :class:`GlobalState`) is put back."""
    state = GlobalState()
    yield state
    state.restore()


@pytest.fixture(autouse=True)
def _seed(_restore_global_state: GlobalState) -> None:
    pl.seed_everything(0, verbose=False)


@pytest.fixture(autouse=True)
def _fresh_warn_once() -> None:
    """Warnings given once per process (lightning_critical._warnings) are given again in each test."""
    from lightning_critical._warnings import forget

    forget()


# Sweep factories shared by the sweep tests: module-level, so the process backend can pickle them.
SWEEP_CPU = {"accelerator": "cpu", "devices": 1}


def pathway_model(seed: int) -> Any:
    import lightning_critical as lc

    return lc.models.MultiPathwayLinearNet(depth=2, width=12, lr=0.05, seed=seed)


def pathway_data() -> Any:
    import lightning_critical as lc

    return lc.data.HierarchicalDataModule()


def map_norms(trainer: Any, module: Any) -> dict[str, float]:
    """A final metric: the Frobenius norm of every end-to-end map."""
    return {f"norm_{k}": float(v.norm()) for k, v in module.end_to_end_maps().items()}

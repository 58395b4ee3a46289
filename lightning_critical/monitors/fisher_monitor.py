"""FisherMonitor: trace of the Fisher information per layer, over training."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from lightning_critical._checks import check_int
from lightning_critical._lightning import history_path, log_scalars
from lightning_critical.deficits.input import INPUT_KEYS
from lightning_critical.fisher import fisher_layers, fisher_trace
from lightning_critical.monitors.history import History, Record, check_history_file

TOTAL = "total"


class FisherMonitor(Callback):
    """Record the trace of the Fisher information of each layer every ``every_n_epochs`` epochs.

    Estimator (see :mod:`lightning_critical.fisher`): labels sampled from the model's own
    predictive distribution, ``tr F = mean_n ||grad log p(y_n | x_n)||^2``, split by layer
    (the module owning the parameters), plus their sum as target ``"total"``.

    At an epoch due for a record, the inputs of its first ``num_batches`` training batches
    (as the dataloader yields them, before any :class:`~lightning_critical.InputDeficit`) are
    kept and the trace is computed on all of them at the weights before the update of batch
    ``num_batches - 1`` (at the epoch's end if it is shorter). ``step`` is the number of
    optimizer steps done then. The model's ``forward`` must map the input to class logits.
    The model, its gradients and the global RNG are untouched (eval mode during the estimate,
    private generator seeded by ``(seed, step)``), so training is bitwise unchanged.

    Outputs: :meth:`to_frame` (metric ``fisher_trace``, ``index`` -1); logger scalars
    ``fisher_trace/<layer>`` on every rank with identical keys (each rank estimates on its
    own batches); ``<log dir>/<history_file>`` on rank zero.

    Args:
        every_n_epochs: record cadence (epoch 0 is always recorded).
        num_batches: training batches per estimate (>= 1).
        targets: layer names or globs to include (default: every layer with parameters).
        input_key: which batch element is the input (index or dict key; default: the batch
            itself if it is a tensor, element 0 of tuples/lists, or the first of
            ``("input", "inputs", "x", "image", "images", "pixel_values")`` of dicts).
        seed: seed of the label sampling.
        chunk_size: examples per vectorised gradient chunk (memory vs speed).
        history_file: CSV file under the run's log directory (``None``: none).

    Raises:
        ValueError: bad cadence / counts; before training, ``targets`` matching no layer
            (the message lists the layers).

    Example::

        >>> import lightning_critical as lc
        >>> monitor = lc.FisherMonitor(every_n_epochs=2, num_batches=1)
        >>> monitor.to_frame().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_batches: int = 2,
        targets: Optional[Union[str, Sequence[str]]] = None,
        input_key: Union[int, str, None] = None,
        seed: int = 0,
        chunk_size: int = 32,
        history_file: Optional[str] = "fisher_history.csv",
    ) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("num_batches", num_batches), ("chunk_size", chunk_size)):
            check_int(name, value)
        self.every_n_epochs = every_n_epochs
        self.num_batches = num_batches
        self.targets = [targets] if isinstance(targets, str) else (list(targets) if targets is not None else None)
        self.input_key = input_key
        self.seed = int(seed)
        self.chunk_size = chunk_size
        self.history_file = check_history_file(history_file)
        self.history = History()
        self._pending: list[Tensor] = []

    def to_frame(self) -> pd.DataFrame:
        """Everything recorded in this process as a tidy ``DataFrame``."""
        return self.history.to_frame()

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not fisher_layers(pl_module, self.targets):
            raise ValueError(
                f"FisherMonitor(targets={self.targets!r}) matches no layer with trainable parameters; "
                f"layers: {sorted(fisher_layers(pl_module))[:40]}."
            )
        path = history_path(trainer, self.history_file)
        dropped = self.history.start(path, from_step=trainer.global_step)
        if dropped and trainer.global_step == 0:
            rank_zero_warn(f"FisherMonitor: a new fit replaces the {dropped} records of an earlier run"
                           + (f" in {path!r}." if path else " (to_frame() shows this fit only)."))

    def _due(self, trainer: "pl.Trainer") -> bool:
        return trainer.current_epoch % self.every_n_epochs == 0

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self._pending = []
        if not self._due(trainer) or batch_idx >= self.num_batches:
            return
        self._pending.append(self._input(batch).detach())
        if batch_idx == self.num_batches - 1:
            self.record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._pending:  # the epoch had fewer than num_batches batches
            self.record(trainer, pl_module)

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._pending = []
        self.history.close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        self._pending = []
        self.history.close()

    def _input(self, batch: Any) -> Tensor:
        if isinstance(batch, Tensor):
            return batch
        key = self.input_key
        if isinstance(batch, dict):
            key = key if key is not None else next((k for k in INPUT_KEYS if k in batch), None)
            if key not in batch:
                raise ValueError(f"FisherMonitor: input_key={key!r} is not in the batch; its keys are {list(batch)}.")
            return batch[key]
        if isinstance(batch, (tuple, list)):
            return batch[0 if key is None else key]
        raise ValueError(f"FisherMonitor cannot read a batch of type {type(batch).__name__}; pass input_key.")

    def record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Estimate on the kept batches now and record (normally called by the hooks)."""
        step, epoch = trainer.global_step, trainer.current_epoch
        inputs, self._pending = torch.cat(self._pending), []
        gen = torch.Generator(device=inputs.device).manual_seed(self.seed * 1_000_003 + step)
        sums = fisher_trace(pl_module, inputs, self.targets, generator=gen, chunk_size=self.chunk_size)
        values = {layer: total / count for layer, (total, count) in sums.items()}
        values[TOTAL] = sum(values.values())
        rows: list[Record] = [(step, epoch, layer, "fisher_trace", -1, v) for layer, v in values.items()]
        self.history.extend(rows, write=trainer.is_global_zero)
        log_scalars(trainer, {f"fisher_trace/{layer}": v for layer, v in values.items()}, step)
